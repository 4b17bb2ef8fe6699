"""PPO / GSPO policy loss, clipped value loss, KL loss and the token helpers."""

import math

import pytest
import torch
import torch.nn.functional as F

from rewardlab.rl.losses import (LOSS_AGGREGATIONS, RATIOS, aggregate_loss, agg_units,
                                 entropy_from_logits, kl_loss, logprobs_from_logits, masked_mean,
                                 ppo_policy_loss, value_loss)

MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])


def test_masked_mean():
    x = torch.tensor([[1.0, 2.0, 3.0, float("inf")], [4.0, 6.0, float("nan"), 0.0]])
    assert masked_mean(x, MASK).item() == pytest.approx(16 / 5)
    assert masked_mean(x, MASK, dim=-1).tolist() == pytest.approx([2.0, 5.0])
    assert masked_mean(x, torch.zeros_like(MASK)).item() == 0.0


def test_logprobs_from_logits_matches_log_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g)
    labels = torch.randint(0, 11, (3, 5), generator=g)
    ref = F.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)
    assert torch.allclose(logprobs_from_logits(logits, labels), ref, atol=1e-6)
    bf = logprobs_from_logits(logits.bfloat16(), labels)
    assert bf.dtype == torch.float32 and torch.allclose(bf, ref, atol=5e-2)


def test_entropy_from_logits():
    logits = torch.zeros(2, 3, 8)
    assert torch.allclose(entropy_from_logits(logits), torch.full((2, 3), math.log(8)))
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 6, generator=g, requires_grad=True)
    H = entropy_from_logits(logits, MASK)
    ref = torch.distributions.Categorical(logits=logits).entropy()
    assert torch.allclose(H, ref * MASK, atol=1e-6)
    H.sum().backward()
    assert logits.grad is not None


# =============================================================================================
# PPO policy loss

def test_ratio_one_loss_is_minus_mean_advantage():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(2, 4, generator=g)
    A = torch.randn(2, 4, generator=g)
    loss, m = ppo_policy_loss(logp, logp.clone(), A, MASK)
    assert loss.item() == pytest.approx(-masked_mean(A, MASK).item(), abs=1e-6)
    assert m["actor/clipfrac"] == 0.0 and m["actor/ratio_mean"] == pytest.approx(1.0)
    assert m["actor/approx_kl"] == pytest.approx(0.0, abs=1e-7)
    assert set(m) == {"actor/pg_loss", "actor/clipfrac", "actor/approx_kl", "actor/ratio_mean"}


@pytest.mark.parametrize("rho,A,loss_expected,clipped", [
    (1.5, 1.0, -1.2, True),     # min(1.5, 1.2) = 1.2: clipped, no gradient
    (1.5, -1.0, 1.5, False),    # min(−1.5, −1.2) = −1.5: unclipped, the ratio is pushed down
    (0.5, -1.0, 0.8, True),     # min(−0.5, −0.8) = −0.8: clipped
    (0.5, 1.0, -0.5, False),
    (1.1, 1.0, -1.1, False),    # inside [1 − ε, 1 + ε]
])
def test_clipping_by_hand(rho, A, loss_expected, clipped):
    logp = torch.full((1, 1), math.log(rho), requires_grad=True)
    loss, m = ppo_policy_loss(logp, torch.zeros(1, 1), torch.full((1, 1), A), torch.ones(1, 1),
                              clip_eps=0.2)
    assert loss.item() == pytest.approx(loss_expected, abs=1e-6)
    assert m["actor/clipfrac"] == (1.0 if clipped else 0.0)
    loss.backward()
    assert (logp.grad.abs().item() == 0.0) == clipped


def test_clip_higher():
    logp = torch.full((1, 1), math.log(1.25))
    A = torch.ones(1, 1)
    loss, m = ppo_policy_loss(logp, torch.zeros(1, 1), A, torch.ones(1, 1), 0.2, clip_eps_high=0.28)
    assert loss.item() == pytest.approx(-1.25) and m["actor/clipfrac"] == 0.0
    loss, _ = ppo_policy_loss(logp, torch.zeros(1, 1), A, torch.ones(1, 1), 0.2)
    assert loss.item() == pytest.approx(-1.2)


def test_approx_kl_is_k3_of_the_ratio():
    logp = torch.log(torch.tensor([[2.0, 0.5]]))
    _, m = ppo_policy_loss(logp, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2))
    # (ρ − 1) − log ρ: (1 − log 2) and (−0.5 + log 2)
    assert m["actor/approx_kl"] == pytest.approx(((1 - math.log(2)) + (-0.5 + math.log(2))) / 2)


@pytest.mark.parametrize("ratio", ["token", "sequence"])
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean",
                                 "seq-mean-token-sum-norm"])
def test_masked_positions_do_not_change_loss_or_gradient(ratio, agg):
    g = torch.Generator().manual_seed(2)
    logp = (torch.randn(2, 4, generator=g) * 0.1).requires_grad_(True)
    old = logp.detach() + torch.randn(2, 4, generator=g) * 0.1
    A = torch.randn(2, 4, generator=g)
    loss1, m1 = ppo_policy_loss(logp, old, A, MASK, ratio=ratio, agg=agg)
    (g1,) = torch.autograd.grad(loss1, logp)
    pad = ~MASK.bool()
    logp2 = torch.where(pad, torch.tensor(float("inf")), logp.detach()).requires_grad_(True)
    old2 = torch.where(pad, torch.tensor(-1e9), old)
    A2 = torch.where(pad, torch.tensor(float("nan")), A)
    loss2, m2 = ppo_policy_loss(logp2, old2, A2, MASK, ratio=ratio, agg=agg)
    (g2,) = torch.autograd.grad(loss2, logp2)
    assert loss2.item() == pytest.approx(loss1.item(), abs=1e-7) and m1 == pytest.approx(m2)
    assert torch.allclose(g1, g2) and (g2[pad] == 0).all()
    # an extra fully padded row changes nothing either
    z = torch.zeros(1, 4)
    loss3, _ = ppo_policy_loss(torch.cat([logp, z]), torch.cat([old, z]), torch.cat([A, z + 5]),
                               torch.cat([MASK, z.long()]), ratio=ratio, agg=agg)
    assert loss3.item() == pytest.approx(loss1.item(), abs=1e-7)


def test_aggregations_by_hand():
    loss_mat = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 6.0, 99.0, 99.0]])
    assert aggregate_loss(loss_mat, MASK, "token-mean").item() == pytest.approx(16 / 5)
    assert aggregate_loss(loss_mat, MASK, "seq-mean-token-sum").item() == pytest.approx(8.0)
    assert aggregate_loss(loss_mat, MASK, "seq-mean-token-mean").item() == pytest.approx(3.5)
    assert aggregate_loss(loss_mat, MASK, "seq-mean-token-sum-norm").item() == pytest.approx(2.0)
    assert LOSS_AGGREGATIONS.names()[0] == "token-mean" and RATIOS.names() == ["token", "sequence"]
    with pytest.raises(ValueError, match="valid: token-mean"):
        aggregate_loss(loss_mat, MASK, "sum")


AGGS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


def test_aggregations_by_hand_with_an_empty_row_and_the_dr_grpo_constant():
    # rows: [1, 2, 3 | pad], [4, 6 | pad pad], [empty], [5 | pad pad pad]; 6 tokens, 3 responses
    loss_mat = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 6.0, 99.0, 99.0], [99.0] * 4,
                             [5.0, 99.0, 99.0, 99.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]])
    want = {"token-mean": 21 / 6,                                    # Σ 21 over 6 tokens
            "seq-mean-token-mean": (2.0 + 5.0 + 5.0) / 3,            # token means 2, 5, 5
            "seq-mean-token-sum": (6.0 + 10.0 + 5.0) / 3,            # token sums 6, 10, 5
            "seq-mean-token-sum-norm": 21 / (3 * 10)}                # Σ / (B'·L), L = 10
    for agg, v in want.items():
        assert aggregate_loss(loss_mat, mask, agg, norm_len=10).item() == pytest.approx(v), agg
    assert aggregate_loss(loss_mat, mask, "seq-mean-token-sum-norm").item() == \
        pytest.approx(21 / (3 * 4))                                  # no constant: padded width
    assert [agg_units(mask, a).item() for a in AGGS] == [6, 3, 3, 3]
    with pytest.raises(ValueError, match="valid: token-mean"):
        agg_units(mask, "sum")


def test_dr_grpo_loss_does_not_depend_on_the_padded_width():
    g = torch.Generator().manual_seed(4)
    lengths = torch.tensor([3, 1, 5])
    logp = torch.randn(3, 5, generator=g) * 0.1
    old = logp + torch.randn(3, 5, generator=g) * 0.1
    A = torch.randn(3, 1, generator=g).expand(3, 5)
    out = {}
    for width in (5, 9, 16):                                         # the same rows, more padding
        pad = width - 5
        lp = torch.cat([logp, torch.full((3, pad), 3.0)], 1).requires_grad_(True)
        mask = (torch.arange(width)[None] < lengths[:, None]).long()
        args = (lp, torch.cat([old, torch.full((3, pad), -2.0)], 1),
                torch.cat([A, torch.full((3, pad), 7.0)], 1), mask)
        loss, _ = ppo_policy_loss(*args, agg="seq-mean-token-sum-norm", norm_len=48)
        (grad,) = torch.autograd.grad(loss, lp)
        fallback, _ = ppo_policy_loss(*args, agg="seq-mean-token-sum-norm")  # ÷ width
        out[width] = (loss.item(), grad[:, :5], fallback.item())
    assert out[5][0] == pytest.approx(out[9][0], abs=1e-7) == pytest.approx(out[16][0], abs=1e-7)
    assert torch.allclose(out[5][1], out[16][1], atol=1e-8)
    assert out[5][2] != pytest.approx(out[16][2])                    # why the constant matters
    # by hand: ρ = 1 at π_old = π → L_it = −A_i, so the loss is −Σ_i |o_i| A_i / (3 · 48)
    lp = old.clone().requires_grad_(True)
    mask = (torch.arange(5)[None] < lengths[:, None]).long()
    loss, _ = ppo_policy_loss(lp, old, A, mask, agg="seq-mean-token-sum-norm", norm_len=48)
    assert loss.item() == pytest.approx(-(lengths * A[:, 0]).sum().item() / (3 * 48), abs=1e-7)


@pytest.mark.parametrize("agg", AGGS)
def test_micro_batches_weighted_by_agg_units_give_the_batch_loss(agg):
    # the trainer's accumulation: Σ_parts loss(part) · units(part)/units(batch) = loss(batch)
    g = torch.Generator().manual_seed(5)
    lengths = torch.tensor([4, 1, 6, 2, 2, 3, 0])          # 11 and 7 tokens; one empty row
    mask = (torch.arange(6)[None] < lengths[:, None]).long()
    logp = (torch.randn(7, 6, generator=g) * 0.1).requires_grad_(True)
    old = logp.detach() + torch.randn(7, 6, generator=g) * 0.2
    A = torch.randn(7, 6, generator=g)
    full, _ = ppo_policy_loss(logp, old, A, mask, agg=agg, norm_len=8)
    (g_full,) = torch.autograd.grad(full, logp)
    total = 0.0
    for rows in ([0, 1, 2], [3, 4, 5], [6]):
        part, _ = ppo_policy_loss(logp[rows], old[rows], A[rows], mask[rows], agg=agg, norm_len=8)
        total = total + part * (agg_units(mask[rows], agg) / agg_units(mask, agg))
    (g_micro,) = torch.autograd.grad(total, logp)
    assert total.item() == pytest.approx(full.item(), rel=1e-6)
    assert torch.allclose(g_micro, g_full, rtol=1e-5, atol=1e-7)
    if agg != "token-mean":   # token shares (the old weighting) would not add up here
        tok = sum(ppo_policy_loss(logp[r], old[r], A[r], mask[r], agg=agg, norm_len=8)[0].item()
                  * mask[r].sum().item() / mask.sum().item() for r in ([0, 1, 2], [3, 4, 5]))
        assert tok != pytest.approx(full.item(), abs=1e-4)


def test_clip_higher_by_hand():
    # token 0: ρ = 1.5, A = 1 → clip at 1 + ε_high; token 1: ρ = 0.5, A = −1 → clip at 1 − ε
    logp = torch.log(torch.tensor([[1.5, 0.5]]))
    A = torch.tensor([[1.0, -1.0]])
    mask = torch.ones(1, 2)
    loss, m = ppo_policy_loss(logp, torch.zeros(1, 2), A, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx((-1.2 + 0.8) / 2) and m["actor/clipfrac"] == 1.0
    loss, m = ppo_policy_loss(logp, torch.zeros(1, 2), A, mask, clip_eps=0.2, clip_eps_high=0.28)
    assert loss.item() == pytest.approx((-1.28 + 0.8) / 2)
    loss, m = ppo_policy_loss(logp, torch.zeros(1, 2), A, mask, clip_eps=0.2, clip_eps_high=0.6)
    assert loss.item() == pytest.approx((-1.5 + 0.8) / 2) and m["actor/clipfrac"] == 0.5


def test_gspo_uses_length_normalised_sequence_ratio():
    # row 0: log ratios 0.1, 0.3, (pad) → s_0 = exp(0.2); row 1: 0.4, −0.2 → s_1 = exp(0.1)
    old = torch.zeros(2, 4)
    logp = torch.tensor([[0.1, 0.3, 7.0, 7.0], [0.4, -0.2, 7.0, 7.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0]])
    A = torch.tensor([[1.0, 1.0, 0, 0], [-2.0, -2.0, 0, 0]])
    loss, m = ppo_policy_loss(logp, old, A, mask, clip_eps=0.5, ratio="sequence",
                              agg="seq-mean-token-mean")
    s = torch.tensor([math.exp(0.2), math.exp(0.1)])
    assert loss.item() == pytest.approx(-(s[0] * 1 + s[1] * -2).item() / 2, abs=1e-6)
    assert m["actor/ratio_mean"] == pytest.approx(s.mean().item(), abs=1e-6)
    # gradient equals GSPO's: J = mean_i s_i A_i with s_i = exp(mean_t(log π − log π_old))
    (g,) = torch.autograd.grad(loss, logp)
    lp = logp.detach().clone().requires_grad_(True)
    s_i = torch.exp(((lp - old) * mask).sum(-1) / mask.sum(-1))
    (g_ref,) = torch.autograd.grad(-(s_i * A[:, 0]).mean(), lp)
    assert torch.allclose(g, g_ref * mask, atol=1e-6)


def test_gspo_clips_whole_sequences():
    # token ratios 1.0 and 1.0 would not be clipped; the sequence ratio exp(mean) decides
    old = torch.zeros(1, 2)
    logp = torch.tensor([[0.0, 1.0]])                                   # s = exp(0.5) ≈ 1.65
    A = torch.ones(1, 2)
    _, m_seq = ppo_policy_loss(logp, old, A, torch.ones(1, 2), 0.2, ratio="sequence")
    _, m_tok = ppo_policy_loss(logp, old, A, torch.ones(1, 2), 0.2, ratio="token")
    assert m_seq["actor/clipfrac"] == 1.0 and m_tok["actor/clipfrac"] == 0.5


# =============================================================================================
# Value loss

def test_value_loss_by_hand():
    one = torch.ones(1, 1)
    # inside the clip range: ½ (0.1 − 1)² = 0.405
    loss, m = value_loss(torch.full((1, 1), 0.1), torch.zeros(1, 1), one, one, clip_eps=0.2)
    assert loss.item() == pytest.approx(0.405) and m["critic/vf_clipfrac"] == 0.0
    # V moved 1.0 from V_old = 0 toward R = 1: clipped to 0.2 → max(0, 0.64) → ½·0.64
    v = torch.ones(1, 1, requires_grad=True)
    loss, m = value_loss(v, torch.zeros(1, 1), one, one, clip_eps=0.2)
    assert loss.item() == pytest.approx(0.32) and m["critic/vf_clipfrac"] == 1.0
    loss.backward()
    assert v.grad.item() == 0.0                                         # the clipped term wins
    loss, _ = value_loss(torch.ones(1, 1), torch.zeros(1, 1), one * 3, one, clip_eps=None)
    assert loss.item() == pytest.approx(2.0)


def test_value_loss_masking_and_explained_variance():
    R = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 5.0, 0.0, 0.0]])
    V = R + torch.tensor([[0.1, -0.1, 0.0, 50.0], [0.1, 0.0, 50.0, 50.0]])
    loss, m = value_loss(V, R.clone(), R, MASK)
    assert m["critic/explained_variance"] == pytest.approx(1.0)
    assert loss.item() == pytest.approx(0.5 * (0.01 * 3) / 5, rel=1e-4)
    keys = {"critic/vf_loss", "critic/vf_clipfrac", "critic/explained_variance"}
    assert set(m) == keys
    V_old = R + torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    _, m = value_loss(V, V_old, R, MASK)
    r = torch.tensor([1.0, 2, 3, 4, 5])
    err = torch.tensor([-1.0, 1, 0, 0, 0])
    assert m["critic/explained_variance"] == pytest.approx(1 - err.var().item() / r.var().item(),
                                                           abs=1e-5)


def test_kl_loss_k3_by_hand():
    logp = torch.log(torch.tensor([[0.5, 0.2, 0.9]]))
    ref = torch.log(torch.tensor([[0.25, 0.2, 0.1]]))
    mask = torch.tensor([[1, 1, 0]])
    loss, m = kl_loss(logp, ref, mask)
    # k3 = 0.25/0.5 − log(0.25/0.5) − 1 = log 2 − 0.5 on token 0, 0 on token 1
    assert loss.item() == pytest.approx((math.log(2) - 0.5) / 2, abs=1e-6)
    assert m["actor/kl_loss"] == pytest.approx(loss.item())
    loss1, _ = kl_loss(logp, ref, mask, kind="k1")
    assert loss1.item() == pytest.approx(math.log(2) / 2, abs=1e-6)


def test_kl_loss_clamp_and_aggregation():
    # k3 at log π_ref − log π = 5: e⁵ − 5 − 1 ≈ 142.41 → 10 with clamp=10 (verl's low_var_kl)
    logp = torch.tensor([[0.0, 0.0, 0.0]])
    ref = torch.tensor([[5.0, math.log(0.5), 9.0]])
    mask = torch.tensor([[1, 1, 0]])
    k3_1 = 0.5 - math.log(0.5) - 1
    loss, _ = kl_loss(logp, ref, mask)
    assert loss.item() == pytest.approx((math.exp(5) - 6 + k3_1) / 2, rel=1e-6)
    loss, m = kl_loss(logp, ref, mask, clamp=10.0)
    assert loss.item() == pytest.approx((10 + k3_1) / 2, rel=1e-6)
    loss, _ = kl_loss(logp, ref, mask, clamp=10.0, agg="seq-mean-token-sum-norm", norm_len=4)
    assert loss.item() == pytest.approx((10 + k3_1) / 4, rel=1e-6)
    # k1 is signed: the clamp bounds it on both sides
    loss, _ = kl_loss(logp, ref, mask, kind="k1", clamp=1.0)
    assert loss.item() == pytest.approx((-1.0 + -math.log(0.5)) / 2, rel=1e-6)


# =============================================================================================
# Implicit PRM (PRIME): z = β Σ_t (log π_φ − log π_ref), BCE against the outcome

def test_implicit_prm_loss_and_rewards_by_hand():
    from rewardlab.rl.losses import implicit_prm_loss, implicit_process_rewards
    logp = torch.tensor([[-1.0, -2.0], [-1.0, 0.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -2.5], [-0.6, 7.0]])                 # 7.0 on padding: ignored
    mask = torch.tensor([[1, 1], [1, 0]])
    r = implicit_process_rewards(logp, ref, mask, beta=0.5)
    assert r.tolist() == [pytest.approx([0.25, 0.25]), pytest.approx([-0.2, 0.0])]
    # z = (0.5, −0.2); y = (1, 0): loss = (log(1 + e^−0.5) + log(1 + e^−0.2)) / 2
    loss, m = implicit_prm_loss(logp, ref, mask, torch.tensor([1.0, 0.0]), beta=0.5)
    want = (math.log1p(math.exp(-0.5)) + math.log1p(math.exp(-0.2))) / 2
    assert loss.item() == pytest.approx(want, abs=1e-6) and m["prime/rm_acc"] == 1.0
    assert m["prime/rm_logit"] == pytest.approx(0.15)
    loss.backward()
    # ∂L/∂log π_φ(y_t) = β (σ(z) − y) / B on real tokens, 0 on padding
    sig = 1 / (1 + math.exp(-0.5)), 1 / (1 + math.exp(0.2))
    assert logp.grad.tolist() == [pytest.approx([0.25 * (sig[0] - 1)] * 2, abs=1e-6),
                                  pytest.approx([0.25 * sig[1], 0.0], abs=1e-6)]
