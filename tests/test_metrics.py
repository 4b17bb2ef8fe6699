"""Reward-model metrics on hand-computed cases."""

import math
import random

import pytest

from rewardlab.stats import auroc, ece, f1_at, pairwise_accuracy


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
