"""Reward-model math as pure functions (torch only): losses, step probabilities, aggregation.

Shape vocabulary: B batch, L sequence positions, K steps. Label convention shared by every loss
here: a target of ``-100`` (``IGNORE_INDEX``) marks a position that carries no label; every other
target is a probability in [0, 1] (hard labels are 0.0 / 1.0, soft labels anything between).

Two-class "pair" logits ``z = (z_bad, z_good)`` are the PRM's reading at a step tag: for the
LM-head form they are the LM logits of the two label tokens ('-', '+'), for the head form the
outputs of a 2-class token-classification head (class 1 = good, as in TRL's PRMTrainer and
Qwen2.5-Math-PRM). Then p = softmax(z)[1] = σ(z_good − z_bad), so the step's logit
logit(p) is exactly the logit difference ``z_good − z_bad``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from rewardlab.models.batching import IGNORE_INDEX

AGGREGATIONS = ("product", "min", "last")


def step_probs(pair_logits: torch.Tensor) -> torch.Tensor:
    """p = softmax(z)[..., 1] = P('+'), for pair logits (..., 2) ordered (bad, good)."""
    return torch.softmax(pair_logits.float(), dim=-1)[..., 1]


def step_logit(pair_logits: torch.Tensor) -> torch.Tensor:
    """logit(P('+')) = z_good − z_bad: the step's scalar score for preference training."""
    z = pair_logits.float()
    return z[..., 1] - z[..., 0]


def prm_ce_loss(pair_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Soft cross-entropy over the two label logits at every labelled position.

    L = −mean_{tags} [ y log p + (1 − y) log(1 − p) ],  p = softmax(z)[1]
    (Math-Shepherd, arXiv 2312.08935; with y ∈ {0,1} this is the usual 2-way CE on the '+'/'-'
    logits). ``pair_logits`` (B, L, 2), ``targets`` (B, L) with IGNORE_INDEX at untagged positions.
    Returns 0 (with a gradient path) when no position is labelled."""
    sel = targets != IGNORE_INDEX                                    # (B, L)
    if not bool(sel.any()):
        return pair_logits.sum() * 0.0
    logp = F.log_softmax(pair_logits[sel].float(), dim=-1)     # (N, 2)
    y = targets[sel].float()                                   # (N,)
    return -(y * logp[:, 1] + (1.0 - y) * logp[:, 0]).mean()


def orm_bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of scalar head logits against the solution label, mean over the
    labelled positions (every solution token, or only the last one).

    L = −mean_{t labelled} [ y log σ(h_t) + (1 − y) log(1 − σ(h_t)) ]  (Cobbe et al. 2021,
    arXiv 2110.14168). ``logits`` and ``targets`` are (B, L); IGNORE_INDEX marks unlabelled positions."""
    sel = targets != IGNORE_INDEX
    if not bool(sel.any()):
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[sel].float(), targets[sel].float())


def bt_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: float | torch.Tensor = 0.0,
            centering: float = 0.0) -> torch.Tensor:
    """Bradley–Terry loss with optional margin and centering, mean over the batch (B,).

    L = −log σ(r_c − r_r − m) + c · (r_c + r_r)²
    (Ouyang et al. 2022; the margin of Llama 2, arXiv 2307.09288; the centering term of
    Eisenstein et al. 2023, arXiv 2312.09244)."""
    diff = r_chosen.float() - r_rejected.float() - margin
    loss = -F.logsigmoid(diff)
    if centering:
        loss = loss + centering * (r_chosen.float() + r_rejected.float()) ** 2
    return loss.mean()


def aggregate(step_scores: Sequence[float], how: str = "product") -> float:
    """Solution score from step scores p_1..p_K.

    product: Π_k p_k;  min: min_k p_k;  last: p_K.  K = 0 gives 1.0 for every rule (the empty
    product; an empty solution has no bad step)."""
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; use one of {list(AGGREGATIONS)}")
    if len(step_scores) == 0:
        return 1.0
    if how == "product":
        return float(math.prod(float(p) for p in step_scores))
    if how == "min":
        return float(min(step_scores))
    return float(step_scores[-1])
