"""Classification metrics for reward models (pure python / numpy).

- :func:`auroc` — area under the ROC curve by ranks (Mann–Whitney U), ties averaged.
- :func:`f1_at` — F1 of the positive class with ``score >= threshold`` predicted positive.
- :func:`ece` — expected calibration error over equal-width probability bins.
- :func:`pairwise_accuracy` — how often the chosen item outscores the rejected one.

Labels are 0/1 (``bool`` is fine) except in :func:`ece`, which also takes soft labels in [0, 1].
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _arrays(scores: Sequence[float], labels: Sequence[float], binary: bool = True
            ) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    if binary and not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1 (threshold soft labels first)")
    if not binary and ((y < 0) | (y > 1)).any():
        raise ValueError("labels must lie in [0, 1]")
    return s, y


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, tied values sharing the mean of their ranks."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """AUROC = (R₊ − n₊(n₊ + 1)/2) / (n₊ n₋), R₊ the sum of the positives' ranks among all
    scores (ties get their average rank, i.e. count ½). ``nan`` when a class is missing."""
    s, y = _arrays(scores, labels)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r_pos = _average_ranks(s)[y == 1].sum()
    return float((r_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def f1_at(scores: Sequence[float], labels: Sequence[int], threshold: float = 0.5) -> float:
    """F1 = 2TP / (2TP + FP + FN) with ``score >= threshold`` predicted positive (label 1).
    ``nan`` when there is nothing to score (no positive labels and no positive predictions)."""
    s, y = _arrays(scores, labels)
    pred = s >= threshold
    pos = y == 1
    tp = int((pred & pos).sum())
    fp = int((pred & ~pos).sum())
    fn = int((~pred & pos).sum())
    if 2 * tp + fp + fn == 0:
        return float("nan")
    return 2.0 * tp / (2 * tp + fp + fn)


def ece(probs: Sequence[float], labels: Sequence[float], n_bins: int = 10) -> float:
    """ECE = Σ_b (n_b / N) · |mean(y in b) − mean(p in b)| over ``n_bins`` equal-width bins of
    [0, 1] (bin b holds b/n ≤ p < (b+1)/n; p = 1 falls in the last bin). Labels may be soft.
    ``nan`` for empty input."""
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    p, y = _arrays(probs, labels, binary=False)
    if len(p) == 0:
        return float("nan")
    if ((p < 0) | (p > 1)).any():
        raise ValueError("ece needs probabilities in [0, 1]")
    b = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    total = 0.0
    for k in range(n_bins):
        sel = b == k
        if sel.any():
            total += sel.sum() / len(p) * abs(y[sel].mean() - p[sel].mean())
    return float(total)


def pairwise_accuracy(chosen: Sequence[float], rejected: Sequence[float],
                      tie: float = 0.5) -> float:
    """Fraction of pairs with score(chosen) > score(rejected); a tie counts ``tie`` (½).
    ``nan`` for no pairs."""
    c = np.asarray(chosen, dtype=np.float64).reshape(-1)
    r = np.asarray(rejected, dtype=np.float64).reshape(-1)
    if c.shape != r.shape:
        raise ValueError(f"{c.size} chosen scores but {r.size} rejected scores")
    if len(c) == 0:
        return float("nan")
    return float(((c > r).sum() + tie * (c == r).sum()) / len(c))
