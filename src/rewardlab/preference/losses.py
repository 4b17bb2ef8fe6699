"""Preference-optimisation losses: DPO, IPO, KTO, ORPO, SimPO, Step-DPO (SPEC "Preference optimisation").

Inputs are per-sequence SUMMED log-probabilities of the response tokens, shape (B,):
``policy_chosen_logps`` = Σ_t log π(y_w,t | x, y_w,<t) etc.; lengths |y| (B,) count response
tokens. h = log π(y|x) − log π_ref(y|x) is the policy/reference log-ratio. Every loss returns
``(loss, metrics)``: a scalar (mean over the batch) and floats under ``rewards/…`` (the implicit
rewards, their margin and the fraction of pairs ranked right) and ``logps/…``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F

from rewardlab.registry import Registry


def _pair_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                  policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor
                  ) -> dict[str, float]:
    c, r = chosen_rewards.detach().float(), rejected_rewards.detach().float()
    return {
        "rewards/chosen": c.mean().item(),
        "rewards/rejected": r.mean().item(),
        "rewards/margins": (c - r).mean().item(),
        "rewards/accuracies": (c > r).float().mean().item(),
        "logps/chosen": policy_chosen_logps.detach().float().mean().item(),
        "logps/rejected": policy_rejected_logps.detach().float().mean().item(),
    }


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
             beta: float = 0.1) -> tuple[torch.Tensor, dict[str, float]]:
    """L = −log σ(β (h_w − h_l)) (Rafailov et al. 2023, "Direct Preference Optimization",
    arXiv 2305.18290). All inputs (B,) summed log-probs; implicit rewards β·h."""
    h_w = policy_chosen_logps - ref_chosen_logps
    h_l = policy_rejected_logps - ref_rejected_logps
    loss = -F.logsigmoid(beta * (h_w - h_l)).mean()
    return loss, _pair_metrics(beta * h_w, beta * h_l, policy_chosen_logps, policy_rejected_logps)


def ipo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
             beta: float = 0.1) -> tuple[torch.Tensor, dict[str, float]]:
    """L = (h_w − h_l − 1/(2β))² (Azar et al. 2023, "A General Theoretical Paradigm to Understand
    Learning from Human Preferences", arXiv 2310.12036; β is their τ). Inputs (B,)."""
    h_w = policy_chosen_logps - ref_chosen_logps
    h_l = policy_rejected_logps - ref_rejected_logps
    loss = ((h_w - h_l - 1.0 / (2.0 * beta)) ** 2).mean()
    return loss, _pair_metrics(beta * h_w, beta * h_l, policy_chosen_logps, policy_rejected_logps)


def kto_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor,
             beta: float = 0.1, lambda_d: float = 1.0, lambda_u: float = 1.0,
             policy_kl_logps: torch.Tensor | None = None, ref_kl_logps: torch.Tensor | None = None,
             kl_mean: float | torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """KTO (Ethayarajh et al. 2024, arXiv 2402.01306), per example with h = log π − log π_ref:
    desirable   λ_D (1 − σ(β (h − z_ref))),   undesirable   λ_U (1 − σ(β (z_ref − h))),
    z_ref = max(0, mean KL(π‖π_ref)) detached, estimated from mismatched pairs
    (``policy_kl_logps − ref_kl_logps``, (M,)) when given, else from this batch's h; ``kl_mean``
    gives the estimate itself (the mean h of a batch sharded over processes, :func:`kto_kl_sums`
    summed over the shards), so every shard uses the whole batch's z_ref.

    policy_logps, ref_logps: (B,) summed log-probs of unpaired responses; desirable: (B,) bool.
    Loss = mean over the B examples. Metrics: rewards/chosen and rewards/rejected (mean β·h of
    the desirable / undesirable examples, when present), rewards/margins, kl (z_ref)."""
    h = policy_logps - ref_logps                                         # (B,)
    d = torch.as_tensor(desirable, device=h.device).bool()
    with torch.no_grad():
        if kl_mean is not None:
            z_ref = torch.as_tensor(kl_mean, dtype=torch.float32, device=h.device).clamp(min=0)
        else:
            kl = (policy_kl_logps - ref_kl_logps) if policy_kl_logps is not None else h
            z_ref = kl.float().mean().clamp(min=0)
    losses = torch.where(d, lambda_d * (1 - torch.sigmoid(beta * (h - z_ref))),
                         lambda_u * (1 - torch.sigmoid(beta * (z_ref - h))))
    loss = losses.mean()
    metrics = {"kl": z_ref.item()}
    rewards = (beta * h).detach().float()
    if d.any():
        metrics["rewards/chosen"] = rewards[d].mean().item()
    if (~d).any():
        metrics["rewards/rejected"] = rewards[~d].mean().item()
    if d.any() and (~d).any():
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return loss, metrics


def kto_kl_sums(policy_logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """[Σ h, n] over every response of a batch (any shape; a KTO batch of pairs counts its chosen
    and rejected responses), h = log π − log π_ref, detached, float64: the parts of KTO's batch
    estimate z_ref = max(0, Σ h / n) that add up over the shards of a batch."""
    h = (policy_logps.detach() - ref_logps.detach()).double()
    return torch.stack([h.sum(), torch.tensor(float(h.numel()), dtype=torch.float64,
                                              device=h.device)])


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x < 0, stable on both sides (Mächler 2012): log(−expm1(x)) near 0,
    log1p(−exp(x)) below −ln 2. x is clamped to ≤ −1e-6 (a probability below 1) so that
    log odds stay finite and gradients are never nan."""
    x = x.clamp(max=-1e-6)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
              chosen_lengths: torch.Tensor, rejected_lengths: torch.Tensor, lam: float = 0.1
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """L = L_SFT + λ·(−log σ(log odds_w − log odds_l)), odds = p/(1 − p) on the length-normalised
    likelihood log p = log π(y|x)/|y|, so log odds = log p − log(1 − exp(log p)) (Hong et al.
    2024, "ORPO", arXiv 2403.07691); L_SFT = −log π(y_w|x)/|y_w|. No reference model.

    Inputs (B,). Metrics as DPO's with rewards λ·log p, plus orpo/log_odds_ratio, orpo/nll_loss."""
    logp_w = policy_chosen_logps / chosen_lengths
    logp_l = policy_rejected_logps / rejected_lengths
    log_odds = (logp_w - log1mexp(logp_w)) - (logp_l - log1mexp(logp_l))     # (B,)
    nll = -logp_w
    loss = (nll - lam * F.logsigmoid(log_odds)).mean()
    metrics = _pair_metrics(lam * logp_w, lam * logp_l, policy_chosen_logps, policy_rejected_logps)
    metrics["orpo/log_odds_ratio"] = log_odds.detach().mean().item()
    metrics["orpo/nll_loss"] = nll.detach().mean().item()
    return loss, metrics


def simpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
               chosen_lengths: torch.Tensor, rejected_lengths: torch.Tensor, beta: float = 2.0,
               gamma: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """L = −log σ(β/|y_w| log π(y_w|x) − β/|y_l| log π(y_l|x) − γ) (Meng et al. 2024, "SimPO",
    arXiv 2405.14734; defaults β = 2, γ/β = 0.5). No reference model. Inputs (B,); implicit
    rewards β/|y|·log π."""
    r_w = beta * policy_chosen_logps / chosen_lengths
    r_l = beta * policy_rejected_logps / rejected_lengths
    loss = -F.logsigmoid(r_w - r_l - gamma).mean()
    return loss, _pair_metrics(r_w, r_l, policy_chosen_logps, policy_rejected_logps)


# ---------------------------------------------------------------------------------------------
# Registry: fn(inputs: PreferenceInputs, cfg: PreferenceLossConfig) -> (loss, metrics)

@dataclass
class PreferenceInputs:
    """A batch of B preference pairs; each loss names the fields it needs."""

    policy_chosen_logps: torch.Tensor
    """(B,) Σ_t log π(y_w,t) of the chosen responses."""
    policy_rejected_logps: torch.Tensor | None = None
    """(B,) Σ_t log π(y_l,t) of the rejected responses (None for unpaired KTO rows)."""
    ref_chosen_logps: torch.Tensor | None = None
    """(B,) the reference model's, for dpo / ipo / kto."""
    ref_rejected_logps: torch.Tensor | None = None
    """(B,) the reference model's, for dpo / ipo / kto."""
    chosen_lengths: torch.Tensor | None = None
    """(B,) response tokens of y_w, for orpo / simpo."""
    rejected_lengths: torch.Tensor | None = None
    """(B,) response tokens of y_l, for orpo / simpo."""
    desirable: torch.Tensor | None = None
    """(B,) bool: the rows are unpaired (KTO only): ``policy_chosen_logps`` / ``ref_chosen_logps``
    hold each row's log-probs, desirable or not as given here."""
    kto_kl: float | None = None
    """KTO only: the batch's mean log-ratio Σh/n over every shard of a batch sharded over
    processes (:func:`kto_kl_sums`); None: estimated from this batch."""

    def need(self, loss: str, *fields: str) -> None:
        missing = [f for f in fields if getattr(self, f) is None]
        if missing:
            raise ValueError(f"preference loss '{loss}' needs {', '.join(missing)}")


@dataclass
class PreferenceLossConfig:
    """Hyper-parameters of the preference losses."""

    RANGES: ClassVar[dict[str, str]] = {
        "beta": "(0, inf)", "kto_lambda_d": "[0, inf)", "kto_lambda_u": "[0, inf)",
        "orpo_lambda": "[0, inf)", "simpo_beta": "(0, inf)"}

    beta: float = 0.1
    """β of DPO, KTO and IPO (IPO's τ): strength of the implicit KL to the reference."""
    kto_lambda_d: float = 1.0
    """KTO weight λ_D of desirable examples."""
    kto_lambda_u: float = 1.0
    """KTO weight λ_U of undesirable examples."""
    orpo_lambda: float = 0.1
    """ORPO weight λ of the odds-ratio term."""
    simpo_beta: float = 2.0
    """SimPO reward scale β."""
    simpo_gamma: float = 1.0
    """SimPO target reward margin γ."""


PREFERENCE_LOSSES: Registry[Callable[[PreferenceInputs, PreferenceLossConfig],
                                     tuple[torch.Tensor, dict[str, float]]]] = \
    Registry("preference loss")


@PREFERENCE_LOSSES.register("dpo")
def _pref_dpo(x: PreferenceInputs, cfg: PreferenceLossConfig):
    x.need("dpo", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")
    return dpo_loss(x.policy_chosen_logps, x.policy_rejected_logps, x.ref_chosen_logps,
                    x.ref_rejected_logps, cfg.beta)


@PREFERENCE_LOSSES.register("ipo")
def _pref_ipo(x: PreferenceInputs, cfg: PreferenceLossConfig):
    x.need("ipo", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")
    return ipo_loss(x.policy_chosen_logps, x.policy_rejected_logps, x.ref_chosen_logps,
                    x.ref_rejected_logps, cfg.beta)


@PREFERENCE_LOSSES.register("kto")
def _pref_kto(x: PreferenceInputs, cfg: PreferenceLossConfig):
    """Pairs as unpaired data (chosen desirable, rejected undesirable), or unpaired rows
    (``x.desirable``); z_ref from the batch."""
    if x.desirable is not None:
        x.need("kto", "ref_chosen_logps")
        return kto_loss(x.policy_chosen_logps, x.ref_chosen_logps, x.desirable, cfg.beta,
                        cfg.kto_lambda_d, cfg.kto_lambda_u, kl_mean=x.kto_kl)
    x.need("kto", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")
    B = x.policy_chosen_logps.shape[0]
    desirable = torch.cat([torch.ones(B, dtype=torch.bool), torch.zeros(B, dtype=torch.bool)])
    return kto_loss(torch.cat([x.policy_chosen_logps, x.policy_rejected_logps]),
                    torch.cat([x.ref_chosen_logps, x.ref_rejected_logps]),
                    desirable.to(x.policy_chosen_logps.device), cfg.beta, cfg.kto_lambda_d,
                    cfg.kto_lambda_u, kl_mean=x.kto_kl)


@PREFERENCE_LOSSES.register("orpo")
def _pref_orpo(x: PreferenceInputs, cfg: PreferenceLossConfig):
    x.need("orpo", "policy_rejected_logps", "chosen_lengths", "rejected_lengths")
    return orpo_loss(x.policy_chosen_logps, x.policy_rejected_logps, x.chosen_lengths,
                     x.rejected_lengths, cfg.orpo_lambda)


@PREFERENCE_LOSSES.register("simpo")
def _pref_simpo(x: PreferenceInputs, cfg: PreferenceLossConfig):
    x.need("simpo", "policy_rejected_logps", "chosen_lengths", "rejected_lengths")
    return simpo_loss(x.policy_chosen_logps, x.policy_rejected_logps, x.chosen_lengths,
                      x.rejected_lengths, cfg.simpo_beta, cfg.simpo_gamma)


@PREFERENCE_LOSSES.register("step_dpo")
def _pref_step_dpo(x: PreferenceInputs, cfg: PreferenceLossConfig):
    """Step-DPO (Lai et al. 2024, arXiv 2406.18629): DPO's loss, −log σ(β (h_w − h_l)), on pairs
    of single steps after a shared prefix (x = question + s_1..s_{k-1}, y_w / y_l = a right /
    the first wrong step s_k); the pairs are what differ (:func:`rewardlab.preference.pairs.step_pairs`)."""
    x.need("step_dpo", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")
    return dpo_loss(x.policy_chosen_logps, x.policy_rejected_logps, x.ref_chosen_logps,
                    x.ref_rejected_logps, cfg.beta)


REFERENCE_FREE = frozenset({"orpo", "simpo"})
"""Losses that need no reference model (every other registered loss reads ref_*_logps)."""


def needs_reference(name: str) -> bool:
    """Whether preference loss ``name`` reads the reference model's log-probs."""
    PREFERENCE_LOSSES.get(name)          # unknown names fail here, listing the known ones
    return name not in REFERENCE_FREE


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_t log π(y_t | x, y_<t) over the response tokens of each sequence, and their count |y|.

    logits (B, T, V) of the input ids (B, T); labels (B, T): the input ids on response tokens,
    -100 on the prompt and padding. Position t predicts token t+1, so the logits are shifted:
    log π(y_t) = logits[t-1, y_t] − logsumexp(logits[t-1]). Returns (logps (B,), lengths (B,)),
    float32; a sequence with no response token gets logp 0 and length 0."""
    logits = logits[:, :-1].float()                     # (B, T-1, V)
    target = labels[:, 1:]                              # (B, T-1)
    mask = target != -100
    picked = logits.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)   # (B, T-1)
    token_logps = (picked - torch.logsumexp(logits, dim=-1)) * mask
    return token_logps.sum(-1), mask.sum(-1)


def preference_loss(name: str, inputs: PreferenceInputs, cfg: PreferenceLossConfig | None = None
                    ) -> tuple[torch.Tensor, dict[str, float]]:
    """``PREFERENCE_LOSSES[name]`` (dpo | ipo | kto | orpo | simpo | step_dpo) on a batch of pairs."""
    return PREFERENCE_LOSSES.get(name)(inputs, cfg or PreferenceLossConfig())
