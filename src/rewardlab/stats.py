"""Classification metrics for reward models (pure python / numpy).

- :func:`auroc` — area under the ROC curve by ranks (Mann–Whitney U), ties averaged.
- :func:`f1_at` — F1 of the positive class with ``score >= threshold`` predicted positive.
- :func:`ece` — expected calibration error over equal-width probability bins.
- :func:`pairwise_accuracy` — how often the chosen item outscores the rejected one.
- :func:`t_quantile`, :func:`t_interval` — Student-t quantiles and the confidence interval of a
  mean over a few seeds.

Labels are 0/1 (``bool`` is fine) except in :func:`ece`, which also takes soft labels in [0, 1].
"""

from __future__ import annotations

import functools
import math
import statistics
from typing import Sequence

import numpy as np

try:  # optional: scipy's quantile when installed, else the pure inversion below
    from scipy.stats import t as _scipy_t
except ImportError:  # pragma: no cover - depends on the environment
    _scipy_t = None


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


def _t_cdf(x: float, df: float) -> float:
    """P(T ≤ x) for Student's t with ``df`` degrees of freedom: ½ + ∫₀ˣ f(u) du with
    f(u) = Γ((ν+1)/2) / (√(νπ) Γ(ν/2)) · (1 + u²/ν)^(−(ν+1)/2), by Simpson's rule."""
    if x < 0:
        return 1.0 - _t_cdf(-x, df)
    n = 4000   # even; the density is smooth, so Simpson's error is far below 1e-9 here
    u = np.linspace(0.0, x, n + 1)
    logc = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    f = np.exp(logc - (df + 1) / 2 * np.log1p(u * u / df))
    w = np.ones(n + 1)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return 0.5 + float((w * f).sum() * x / (3 * n))


@functools.lru_cache(maxsize=1024)   # a report asks for the same few (p, df) thousands of times
def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` > 0 degrees of freedom (t_{p, df}); e.g.
    ``t_quantile(0.975, 2)`` = 4.303. scipy's when installed, else the inverse of the CDF by
    bisection (CDF by Simpson's rule on the density; agrees with the printed tables to 1e-4)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: p = {p} must lie in (0, 1)")
    if not df > 0:
        raise ValueError(f"t_quantile: df = {df} must be > 0")
    if _scipy_t is not None:
        return float(_scipy_t.ppf(p, df))
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t confidence interval of the mean of ``values`` (e.g. one number per seed):
    mean ± t_{(1+c)/2, n−1} · s / √n, with s the sample standard deviation (n − 1 divisor) and
    c = ``confidence``. One value gives [mean, mean]; none gives (nan, nan).
    E.g. [1, 2, 3]: mean 2, s = 1, t_{0.975, 2} = 4.303 → [2 − 2.484, 2 + 2.484]."""
    xs = [float(v) for v in values]
    if not xs:
        return float("nan"), float("nan")
    m = statistics.fmean(xs)
    if len(xs) == 1:
        return m, m
    half = t_quantile((1.0 + confidence) / 2, len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
    return m - half, m + half
