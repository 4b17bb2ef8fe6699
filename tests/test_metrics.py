"""Reward-model metrics on hand-computed cases."""

import math
import random

import pytest

import rewardlab.stats as stats_mod
from rewardlab.stats import auroc, ece, f1_at, pairwise_accuracy, t_interval, t_quantile


def _auroc_by_pairs(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auroc_hand_cases():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1]) == 1.0
    assert auroc([0.4, 0.3, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    # ties count 1/2: pairs (0.5,0.2)=1, (0.5,0.5)=.5, (0.9,0.2)=1, (0.9,0.5)=1 -> 3.5/4
    assert auroc([0.2, 0.5, 0.5, 0.9], [0, 1, 0, 1]) == pytest.approx(0.875)
    assert auroc([0.5] * 4, [0, 1, 0, 1]) == pytest.approx(0.5)
    assert auroc([0.3, 0.7], [True, False]) == 0.0


def test_auroc_equals_pair_count_with_ties():
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(2, 30)
        scores = [rng.choice([0.1, 0.2, 0.3, 0.5, 0.9]) for _ in range(n)]
        labels = [rng.randint(0, 1) for _ in range(n)]
        if len(set(labels)) < 2:
            continue
        assert auroc(scores, labels) == pytest.approx(_auroc_by_pairs(scores, labels))


def test_auroc_nan_when_a_class_is_missing():
    assert math.isnan(auroc([0.1, 0.9], [1, 1]))
    assert math.isnan(auroc([0.1, 0.9], [0, 0]))
    assert math.isnan(auroc([], []))
    with pytest.raises(ValueError):
        auroc([0.1, 0.9], [0, 2])
    with pytest.raises(ValueError):
        auroc([0.1], [0, 1])


def test_f1_at_threshold():
    # predicted positive at >= 0.5: [1, 1, 0, 0, 1]; labels [1, 0, 1, 0, 1]
    # tp=2 fp=1 fn=1 -> 2*2 / (4 + 1 + 1) = 2/3
    scores, labels = [0.9, 0.6, 0.4, 0.1, 0.5], [1, 0, 1, 0, 1]
    assert f1_at(scores, labels) == pytest.approx(2 / 3)
    # threshold 0.65: preds [1, 0, 0, 0, 0]: tp=1 fp=0 fn=2 -> 2 / (2 + 0 + 2)
    assert f1_at(scores, labels, threshold=0.65) == pytest.approx(0.5)
    assert f1_at([0.9, 0.1], [1, 0]) == 1.0
    assert f1_at([0.1, 0.2], [1, 1]) == 0.0
    assert math.isnan(f1_at([0.1, 0.2], [0, 0]))


def test_ece_hand_case_and_soft_labels():
    # bin 1: p {0.1, 0.15} mean 0.125, y mean 0.5 -> 0.5 * 0.375; bin 9: p {0.9, 0.95}
    # mean 0.925, y 1 -> 0.5 * 0.075; total 0.225
    assert ece([0.1, 0.15, 0.9, 0.95], [0, 1, 1, 1]) == pytest.approx(0.225)
    assert ece([1.0, 0.0], [1, 0]) == pytest.approx(0.0)       # p = 1 lands in the last bin
    assert ece([0.3, 0.3], [0.3, 0.3]) == pytest.approx(0.0)   # soft labels, calibrated
    assert ece([0.2, 0.8], [0, 1], n_bins=1) == pytest.approx(0.0)
    assert ece([0.9], [0], n_bins=2) == pytest.approx(0.9)
    assert math.isnan(ece([], []))
    with pytest.raises(ValueError):
        ece([1.5], [1])
    with pytest.raises(ValueError):
        ece([0.5], [1.5])


def test_pairwise_accuracy():
    assert pairwise_accuracy([1.0, 2.0, 0.0, 3.0], [0.0, 3.0, 0.0, 1.0]) == pytest.approx(2.5 / 4)
    assert pairwise_accuracy([1.0], [1.0], tie=0.0) == 0.0
    assert math.isnan(pairwise_accuracy([], []))
    with pytest.raises(ValueError):
        pairwise_accuracy([1.0], [])


# t_{0.975, df} from the printed tables, df = 1..30, and the normal limit
T975 = [12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010,
        2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739,
        2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423]


@pytest.mark.parametrize("use_scipy", [False, True])
def test_t_quantile_matches_the_tables(monkeypatch, use_scipy):
    if use_scipy and stats_mod._scipy_t is None:
        pytest.skip("scipy not installed")
    if not use_scipy:
        monkeypatch.setattr(stats_mod, "_scipy_t", None)
    for df, t in enumerate(T975, start=1):
        assert t_quantile(0.975, df) == pytest.approx(t, abs=2e-4), df
    assert t_quantile(0.975, 1e6) == pytest.approx(1.95996, abs=1e-4)
    assert t_quantile(0.95, 10) == pytest.approx(1.8125, abs=2e-4)
    assert t_quantile(0.025, 3) == pytest.approx(-3.1824, abs=2e-4)
    assert t_quantile(0.5, 4) == pytest.approx(0.0, abs=1e-9)
    for bad in [(0.0, 3), (1.0, 3), (0.975, 0)]:
        with pytest.raises(ValueError):
            t_quantile(*bad)


def test_t_interval_hand_cases():
    # [1, 2, 3]: mean 2, s = 1, t_{0.975,2} = 4.3027 → half-width 4.3027 / √3 = 2.4841
    lo, hi = t_interval([1, 2, 3])
    assert (lo, hi) == (pytest.approx(2 - 2.4841, abs=1e-3), pytest.approx(2 + 2.4841, abs=1e-3))
    # two values 0 and 1: mean 0.5, s = 1/√2, t_{0.975,1} = 12.706 → 0.5 ± 6.353
    assert t_interval([0.0, 1.0]) == (pytest.approx(0.5 - 6.3531, abs=1e-3),
                                      pytest.approx(0.5 + 6.3531, abs=1e-3))
    assert t_interval([0.7]) == (0.7, 0.7)
    assert t_interval([0.3, 0.3, 0.3]) == (pytest.approx(0.3), pytest.approx(0.3))
    assert all(math.isnan(x) for x in t_interval([]))
    # 90 %: t_{0.95,3} = 2.3534; values 1..4: mean 2.5, s = 1.29099 → half-width 1.5191
    lo, hi = t_interval([1, 2, 3, 4], confidence=0.90)
    assert hi - 2.5 == pytest.approx(1.5191, abs=1e-3) and 2.5 - lo == pytest.approx(hi - 2.5)
