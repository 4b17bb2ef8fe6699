"""DPO / IPO / KTO / ORPO / SimPO against hand computations, and gradient-sign sanity."""

import math

import pytest
import torch

from rewardlab.preference.losses import (PREFERENCE_LOSSES, PreferenceInputs,
                                         PreferenceLossConfig, dpo_loss, ipo_loss, kto_loss,
                                         kto_kl_sums, log1mexp, orpo_loss, preference_loss,
                                         simpo_loss)


def t(*xs, grad=False):
    return torch.tensor(xs, dtype=torch.float64, requires_grad=grad)


def nls(x):
    """−log σ(x)."""
    return math.log1p(math.exp(-x))


def test_dpo_by_hand_and_gradient_signs():
    pw, pl = t(-10.0, grad=True), t(-12.0, grad=True)
    # h_w = −10 − (−11) = 1, h_l = −12 − (−11) = −1, β = 0.1: −log σ(0.1·2)
    loss, m = dpo_loss(pw, pl, t(-11.0), t(-11.0), beta=0.1)
    assert loss.item() == pytest.approx(nls(0.2))
    assert m["rewards/chosen"] == pytest.approx(0.1)
    assert m["rewards/rejected"] == pytest.approx(-0.1)
    assert m["rewards/margins"] == pytest.approx(0.2) and m["rewards/accuracies"] == 1.0
    loss.backward()
    assert pw.grad.item() < 0 < pl.grad.item()                        # raise chosen, lower rejected
    # d/dh_w of −log σ(β(h_w − h_l)) = −β σ(−0.2)
    assert pw.grad.item() == pytest.approx(-0.1 / (1 + math.exp(0.2)))


def test_ipo_by_hand_and_gradient_signs():
    pw, pl = t(-10.0, grad=True), t(-12.0, grad=True)
    # (h_w − h_l − 1/(2β))² = (2 − 5)² = 9
    loss, m = ipo_loss(pw, pl, t(-11.0), t(-11.0), beta=0.1)
    assert loss.item() == pytest.approx(9.0)
    loss.backward()
    assert pw.grad.item() == pytest.approx(-6.0) and pl.grad.item() == pytest.approx(6.0)
    # past the target margin the gradient reverses (IPO regularises)
    loss, _ = ipo_loss(t(-1.0), t(-12.0), t(-11.0), t(-11.0), beta=0.1)
    assert loss.item() == pytest.approx((10 + 1 - 5) ** 2)


def test_simpo_by_hand_and_gradient_signs():
    pw, pl = t(-10.0, grad=True), t(-12.0, grad=True)
    # β/|y_w| log π_w = 2·(−10)/5 = −4; β/|y_l| log π_l = 2·(−12)/4 = −6; γ = 1: −log σ(1)
    loss, m = simpo_loss(pw, pl, t(5.0), t(4.0), beta=2.0, gamma=1.0)
    assert loss.item() == pytest.approx(nls(1.0))
    assert m["rewards/chosen"] == pytest.approx(-4.0) and m["rewards/margins"] == pytest.approx(2.0)
    loss.backward()
    assert pw.grad.item() < 0 < pl.grad.item()


def test_orpo_by_hand_and_gradient_signs():
    pw, pl = t(-2.0, grad=True), t(-6.0, grad=True)
    # length-normalised: log p_w = −2/4 = −0.5, log p_l = −6/3 = −2
    lo_w = -0.5 - math.log(1 - math.exp(-0.5))
    lo_l = -2.0 - math.log(1 - math.exp(-2.0))
    expected = 0.5 + 0.1 * nls(lo_w - lo_l)                           # L_SFT = −log p_w = 0.5
    loss, m = orpo_loss(pw, pl, t(4.0), t(3.0), lam=0.1)
    assert loss.item() == pytest.approx(expected)
    assert m["orpo/log_odds_ratio"] == pytest.approx(lo_w - lo_l)
    assert m["orpo/nll_loss"] == pytest.approx(0.5)
    loss.backward()
    assert pw.grad.item() < 0 < pl.grad.item()


def test_log1mexp_is_stable():
    x = torch.tensor([-1e-12, -1e-3, -0.5, -5.0, -50.0, -800.0], dtype=torch.float64,
                     requires_grad=True)
    y = log1mexp(x)
    assert torch.isfinite(y).all()
    ref = [math.log(-math.expm1(v)) for v in [-1e-6, -1e-3, -0.5, -5.0, -50.0]]
    assert y[:5].tolist() == pytest.approx(ref, rel=1e-9)
    assert y[5].item() == pytest.approx(0.0)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    y32 = log1mexp(torch.tensor([-1e-9, -30.0]))
    assert torch.isfinite(y32).all()


def test_kto_by_hand():
    # h = [1, −1, 0.5]; desirable [T, F, T]; z_ref = mean([0.5, 1.5]) = 1 from mismatched pairs
    pol = t(-9.0, -12.0, -10.5, grad=True)
    ref = t(-10.0, -11.0, -11.0)
    kl_p, kl_r = t(-5.0, -5.0, grad=True), t(-5.5, -6.5)
    loss, m = kto_loss(pol, ref, torch.tensor([True, False, True]), beta=0.1, lambda_d=1.0,
                       lambda_u=2.0, policy_kl_logps=kl_p, ref_kl_logps=kl_r)
    sig = lambda x: 1 / (1 + math.exp(-x))                             # noqa: E731
    expected = ((1 - sig(0.1 * (1 - 1))) + 2 * (1 - sig(0.1 * (1 - (-1))))
                + (1 - sig(0.1 * (0.5 - 1)))) / 3
    assert loss.item() == pytest.approx(expected)
    assert m["kl"] == pytest.approx(1.0)
    assert m["rewards/chosen"] == pytest.approx(0.1 * 0.75)
    assert m["rewards/rejected"] == pytest.approx(-0.1)
    loss.backward()
    assert pol.grad[0] < 0 and pol.grad[2] < 0 and pol.grad[1] > 0
    assert kl_p.grad is None                                           # z_ref is detached


def test_kto_z_ref_clamped_at_zero_and_batch_estimate():
    pol, ref = t(-12.0, -12.0), t(-10.0, -10.0)                         # h = −2: KL estimate < 0
    loss, m = kto_loss(pol, ref, torch.tensor([True, False]), beta=1.0)
    assert m["kl"] == 0.0
    sig = lambda x: 1 / (1 + math.exp(-x))                             # noqa: E731
    assert loss.item() == pytest.approx(((1 - sig(-2)) + (1 - sig(2))) / 2)


def test_kto_shards_use_the_whole_batch_z_ref():
    """A batch split over two processes: the KL sums of the shards add up to the batch's, and
    each shard's loss with that z_ref, weighted by its share, sums to the whole batch's loss."""
    pol = torch.tensor([-3.0, -5.0, -2.0, -7.0])
    ref = torch.tensor([-4.0, -4.5, -4.0, -7.5])                         # h = 1, −0.5, 2, 0.5
    d = torch.tensor([True, False, True, False])
    whole, m = kto_loss(pol, ref, d, beta=0.5)
    s = kto_kl_sums(pol[:3], ref[:3]) + kto_kl_sums(pol[3:], ref[3:])
    assert s.tolist() == [3.0, 4.0] and m["kl"] == pytest.approx(0.75)
    parts = [kto_loss(pol[sl], ref[sl], d[sl], beta=0.5, kl_mean=s[0] / s[1])
             for sl in (slice(0, 3), slice(3, 4))]
    assert parts[0][0].item() * 3 / 4 + parts[1][0].item() / 4 == pytest.approx(whole.item())
    assert parts[1][1]["kl"] == pytest.approx(0.75)
    alone = kto_loss(pol[3:], ref[3:], d[3:], beta=0.5)[0]             # its own z_ref: 0.5
    assert alone.item() != pytest.approx(parts[1][0].item())
    x = PreferenceInputs(pol[:2], pol[2:], ref[:2], ref[2:], kto_kl=-1.0)   # clamped at 0
    assert preference_loss("kto", x)[1]["kl"] == 0.0


def test_registry_and_inputs():
    assert PREFERENCE_LOSSES.names() == ["dpo", "ipo", "kto", "orpo", "simpo", "step_dpo"]
    x = PreferenceInputs(policy_chosen_logps=t(-10.0, -3.0), policy_rejected_logps=t(-12.0, -4.0),
                         ref_chosen_logps=t(-11.0, -3.0), ref_rejected_logps=t(-11.0, -3.5),
                         chosen_lengths=t(5.0, 2.0), rejected_lengths=t(4.0, 2.0))
    cfg = PreferenceLossConfig(beta=0.2, orpo_lambda=0.3, simpo_beta=2.5, simpo_gamma=0.7)
    assert preference_loss("dpo", x, cfg)[0].item() == pytest.approx(
        dpo_loss(x.policy_chosen_logps, x.policy_rejected_logps, x.ref_chosen_logps,
                 x.ref_rejected_logps, 0.2)[0].item())
    assert preference_loss("simpo", x, cfg)[0].item() == pytest.approx(
        simpo_loss(x.policy_chosen_logps, x.policy_rejected_logps, x.chosen_lengths,
                   x.rejected_lengths, 2.5, 0.7)[0].item())
    assert preference_loss("orpo", x, cfg)[0].item() == pytest.approx(
        orpo_loss(x.policy_chosen_logps, x.policy_rejected_logps, x.chosen_lengths,
                  x.rejected_lengths, 0.3)[0].item())
    for name in PREFERENCE_LOSSES.names():
        loss, metrics = preference_loss(name, x, cfg)
        assert loss.dim() == 0 and torch.isfinite(loss)
        assert "rewards/chosen" in metrics
    with pytest.raises(ValueError, match="'dpo' needs ref_chosen_logps, ref_rejected_logps"):
        preference_loss("dpo", PreferenceInputs(t(-1.0), t(-2.0)))
    with pytest.raises(ValueError, match="valid: dpo, ipo, kto, orpo, simpo"):
        preference_loss("cpo", x)
