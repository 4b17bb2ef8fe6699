"""Grade a JSONL file of predictions against a dataset (what ``rewardlab grade`` runs)."""

from __future__ import annotations

import os
from typing import Iterable

from rewardlab.data.problem import Problem
from rewardlab.grading.answers import extract_answer, is_equiv
from rewardlab.io import DataError, iter_jsonl


def default_style(dataset: str) -> str:
    """``"math"`` for MATH-like datasets (``math500``, ``*MATH*`` hub ids), else ``"gsm8k"``."""
    return "math" if "math" in str(dataset).lower() else "gsm8k"


def grade_predictions(problems: Iterable[Problem], predictions_path: str | os.PathLike,
                      style: str = "gsm8k", pred_field: str = "prediction",
                      timeout: float = 5.0) -> list[dict]:
    """One result ``{"id", "pred", "gold", "correct"}`` per prediction row, in file order.

    A row needs ``id`` and either ``pred_field`` (a full response; its answer is extracted with
    ``style``) or ``answer`` (already the final answer). An unknown id, or a row with neither
    field, raises ``DataError`` naming the line.
    """
    by_id = {p.id: p for p in problems}
    types = {"id": (str, int), pred_field: str, "answer": (str, int, float)}
    results = []
    for lineno, row in iter_jsonl(predictions_path, required=["id"], types=types):
        pid = str(row["id"])
        if pid not in by_id:
            raise DataError(predictions_path, f"id {pid!r} is not in the dataset", lineno, "id")
        if row.get(pred_field) is not None:
            pred = extract_answer(row[pred_field], style)
        elif row.get("answer") is not None:
            pred = str(row["answer"]).strip()
        else:
            raise DataError(predictions_path, f"row has neither '{pred_field}' nor 'answer'", lineno,
                            pred_field)
        gold = by_id[pid].answer
        results.append({"id": pid, "pred": pred, "gold": gold,
                        "correct": is_equiv(pred, gold, timeout=timeout)})
    return results


def accuracy(results: list[dict]) -> float:
    """Fraction of results marked correct (0.0 for none)."""
    return sum(r["correct"] for r in results) / len(results) if results else 0.0
