"""Grade a JSONL file of predictions against a dataset (what ``rewardlab grade`` runs)."""

from __future__ import annotations

import os
from typing import Iterable

from rewardlab.data.problem import Problem
from rewardlab.grading.answers import extract_answer, is_equiv
from rewardlab.io import DataError, iter_jsonl


RESPONSE_FIELDS = ("prediction", "response")
"""Fields that hold a full response, tried in order when no ``pred_field`` is named."""


def default_style(dataset: str) -> str:
    """``"math"`` for MATH-like datasets (``math500``, ``*MATH*`` hub ids), else ``"gsm8k"``."""
    return "math" if "math" in str(dataset).lower() else "gsm8k"


def grade_predictions(problems: Iterable[Problem], predictions_path: str | os.PathLike,
                      style: str = "gsm8k", pred_field: str | None = None,
                      timeout: float = 5.0) -> list[dict]:
    """One result ``{"id", "pred", "gold", "correct"}`` per prediction row, in file order.

    A row needs ``id`` and either ``pred_field`` (a full response; its answer is extracted with
    ``style``) or ``answer`` (already the final answer). ``pred_field`` None: ``prediction``,
    else ``response`` (the rows of ``rewardlab eval``'s predictions.jsonl, read as they are).
    An unknown id, or a row with none of the fields, raises ``DataError`` naming the line.
    """
    by_id = {p.id: p for p in problems}
    fields = [pred_field] if pred_field else list(RESPONSE_FIELDS)
    types = {"id": (str, int), "answer": (str, int, float), **{f: str for f in fields}}
    results = []
    for lineno, row in iter_jsonl(predictions_path, required=["id"], types=types):
        pid = str(row["id"])
        if pid not in by_id:
            raise DataError(predictions_path, f"id {pid!r} is not in the dataset", lineno, "id")
        field = next((f for f in fields if row.get(f) is not None), None)
        if field is not None:
            pred = extract_answer(row[field], style)
        elif row.get("answer") is not None:
            pred = str(row["answer"]).strip()
        else:
            names = " or ".join(f"'{f}'" for f in fields)
            raise DataError(predictions_path, f"row has neither {names} nor 'answer'", lineno,
                            fields[0])
        gold = by_id[pid].answer
        results.append({"id": pid, "pred": pred, "gold": gold,
                        "correct": is_equiv(pred, gold, timeout=timeout)})
    return results


def accuracy(results: list[dict]) -> float:
    """Fraction of results marked correct (0.0 for none)."""
    return sum(r["correct"] for r in results) / len(results) if results else 0.0
