"""A run's output directory: writable, and holding at most one run, of one config.

:func:`prepare_run_dir` runs before any work (the :class:`~rewardlab.training.engine.Engine`
calls it): it refuses, in one line naming the fields that differ, an ``out`` that holds a run
made with a different config (resuming only continues the same run), unless ``overwrite`` is
set, which deletes that run first; it refuses an ``out`` that is a file or cannot be written;
and only then writes ``<out>/config.yaml``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from rewardlab.config import ConfigError, rename_keys
from rewardlab.io import check_output_dir, DataError, probe_write, write_text

# fields that may differ between the calls of one run: where it is, how it is shown (and to
# which trackers), when this call stops, what to do with an existing run, where it is published
IGNORED_FIELDS = frozenset({"out", "resume", "progress", "tensorboard", "report_to", "stop_at",
                            "stop_after", "overwrite", "max_bad_steps", "push_to_hub"})
# what a run writes under its ``out`` (``init``: a testbed model's random start; ``round_<r>``:
# the rounds of po-iterative); ``overwrite`` deletes exactly these
RUN_FILES = ("checkpoints", "final", "tb", "metrics.jsonl", "config.yaml", "eval_predictions.jsonl",
             "init")
RUN_GLOBS = ("*_summary.json", "round_*")
# config fields (at any depth) that name an input: a model, a data or pairs file, a reward model
INPUT_FIELDS = frozenset({"name_or_path", "dataset", "train_path", "test_path", "path", "init",
                          "model", "data", "eval_data", "pairs", "eval_pairs", "ref_model"})


def check_run_out(out: str | os.PathLike) -> Path:
    """Check, creating nothing, that ``out`` can hold a run: a :class:`ConfigError` of one line
    when it is a file, a file is on its way, or it (or its nearest existing parent) cannot be
    written (a write-probe). The CLI calls it before loading any config'd model or data."""
    p = Path(out)
    try:
        check_output_dir(p)
    except DataError:
        raise ConfigError(f"out {p}: is a file, not a directory") from None
    except NotADirectoryError:
        raise ConfigError(f"out {p}: cannot create the directory (a part of it is a file)") from None
    except OSError as e:
        raise ConfigError(f"out {p}: cannot write there ({e.strerror or e})") from None
    return p


def run_inputs(cfg: Any, prefix: str = "") -> list[tuple[str, str]]:
    """``(dotted field, path)`` for every input a run config names (:data:`INPUT_FIELDS`, in
    nested configs too; a list field gives each item): its models, data, pairs and reward
    models. Hub ids and ``testbed`` are returned as well; :func:`check_run_inputs` skips what is
    not on disk."""
    found: list[tuple[str, str]] = []
    for f in dataclasses.fields(cfg):
        v, name = getattr(cfg, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(v):
            found += run_inputs(v, f"{name}.")
        elif f.name in INPUT_FIELDS and isinstance(v, str) and v:
            found.append((name, v))
        elif f.name in INPUT_FIELDS and isinstance(v, (list, tuple)):
            found += [(name, x) for x in v if isinstance(x, str) and x]
    return found


def check_run_inputs(out: str | os.PathLike, inputs, overwrite: bool = False, written=None,
                     what: str = "the run") -> None:
    """A :class:`ConfigError` when an input of a run (``inputs``: paths, or ``(field, path)``
    pairs as :func:`run_inputs` gives them; None and what is not on disk skipped) is, or lies in,
    a file or folder the run writes in ``out`` (``written``: names or globs under ``out``,
    default :data:`RUN_FILES` and :data:`RUN_GLOBS`: its metrics, config, summaries,
    checkpoints, final model, testbed start, rounds), which would overwrite it, or, with
    ``overwrite``, delete it first."""
    root = Path(out).resolve()
    names = (*RUN_FILES, *RUN_GLOBS) if written is None else tuple(written)
    targets = [p.resolve() for n in names for p in (root.glob(n) if "*" in n else [root / n])]
    for item in inputs:
        field, src = item if isinstance(item, tuple) else (None, item)
        if src is None or not Path(src).exists():
            continue
        p = Path(src).resolve()
        for w in targets:
            if p == w or w in p.parents:
                why = "--overwrite would delete it" if overwrite else f"{what} writes there"
                named = f"input {src}" + (f" ({field})" if field else "")
                raise ConfigError(f"{named} lies in {what} in out {out} ({w.name}): {why}; "
                                  "copy it elsewhere or choose another out")


def check_run(cfg: Any) -> Path:
    """Everything about a run's ``cfg.out`` that can be checked before any model or data is
    loaded (the CLI calls it first): :func:`check_run_out`, then :func:`check_run_inputs` on
    every input the config names (:func:`run_inputs`)."""
    p = check_run_out(cfg.out)
    check_run_inputs(cfg.out, run_inputs(cfg), bool(getattr(cfg, "overwrite", False)))
    return p


def check_writable(out: str | os.PathLike) -> Path:
    """:func:`check_run_out`, then create ``out`` (and its parents) and probe it again."""
    p = check_run_out(out)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"out {p}: cannot create the directory ({e.strerror or e})") from None
    try:
        probe_write(p)
    except OSError as e:
        raise ConfigError(f"out {p}: cannot write there ({e.strerror or e})") from None
    return p


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def config_diff(old: dict, new: dict, ignore=IGNORED_FIELDS) -> list[tuple[str, Any, Any]]:
    """(dotted field, old value, new value) for every field set in both configs that differs,
    except the ``ignore`` ones (by top-level name)."""
    a, b = _flatten(old), _flatten(new)
    return [(k, a[k], b[k]) for k in sorted(a.keys() & b.keys())
            if k.split(".")[0] not in ignore and a[k] != b[k]]


def holds_run(out: Path) -> bool:
    """True when ``out`` holds something a run wrote (a checkpoint, metrics, a final model, a
    round of po-iterative); a ``config.yaml`` alone (a run refused or stopped before any work)
    is not a run."""
    return (any((out / name).exists() for name in ("checkpoints", "metrics.jsonl", "final"))
            or any(out.glob("round_*")))


def clear_run(out: Path) -> None:
    """Delete the run in ``out`` (only the files a run writes: :data:`RUN_FILES`)."""
    doomed = [out / n for n in RUN_FILES] + [p for g in RUN_GLOBS for p in out.glob(g)]
    for p in doomed:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def _plain(cfg: Any) -> dict:
    """The config as YAML reads it back (lists, not tuples), with ``overwrite`` cleared."""
    d = yaml.safe_load(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    if "overwrite" in d:
        d["overwrite"] = False
    return d


def _show(v: Any) -> str:
    return yaml.safe_dump(v, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def write_run_config(out: str | os.PathLike, cfg: Any) -> Path:
    """Record ``cfg`` in ``<out>/config.yaml`` (atomically); returns its path."""
    return write_text(Path(out) / "config.yaml", yaml.safe_dump(_plain(cfg), sort_keys=False))


def prepare_run_dir(out: str | os.PathLike, cfg: Any, name: str = "run", *,
                    resume: bool = True, overwrite: bool = False, write: bool = True) -> Path:
    """Check ``out`` before any work and record ``cfg`` in ``<out>/config.yaml``.

    - ``out`` a file, or not writable: :class:`ConfigError` (one line).
    - an input the config names is a file the run writes in ``out``, or would be deleted by
      ``overwrite``: :class:`ConfigError` naming the field (:func:`check_run_inputs`).
    - ``overwrite``: the run already in ``out`` (if any) is deleted; a fresh run starts.
    - ``out`` holds a run (:func:`holds_run`) whose ``config.yaml`` differs from ``cfg`` (fields other than
      :data:`IGNORED_FIELDS`): :class:`ConfigError` listing each differing field, old → new.
    - ``resume`` false while ``out`` holds a run: :class:`ConfigError` (it would be overwritten).
    ``write`` false: only check (and, with ``overwrite``, clear); the caller writes the config
    later with :func:`write_run_config`, once the run's model and data have loaded, so a run
    refused for bad input leaves no ``config.yaml`` behind. Returns ``out`` as a Path."""
    p = check_writable(out)
    check_run_inputs(p, run_inputs(cfg), overwrite)
    saved = p / "config.yaml"
    new = _plain(cfg)
    if overwrite:
        clear_run(p)
    elif saved.exists() and holds_run(p):   # config.yaml alone: no run to resume or protect
        try:
            old = yaml.safe_load(saved.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise ConfigError(f"{name}: {saved} is unreadable ({str(e).splitlines()[0]}); pass "
                              "--overwrite (overwrite=true) to start afresh there") from None
        # a run recorded before a config key was renamed compares under the new names
        old = rename_keys(type(cfg), old, strict=False, warn=False) if isinstance(old, dict) else {}
        diffs = config_diff(old, new)
        if diffs:
            shown = "; ".join(f"{k}: {_show(a)} → {_show(b)}" for k, a, b in diffs[:12])
            more = f" (and {len(diffs) - 12} more)" if len(diffs) > 12 else ""
            raise ConfigError(f"{name}: out {p} holds a run with a different config ({shown}{more});"
                              " resume it with the same config, choose another out, or pass "
                              "--overwrite (overwrite=true) to delete it and start afresh")
    if not overwrite and not resume and holds_run(p):
        raise ConfigError(f"{name}: out {p} holds a run and resume=false would start afresh over it;"
                          " pass --overwrite (overwrite=true) to delete it, or choose another out")
    if write:
        write_run_config(p, cfg)
    return p
