"""Refining process rewards so that more steps never earn more (Gao et al., "On Designing
Effective RL Reward at Training Time for LLM Reasoning", arXiv 2410.15115).

With raw PRM scores r_k ∈ [0, 1] added at every step, a response's return Σ_k r_k grows with its
number of steps K, so the policy learns to write many correct-looking but useless steps (reward
hacking). The refinements bound the return:

- Clip:  c_k = min(r_k − η, 0)            every step reward ≤ 0, so extra steps never pay;
- Delta: d_k = r_k − r_{k+1}, d_K = r_K   Σ_{j≥k} d_j = r_k telescopes: bounded, K-independent;
- Clip-Delta: Delta applied to the clipped rewards;
- PR-Normed: (r − mean)/(std + 1e-6) over all step rewards of a group (DeepSeekMath process
  supervision, arXiv 2402.03300 §4.1.3); unbiased std, statistics exact (an all-equal group
  gets 0).
- Min-form (PURE, Cheng et al., arXiv 2504.15275): w_k = softmax(−r/T)_k, refined w_k·r_k, so
  the return is a soft minimum of the step rewards instead of their sum.

Every function takes one response's K step rewards as a Python sequence (returns a list of
floats) or a 1-D tensor (K,) (returns a tensor of the same dtype, differentiable). Empty in →
empty out; K = 1 is valid.

``exclude_last=True`` (Delta only) leaves the final (answer) step out, because the success
reward judges it: d is computed over r_1..r_{K−1} and the last step gets 0, so the last kept step
keeps its raw score (the paper's Delta; rewardlab's RL default). Raw scores, Clip and PR-Normed
use every step, as in the paper; the registry's uniform signature passes ``exclude_last`` to all
of them and only the Delta family reads it.

>>> delta([0.9, 0.7, 0.8])
[0.20000000000000007, -0.10000000000000009, 0.8]
>>> delta([0.9, 0.7, 0.8], exclude_last=True)
[0.20000000000000007, 0.7, 0.0]
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence, Union

import torch

from rewardlab.registry import Registry


StepRewards = Union[Sequence[float], torch.Tensor]
"""One response's K step rewards: a Python sequence of numbers or a 1-D tensor (K,)."""

NORM_EPS = 1e-6
"""The ε in (r − mean)/(std + ε), shared by PR-Normed and the GRPO advantages."""


# ---------------------------------------------------------------------------------------------
# Tensor cores, (K,) -> (K,)

def _clip(r: torch.Tensor, eta: float) -> torch.Tensor:
    return torch.clamp(r - eta, max=0.0)                        # c_k = min(r_k − η, 0)


def _delta(r: torch.Tensor) -> torch.Tensor:
    return torch.cat([r[:-1] - r[1:], r[-1:]])                  # d_k = r_k − r_{k+1}, d_K = r_K


def _leave_last_out(core: Callable[[torch.Tensor], torch.Tensor], r: torch.Tensor,
                    exclude_last: bool) -> torch.Tensor:
    """``core`` over r_1..r_{K−1} and 0 for the last step when ``exclude_last``, else core(r)."""
    if not exclude_last or r.numel() == 0:
        return core(r)
    return torch.cat([core(r[:-1]), torch.zeros_like(r[-1:])])


def _apply(core: Callable[[torch.Tensor], torch.Tensor], r: StepRewards) -> StepRewards:
    """Run a tensor core on a tensor (→ tensor) or on a Python sequence (→ list of floats)."""
    if isinstance(r, torch.Tensor):
        if r.dim() != 1:
            raise ValueError(f"step rewards must be 1-D (K,), got shape {tuple(r.shape)}")
        return core(r if r.is_floating_point() else r.float())
    return core(torch.tensor([float(x) for x in r], dtype=torch.float64)).tolist()


def zscore(x: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """x̃ = (x − mean x)/(std x + ε) over all elements, std the unbiased sample std (n − 1),
    as DeepSeekMath, TRL and verl use, ε outside the square root; a single element has std 0
    (so x̃ = 0); empty → empty.

    Exact for equal values: the statistics are taken in float64 about the first element,
    mean = x_0 + mean(x − x_0), so all-equal x gives x − mean = 0 and x̃ = 0 exactly (a plain
    float32 or even float64 mean of equal non-dyadic values can be off by a rounding step,
    which divided by a std of the same size is far from 0). Returned in x's dtype."""
    if x.numel() == 0:
        return x.clone()
    x64 = x.double()
    d = x64 - x64.flatten()[0].detach()
    centered = d - d.mean()
    std = centered.square().sum().div(x.numel() - 1).sqrt() if x.numel() > 1 \
        else torch.zeros_like(centered.sum())
    return (centered / (std + eps)).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Public refinements (SPEC "Refining process rewards")

def clip(r: StepRewards, eta: float = 0.8) -> StepRewards:
    """Clip: c_k = min(r_k − η, 0) (Gao et al. 2024, arXiv 2410.15115).

    Every refined step reward is ≤ 0, so adding steps never raises the return."""
    return _apply(lambda x: _clip(x, eta), r)


def delta(r: StepRewards, exclude_last: bool = False) -> StepRewards:
    """Delta: d_k = r_k − r_{k+1} for k < K, d_K = r_K (Gao et al. 2024, arXiv 2410.15115).

    The return from step k is Σ_{j≥k} d_j = r_k: bounded and independent of K. With
    ``exclude_last`` d is computed over r_1..r_{K−1} and the last (answer) step gets 0."""
    return _apply(lambda x: _leave_last_out(_delta, x, exclude_last), r)


def clip_delta(r: StepRewards, eta: float = 0.8, exclude_last: bool = False) -> StepRewards:
    """Clip-Delta: d_k of c_k = min(r_k − η, 0) (Gao et al. 2024, arXiv 2410.15115).

    ``exclude_last`` as in :func:`delta`."""
    return _apply(lambda x: _leave_last_out(lambda y: _delta(_clip(y, eta)), x, exclude_last), r)


def _is_nested(r_group) -> bool:
    if isinstance(r_group, torch.Tensor):
        return False
    return any(isinstance(x, (list, tuple)) or (isinstance(x, torch.Tensor) and x.dim() > 0)
               for x in r_group)


def normed(r_group, eps: float = NORM_EPS):
    """PR-Normed: r̃ = (r − mean)/(std + ε) over ALL step rewards of a group jointly, ε = 1e-6
    by default (DeepSeekMath process supervision, arXiv 2402.03300 §4.1.3; Gao et al.'s
    "PR-Normed"). Statistics by :func:`zscore`: float64, exact, so a group whose step rewards
    are all equal gets exactly 0.

    ``r_group`` is either the G responses' step-reward lists/tensors ``[[r_1..r_K1], ...]``
    (returns the same nesting, each element list → list of floats, tensor → tensor) or one flat
    sequence / 1-D tensor of step rewards (returns a list / tensor). std is the unbiased sample
    std; a group holding one step reward in all gets 0."""
    if not _is_nested(r_group):
        return _apply(lambda x: zscore(x, eps), r_group)
    rows = list(r_group)
    as_tensors = [torch.as_tensor(x, dtype=torch.float64) if not isinstance(x, torch.Tensor)
                  else (x if x.is_floating_point() else x.float()) for x in rows]
    for x in as_tensors:
        if x.dim() != 1:
            raise ValueError(f"each response's step rewards must be 1-D, got {tuple(x.shape)}")
    dtype = functools.reduce(torch.promote_types, (x.dtype for x in as_tensors))
    flat = torch.cat([x.to(dtype) for x in as_tensors])                 # (ΣK,)
    pieces = torch.split(zscore(flat, eps), [x.numel() for x in as_tensors])
    return [p.to(src.dtype) if isinstance(src, torch.Tensor) else p.tolist()
            for p, src in zip(pieces, rows)]


def min_form(r: StepRewards, temperature: float = 0.1, signed: bool = False) -> StepRewards:
    """Min-form credit assignment (PURE: Cheng et al. 2025, "Stop Summation: Min-Form Credit
    Assignment Is All Process Reward Model Needs for Reasoning", arXiv 2504.15275):

        w_k = exp(−r_k/T) / Σ_j exp(−r_j/T),        refined_k = w_k · r_k

    The weights are a softmax of −r/T over the response's K steps (Σ_k w_k = 1), so the return
    Σ_k w_k r_k is a soft minimum of the step rewards: it lies between min_k r_k and the mean,
    tends to min_k r_k as T → 0 and to the mean as T → ∞. Unlike the raw sum it does not grow
    with K: K steps that all score r return r, extra good steps barely move it (a soft minimum,
    not an exact one: [0.6, 0.3] returns 0.314, the same padded with three 0.95 steps 0.317 at
    T = 0.1), and one bad step pulls it towards that step's score. The return from step k, Σ_{j≥k} w_j r_j, approximates
    min_{j≥k} r_j for every k up to the worst step (argmin_j r_j): the worst later step sets the
    value. (Past the worst step the weights are ~0, so those returns are ~0, as in the paper.)

    ``signed``: PURE's signed step scores s_k = 2 r_k − 1 ∈ [−1, 1] are refined instead of the
    probabilities r_k ∈ [0, 1] (a wrong step then lowers the return, a correct one raises it):
    w = softmax(−s/T), refined_k = w_k · s_k. ``temperature`` must be > 0. Computed as
    ``softmax(−x/T) · x`` (max-shifted, no overflow for small T)."""
    if temperature <= 0:
        raise ValueError(f"min_form: temperature must be > 0, got {temperature}")

    def core(x: torch.Tensor) -> torch.Tensor:
        if signed:
            x = 2.0 * x - 1.0
        if x.numel() == 0:
            return x.clone()
        return torch.softmax(-x / temperature, dim=0) * x

    return _apply(core, r)


# ---------------------------------------------------------------------------------------------
# Registry: one uniform signature fn(r, eta, exclude_last, **options) -> refined r (same type
# as r). ``options`` carries the settings of refinements that need more than η (min_form:
# ``temperature``, ``signed``); the others accept and ignore them.
# "normed" is group-level and lives in rewardlab.rewards.compose.GROUP_REFINERS.

REFINERS: Registry[Callable[[StepRewards, float, bool], StepRewards]] = Registry("refine")


@REFINERS.register("none")
def _refine_none(r: StepRewards, eta: float, exclude_last: bool, **options) -> StepRewards:
    """Raw PRM scores, every step (``eta`` and ``exclude_last`` unused)."""
    return _apply(torch.clone, r)


@REFINERS.register("clip")
def _refine_clip(r: StepRewards, eta: float, exclude_last: bool, **options) -> StepRewards:
    """Clip over every step, as in the paper (``exclude_last`` unused)."""
    return clip(r, eta)


@REFINERS.register("delta")
def _refine_delta(r: StepRewards, eta: float, exclude_last: bool, **options) -> StepRewards:
    return delta(r, exclude_last)


@REFINERS.register("clip_delta")
def _refine_clip_delta(r: StepRewards, eta: float, exclude_last: bool, **options) -> StepRewards:
    return clip_delta(r, eta, exclude_last)


@REFINERS.register("min_form")
def _refine_min_form(r: StepRewards, eta: float, exclude_last: bool, temperature: float = 0.1,
                     signed: bool = False, **options) -> StepRewards:
    """PURE's min-form over every step, as in the paper (``eta`` and ``exclude_last`` unused)."""
    return min_form(r, temperature, signed)


def refine(name: str, r: StepRewards, eta: float = 0.8, exclude_last: bool = False,
           **options) -> StepRewards:
    """One response's step rewards refined by ``REFINERS[name]`` (none | clip | delta |
    clip_delta | min_form); ``exclude_last`` is read by delta and clip_delta only, ``options``
    (``temperature``, ``signed``) by min_form only."""
    return REFINERS.get(name)(r, eta, exclude_last, **options)
