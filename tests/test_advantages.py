"""Advantage estimators against hand computations and a straightforward Python loop."""

import math
import random

import pytest
import torch

from rewardlab.rewards.refine import NORM_EPS, normed
from rewardlab.rl.advantages import (ADVANTAGES, AdvantageInputs, compute_advantages, dr_grpo,
                                     gae, grpo_outcome, grpo_process, group_index, prime_advantages,
                                     rloo, vine_advantages, whiten)


def rows(x):
    return [pytest.approx(r, abs=1e-5) for r in x]


# =============================================================================================
# GAE

def test_gae_three_tokens_by_hand():
    r = torch.tensor([[0.0, 0.0, 1.0]])
    V = torch.tensor([[0.5, 0.6, 0.7]])
    mask = torch.ones(1, 3)
    # γ = 0.9, λ = 0.8, γλ = 0.72, V past the end = 0
    # δ2 = 1 + 0 − 0.7 = 0.3;  δ1 = 0 + 0.9·0.7 − 0.6 = 0.03;  δ0 = 0 + 0.9·0.6 − 0.5 = 0.04
    # A2 = 0.3;  A1 = 0.03 + 0.72·0.3 = 0.246;  A0 = 0.04 + 0.72·0.246 = 0.21712
    A, ret = gae(r, V, mask, gamma=0.9, lam=0.8)
    assert A.tolist() == rows([[0.21712, 0.246, 0.3]])
    assert ret.tolist() == rows([[0.71712, 0.846, 1.0]])


def test_gae_right_padding_and_garbage_on_padding_change_nothing():
    r = torch.tensor([[0.0, 0.0, 1.0, 5.0, -3.0]])
    V = torch.tensor([[0.5, 0.6, 0.7, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    A, ret = gae(r, V, mask, gamma=0.9, lam=0.8)
    assert A.tolist() == rows([[0.21712, 0.246, 0.3, 0, 0]])
    assert ret.tolist() == rows([[0.71712, 0.846, 1.0, 0, 0]])


def gae_loop(rewards, values, lengths, gamma, lam):
    """The textbook loop, one response at a time over its real tokens only."""
    B, T = len(rewards), len(rewards[0])
    A = [[0.0] * T for _ in range(B)]
    R = [[0.0] * T for _ in range(B)]
    for b in range(B):
        n = lengths[b]
        lastgaelam = 0.0
        for t in reversed(range(n)):
            next_v = values[b][t + 1] if t + 1 < n else 0.0
            delta = rewards[b][t] + gamma * next_v - values[b][t]
            lastgaelam = delta + gamma * lam * lastgaelam
            A[b][t] = lastgaelam
            R[b][t] = lastgaelam + values[b][t]
    return A, R


@pytest.mark.parametrize("gamma,lam",
                         [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0), (0.0, 0.7)])
def test_gae_equals_python_loop_on_random_right_padded_batch(gamma, lam):
    g = torch.Generator().manual_seed(0)
    B, T = 6, 11
    rewards, values = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    lengths = [11, 1, 5, 8, 3, 10]
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()
    A, ret = gae(rewards, values, mask, gamma, lam)
    A_ref, R_ref = gae_loop(rewards.tolist(), values.tolist(), lengths, gamma, lam)
    assert torch.allclose(A, torch.tensor(A_ref), atol=1e-5)
    assert torch.allclose(ret, torch.tensor(R_ref), atol=1e-5)


def test_gae_lambda_one_returns_are_reward_to_go():
    g = torch.Generator().manual_seed(1)
    r, V = torch.randn(3, 7, generator=g), torch.randn(3, 7, generator=g)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] + [0] * 6])
    rm = r * mask
    _, ret = gae(r, V, mask, gamma=1.0, lam=1.0)
    rtg = rm.flip(1).cumsum(1).flip(1) * mask                          # Σ_{t' ≥ t} r_t'
    assert torch.allclose(ret, rtg, atol=1e-5)
    # γ < 1, λ = 1: discounted reward-to-go
    _, ret = gae(r, V, mask, gamma=0.5, lam=1.0)
    disc = torch.zeros_like(rm)
    for t in reversed(range(7)):
        disc[:, t] = rm[:, t] + (0.5 * disc[:, t + 1] if t + 1 < 7 else 0)
    assert torch.allclose(ret, disc * mask, atol=1e-5)


def test_gae_edge_cases():
    r = torch.tensor([[1.0, 2.0, 3.0]])
    V = torch.tensor([[0.5, 0.25, 1.0]])
    mask = torch.ones(1, 3)
    A, _ = gae(r, V, mask, gamma=0.0, lam=0.95)                        # γ = 0: A = r − V
    assert A.tolist() == rows([[0.5, 1.75, 2.0]])
    A, _ = gae(r, V, mask, gamma=1.0, lam=0.0)                         # λ = 0: A = δ_t
    assert A.tolist() == rows([[1 + 0.25 - 0.5, 2 + 1 - 0.25, 3 - 1.0]])
    V.requires_grad_(True)
    A, ret = gae(r, V, mask)
    assert not A.requires_grad and not ret.requires_grad


def test_whiten():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -7.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    w = whiten(x, mask)
    vals = w[mask.bool()]
    assert vals.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert vals.std().item() == pytest.approx(1.0, abs=1e-4)           # unbiased
    assert (w[~mask.bool()] == 0).all()
    w2 = whiten(x, mask, shift_mean=False)
    assert w2[mask.bool()].mean().item() == pytest.approx(3.0, abs=1e-5)


# =============================================================================================
# Group-relative estimators

SCORES = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0])
MASK8 = torch.ones(8, 3)


def test_grpo_outcome_by_hand():
    A = grpo_outcome(SCORES, 4, MASK8)
    # group 1: {1, 0, 0, 1}: mean 0.5, unbiased std √(1/3); group 2: {1, 1, 1, 0}: mean .75, std .5
    s1, s2 = math.sqrt(1 / 3) + NORM_EPS, 0.5 + NORM_EPS
    expected = [0.5 / s1, -0.5 / s1, -0.5 / s1, 0.5 / s1, 0.25 / s2, 0.25 / s2, 0.25 / s2,
                -0.75 / s2]
    assert A[:, 0].tolist() == pytest.approx(expected, abs=1e-5)
    assert (A == A[:, :1]).all()                                       # same on every token
    ids = torch.tensor([7, 7, 7, 7, 3, 3, 3, 3])
    assert torch.equal(grpo_outcome(SCORES, ids, MASK8), A)
    assert torch.equal(grpo_outcome(SCORES, ["p", "p", "p", "p", "q", "q", "q", "q"], MASK8), A)


def test_grpo_outcome_interleaved_groups_and_padding():
    ids = [0, 1, 0, 1]
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 1]])
    A = grpo_outcome(torch.tensor([1.0, 2.0, 0.0, 4.0]), ids, mask)
    s0, s1 = math.sqrt(0.5) + NORM_EPS, math.sqrt(2.0) + NORM_EPS
    assert A.tolist() == rows([[0.5 / s0, 0.5 / s0, 0], [-1 / s1, 0, 0], [-0.5 / s0] * 3,
                               [1 / s1] * 3])


def test_degenerate_groups_give_zero():
    mask = torch.ones(4, 2)
    assert (grpo_outcome(torch.tensor([1.0, 1.0, 1.0, 1.0]), 2, mask) == 0).all()
    assert (grpo_outcome(torch.tensor([1.0, 0.0, 3.0, 1.0]), 1, mask) == 0).all()   # G = 1
    assert (rloo(torch.tensor([1.0, 0.0, 3.0, 1.0]), 1, mask) == 0).all()
    with pytest.raises(ValueError, match="does not divide"):
        grpo_outcome(torch.ones(4), 3, mask)


def test_dr_grpo_by_hand():
    A = dr_grpo(SCORES, 4, MASK8)
    assert A[:, 0].tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 0.25, 0.25, 0.25, -0.75])


def test_rloo_by_hand():
    mask = torch.tensor([[1, 1], [1, 1], [1, 0]])
    A = rloo(torch.tensor([1.0, 0.0, 0.0]), 3, mask)
    # A_0 = 1 − (0 + 0)/2 = 1;  A_1 = 0 − (1 + 0)/2 = −0.5;  A_2 = −0.5
    assert A.tolist() == rows([[1.0, 1.0], [-0.5, -0.5], [-0.5, 0.0]])


def test_grpo_process_by_hand():
    # one group of two responses; all step rewards {1, 0.5, 0}: mean 0.5, std 0.5 → r̃ = {1, 0, −1}
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    A = grpo_process([[1.0, 0.5], [0.0]], [[1, 3], [2]], [0, 0], mask)
    s = 1 / (0.5 + NORM_EPS)
    # row 0: t ≤ 1 → r̃1 + r̃2 = 0.5s; t = 2, 3 → r̃2 = 0; t = 4 (EOS, after the last step) → 0
    # row 1: t ≤ 2 → −0.5s; t = 3 (after the last step) → 0; t = 4 padding → 0
    assert A.tolist() == rows([[0.5 * s, 0.5 * s, 0, 0, 0], [-0.5 * s] * 3 + [0, 0]])


def test_grpo_process_per_group_matches_normed_and_clamps():
    g = random.Random(0)
    step_rewards = [[g.random() for _ in range(g.randint(1, 4))] for _ in range(6)]
    step_ends = [sorted(g.sample(range(8), len(r))) for r in step_rewards]
    step_ends[0][-1] = 50                                              # past the end: clamped
    mask = torch.ones(6, 8)
    mask[2, 5:] = 0
    A = grpo_process(step_rewards, step_ends, 3, mask)
    for grp in ([0, 1, 2], [3, 4, 5]):
        r_tilde = normed([step_rewards[i] for i in grp])
        for i, rt in zip(grp, r_tilde):
            last = int(mask[i].nonzero().max())
            ends = [min(t, last) for t in step_ends[i]]
            for t in range(8):
                want = sum(x for x, e in zip(rt, ends) if e >= t) if t <= last else 0.0
                assert A[i, t].item() == pytest.approx(want, abs=1e-5)


def test_group_index():
    assert group_index(2, 4).tolist() == [0, 0, 1, 1]
    assert group_index(torch.tensor([5, 2, 5, 9]), 4).tolist() == [0, 1, 0, 2]
    assert group_index(["b", "a", "b"], 3).tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="entries for a batch"):
        group_index([0, 1], 3)
    with pytest.raises(ValueError, match="required"):
        group_index(None, 3)


# =============================================================================================
# Registry

def test_registry_uniform_signature():
    assert ADVANTAGES.names() == ["gae", "grpo_outcome", "grpo_process", "dr_grpo", "rloo",
                                  "prime", "vine"]
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    token_rewards = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.0], [0.3, 0.2, 0.1]])
    implicit = torch.tensor([[0.2, 0.4, 0.0], [0.3, -0.3, 0.6]])
    x = AdvantageInputs(token_rewards=token_rewards, values=values, mask=mask, group_ids=2,
                        step_rewards=[[1.0], [0.0]], step_ends=[[1], [0]], gamma=0.9, lam=0.8,
                        implicit_rewards=implicit, step_values=[[0.5, 1.0], [0.5, 0.0]])
    assert torch.equal(compute_advantages("prime", x),
                       prime_advantages(implicit, torch.tensor([1.0, 0.5]), 2, mask))
    assert torch.equal(compute_advantages("vine", x),
                       vine_advantages([[0.5, 1.0], [0.5, 0.0]], [[1], [0]], mask))
    assert torch.equal(compute_advantages("gae", x), gae(token_rewards, values, mask, 0.9, 0.8)[0])
    scores = torch.tensor([1.0, 0.5])                                  # fallback: Σ token rewards
    assert torch.equal(compute_advantages("grpo_outcome", x), grpo_outcome(scores, 2, mask))
    assert torch.equal(compute_advantages("rloo", x), rloo(scores, 2, mask))
    assert torch.equal(compute_advantages("dr_grpo", x), dr_grpo(scores, 2, mask))
    assert torch.equal(compute_advantages("grpo_process", x),
                       grpo_process([[1.0], [0.0]], [[1], [0]], 2, mask))
    for name in ADVANTAGES.names():
        out = compute_advantages(name, x)
        assert out.shape == mask.shape and (out[~mask.bool()] == 0).all()


def test_registry_errors():
    x = AdvantageInputs(mask=torch.ones(2, 2))
    with pytest.raises(ValueError, match="'gae' needs token_rewards, values"):
        compute_advantages("gae", x)
    with pytest.raises(ValueError, match="needs group_ids"):
        compute_advantages("rloo", x)
    with pytest.raises(ValueError, match="valid: gae, grpo_outcome"):
        compute_advantages("ppo", x)


# =============================================================================================
# All-equal groups: exactly zero advantage (issue 14)

def _non_dyadic_values(G):
    """Values whose float32 mean over G copies is not exact with a float32 sum (0.1, 1/3, …)."""
    return [0.1, 1 / 3, 0.7, -2.3, 0.123456789, 0.1 * G + 0.05]


@pytest.mark.parametrize("G", range(2, 65))
def test_all_equal_group_gets_exactly_zero_advantage(G):
    mask = torch.ones(G, 3)
    for v in _non_dyadic_values(G):
        R = torch.full((G,), v, dtype=torch.float32)          # float32 inputs, as the trainer's
        for fn in (grpo_outcome, dr_grpo, rloo):
            assert torch.equal(fn(R, G, mask), torch.zeros(G, 3)), (fn.__name__, v)
        # grpo_process: Python floats (doubles) and float32 values, ragged step counts
        steps = [[v] * (1 + i % 3) for i in range(G)]
        ends = [list(range(len(r))) for r in steps]
        assert torch.equal(grpo_process(steps, ends, G, mask), torch.zeros(G, 3)), v
        steps32 = [[float(torch.tensor(v, dtype=torch.float32))] * 2 for _ in range(G)]
        assert torch.equal(grpo_process(steps32, [[0, 2]] * G, G, mask), torch.zeros(G, 3))
        # whitening over the batch: every advantage equal → 0
        assert torch.equal(whiten(torch.full((G, 3), v), mask), torch.zeros(G, 3))


def test_all_equal_groups_next_to_others_and_groups_of_one():
    # groups (by id): a = {0.1} × 3, b = {1, 2}, c = {0.3} alone, d = {0.7} × 6
    ids = ["a", "b", "a", "c", "b", "a"] + ["d"] * 6
    R = torch.tensor([0.1, 1.0, 0.1, 0.3, 2.0, 0.1] + [0.7] * 6)
    mask = torch.ones(12, 2)
    A = grpo_outcome(R, ids, mask)[:, 0]
    s = math.sqrt(0.5) + NORM_EPS                                     # b: mean 1.5, std √½
    want = [0.0, -0.5 / s, 0.0, 0.0, 0.5 / s, 0.0] + [0.0] * 6
    assert A.tolist() == pytest.approx(want, abs=1e-6)
    assert (A[[0, 2, 3, 5, 6, 7, 8, 9, 10, 11]] == 0).all()           # exactly
    # every group of one: 0 (TRL's convention; verl's loop would give R)
    for fn in (grpo_outcome, dr_grpo, rloo):
        assert torch.equal(fn(R, list(range(12)), mask), torch.zeros(12, 2))
    # grpo_process normalises a group's step rewards jointly: one response of one step → 0
    assert torch.equal(grpo_process([[0.1], [0.2], [0.3]], [[0], [1], [1]], 1, torch.ones(3, 2)),
                       torch.zeros(3, 2))


def test_group_stats_are_float64_and_exact():
    from rewardlab.rl.advantages import group_stats
    x = torch.full((12,), 0.1, dtype=torch.float32)
    mean, std, n = group_stats(x, torch.zeros(12, dtype=torch.long))
    assert mean.dtype == torch.float64 and (x.double() - mean == 0).all() and (std == 0).all()
    # the plain float32 mean of these twelve values is one rounding step off (the bug)
    assert x.mean() != x[0] or x.sum() / 12 != x[0]
    # a non-equal group still gets the textbook values: {1, 2, 4}: mean 7/3, var (16/9+1/9+25/9)/2
    mean, std, n = group_stats(torch.tensor([1.0, 2.0, 4.0]), torch.zeros(3, dtype=torch.long))
    assert mean[0].item() == pytest.approx(7 / 3, abs=1e-12)
    assert std[0].item() == pytest.approx(math.sqrt(21 / 9), abs=1e-12) and n.tolist() == [3, 3, 3]


def test_norm_eps_is_where_trl_puts_its_epsilon():
    # TRL: (R − mean)/(std + 1e-4); group {1, 0}: mean ½, unbiased std √½
    mask = torch.ones(2, 1)
    A = grpo_outcome(torch.tensor([1.0, 0.0]), 2, mask, eps=1e-4)
    assert A[:, 0].tolist() == pytest.approx([0.5 / (math.sqrt(0.5) + 1e-4),
                                              -0.5 / (math.sqrt(0.5) + 1e-4)], abs=1e-7)
    x = AdvantageInputs(mask=mask, scores=torch.tensor([1.0, 0.0]), group_ids=2, norm_eps=1e-4,
                        step_rewards=[[1.0], [0.0]], step_ends=[[0], [0]])
    assert torch.equal(compute_advantages("grpo_outcome", x), A)
    # grpo_process: the same ε on r̃ (one step each: r̃ = ±½/(√½ + ε))
    assert torch.allclose(compute_advantages("grpo_process", x), A.float(), atol=1e-7)
    default = grpo_outcome(torch.tensor([1.0, 0.0]), 2, mask)
    assert default[0, 0].item() == pytest.approx(0.5 / (math.sqrt(0.5) + 1e-6), abs=1e-7)


# =============================================================================================
# PRIME: RLOO on the outcome + return-to-go of RLOO-baselined implicit rewards

def test_prime_advantages_by_hand_group_of_two():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    r = torch.tensor([[0.2, 0.4, 9.0], [0.3, -0.3, 0.6]])      # 9.0 on padding: ignored
    # r̄ = (0.3, 0.2); r̃_0 = r_0 − 0.2 = (0, 0.2), r̃_1 = r_1 − 0.3 = (0, −0.6, 0.3)
    # return-to-go: (0.2, 0.2), (−0.3, −0.3, 0.3); outcome RLOO (1 − 0, 0 − 1) = (1, −1)
    A = prime_advantages(r, torch.tensor([1.0, 0.0]), 2, mask, whiten_result=False)
    assert A.tolist() == rows([[1.2, 1.2, 0.0], [-1.3, -1.3, -0.7]])
    assert torch.equal(prime_advantages(r, torch.tensor([1.0, 0.0]), 2, mask),
                       whiten(A, mask))                              # whitened by default


def test_prime_advantages_by_hand_group_of_three_and_a_group_of_one():
    mask = torch.ones(4, 1)
    r = torch.tensor([[0.3], [0.0], [0.6], [5.0]])
    R = torch.tensor([1.0, 0.0, 0.0, 1.0])
    # group 0 (rows 0–2): baselines (0 + 0.6)/2 = 0.3, (0.3 + 0.6)/2 = 0.45, (0.3 + 0)/2 = 0.15
    # → r̃ = (0, −0.45, 0.45); outcome RLOO (1, −0.5, −0.5). Row 3 alone: no baseline, 0.
    A = prime_advantages(r, R, [0, 0, 0, 1], mask, whiten_result=False)
    assert A.flatten().tolist() == pytest.approx([1.0, -0.95, -0.05, 0.0], abs=1e-6)


# =============================================================================================
# VinePPO: A_k = V̂(s_k) − V̂(s_{k−1}) on the tokens of step k

def test_vine_advantages_by_hand():
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    A = vine_advantages(
        [[0.5, 0.25, 1.0],     # two steps ending at tokens 1 and 3; token 4 (EOS) joins step 2
         [0.5, 0.0],           # one step: every token gets R − V̂(prompt)
         [0.0, 1.0, 0.0]],     # the second step's end lies past the last real token (clamped)
        [[1, 3], [2], [0, 9]], mask)
    assert A.tolist() == rows([[-0.25, -0.25, 0.75, 0.75, 0.75, 0.0],
                               [-0.5] * 6,
                               [1.0, -1.0, -1.0, 0.0, 0.0, 0.0]])
    # the advantages of a response add up, per step, to R − V̂(prompt) (telescoping)
    with pytest.raises(ValueError, match="K \\+ 1 values"):
        vine_advantages([[0.5]], [[1]], mask[:1])
    with pytest.raises(ValueError, match="K >= 1"):
        vine_advantages([[0.5]], [[]], mask[:1])
