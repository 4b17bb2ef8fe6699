"""PRM evaluation beyond step AUROC: earliest-error identification (ProcessBench) and score bias.

**Earliest error** (ProcessBench, Zheng et al. 2024, arXiv 2412.06559). A solution's label is the
0-based index of its earliest wrong step, or −1 when every step is right. A PRM with step scores
p_1..p_K predicts

    pred(τ) = min{k : p_k < τ}  (0-based),  −1 when no step scores below τ,

and over a set of solutions, with E the erroneous ones (label ≥ 0) and C the correct ones
(label = −1),

    acc_err     = |{i ∈ E : pred_i = label_i}| / |E|
    acc_correct = |{i ∈ C : pred_i = −1}| / |C|
    F1          = 2 · acc_err · acc_correct / (acc_err + acc_correct)   (0 when both are 0).

The threshold τ is chosen on a validation split (:func:`choose_threshold`: the grid value of the
highest F1 there) and the metric is reported on held-out solutions.

**Minimal pairs** (:func:`minimal_pair_metrics`): a right step and the same step with its result
off by one, after the same right prefix (:func:`rewardlab.data.testbed.minimal_pairs`). With p⁺
and p⁻ the PRM's scores of the two,

    pair_acc  = mean[p⁺ > p⁻]          separated = mean[p⁺ ≥ 0.5 > p⁻]

over all pairs and by the step's operation: a single probe such as ``13 - 8 = 5`` against
``13 - 8 = 6``, measured over every step of many problems.

**Bias checks** (:func:`score_bias`): the mean solution score by number of steps, and on
solutions whose final answer is right against wrong — a PRM whose product score mostly counts
steps, or that cannot tell right answers from wrong ones, shows it here.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from rewardlab.io import DataError, iter_jsonl

DEFAULT_GRID = tuple(round(0.01 * i, 2) for i in range(1, 100))
"""Candidate thresholds of :func:`choose_threshold`: 0.01, 0.02, ..., 0.99."""


def first_error(step_labels: Sequence[float], cut: float = 0.5) -> int:
    """0-based index of the first step labelled below ``cut`` (a wrong step), −1 if none."""
    return next((k for k, y in enumerate(step_labels) if y < cut), -1)


def predict_first_error(step_scores: Sequence[float], threshold: float) -> int:
    """pred(τ): 0-based index of the first step scored below ``threshold``, −1 if none."""
    return next((k for k, p in enumerate(step_scores) if p < threshold), -1)


def earliest_error_metrics(step_scores: Sequence[Sequence[float]], labels: Sequence[int],
                           threshold: float) -> dict[str, float]:
    """``{"acc_err", "acc_correct", "f1", "n_err", "n_correct"}`` of the formulas in the module
    docstring at threshold ``threshold``. An accuracy over an empty set is nan (and so is F1)."""
    if len(step_scores) != len(labels):
        raise ValueError(f"{len(step_scores)} solutions but {len(labels)} labels")
    hit_e = n_e = hit_c = n_c = 0
    for scores, y in zip(step_scores, labels):
        y = int(y)
        if not -1 <= y < max(len(scores), 1):
            raise ValueError(f"label {y} is outside -1..{len(scores) - 1} (a solution of "
                             f"{len(scores)} steps)")
        pred = predict_first_error(scores, threshold)
        if y >= 0:
            n_e += 1
            hit_e += pred == y
        else:
            n_c += 1
            hit_c += pred == -1
    a = hit_e / n_e if n_e else float("nan")
    b = hit_c / n_c if n_c else float("nan")
    if math.isnan(a) or math.isnan(b):
        f1 = float("nan")
    else:
        f1 = 2 * a * b / (a + b) if a + b > 0 else 0.0
    return {"acc_err": a, "acc_correct": b, "f1": f1, "n_err": float(n_e), "n_correct": float(n_c)}


def choose_threshold(step_scores: Sequence[Sequence[float]], labels: Sequence[int],
                     grid: Sequence[float] = DEFAULT_GRID) -> float:
    """The threshold of ``grid`` with the highest earliest-error F1 on these (validation)
    solutions; ties go to the value closest to 0.5. nan F1 (a class missing) counts as −1."""
    if not grid:
        raise ValueError("choose_threshold: empty grid")

    def key(t: float):
        f1 = earliest_error_metrics(step_scores, labels, t)["f1"]
        return (-1.0 if math.isnan(f1) else f1, -abs(t - 0.5))

    return float(max(grid, key=key))


def earliest_error_eval(val_scores: Sequence[Sequence[float]], val_labels: Sequence[int],
                        test_scores: Sequence[Sequence[float]], test_labels: Sequence[int],
                        threshold: float | None = None,
                        prefix: str = "eval/earliest_error_") -> dict[str, float]:
    """Threshold chosen on the validation solutions (or ``threshold`` as given), metrics on the
    test solutions: ``{prefix}f1``, ``acc_err``, ``acc_correct``, ``threshold``, ``n_err``,
    ``n_correct``."""
    t = choose_threshold(val_scores, val_labels) if threshold is None else float(threshold)
    m = earliest_error_metrics(test_scores, test_labels, t)
    return {f"{prefix}{k}": v for k, v in {**m, "threshold": t}.items()}


def split_by_problem(ids: Sequence[str], seed: int = 0) -> tuple[list[int], list[int]]:
    """(validation, test) row indices: every problem's rows on one side, alternate problems
    (in a ``seed``-shuffled order of the distinct ids) on each side."""
    uniq = sorted(dict.fromkeys(str(i) for i in ids))
    random.Random(seed).shuffle(uniq)
    val_ids = set(uniq[0::2])
    val = [i for i, x in enumerate(ids) if str(x) in val_ids]
    test = [i for i, x in enumerate(ids) if str(x) not in val_ids]
    return val, test


def score_bias(scores: Sequence[float], n_steps: Sequence[int],
               outcomes: Sequence[float] | None = None,
               prefix: str = "bias/") -> dict[str, object]:
    """Mean solution score by number of steps (``{prefix}score_by_steps``: ``{K: mean}`` with
    string keys, for JSON) and, with ``outcomes`` (1 = right final answer), over right and wrong
    solutions (``score_correct``, ``score_wrong``, nan for an empty class) and the counts."""
    if len(scores) != len(n_steps) or (outcomes is not None and len(outcomes) != len(scores)):
        raise ValueError("score_bias: scores, n_steps and outcomes must have one entry per solution")
    by_k: dict[int, list[float]] = defaultdict(list)
    for s, k in zip(scores, n_steps):
        by_k[int(k)].append(float(s))
    out: dict[str, object] = {
        f"{prefix}score_by_steps": {str(k): float(np.mean(v)) for k, v in sorted(by_k.items())},
        f"{prefix}count_by_steps": {str(k): len(v) for k, v in sorted(by_k.items())}}
    if outcomes is not None:
        good = [float(s) for s, y in zip(scores, outcomes) if y >= 0.5]
        bad = [float(s) for s, y in zip(scores, outcomes) if y < 0.5]
        out[f"{prefix}score_correct"] = float(np.mean(good)) if good else float("nan")
        out[f"{prefix}score_wrong"] = float(np.mean(bad)) if bad else float("nan")
        out[f"{prefix}n_correct"] = float(len(good))
        out[f"{prefix}n_wrong"] = float(len(bad))
    return out


# --------------------------------------------------------------------------------------------
# ProcessBench-format data: {"id", "problem", "steps": [str], "final_answer_correct": bool,
# "label": earliest wrong step (0-based) or -1}

PB_FIELDS = ("id", "problem", "steps", "final_answer_correct", "label")
_HUB_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _check_pb_row(row: Any, where: str, line: int | None, row_no: int) -> dict:
    """One ProcessBench row checked; DataError names the file, line (or row) and field."""
    def bad(msg: str, fld: str | None = None):
        return DataError(where, msg if line is not None else f"row {row_no}: {msg}", line, fld)

    if not isinstance(row, dict):
        raise bad(f"expected a JSON object, got {type(row).__name__}")
    for k in PB_FIELDS:
        if k not in row:
            raise bad("missing required field", k)
    if not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool):
        raise bad(f"expected a string or integer, got {type(row['id']).__name__}", "id")
    if not isinstance(row["problem"], str) or not row["problem"].strip():
        raise bad("expected a non-empty string", "problem")
    steps = row["steps"]
    if not isinstance(steps, list) or not steps:
        raise bad("expected a non-empty list of step strings", "steps")
    for i, st in enumerate(steps):
        if not isinstance(st, str) or not st.strip():
            raise bad(f"step {i} is not a non-empty string", "steps")
    if not isinstance(row["final_answer_correct"], bool):
        raise bad(f"expected true or false, got {row['final_answer_correct']!r}",
                  "final_answer_correct")
    y = row["label"]
    if isinstance(y, bool) or not isinstance(y, int) or not -1 <= y < len(steps):
        raise bad(f"expected an integer in -1..{len(steps) - 1} (the earliest wrong step, -1 "
                  f"for none), got {y!r}", "label")
    return {k: row[k] for k in PB_FIELDS}


def _pb_raw(source: str, split: str | None, config: str | None
            ) -> Iterator[tuple[str, int | None, int, Any]]:
    p = Path(source)
    if p.suffix == ".json":
        if not p.exists():
            raise DataError(p, "file not found")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(p, f"malformed JSON: {e}") from None
        if isinstance(data, dict):   # {"rows": [...]} or {split: [...]}
            data = data.get(split) if split and split in data else data.get("rows", data)
        if not isinstance(data, list):
            raise DataError(p, "expected a JSON list of rows (or an object holding one)")
        for i, row in enumerate(data, 1):
            yield str(p), None, i, row
        return
    if p.exists() or p.suffix == ".jsonl" or not _HUB_RE.match(source):
        for line, row in iter_jsonl(p):
            yield str(p), line, line, row
        return
    import datasets  # optional heavy dependency, only for hub ids

    ds = datasets.load_dataset(source, config, split=split or "gsm8k")
    for i, row in enumerate(ds, 1):
        yield f"{source} split={split or 'gsm8k'}", None, i, dict(row)


def read_processbench(source: str | os.PathLike, split: str | None = None,
                      config: str | None = None, limit: int | None = None) -> list[dict]:
    """ProcessBench-format rows from a local ``.jsonl`` / ``.json`` file or a hub dataset id
    (``datasets.load_dataset(source, config, split=split)``; ProcessBench's splits are gsm8k,
    math, olympiadbench, omnimath). Every row is checked: a bad one raises DataError naming the
    file, the line (JSONL) or row number (JSON, hub) and the field."""
    rows = []
    for where, line, row_no, row in _pb_raw(str(source), split, config):
        if limit is not None and len(rows) >= limit:
            break
        rows.append(_check_pb_row(row, where, line, row_no))
    if not rows:
        raise DataError(str(source), "no rows")
    return rows


def evaluate_prm_on_rows(rm, rows: Sequence[dict], threshold: float | None = None,
                         val_fraction: float = 0.5, seed: int = 0, batch_size: int = 16
                         ) -> tuple[dict[str, float], list[dict]]:
    """Earliest-error metrics of a PRM (``rm.score`` → step scores) on ProcessBench rows.

    With ``threshold`` every row is a test row. Otherwise a seeded ``val_fraction`` of the rows
    chooses the threshold (:func:`choose_threshold`) and the rest are scored. Returns the
    ``eval/earliest_error_*`` metrics (plus ``eval/n_val``, ``eval/n_test``) and one prediction
    row per test row (``id``, ``label``, ``pred``, ``step_scores``)."""
    if getattr(rm, "kind", "prm") != "prm":
        raise ValueError(f"eval-prm needs a PRM, got a {rm.kind} reward model")
    if threshold is None and not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must lie in (0, 1) when no threshold is given")
    res = rm.score([r["problem"] for r in rows], [list(r["steps"]) for r in rows], batch_size)
    scores = [list(x.step_scores) for x in res]
    labels = [int(r["label"]) for r in rows]
    idx = list(range(len(rows)))
    if threshold is None:
        random.Random(seed).shuffle(idx)
        n_val = min(len(rows) - 1, max(1, round(val_fraction * len(rows))))
        if n_val < 1:
            raise ValueError("need at least two rows to choose a threshold on a validation split")
        val, test = sorted(idx[:n_val]), sorted(idx[n_val:])
    else:
        val, test = [], idx
    metrics = earliest_error_eval([scores[i] for i in val], [labels[i] for i in val],
                                  [scores[i] for i in test], [labels[i] for i in test], threshold)
    metrics.update({"eval/n_val": float(len(val)), "eval/n_test": float(len(test))})
    t = metrics["eval/earliest_error_threshold"]
    preds = [{"id": rows[i]["id"], "label": labels[i], "pred": predict_first_error(scores[i], t),
              "final_answer_correct": rows[i]["final_answer_correct"], "step_scores": scores[i]}
             for i in test]
    return metrics, preds


def minimal_pair_metrics(rm, pairs: Sequence[Any], batch_size: int = 64) -> dict[str, float]:
    """``probe/pair_acc`` (p⁺ > p⁻), ``probe/separated`` (p⁺ ≥ 0.5 > p⁻), ``probe/mean_right``
    and ``probe/mean_wrong`` of a PRM over minimal pairs (objects with ``question``, ``prefix``,
    ``right``, ``wrong``, ``kind``; :func:`rewardlab.data.testbed.minimal_pairs`), overall and
    per ``kind`` (``probe/pair_acc/<kind>``, ``probe/separated/<kind>``)."""
    if not pairs:
        return {}
    qs = [p.question for p in pairs for _ in range(2)]
    steps = [list(p.prefix) + [s] for p in pairs for s in (p.right, p.wrong)]
    res = rm.score(qs, steps, batch_size)
    right = np.array([res[2 * i].step_scores[-1] for i in range(len(pairs))])
    wrong = np.array([res[2 * i + 1].step_scores[-1] for i in range(len(pairs))])
    kinds = np.array([p.kind for p in pairs])
    out = {"probe/n_pairs": float(len(pairs)), "probe/mean_right": float(right.mean()),
           "probe/mean_wrong": float(wrong.mean())}
    for name, sel in [("", np.ones(len(pairs), bool))] + [(f"/{k}", kinds == k)
                                                          for k in sorted(set(kinds))]:
        out[f"probe/pair_acc{name}"] = float((right[sel] > wrong[sel]).mean())
        out[f"probe/separated{name}"] = float(((right[sel] >= 0.5) & (wrong[sel] < 0.5)).mean())
    return out


def prm_label_metrics(rm, rows: Sequence[dict], seed: int = 0, batch_size: int = 64
                      ) -> dict[str, object]:
    """Earliest-error and bias metrics of a PRM on step-labelled rows (``id``, ``question``,
    ``steps``, ``step_labels``, ``outcome``; e.g. the testbed oracle's labels of policy
    samples on held-out problems). The rows' problems are split in two
    (:func:`split_by_problem`): the threshold is chosen on one half, the metric reported on the
    other (``eval/earliest_error_*``); the bias table (:func:`score_bias`, the PRM's own
    aggregation) covers all rows (``bias/*``)."""
    if not rows:
        return {}
    res = rm.score([r["question"] for r in rows], [list(r["steps"]) for r in rows], batch_size)
    scores = [list(x.step_scores) for x in res]
    labels = [first_error(r["step_labels"]) for r in rows]
    val, test = split_by_problem([str(r.get("id", r["question"])) for r in rows], seed)
    out: dict[str, object] = {}
    if val and test:
        out.update(earliest_error_eval([scores[i] for i in val], [labels[i] for i in val],
                                       [scores[i] for i in test], [labels[i] for i in test]))
    outcomes = [r.get("outcome") for r in rows]
    out.update(score_bias([x.score for x in res], [len(s) for s in scores],
                          None if any(y is None for y in outcomes) else outcomes))
    return out
