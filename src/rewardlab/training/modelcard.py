"""Model cards: the ``README.md`` written beside every saved model.

A card says what the model is, what it was built on (its base), what it was trained on, how well
it did (its metrics) and the command that made it, plus how to load it, in the Hugging Face
layout (YAML front matter, then Markdown), so the hub shows it as it is::

    card = ModelCard(title="rewardlab PRM", summary="...", base="Qwen/Qwen2.5-0.5B",
                     data=["rm.jsonl"], metrics={"eval/step_auroc": 0.91})
    card.write("runs/prm/final")          # runs/prm/final/README.md
"""

from __future__ import annotations

import math
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from rewardlab.io import atomic_path


CARD_FILE = "README.md"


def current_command(argv: Iterable[str] | None = None) -> str:
    """The command line of this process as a user would type it: ``rewardlab <args>`` when run
    through the CLI (the console script or ``python -m rewardlab``), else the interpreter call."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return ""
    prog = os.path.basename(argv[0])
    if prog == "rewardlab" or argv[0].replace(os.sep, "/").endswith("rewardlab/__main__.py"):
        return shlex.join(["rewardlab", *argv[1:]])
    return shlex.join(["python", *argv])


def _yaml_str(s: str) -> str:
    """A YAML scalar that is always read back as this string (JSON quoting is valid YAML)."""
    import json
    return json.dumps(str(s), ensure_ascii=False)


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _is_hub_id(base: str | None) -> bool:
    """``owner/name`` that is not a local path (what the hub's ``base_model`` field takes)."""
    if not base or os.path.exists(base) or base.startswith((".", "/", "~")):
        return False
    parts = base.split("/")
    return len(parts) == 2 and all(parts)


@dataclass
class ModelCard:
    """The content of a model card (every field optional but ``title``)."""

    title: str
    summary: str = ""
    """What the model is, in a sentence or a paragraph."""
    base: str | None = None
    """The model it was trained from: a hub id or a local path."""
    data: list[str] = field(default_factory=list)
    """What it was trained on (files, dataset names)."""
    metrics: dict[str, float] = field(default_factory=dict)
    command: str | None = None
    """The command that made it (:func:`current_command` when None)."""
    details: list[str] = field(default_factory=list)
    """More ``- `` bullet lines (the input layout, the score's definition, settings)."""
    usage: str = ""
    """A Python snippet that loads and runs the model (shown in a code block)."""
    tags: list[str] = field(default_factory=lambda: ["rewardlab"])
    pipeline_tag: str | None = None
    library_name: str = "transformers"

    def render(self) -> str:
        """The card's text: YAML front matter, then the Markdown sections."""
        front = [f"library_name: {self.library_name}"]
        if _is_hub_id(self.base):
            front.append(f"base_model: {_yaml_str(self.base)}")
        if self.pipeline_tag:
            front.append(f"pipeline_tag: {self.pipeline_tag}")
        if self.tags:
            front.append("tags:")
            front += [f"- {_yaml_str(t)}" for t in self.tags]
        lines = ["---", *front, "---", "", f"# {self.title}", ""]
        if self.summary:
            lines += [self.summary.strip(), ""]
        lines += ["## Model", "",
                  f"- Base model: `{self.base}`" if self.base else "- Base model: (not recorded)"]
        lines += [f"- {d}" for d in self.details]
        lines += ["", "## Training data", ""]
        lines += [f"- `{d}`" for d in self.data] or ["- (not recorded)"]
        lines += ["", "## Metrics", ""]
        if self.metrics:
            lines += ["| metric | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in self.metrics.items()]
        else:
            lines.append("(none recorded)")
        command = current_command() if self.command is None else self.command
        lines += ["", "## How it was made", "", "```bash", command or "(not recorded)", "```", ""]
        if self.usage:
            lines += ["## Usage", "", "```python", self.usage.strip("\n"), "```", ""]
        lines += ["Made with rewardlab.", ""]
        return "\n".join(lines)

    def write(self, directory: str | Path) -> Path:
        """Write ``<directory>/README.md`` (atomically); returns its path."""
        path = Path(directory) / CARD_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Path(tmp).write_text(self.render(), encoding="utf-8")
        return path


def numeric_metrics(metrics: dict, prefixes: Iterable[str] = ()) -> dict[str, float]:
    """The finite numbers of ``metrics`` (optionally only keys starting with ``prefixes``)."""
    prefixes = tuple(prefixes)
    out = {}
    for k, v in metrics.items():
        if prefixes and not k.startswith(prefixes):
            continue
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
            out[k] = float(v)
    return out
