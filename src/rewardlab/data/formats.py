"""Row formats of reward-model and solution files: rewardlab's own and TRL's, auto-detected.

Every reader of reward-model data (``rewardlab train-rm``, :func:`read_records`) accepts these
formats; each row is detected on its own (or forced with ``--format`` / ``data_format``) and
turned into rewardlab's native fields. A row that matches no accepted format raises
:class:`~rewardlab.io.DataError` naming the file, the line, the fields found and the formats
accepted.

=======================  ==============================================  =======================
format                   fields (TRL's names, standard or conversational)  becomes (native)
=======================  ==============================================  =======================
``rewardlab-steps``      question, steps, step_labels and/or outcome     itself
``rewardlab-pairs``      question, chosen, rejected (step lists)         itself
``rewardlab-step-pairs`` question, prefix, chosen_step, rejected_step    itself
``trl-stepwise``         prompt, completions, labels                     question, steps,
                                                                         step_labels, outcome
``trl-preference``       [prompt], chosen, rejected                      question, chosen,
                                                                         rejected (step lists)
``trl-unpaired``         prompt, completion, label                       question, steps, outcome
``trl-prompt-completion`` prompt, completion                             question, steps
=======================  ==============================================  =======================

Conventions of the conversion (tested in tests/test_formats.py):

- TRL's stepwise ``completions`` are the steps; ``labels`` (booleans, 0/1 or probabilities) are
  the step labels and the outcome is their minimum (a solution is right when every step is).
- A completion text (``completion``, ``chosen``, ``rejected``) splits into steps on blank lines
  when it has any, else on lines (:func:`rewardlab.data.steps.split_steps`).
- A conversational prompt (a list of ``{"role", "content"}`` messages) becomes the contents of
  its messages joined by a blank line; a conversational completion is the content of its
  assistant message(s). Preference rows without ``prompt`` take the implicit prompt: the shared
  leading messages (conversational) or the longest shared leading text up to a line break or
  space (standard).
- Rows are laid out in rewardlab's layout for training (``question + "\\n" + steps``, each step
  followed by the step tag; rewardlab.reward_models.data), not TRL's.

Who reads what: ``train-rm`` (prm: rewardlab-steps, trl-stepwise; orm: those and trl-unpaired;
bt: rewardlab-pairs, trl-preference; prm with preference=true: rewardlab-step-pairs), ``score``
(rewardlab-steps, trl-stepwise, trl-unpaired, trl-prompt-completion) and SFT/eval datasets
(a ``.jsonl`` of TRL prompt-completion rows, :func:`rewardlab.data.datasets.load_prompt_completion`).

Writing (``rewardlab label --format trl``): :func:`to_trl_stepwise` and :func:`to_trl_preference`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

from rewardlab.data.steps import split_steps
from rewardlab.io import DataError, iter_jsonl
from rewardlab.registry import Registry


@dataclass(frozen=True)
class RowFormat:
    """One row format: the fields that identify it and how a row becomes native fields."""

    name: str
    fields: tuple[str, ...]
    """Fields every row of this format has (what detection looks for)."""
    convert: Callable[[dict, str, int], dict] | None
    """``(row, path, line) -> native row``; None for rewardlab's own formats (kept as they are)."""
    optional: tuple[str, ...] = ()

    def matches(self, row: dict) -> bool:
        return all(k in row for k in self.fields)

    def describe(self) -> str:
        opt = "".join(f", [{k}]" for k in self.optional)
        return f"{self.name} {{{', '.join(self.fields)}{opt}}}"


FORMATS: Registry[RowFormat] = Registry("data format")
"""Every known row format by name (in detection order)."""

FORMAT_CHOICES = ("auto", "rewardlab", "trl")
"""``--format`` values besides a format's own name: detect among all, or among one family."""

ACCEPTED: dict[str, tuple[str, ...]] = {
    "prm": ("rewardlab-steps", "trl-stepwise"),
    "orm": ("rewardlab-steps", "trl-stepwise", "trl-unpaired"),
    "bt": ("rewardlab-pairs", "trl-preference"),
    "prm-preference": ("rewardlab-step-pairs",),
    "solutions": ("rewardlab-steps", "trl-stepwise", "trl-unpaired", "trl-prompt-completion"),
}
"""What each consumer accepts: reward-model kinds and scored solutions."""


# --------------------------------------------------------------------------------------------
# text helpers


def completion_steps(text: str) -> list[str]:
    """The steps of a completion text: blank-line-separated paragraphs when it has a blank line,
    else its lines."""
    return split_steps(text, "blank" if "\n\n" in text.strip() else "lines")


def _is_messages(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(m, dict) for m in v)


def _message_text(messages: list, path, line, fld: str, roles: tuple[str, ...] | None = None
                  ) -> str:
    texts = []
    for i, m in enumerate(messages):
        content = m.get("content")
        if not isinstance(content, str):
            raise DataError(path, f"message {i + 1} has no string 'content'", line, fld)
        if roles is None or m.get("role") in roles:
            texts.append(content)
    if not texts:
        raise DataError(path, f"no {' or '.join(roles or ())} message", line, fld)
    return "\n\n".join(texts)


def _text(row: dict, fld: str, path, line, roles: tuple[str, ...] | None = None) -> str:
    """A standard (string) or conversational (messages) field as text."""
    v = row[fld]
    if isinstance(v, str):
        text = v
    elif _is_messages(v):
        text = _message_text(v, path, line, fld, roles)
    else:
        raise DataError(path, f"expected a string or a list of {{role, content}} messages, got "
                              f"{type(v).__name__}", line, fld)
    if not text.strip():
        raise DataError(path, "is empty", line, fld)
    return text


def _steps_of(text: str, path, line, fld: str) -> list[str]:
    steps = completion_steps(text)
    if not steps:
        raise DataError(path, "has no step (only whitespace)", line, fld)
    return steps


def _label(v: Any, path, line, fld: str) -> float:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)) and math.isfinite(float(v)) and 0.0 <= v <= 1.0:
        return float(v)
    raise DataError(path, f"expected a boolean or a number in [0, 1], got {v!r}", line, fld)


# --------------------------------------------------------------------------------------------
# TRL → native


def _from_trl_stepwise(row: dict, path, line) -> dict:
    question = _text(row, "prompt", path, line)
    steps, labels = row["completions"], row["labels"]
    if not isinstance(steps, list) or not steps:
        raise DataError(path, "expected a non-empty list of step strings", line, "completions")
    for i, s in enumerate(steps):
        if not isinstance(s, str) or not s.strip():
            raise DataError(path, f"step {i + 1} is not a non-empty string", line, "completions")
    if not isinstance(labels, list):
        raise DataError(path, f"expected a list of booleans, got {type(labels).__name__}", line,
                        "labels")
    if len(labels) != len(steps):
        raise DataError(path, f"has {len(labels)} labels for {len(steps)} completions", line,
                        "labels")
    step_labels = [_label(v, path, line, "labels") for v in labels]
    return {"question": question, "steps": [s.strip() for s in steps], "step_labels": step_labels,
            "outcome": min(step_labels)}


def _implicit_prompt(row: dict, path, line) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) texts of a preference row without ``prompt``."""
    c, r = row["chosen"], row["rejected"]
    if _is_messages(c) and _is_messages(r):
        if len(c) < 2 or c[:-1] != r[:-1]:
            raise DataError(path, "no 'prompt' and 'chosen'/'rejected' do not share leading "
                                  "messages (the implicit prompt)", line, "prompt")
        return (_message_text(c[:-1], path, line, "chosen"),
                _message_text(c[-1:], path, line, "chosen"),
                _message_text(r[-1:], path, line, "rejected"))
    if isinstance(c, str) and isinstance(r, str):
        n = len(os.path.commonprefix([c, r]))
        cut = max(c.rfind("\n", 0, n), c.rfind(" ", 0, n))
        prompt = c[:cut].strip() if cut > 0 else ""
        if not prompt:
            raise DataError(path, "no 'prompt' and 'chosen'/'rejected' share no leading text "
                                  "(the implicit prompt)", line, "prompt")
        return prompt, c[cut:], r[cut:]
    raise DataError(path, "expected both strings or both lists of messages", line, "chosen")


def _from_trl_preference(row: dict, path, line) -> dict:
    if "prompt" in row:
        question = _text(row, "prompt", path, line)
        chosen = _text(row, "chosen", path, line, ("assistant",) if _is_messages(row["chosen"]) else None)
        rejected = _text(row, "rejected", path, line,
                         ("assistant",) if _is_messages(row["rejected"]) else None)
    else:
        question, chosen, rejected = _implicit_prompt(row, path, line)
    return {"question": question, "chosen": _steps_of(chosen, path, line, "chosen"),
            "rejected": _steps_of(rejected, path, line, "rejected")}


def _completion(row: dict, path, line) -> dict:
    roles = ("assistant",) if _is_messages(row["completion"]) else None
    text = _text(row, "completion", path, line, roles)
    return {"question": _text(row, "prompt", path, line),
            "steps": _steps_of(text, path, line, "completion"), "response": text}


def prompt_completion_texts(row: dict, path, line: int) -> tuple[str, str]:
    """``(prompt, completion)`` texts of a TRL prompt-completion row (standard or
    conversational); DataError naming the field when one is missing, empty or of another type."""
    for fld in ("prompt", "completion"):
        if fld not in row:
            raise DataError(path, "missing required field", line, fld)
    roles = ("assistant",) if _is_messages(row["completion"]) else None
    return _text(row, "prompt", path, line), _text(row, "completion", path, line, roles)


def _from_trl_unpaired(row: dict, path, line) -> dict:
    return {**_completion(row, path, line), "outcome": _label(row["label"], path, line, "label")}


for _fmt in (
    RowFormat("rewardlab-steps", ("question", "steps"), None, ("step_labels", "outcome")),
    RowFormat("rewardlab-pairs", ("question", "chosen", "rejected"), None),
    RowFormat("rewardlab-step-pairs", ("question", "prefix", "chosen_step", "rejected_step"), None),
    RowFormat("trl-stepwise", ("prompt", "completions", "labels"), _from_trl_stepwise),
    RowFormat("trl-preference", ("chosen", "rejected"), _from_trl_preference, ("prompt",)),
    RowFormat("trl-unpaired", ("prompt", "completion", "label"), _from_trl_unpaired),
    RowFormat("trl-prompt-completion", ("prompt", "completion"), _completion),
):
    FORMATS.register(_fmt.name)(_fmt)


# --------------------------------------------------------------------------------------------
# detection and reading


def resolve_formats(accept: Sequence[str], fmt: str = "auto") -> list[RowFormat]:
    """The formats a reader tries, in order: ``accept`` narrowed by ``fmt`` (``auto``,
    ``rewardlab``, ``trl`` or one format's name). ValueError for a format outside ``accept``."""
    if fmt in ("auto", None, ""):
        names = list(accept)
    elif fmt in ("rewardlab", "trl"):
        names = [n for n in accept if n.startswith(fmt + "-")]
    elif fmt in FORMATS:
        names = [fmt] if fmt in accept else []
    else:
        raise ValueError(f"unknown data format {fmt!r}; use one of "
                         f"{', '.join(FORMAT_CHOICES + tuple(FORMATS.names()))}")
    if not names:
        raise ValueError(f"data format {fmt!r} is not accepted here; accepted: {', '.join(accept)}")
    return [FORMATS.get(n) for n in names]


def detect_format(row: dict, formats: Sequence[RowFormat], path, line: int) -> RowFormat:
    """The first of ``formats`` whose fields ``row`` has. A row with ``question`` (rewardlab's
    anchor field) falls back to the first rewardlab format, whose reader then names the missing
    field. Otherwise DataError listing the fields found and the formats accepted."""
    for f in formats:
        if f.matches(row):
            return f
    native = [f for f in formats if f.convert is None]
    if native and "question" in row:
        return native[0]
    found = ", ".join(sorted(row)) or "none"
    accepted = "; ".join(f.describe() for f in formats)
    raise DataError(path, f"row matches no accepted format. Fields found: {found}. "
                          f"Formats accepted: {accepted}", line)


def iter_records(path: str | os.PathLike, accept: Sequence[str] | str,
                 fmt: str = "auto") -> Iterator[tuple[int, dict, str]]:
    """``(line, native row, format name)`` for every row of a JSONL file.

    ``accept``: format names, or a consumer of :data:`ACCEPTED` (``"prm"``, ``"orm"``, ``"bt"``,
    ``"prm-preference"``, ``"solutions"``). Native rows are yielded as they are (their reader
    checks their fields); TRL rows are checked here and converted (module docstring)."""
    if isinstance(accept, str):
        accept = ACCEPTED[accept]
    formats = resolve_formats(accept, fmt)
    for line, row in iter_jsonl(path):
        f = detect_format(row, formats, path, line)
        yield line, (row if f.convert is None else f.convert(row, str(path), line)), f.name


def read_records(path: str | os.PathLike, accept: Sequence[str] | str,
                 fmt: str = "auto") -> list[dict]:
    """All rows of :func:`iter_records`, native fields only.

    >>> import json, tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "trl.jsonl"
    >>> _ = p.write_text(json.dumps({"prompt": "2 + 3 * 4 = ?", "completions": ["3 * 4 = 12",
    ...     "2 + 12 = 14"], "labels": [True, False]}) + "\\n")
    >>> read_records(p, "prm")
    [{'question': '2 + 3 * 4 = ?', 'steps': ['3 * 4 = 12', '2 + 12 = 14'], 'step_labels': [1.0, 0.0], 'outcome': 0.0}]
    """
    return [r for _, r, _ in iter_records(path, accept, fmt)]


# --------------------------------------------------------------------------------------------
# native → TRL (writing)


def _trl_labels(labels: Iterable[float]) -> list:
    """Booleans when every label is 0 or 1 (TRL's PRMTrainer wants booleans), else the floats."""
    labels = [float(v) for v in labels]
    if all(v in (0.0, 1.0) for v in labels):
        return [v == 1.0 for v in labels]
    return labels


def to_trl_stepwise(row: dict) -> dict:
    """A labelled rewardlab row → TRL stepwise supervision ``{prompt, completions, labels}``
    (hard labels as booleans; soft Monte-Carlo labels stay probabilities)."""
    return {"prompt": row["question"], "completions": list(row["steps"]),
            "labels": _trl_labels(row["step_labels"])}


def to_trl_preference(pair: dict) -> dict:
    """A Bradley–Terry pair ``{question, chosen, rejected}`` (step lists) → TRL standard
    preference ``{prompt, chosen, rejected}`` (each completion its steps joined by newlines)."""
    return {"prompt": pair["question"], "chosen": "\n".join(pair["chosen"]),
            "rejected": "\n".join(pair["rejected"])}


def has_soft_labels(rows: Iterable[dict]) -> bool:
    """Whether any row has a step label other than 0 or 1 (TRL expects booleans)."""
    return any(float(v) not in (0.0, 1.0) for r in rows for v in r.get("step_labels") or ())
