"""Advantage estimators: GAE (PPO), GRPO outcome and process supervision, Dr. GRPO, RLOO,
PRIME (RLOO on outcome + implicit process rewards) and VinePPO (Monte-Carlo step values).

Shapes: B responses, T response tokens (right-padded), G responses per prompt, K steps.
``mask`` (B, T) is 1 on real response tokens (EOS included) and 0 on padding; every estimator
returns (B, T) advantages that are 0 where the mask is 0.

Groups: ``group_ids`` is either (B,) per-row ids (any hashable values; rows with equal ids are
the G responses to one prompt) or an int G, meaning rows i·G .. i·G+G−1 form a group (the
rollout's prompt-major order). Group statistics use the unbiased sample std (n − 1), as
DeepSeekMath, TRL and verl do; a group of one response has std 0, so its advantage is 0 (as in
TRL; verl's loop sets mean 0, std 1 for it, i.e. A = R).

Exactness: group (and batch) statistics are taken in float64 on values shifted by the group's
first member, mean = x_ref + mean(x − x_ref), so a group whose values are all equal gets
R − mean = 0 and std = 0 exactly, hence advantage exactly 0, whatever G and whatever the values
(a float32 mean of G equal non-dyadic values is off by a rounding step, and that step divided by
a std of the same size gave |A| ≈ 0.1–0.5). See docs/rl_conventions.md for every convention.

Every estimator is also registered in ``ADVANTAGES`` under one signature,
``fn(inputs: AdvantageInputs) -> Tensor (B, T)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from rewardlab.registry import Registry
from rewardlab.rewards.compose import group_numbers, place_at_step_ends
from rewardlab.rewards.refine import NORM_EPS, normed
from rewardlab.rl.losses import masked_mean


# ---------------------------------------------------------------------------------------------
# GAE

@torch.no_grad()
def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """δ_t = r_t + γ V_{t+1} − V_t,  A_t = Σ_l (γλ)^l δ_{t+l},  returns = A + V
    (Schulman et al. 2016, "High-Dimensional Continuous Control Using GAE", arXiv 1506.02438).

    rewards, values, mask: (B, T). V past the last response token is 0; positions where the
    mask is 0 are skipped (as if absent), so right padding — and any value stored there — has
    no effect. Returns (advantages, returns), (B, T) each, 0 where the mask is 0; no gradient."""
    m = mask.bool()
    r = torch.where(m, rewards, torch.zeros_like(rewards)).float()
    v = torch.where(m, values, torch.zeros_like(values)).float()
    B, T = r.shape
    advantages = torch.zeros_like(r)
    lastgaelam = torch.zeros(B, dtype=r.dtype, device=r.device)
    nextvalues = torch.zeros(B, dtype=r.dtype, device=r.device)
    for t in reversed(range(T)):
        delta = r[:, t] + gamma * nextvalues - v[:, t]
        gaelam = delta + gamma * lam * lastgaelam
        lastgaelam = torch.where(m[:, t], gaelam, lastgaelam)
        nextvalues = torch.where(m[:, t], v[:, t], nextvalues)
        advantages[:, t] = torch.where(m[:, t], gaelam, torch.zeros_like(gaelam))
    returns = torch.where(m, advantages + v, torch.zeros_like(v))
    return advantages, returns


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
           eps: float = 1e-8, dist=None) -> torch.Tensor:
    """(x − mean)/sqrt(var + ε) with mean and unbiased var (n − 1) over positions where mask is 1
    (ε = 1e-8 as TRL's and verl's masked_whiten); ``shift_mean=False`` adds the mean back (scale
    only). 0 where the mask is 0. Statistics in float64 about the first selected value, so equal
    values whiten to exactly 0; returned in x's dtype.

    ``dist`` (a :class:`rewardlab.training.distributed.Dist`): the batch is sharded over
    processes, and the statistics are those of the whole batch (sums reduced over ranks, the
    reference value from rank 0)."""
    m = mask.bool()
    x64 = x.double()
    sel = x64[m]
    ref = sel[0].detach() if sel.numel() else x64.new_zeros(())
    if dist is not None and dist.active:
        ref = dist.broadcast(ref)
        d = x64 - ref
        n = dist.sum(m.sum())
        mean_d = dist.sum(torch.where(m, d, torch.zeros_like(d)).sum()) / n.clamp(min=1)
        centered = d - mean_d
        sq = dist.sum(torch.where(m, centered ** 2, torch.zeros_like(d)).sum())
        var = sq / (n - 1).clamp(min=1)
    else:
        d = x64 - ref
        mean_d = masked_mean(d, m)
        centered = d - mean_d
        n = m.sum()
        var = masked_mean(centered ** 2, m) * (n / (n - 1).clamp(min=1))
    out = centered * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + (ref + mean_d)
    return torch.where(m, out, torch.zeros_like(out)).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Group statistics

def group_index(group_ids, B: int, device=None) -> torch.Tensor:
    """(B,) long tensor numbering the groups 0..n_groups−1 (see the module docstring and
    :func:`rewardlab.rewards.compose.group_numbers`)."""
    if group_ids is None:
        raise ValueError("group_ids is required: B per-row ids or an int group size G")
    return torch.tensor(group_numbers(group_ids, B), dtype=torch.long, device=device)


def group_stats(x: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                              torch.Tensor]:
    """Per-row (mean, std, count) of x (B,) over its group, all float64: mean = x_ref +
    Σ(x − x_ref)/n with x_ref the group's first member, std = sqrt(Σ(x − mean)²/(n − 1))
    (unbiased; 0 for n = 1). An all-equal group has x − mean = 0 and std = 0 exactly (use
    ``x.double() − mean``)."""
    n_groups = int(index.max()) + 1 if index.numel() else 0
    x64 = x.double()
    B = x64.shape[0]
    first = torch.full((n_groups,), B, dtype=torch.long, device=x.device).scatter_reduce_(
        0, index, torch.arange(B, device=x.device), reduce="amin")               # (n_groups,)
    ref = x64[first]
    d = x64 - ref[index]                                                         # 0 in equal groups
    count = torch.bincount(index, minlength=n_groups).to(x64.dtype)             # (n_groups,)
    mean_d = torch.zeros(n_groups, dtype=x64.dtype, device=x.device).index_add_(0, index, d) / count
    sq = torch.zeros_like(mean_d).index_add_(0, index, (d - mean_d[index]) ** 2)
    std = (sq / (count - 1).clamp(min=1)).sqrt()
    return (ref + mean_d)[index], std[index], count[index]


def _per_token(a: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) sequence advantage → (B, T) on every response token, 0 on padding."""
    a = a.float()[:, None].expand(mask.shape)
    return torch.where(mask.bool(), a, torch.zeros_like(a))


def _scores(scores, mask: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(scores, dtype=torch.float32, device=mask.device).flatten()
    if s.shape != (mask.shape[0],):
        raise ValueError(f"scores must have shape ({mask.shape[0]},), got {tuple(s.shape)}")
    return s


# ---------------------------------------------------------------------------------------------
# Critic-free estimators

@torch.no_grad()
def grpo_outcome(scores: torch.Tensor, group_ids, mask: torch.Tensor,
                 eps: float = NORM_EPS) -> torch.Tensor:
    """A_i = (R_i − mean_group R)/(std_group R + ε) on every token of response i
    (GRPO outcome supervision, Shao et al. 2024, DeepSeekMath, arXiv 2402.03300 §4.1.2).

    scores: (B,) sequence rewards R_i; mask (B, T). std is the unbiased sample std (n − 1), ε
    outside the square root: 1e-6 (verl's; TRL uses 1e-4 — ``RLConfig.norm_eps``). An all-equal
    group (and a group of one) gets exactly 0; statistics in float64 (:func:`group_stats`)."""
    R = _scores(scores, mask)
    mean, std, _ = group_stats(R, group_index(group_ids, R.shape[0], R.device))
    return _per_token((R.double() - mean) / (std + eps), mask)


@torch.no_grad()
def dr_grpo(scores: torch.Tensor, group_ids, mask: torch.Tensor) -> torch.Tensor:
    """A_i = R_i − mean_group R, no std division (Dr. GRPO, Liu et al. 2025, "Understanding
    R1-Zero-Like Training", arXiv 2503.20783). Pair it with Dr. GRPO's length-independent
    aggregation, Σ_it m ℓ / (B·L) with L constant (``agg="seq-mean-token-sum-norm"`` in
    rewardlab.rl.losses; the trainer's default for this estimator, L = max_new_tokens).
    An all-equal group gets exactly 0."""
    R = _scores(scores, mask)
    mean, _, _ = group_stats(R, group_index(group_ids, R.shape[0], R.device))
    return _per_token(R.double() - mean, mask)


@torch.no_grad()
def rloo(scores: torch.Tensor, group_ids, mask: torch.Tensor) -> torch.Tensor:
    """A_i = R_i − mean_{j≠i} R_j = G/(G−1)·(R_i − mean R), leave-one-out baseline
    (Ahmadian et al. 2024, "Back to Basics: REINFORCE-style optimization", arXiv 2402.14740;
    Kool et al. 2019). A group of one response has no baseline and gets 0."""
    R = _scores(scores, mask)
    mean, _, n = group_stats(R, group_index(group_ids, R.shape[0], R.device))
    R = R.double()
    A = torch.where(n > 1, n / (n - 1).clamp(min=1) * (R - mean), torch.zeros_like(R))
    return _per_token(A, mask)


@torch.no_grad()
def grpo_process(step_rewards: Sequence[Sequence[float]], step_ends: Sequence[Sequence[int]],
                 group_ids, mask: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """r̃ = (r − mean)/(std + ε) over all step rewards of the group (unbiased std, ε = 1e-6 by
    default), A_t = Σ_{k: t_end(k) ≥ t} r̃_k
    (GRPO process supervision, DeepSeekMath, arXiv 2402.03300 §4.1.3). Statistics as in
    :func:`rewardlab.rewards.refine.normed` (float64, exact: an all-equal group gets 0).

    step_rewards, step_ends: B lists of K_b values / token indices; mask (B, T). A step whose
    t_end is past the last real token counts as ending on it; tokens after the last step end get
    0 (no step ends at or after them)."""
    B = mask.shape[0]
    if len(step_rewards) != B:
        raise ValueError(f"got {len(step_rewards)} step-reward lists for a batch of {B}")
    index = group_index(group_ids, B).tolist()
    r_tilde: list[list[float]] = [[] for _ in range(B)]
    for g in sorted(set(index)):
        members = [i for i in range(B) if index[i] == g]
        for i, r in zip(members, normed([[float(x) for x in step_rewards[i]] for i in members],
                                            eps=eps)):
            r_tilde[i] = r
    placed = place_at_step_ends(r_tilde, step_ends, mask)                  # (B, T)
    A = placed.flip(1).cumsum(1).flip(1)                                   # Σ over t_end ≥ t
    return torch.where(mask.bool(), A, torch.zeros_like(A))


@torch.no_grad()
def prime_advantages(implicit_rewards: torch.Tensor, outcome: torch.Tensor, group_ids,
                     mask: torch.Tensor, whiten_result: bool = True, dist=None) -> torch.Tensor:
    """PRIME's advantage (Cui et al. 2025, "Process Reinforcement through Implicit Rewards",
    arXiv 2502.01456, eq. 5–6; γ = 1): RLOO on the outcome reward plus the return-to-go of the
    RLOO-baselined implicit process rewards, for G responses i to one prompt:

        r̄_j    = (1/|y_j|) Σ_t r_jt                    mean implicit reward per token of y_j
        r̃_it   = r_it − (1/(G−1)) Σ_{j≠i} r̄_j           leave-one-out baseline at every token
        A_it   = Σ_{s≥t} r̃_is  +  R_i − (1/(G−1)) Σ_{j≠i} R_j

    then, with ``whiten_result``, whitened over the batch's response tokens (as PRIME's verl
    recipe does; :func:`whiten`). The outcome R_i sits at the last token, so its return-to-go is
    R_i at every token. implicit_rewards (B, T): r_it = β·log π_φ(y_t)/π_ref(y_t)
    (:func:`rewardlab.rl.losses.implicit_process_rewards`); outcome (B,); mask (B, T). A group of
    one response has no baseline: both terms are 0 for it. (verl's implementation subtracts the
    baseline from r_it·G/(G−1) instead of r_it; this is the paper's formula.)"""
    m = mask.bool()
    R = _scores(outcome, mask).double()
    index = group_index(group_ids, R.shape[0], R.device)
    r = torch.where(m, implicit_rewards, torch.zeros_like(implicit_rewards)).double()
    n_tok = m.sum(1).clamp(min=1).double()
    r_bar = r.sum(1) / n_tok                                            # (B,)
    _, _, n = group_stats(R, index)
    n_groups = int(index.max()) + 1 if index.numel() else 0

    def others_mean(x):  # (1/(G−1)) Σ_{j≠i} x_j, 0 for a group of one
        tot = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add_(0, index, x)[index]
        return torch.where(n > 1, (tot - x) / (n - 1).clamp(min=1), torch.zeros_like(x))

    solo = (n <= 1)[:, None]
    r_tilde = torch.where(m & ~solo, r - others_mean(r_bar)[:, None], torch.zeros_like(r))
    a_proc = r_tilde.flip(1).cumsum(1).flip(1)                          # Σ_{s≥t}
    a_out = torch.where(n > 1, R - others_mean(R), torch.zeros_like(R))
    A = torch.where(m, a_proc + a_out[:, None], torch.zeros_like(a_proc)).float()
    return whiten(A, mask, dist=dist) if whiten_result else A


@torch.no_grad()
def vine_advantages(step_values: Sequence[Sequence[float]], step_ends: Sequence[Sequence[int]],
                    mask: torch.Tensor) -> torch.Tensor:
    """VinePPO's Monte-Carlo step advantages (Kazemnejad et al. 2024, "VinePPO: Unlocking RL
    Potential for LLM Reasoning through Refined Credit Assignment", arXiv 2410.01679, §4):

        A_k = V̂(s_k) − V̂(s_{k−1})      on every token of step k,  k = 1..K

    where s_0 is the prompt, s_k the prompt plus steps 1..k, V̂(s) the mean outcome reward of
    fresh rollouts from s, and V̂(s_K) = the response's own outcome reward R (γ = 1, no
    intermediate reward: r + V̂(s_k) − V̂(s_{k−1}) with r = 0 except at the end).

    step_values: B lists of K_b + 1 values [V̂(s_0), …, V̂(s_{K−1}), R]; step_ends: B lists of
    K_b token indices t_end(k) (``rewardlab.rewards.steps``); mask (B, T). The tokens of step k
    are t_end(k−1) < t ≤ t_end(k) (t_end(0) = −1); tokens after t_end(K) (the EOS, a trailing
    separator) belong to step K. A step end past the last real token is clamped onto it. A row
    needs K_b ≥ 1 (treat a response without steps as one step ending at its last token)."""
    B, T = mask.shape
    if len(step_values) != B or len(step_ends) != B:
        raise ValueError(f"got {len(step_values)} value and {len(step_ends)} step-end lists for a "
                         f"batch of {B}")
    A = torch.zeros(B, T, dtype=torch.float32, device=mask.device)
    n_real = mask.bool().sum(1).tolist()
    for b, (vals, ends) in enumerate(zip(step_values, step_ends)):
        if len(ends) < 1 or len(vals) != len(ends) + 1:
            raise ValueError(f"row {b}: need K >= 1 step ends and K + 1 values, got {len(ends)} "
                             f"and {len(vals)}")
        start = 0
        for k, t_end in enumerate(ends):
            stop = n_real[b] if k == len(ends) - 1 else min(int(t_end), n_real[b] - 1) + 1
            if stop > start:
                A[b, start:stop] = float(vals[k + 1]) - float(vals[k])
            start = max(start, stop)
    return torch.where(mask.bool(), A, torch.zeros_like(A))


# ---------------------------------------------------------------------------------------------
# Registry: fn(inputs: AdvantageInputs) -> (B, T)

@dataclass(kw_only=True)
class AdvantageInputs:
    """Everything an advantage estimator may read; each estimator names what it needs."""

    token_rewards: torch.Tensor | None = None
    """(B, T) per-token rewards (rewardlab.rewards.compose.build_token_rewards), for gae."""
    values: torch.Tensor | None = None
    """(B, T) critic values V_t, for gae."""
    mask: torch.Tensor
    """(B, T) 1 on real response tokens (EOS included), 0 on padding."""
    scores: torch.Tensor | None = None
    """(B,) sequence rewards R_i for grpo_outcome / dr_grpo / rloo; when None, the sum of
    token_rewards over the mask."""
    step_rewards: Sequence[Sequence[float]] | None = None
    """B lists of K_b PRM step rewards, for grpo_process."""
    step_ends: Sequence[Sequence[int]] | None = None
    """B lists of K_b token indices t_end(k), for grpo_process."""
    group_ids: object = None
    """(B,) group id per row, or an int group size G (prompt-major rows)."""
    gamma: float = 1.0
    """Discount γ (gae)."""
    lam: float = 0.95
    """GAE λ (gae)."""
    norm_eps: float = NORM_EPS
    """ε in (x − mean)/(std + ε) (grpo_outcome, grpo_process); TRL uses 1e-4."""
    implicit_rewards: torch.Tensor | None = None
    """(B, T) implicit process rewards β·log π_φ/π_ref, for prime (``scores``: the outcome)."""
    step_values: Sequence[Sequence[float]] | None = None
    """B lists of K_b + 1 Monte-Carlo values [V̂(s_0), …, V̂(s_{K−1}), R], for vine."""
    whiten: bool = True
    """prime: whiten the summed advantages over the batch."""
    dist: object = None
    """prime: the :class:`rewardlab.training.distributed.Dist` of a batch sharded over ranks (its
    whitening statistics are then the whole batch's); None: one process."""

    def need(self, estimator: str, *fields: str) -> None:
        missing = [f for f in fields if getattr(self, f) is None]
        if missing:
            raise ValueError(f"advantage estimator '{estimator}' needs {', '.join(missing)}")

    def sequence_scores(self, estimator: str) -> torch.Tensor:
        if self.scores is not None:
            return self.scores
        if self.token_rewards is None:
            raise ValueError(f"advantage estimator '{estimator}' needs scores or token_rewards")
        m = self.mask.bool()
        return torch.where(m, self.token_rewards, torch.zeros_like(self.token_rewards)).sum(1)


ADVANTAGES: Registry[Callable[[AdvantageInputs], torch.Tensor]] = Registry("advantage estimator")


@ADVANTAGES.register("gae")
def _adv_gae(x: AdvantageInputs) -> torch.Tensor:
    """GAE advantages; the value-loss targets are ``advantages + values`` on the mask, exactly
    the returns :func:`gae` gives (call it directly to get both)."""
    x.need("gae", "token_rewards", "values")
    return gae(x.token_rewards, x.values, x.mask, x.gamma, x.lam)[0]


@ADVANTAGES.register("grpo_outcome")
def _adv_grpo_outcome(x: AdvantageInputs) -> torch.Tensor:
    x.need("grpo_outcome", "group_ids")
    return grpo_outcome(x.sequence_scores("grpo_outcome"), x.group_ids, x.mask, x.norm_eps)


@ADVANTAGES.register("grpo_process")
def _adv_grpo_process(x: AdvantageInputs) -> torch.Tensor:
    x.need("grpo_process", "step_rewards", "step_ends", "group_ids")
    return grpo_process(x.step_rewards, x.step_ends, x.group_ids, x.mask, x.norm_eps)


@ADVANTAGES.register("dr_grpo")
def _adv_dr_grpo(x: AdvantageInputs) -> torch.Tensor:
    x.need("dr_grpo", "group_ids")
    return dr_grpo(x.sequence_scores("dr_grpo"), x.group_ids, x.mask)


@ADVANTAGES.register("rloo")
def _adv_rloo(x: AdvantageInputs) -> torch.Tensor:
    x.need("rloo", "group_ids")
    return rloo(x.sequence_scores("rloo"), x.group_ids, x.mask)


@ADVANTAGES.register("prime")
def _adv_prime(x: AdvantageInputs) -> torch.Tensor:
    x.need("prime", "implicit_rewards", "group_ids")
    return prime_advantages(x.implicit_rewards, x.sequence_scores("prime"), x.group_ids, x.mask,
                            x.whiten, dist=x.dist)


@ADVANTAGES.register("vine")
def _adv_vine(x: AdvantageInputs) -> torch.Tensor:
    x.need("vine", "step_values", "step_ends")
    return vine_advantages(x.step_values, x.step_ends, x.mask)


def compute_advantages(name: str, inputs: AdvantageInputs) -> torch.Tensor:
    """(B, T) advantages by ``ADVANTAGES[name]`` (gae | grpo_outcome | grpo_process | dr_grpo |
    rloo | prime | vine)."""
    return ADVANTAGES.get(name)(inputs)
