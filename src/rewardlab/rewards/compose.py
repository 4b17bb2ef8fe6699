"""Token-level training rewards of a batch of responses (SPEC "Training reward of one response").

For response b with K step rewards r_k ending at tokens t_end(k), over its T response tokens:

    reward[b, t_end(k)] += α · refined_k                 for every step k
    reward[b, last(b)]  += success_b + β · orm_b         last(b) = last index where mask is 1
    reward[b, t]        −= kl_coef · KL_t                with KL in the reward (PPO default)

``last(b)`` is the EOS token itself when the response has one, and never a padding position
(putting the outcome reward on padding is the bug of TRL issue #3750). A step whose t_end lies
past the last real token (a truncated response) is clamped onto it.

Everything here takes plain values (no config objects): the trainer passes its config's fields.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from rewardlab.models.batching import last_token_index
from rewardlab.registry import Registry
from rewardlab.rewards.refine import normed, REFINERS


# ---------------------------------------------------------------------------------------------
# Refinement of a whole batch: one uniform signature
#   fn(step_rewards: list[list[float]], group_index: list[int], eta, exclude_last, **options)
#       -> list[list[float]]          (options: min_form's temperature and signed)
# Per-response refinements (rewardlab.rewards.refine.REFINERS) ignore the groups; "normed"
# (PR-Normed) normalises every group jointly.

GROUP_REFINERS: Registry[Callable[..., list[list[float]]]] = Registry("refine")


def _per_response(name: str) -> Callable[..., list[list[float]]]:
    def fn(step_rewards, group_index, eta, exclude_last, **options):
        return [REFINERS.get(name)(list(r), eta, exclude_last, **options) for r in step_rewards]
    fn.__doc__ = f"REFINERS['{name}'] applied to each response alone."
    return fn


for _name in REFINERS.names():
    GROUP_REFINERS.register(_name)(_per_response(_name))


@GROUP_REFINERS.register("normed")
def _refine_normed(step_rewards: list[list[float]], group_index: list[int], eta: float,
                   exclude_last: bool, **options) -> list[list[float]]:
    """PR-Normed over every step of each group (``eta`` and ``exclude_last`` unused)."""
    out: list[list[float]] = [[] for _ in step_rewards]
    for g in sorted(set(group_index)):
        members = [i for i, gi in enumerate(group_index) if gi == g]
        for i, r_tilde in zip(members, normed([step_rewards[i] for i in members])):
            out[i] = list(r_tilde)
    return out


def group_numbers(group_ids, B: int) -> list[int]:
    """Group number (0, 1, ... in order of first appearance) of each of B rows. ``group_ids``:
    None (the whole batch is one group), an int G (rows i·G .. i·G+G−1 form a group: the
    rollout's prompt-major order) or B per-row ids of any hashable kind (tensor or sequence)."""
    if group_ids is None:
        return [0] * B
    if isinstance(group_ids, int):
        if group_ids < 1 or B % group_ids:
            raise ValueError(f"group size {group_ids} does not divide the batch size {B}")
        return [i // group_ids for i in range(B)]
    ids = group_ids.flatten().tolist() if isinstance(group_ids, torch.Tensor) else list(group_ids)
    if len(ids) != B:
        raise ValueError(f"group_ids has {len(ids)} entries for a batch of {B}")
    number: dict = {}
    return [number.setdefault(g, len(number)) for g in ids]


def refine_batch(name: str, step_rewards: Sequence[Sequence[float]], eta: float = 0.8,
                 exclude_last: bool = False, group_ids=None, **options) -> list[list[float]]:
    """Refined step rewards of B responses by ``GROUP_REFINERS[name]`` (none | clip | delta |
    clip_delta | min_form | normed); "normed" pools the whole batch, or each group when
    ``group_ids`` (B per-row ids, or an int group size G) is given; ``options`` (min_form's
    ``temperature`` and ``signed``) go to the refinement."""
    rows = [list(map(float, r)) for r in step_rewards]
    return GROUP_REFINERS.get(name)(rows, group_numbers(group_ids, len(rows)), eta, exclude_last,
                                    **options)


# ---------------------------------------------------------------------------------------------
# Placement


def _last_response_token(response_mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of each row's last response token; a row without any real token raises
    ValueError (it cannot carry a reward)."""
    empty = ~response_mask.bool().any(dim=1)
    if empty.any():
        raise ValueError(f"rows {empty.nonzero().flatten().tolist()} have no response tokens "
                         "(response_mask all 0)")
    return last_token_index(response_mask)


def place_at_step_ends(step_values: Sequence[Sequence[float]], step_ends: Sequence[Sequence[int]],
                       response_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) tensor holding Σ of step_values[b][k] at min(t_end(k), last(b)), 0 elsewhere."""
    B, T = response_mask.shape
    if len(step_values) != B or len(step_ends) != B:
        raise ValueError(f"got {len(step_values)} step-value and {len(step_ends)} step-end lists "
                         f"for a batch of {B}")
    last = _last_response_token(response_mask).tolist()
    rows, cols, vals = [], [], []
    for b, (values, ends) in enumerate(zip(step_values, step_ends)):
        if len(values) != len(ends):
            raise ValueError(f"row {b}: {len(values)} step rewards but {len(ends)} step ends")
        for v, t in zip(values, ends):
            if t < 0:
                raise ValueError(f"row {b}: step end {t} is negative")
            rows.append(b)
            cols.append(min(int(t), last[b]))
            vals.append(float(v))
    out = torch.zeros(B, T, dtype=torch.float32, device=response_mask.device)
    if vals:
        idx = (torch.tensor(rows, device=out.device), torch.tensor(cols, device=out.device))
        out.index_put_(idx, torch.tensor(vals, dtype=out.dtype, device=out.device), accumulate=True)
    return out


def build_token_rewards(step_rewards: Sequence[Sequence[float]], step_ends: Sequence[Sequence[int]],
                        response_mask: torch.Tensor, success: torch.Tensor | None = None,
                        orm: torch.Tensor | None = None, alpha: float = 1.0, beta: float = 1.0,
                        refine: str = "none", eta: float = 0.8, exclude_last: bool = False,
                        group_ids=None, refine_options: dict | None = None
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """reward[b, t_end(k)] += α·refined_k; reward[b, last(b)] += success_b + β·orm_b
    (Gao et al. 2024, arXiv 2410.15115, §3; SPEC "Training reward of one response").

    step_rewards: B lists of K_b raw PRM scores; step_ends: B lists of K_b token indices t_end(k);
    response_mask (B, T): 1 on real response tokens incl. EOS, right-padded; success, orm (B,) or
    None; refine: none | clip | delta | clip_delta | min_form | normed (normed pools the batch, or
    each group of ``group_ids``); ``refine_options``: min_form's ``temperature``/``signed``. Returns (rewards (B, T) float32, info) with per-sample (B,) tensors
    ``reward/prm_return`` (Σ_k α·refined_k), ``reward/prm_raw_mean`` (mean raw r_k, 0 when
    K = 0) and ``reward/n_steps``; take their mean for logging."""
    B, T = response_mask.shape
    if len(step_rewards) != B:
        raise ValueError(f"got {len(step_rewards)} step-reward lists for a batch of {B}")
    refined = refine_batch(refine, step_rewards, eta, exclude_last, group_ids,
                           **(refine_options or {}))
    weighted = [[alpha * x for x in r] for r in refined]
    rewards = place_at_step_ends(weighted, step_ends, response_mask)     # (B, T)
    last = _last_response_token(response_mask)                           # (B,)
    rows = torch.arange(B, device=rewards.device)
    for outcome, coef, name in ((success, 1.0, "success"), (orm, beta, "orm")):
        if outcome is None:
            continue
        outcome = torch.as_tensor(outcome, dtype=rewards.dtype, device=rewards.device).flatten()
        if outcome.shape != (B,):
            raise ValueError(f"{name} must have shape ({B},), got {tuple(outcome.shape)}")
        rewards[rows, last] += coef * outcome
    n_steps = torch.tensor([len(r) for r in step_rewards], dtype=torch.float32)
    info = {
        "reward/prm_return": torch.tensor([sum(w) for w in weighted], dtype=torch.float32),
        "reward/prm_raw_mean": torch.tensor([sum(map(float, r)) / len(r) if len(r) else 0.0
                                             for r in step_rewards], dtype=torch.float32),
        "reward/n_steps": n_steps,
    }
    return rewards, info


# ---------------------------------------------------------------------------------------------
# KL per token (SPEC "KL estimators per token"; Schulman, "Approximating KL divergence", 2020)

KL_ESTIMATORS: Registry[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = \
    Registry("kl estimator")


@KL_ESTIMATORS.register("k1")
def _kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = log π − log π_ref (unbiased, can be negative)."""
    return logp - ref_logp


@KL_ESTIMATORS.register("k2")
def _kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = ½ (log π − log π_ref)² (biased, low variance, ≥ 0)."""
    return 0.5 * (logp - ref_logp) ** 2


@KL_ESTIMATORS.register("k3")
def _kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = exp(log π_ref − log π) − (log π_ref − log π) − 1 (unbiased, ≥ 0; GRPO's KL)."""
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1.0


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token KL estimate (B, T) from log π and log π_ref of the sampled tokens, (B, T) each:
    k1 = log π − log π_ref; k3 = exp(log π_ref − log π) − (log π_ref − log π) − 1 (also k2)."""
    return KL_ESTIMATORS.get(kind)(logp, ref_logp)


def add_kl_to_rewards(rewards: torch.Tensor, kl: torch.Tensor, kl_coef: float,
                      mask: torch.Tensor) -> torch.Tensor:
    """r_t − kl_coef · KL_t on response tokens (mask 1), r_t unchanged on padding; all (B, T)."""
    return rewards - kl_coef * torch.where(mask.bool(), kl, torch.zeros_like(kl))
