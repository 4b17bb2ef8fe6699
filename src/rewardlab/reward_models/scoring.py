"""Scoring solution files with a trained reward model (what ``rewardlab score`` runs).

Input rows are ``{"id"?, "question", "steps": [str]}`` or ``{"id"?, "question", "response": str}``
(the response is split into steps at its non-empty lines, each stripped), or rows in TRL's
formats (prompt-completion, unpaired, stepwise supervision; rewardlab.data.formats), which get
``question`` (the prompt as text) added. Output rows are the
input rows with ``step_scores`` (PRM: one per step; empty for ORM/BT) and ``score`` added.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from rewardlab.data.formats import ACCEPTED, detect_format, resolve_formats
from rewardlab.data.steps import step_texts
from rewardlab.io import check_row, DataError, iter_jsonl, write_jsonl
from rewardlab.reward_models.models import load_reward_model


def read_solution_rows(path: str | os.PathLike) -> tuple[list[dict], list[list[str]]]:
    """Rows of a solutions file and each row's steps; a bad row raises DataError naming the
    file, the line and the field."""
    rows, steps = [], []
    formats = resolve_formats(ACCEPTED["solutions"])
    for line, r in iter_jsonl(path):
        if "question" not in r:   # TRL's formats, or no format at all (the error lists both)
            native = detect_format(r, formats, path, line).convert(r, str(path), line)
            rows.append({**r, "question": native["question"]})
            steps.append(native["steps"])
            continue
        check_row(path, line, r, ["question"], {"question": str, "steps": list, "response": str})
        if r.get("steps") is not None:
            for i, s in enumerate(r["steps"]):
                if not isinstance(s, str):
                    raise DataError(path, f"step {i + 1} is a {type(s).__name__}, expected a "
                                          "string", line, "steps")
            steps.append(list(r["steps"]))
        elif r.get("response") is not None:
            steps.append(step_texts(r["response"]))
        else:
            raise DataError(path, "a row needs 'steps' (a list of strings) or 'response' "
                                  "(a string)", line, "steps")
        rows.append(r)
    return rows, steps


def score_file(rm, input_path: str | os.PathLike, out_path: str | os.PathLike,
               batch_size: int = 64) -> dict:
    """Score every solution of ``input_path`` with reward model ``rm`` (a RewardModel or an
    EnsembleRM, or a directory to load either from) and write the rows with ``step_scores`` and ``score`` to
    ``out_path`` (atomically). Returns a summary: n, kind, mean/min/max score, mean steps."""

    rows, steps = read_solution_rows(input_path)
    if isinstance(rm, (str, os.PathLike)):
        rm = load_reward_model(rm)
    try:
        results = rm.score([r["question"] for r in rows], steps, batch_size=batch_size)
    except ValueError as e:  # e.g. a step that contains the PRM's step tag: find its line
        lines = [line for line, _ in iter_jsonl(input_path)]
        for line, r, s in zip(lines, rows, steps):
            try:
                rm.encode(r["question"], s)
            except ValueError as row_err:
                raise DataError(input_path, str(row_err), line, "steps") from None
        raise DataError(input_path, str(e)) from None
    out_rows = [{**r, "step_scores": res.step_scores, "score": res.score}
                for r, res in zip(rows, results)]
    write_jsonl(out_path, out_rows)
    scores = [res.score for res in results]
    n_steps = [len(s) for s in steps]
    summary = {"n": len(rows), "kind": rm.kind, "out": str(Path(out_path)),
               "mean_score": sum(scores) / len(scores) if scores else math.nan,
               "min_score": min(scores, default=math.nan),
               "max_score": max(scores, default=math.nan),
               "mean_steps": sum(n_steps) / len(n_steps) if n_steps else math.nan}
    if rm.kind == "prm":
        flat = [p for res in results for p in res.step_scores]
        summary["mean_step_score"] = sum(flat) / len(flat) if flat else math.nan
    return summary
