"""Process-reward refinements (SPEC "Refining process rewards") against hand computations."""

import math

import pytest
import torch

from rewardlab.registry import Registry
from rewardlab.rewards.refine import (NORM_EPS, REFINERS, clip, clip_delta, delta, min_form,
                                      normed, refine)

ETA = 0.8


def approx(xs):
    return pytest.approx(xs, abs=1e-9)


# --- clip: c_k = min(r_k − η, 0) ----------------------------------------------------------------

def test_clip_by_hand():
    r = [0.9, 0.5, 0.8, 0.0]
    # min(0.1, 0) = 0; min(−0.3, 0) = −0.3; min(0, 0) = 0; min(−0.8, 0) = −0.8
    assert clip(r) == approx([0.0, -0.3, 0.0, -0.8])
    assert clip(r, eta=0.5) == approx([0.0, 0.0, 0.0, -0.5])


def test_clip_list_in_list_out_tensor_in_tensor_out():
    out = clip([0.9, 0.5])
    assert isinstance(out, list) and all(type(x) is float for x in out)
    t = clip(torch.tensor([0.9, 0.5]))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    assert t.tolist() == pytest.approx([0.0, -0.3], abs=1e-6)


# --- delta: d_k = r_k − r_{k+1}, d_K = r_K ----------------------------------------------------

def test_delta_by_hand():
    r = [0.9, 0.7, 0.8]
    assert delta(r) == approx([0.2, -0.1, 0.8])
    # exclude_last: delta over [0.9, 0.7] = [0.2, 0.7], the answer step gets 0
    assert delta(r, exclude_last=True) == approx([0.2, 0.7, 0.0])


def test_delta_return_from_step_k_is_r_k():
    torch.manual_seed(0)
    r = torch.rand(7, dtype=torch.float64)
    d = delta(r)
    returns = d.flip(0).cumsum(0).flip(0)                # Σ_{j≥k} d_j
    assert torch.allclose(returns, r)
    d_ex = delta(r, exclude_last=True)
    assert torch.allclose(d_ex.flip(0).cumsum(0).flip(0)[:-1], r[:-1]) and d_ex[-1] == 0


def test_clip_delta_by_hand():
    r = [0.9, 0.5, 0.6]
    # clipped: [0, −0.3, −0.2]; delta: [0 − (−0.3), −0.3 − (−0.2), −0.2] = [0.3, −0.1, −0.2]
    assert clip_delta(r) == approx([0.3, -0.1, -0.2])
    # exclude_last: delta over clipped [0, −0.3] = [0.3, −0.3], last 0
    assert clip_delta(r, exclude_last=True) == approx([0.3, -0.3, 0.0])
    assert clip_delta(torch.tensor(r, dtype=torch.float64)).tolist() == approx([0.3, -0.1, -0.2])


@pytest.mark.parametrize("fn", [clip, delta, clip_delta])
def test_empty(fn):
    assert fn([]) == []
    out = fn(torch.tensor([]))
    assert isinstance(out, torch.Tensor) and out.numel() == 0
    assert delta([], exclude_last=True) == [] and clip_delta([], exclude_last=True) == []


def test_single_step():
    assert clip([0.5]) == approx([-0.3])
    assert delta([0.7]) == approx([0.7])
    assert delta([0.7], exclude_last=True) == [0.0]
    assert clip_delta([0.5]) == approx([-0.3])
    assert clip_delta([0.5], exclude_last=True) == [0.0]
    assert normed([0.7]) == [0.0]


def test_tensor_keeps_gradient_and_rejects_2d():
    r = torch.tensor([0.9, 0.6, 0.7], requires_grad=True)
    delta(r).sum().backward()
    assert r.grad.tolist() == [1.0, 0.0, 0.0]            # Σ_k d_k = r_1
    with pytest.raises(ValueError, match="1-D"):
        clip(torch.zeros(2, 2))


def test_int_tensor_becomes_float():
    assert delta(torch.tensor([1, 0])).dtype == torch.float32


# --- normed: (r − mean)/(std + 1e-6) over the whole group ------------------------------------

def test_normed_by_hand_nested_and_flat():
    # all step rewards {1, 2, 3}: mean 2, unbiased std 1
    s = 1.0 + NORM_EPS
    assert normed([[1.0, 2.0], [3.0]]) == [approx([-1 / s, 0.0]), approx([1 / s])]
    assert normed([1.0, 2.0, 3.0]) == approx([-1 / s, 0.0, 1 / s])
    t = normed(torch.tensor([1.0, 2.0, 3.0]))
    assert isinstance(t, torch.Tensor) and t.tolist() == pytest.approx([-1 / s, 0, 1 / s])
    mixed = normed([torch.tensor([1.0, 2.0]), [3.0]])
    assert isinstance(mixed[0], torch.Tensor) and isinstance(mixed[1], list)
    # {0, 1, 1, 1}: mean 0.75, unbiased std sqrt(0.75/3) = 0.5
    s = 0.5 + NORM_EPS
    assert normed([[0.0, 1.0], [1.0], [1.0]]) == [approx([-0.75 / s, 0.25 / s]),
                                                   approx([0.25 / s]), approx([0.25 / s])]


def test_normed_empty_and_constant():
    assert normed([]) == [] and normed([[], []]) == [[], []]
    assert normed([[0.5, 0.5], [0.5]]) == [[0.0, 0.0], [0.0]]
    assert normed([[], [0.2]]) == [[], [0.0]]


# --- registry -----------------------------------------------------------------------------------

def test_registry_uniform_signature_and_exclude_last():
    assert REFINERS.names() == ["none", "clip", "delta", "clip_delta", "min_form"]
    r = [0.9, 0.5, 0.6]
    assert refine("none", r) == approx(r)
    assert refine("none", r, exclude_last=True) == approx(r)          # Delta family only
    assert refine("clip", r, ETA) == approx(clip(r, ETA))
    assert refine("clip", r, ETA, exclude_last=True) == approx(clip(r, ETA))
    assert refine("delta", r, ETA, True) == approx(delta(r, True))
    assert refine("clip_delta", r, 0.7, True) == approx(clip_delta(r, 0.7, True))
    t = refine("none", torch.tensor(r))
    assert isinstance(t, torch.Tensor)


def test_registry_errors():
    with pytest.raises(ValueError, match="valid: none, clip, delta, clip_delta"):
        refine("normed", [0.5])
    reg = Registry("thing")
    reg.register("a")(len)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(len)
    assert "a" in reg and reg.names() == ["a"] and reg.get("a") is len


# --- THE key property: more steps must not pay more ----------------------------------------------

def total_return(name, K, exclude_last=False):
    return sum(refine(name, [1.0] * K, ETA, exclude_last))


def test_raw_prm_return_grows_with_steps_but_refined_does_not():
    Ks = range(1, 9)
    raw = [total_return("none", K) for K in Ks]
    assert all(b > a for a, b in zip(raw, raw[1:]))                  # K, K + 1, ...: hackable
    for name in ["clip", "delta", "clip_delta"]:
        for exclude_last in (False, True):
            rets = [total_return(name, K, exclude_last) for K in Ks]
            tail = rets[1:] if exclude_last else rets              # K = 1 with exclude_last: 0
            assert all(b <= a + 1e-12 for a, b in zip(tail, tail[1:])), (name, exclude_last, rets)
    assert [total_return("clip", K) for K in Ks] == [0.0] * 8
    assert [total_return("delta", K) for K in Ks] == approx([1.0] * 8)
    assert [total_return("clip_delta", K) for K in Ks] == [0.0] * 8


def test_padding_a_solution_with_extra_good_steps_never_pays_after_refinement():
    torch.manual_seed(1)
    for _ in range(20):
        r = torch.rand(4, dtype=torch.float64).tolist()
        padded = r[:-1] + [0.95] * 5 + r[-1:]                # five extra high-scoring steps
        assert sum(refine("none", padded)) > sum(refine("none", r))
        assert sum(refine("clip", padded, ETA)) <= sum(refine("clip", r, ETA)) + 1e-12
        assert math.isclose(sum(refine("delta", padded)), padded[0]) and \
            math.isclose(sum(refine("delta", r)), r[0])


@pytest.mark.parametrize("n", range(2, 65))
def test_normed_all_equal_is_exactly_zero(n):
    # 0.1 (and 1/3, 0.7) are not dyadic: a plain mean of n copies can be a rounding step off
    for v in (0.1, 1 / 3, 0.7, -2.3):
        assert normed([v] * n) == [0.0] * n
        nested = normed([[v] * (1 + i % 2) for i in range(n)])
        assert all(x == 0.0 for r in nested for x in r)
        t = normed(torch.full((n,), v, dtype=torch.float32))
        assert t.dtype == torch.float32 and torch.equal(t, torch.zeros(n))


def test_normed_eps():
    # {1, 2, 3}: mean 2, unbiased std 1; TRL's ε = 1e-4
    assert normed([1.0, 2.0, 3.0], eps=1e-4) == approx([-1 / 1.0001, 0.0, 1 / 1.0001])
    assert normed([[1.0], [2.0, 3.0]], eps=0.5) == [approx([-1 / 1.5]), approx([0.0, 1 / 1.5])]


# --- min_form (PURE): w = softmax(−r/T), refined_k = w_k · r_k -------------------------------------

def test_min_form_by_hand():
    # r = (0.5, 0, 1), T = 0.5: exp(−r/T) = (e^−1, 1, e^−2), Z = 1 + e^−1 + e^−2
    e1, e2 = math.exp(-1), math.exp(-2)
    Z = 1 + e1 + e2
    assert min_form([0.5, 0.0, 1.0], temperature=0.5) == approx([0.5 * e1 / Z, 0.0, 1.0 * e2 / Z])
    # two steps (1, 0), T = 1: w_1 = e^−1/(1 + e^−1), the zero step contributes nothing
    assert min_form([1.0, 0.0], 1.0) == approx([e1 / (1 + e1), 0.0])
    # signed s = 2r − 1 = (1, −1), T = 1: w ∝ (e^−1, e^1) → (1/(1 + e²), e²/(1 + e²))
    E = math.exp(2)
    assert min_form([1.0, 0.0], 1.0, signed=True) == approx([1 / (1 + E), -E / (1 + E)])
    assert min_form([0.7], 0.1) == approx([0.7]) and min_form([0.5], 0.1, signed=True) == approx([0.0])


def test_min_form_return_is_a_soft_minimum_independent_of_k():
    for K in range(1, 9):                                  # K equal steps return r, whatever K
        assert sum(min_form([0.7] * K)) == pytest.approx(0.7, abs=1e-12)
    r = [0.9, 0.2, 0.8]
    out = min_form(r, temperature=0.01)                    # T → 0: the worst later step sets it
    assert sum(out) == pytest.approx(0.2, abs=1e-6)        # from step 1: min(r) = 0.2
    assert sum(out[1:]) == pytest.approx(0.2, abs=1e-6)    # from step 2: min(r_2, r_3) = 0.2
    rng = torch.Generator().manual_seed(0)
    for _ in range(20):                                    # between min and mean, for any T
        x = torch.rand(5, generator=rng, dtype=torch.float64).tolist()
        for T in (0.05, 0.5, 5.0):
            ret = sum(min_form(x, T))
            assert min(x) - 1e-12 <= ret <= sum(x) / len(x) + 1e-12
    # padding with good steps: the raw sum grows by ~1 per step, min-form stays near the worst step
    short, padded = [0.6, 0.3], [0.6, 0.95, 0.95, 0.95, 0.3]
    assert sum(padded) - sum(short) == pytest.approx(2.85)
    assert sum(min_form(padded)) - sum(min_form(short)) == pytest.approx(0.0027, abs=1e-4)


def test_min_form_types_empty_and_errors():
    assert min_form([]) == [] and min_form([], signed=True) == []
    t = min_form(torch.tensor([0.5, 1.0], dtype=torch.float32), 1.0)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    assert t.tolist() == pytest.approx(min_form([0.5, 1.0], 1.0), abs=1e-6)
    assert min_form(torch.tensor([])).numel() == 0
    x = torch.tensor([0.3, 0.6], requires_grad=True)
    min_form(x).sum().backward()
    assert x.grad is not None
    with pytest.raises(ValueError, match="temperature must be > 0"):
        min_form([0.5], temperature=0.0)
    # the registry passes the options through; the other refinements ignore them
    assert refine("min_form", [0.5, 0.0, 1.0], temperature=0.5) == approx(
        min_form([0.5, 0.0, 1.0], 0.5))
    assert refine("min_form", [1.0, 0.0], 0.8, True, temperature=1.0, signed=True) == approx(
        min_form([1.0, 0.0], 1.0, signed=True))
    assert refine("min_form", [0.5, 0.0]) == approx(min_form([0.5, 0.0]))          # T = 0.1
    assert refine("clip", [0.9, 0.5], ETA, temperature=3.0) == approx(clip([0.9, 0.5], ETA))
