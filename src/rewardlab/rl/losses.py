"""Policy-gradient losses for PPO / GRPO / GSPO, the clipped value loss, and the token-level
helpers they share (masked mean, log-probs and entropy from logits, KL in the loss).

Shapes: B responses, T response tokens, V vocabulary. ``mask`` (B, T) is 1 on real response
tokens (EOS included) and 0 on padding; a position where it is 0 never changes a loss, whatever
value (even inf or nan) sits there. Losses return ``(loss, metrics)``: a scalar tensor and a dict
of floats with namespaced keys (``actor/…``, ``critic/…``).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from rewardlab.registry import Registry
from rewardlab.rewards.compose import kl_penalty


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ x·m / Σ m over positions where the 0/1 ``mask`` (same shape as x) is 1, over all of x
    (dim=None) or along ``dim``; 0 where nothing is selected. Masked values never leak (no
    x·0 = nan for x = inf)."""
    m = mask.bool()
    xm = torch.where(m, x, torch.zeros_like(x))
    if dim is None:
        return xm.sum() / m.sum().clamp(min=1)
    return xm.sum(dim) / m.sum(dim).clamp(min=1)


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log π(y_t) = z_{y_t} − logsumexp(z): (B, T, V) logits, (B, T) labels → (B, T).

    Memory-friendly: never materialises the (B, T, V) log-softmax; one row's worth at a time
    (float16/bfloat16 logits are upcast row by row)."""
    if logits.dtype in (torch.float32, torch.float64):
        z_y = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)                  # (B, T)
        return z_y - torch.stack([torch.logsumexp(row, dim=-1) for row in logits])
    return torch.stack([F.log_softmax(row.float(), dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
                        for row, y in zip(logits, labels)])


def entropy_from_logits(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """H_t = −Σ_v π_v log π_v = logsumexp(z) − Σ_v softmax(z)_v z_v per token: (B, T, V) → (B, T),
    0 where ``mask`` is 0. Computed one row at a time in float32, with gradient."""
    rows = []
    for row in logits:                                                   # (T, V)
        logp = F.log_softmax(row.float(), dim=-1)
        rows.append(-(logp.exp() * logp).sum(-1))
    H = torch.stack(rows)                                                # (B, T)
    return H if mask is None else torch.where(mask.bool(), H, torch.zeros_like(H))


# ---------------------------------------------------------------------------------------------
# Loss aggregation: fn(loss_mat (B, T), mask (B, T), norm_len) -> scalar
#
# With ℓ_it the per-token loss, m_it the mask, |o_i| = Σ_t m_it and B' the responses with at
# least one token (empty rows never count):
#   token-mean               Σ_it m ℓ / Σ_it m                      DAPO, verl's default
#   seq-mean-token-mean      (1/B') Σ_i (1/|o_i|) Σ_t m ℓ          GRPO paper, GSPO
#   seq-mean-token-sum       (1/B') Σ_i Σ_t m ℓ
#   seq-mean-token-sum-norm  (1/B') Σ_i Σ_t m ℓ / L  = Σ_it m ℓ / (B'·L), L a constant
#                            (max_new_tokens: Dr. GRPO, TRL's loss_type="dr_grpo")
# AGG_UNITS says what each one averages over, so that micro-batches can be weighted to give the
# full batch's loss: a micro-batch's weight is its units over the batch's units (agg_units).

LOSS_AGGREGATIONS: Registry[Callable[[torch.Tensor, torch.Tensor, int | None], torch.Tensor]] = \
    Registry("loss aggregation")


def _mean_over_sequences(per_seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    has_tokens = mask.bool().any(dim=-1)                      # (B,) empty rows do not count
    return masked_mean(per_seq, has_tokens)


@LOSS_AGGREGATIONS.register("token-mean")
def _agg_token_mean(loss_mat: torch.Tensor, mask: torch.Tensor,
                    norm_len: int | None = None) -> torch.Tensor:
    """Σ_it m ℓ / Σ_it m: mean over all response tokens of the batch (long responses weigh
    more; DAPO, verl's default, TRL's loss_type="dapo")."""
    return masked_mean(loss_mat, mask)


@LOSS_AGGREGATIONS.register("seq-mean-token-sum")
def _agg_seq_mean_token_sum(loss_mat: torch.Tensor, mask: torch.Tensor,
                            norm_len: int | None = None) -> torch.Tensor:
    """(1/B') Σ_i Σ_t m_it ℓ_it: mean over responses of the sum over their tokens."""
    per_seq = torch.where(mask.bool(), loss_mat, torch.zeros_like(loss_mat)).sum(-1)
    return _mean_over_sequences(per_seq, mask)


@LOSS_AGGREGATIONS.register("seq-mean-token-mean")
def _agg_seq_mean_token_mean(loss_mat: torch.Tensor, mask: torch.Tensor,
                             norm_len: int | None = None) -> torch.Tensor:
    """(1/B') Σ_i (1/|o_i|) Σ_t m_it ℓ_it: mean over responses of the mean over their tokens
    (the GRPO paper's objective, DeepSeekMath eq. 3; GSPO, arXiv 2507.18071)."""
    return _mean_over_sequences(masked_mean(loss_mat, mask, dim=-1), mask)


@LOSS_AGGREGATIONS.register("seq-mean-token-sum-norm")
def _agg_seq_mean_token_sum_norm(loss_mat: torch.Tensor, mask: torch.Tensor,
                                 norm_len: int | None = None) -> torch.Tensor:
    """(1/B') Σ_i Σ_t m_it ℓ_it / L = Σ_it m ℓ / (B'·L) with L = ``norm_len`` a constant
    (Dr. GRPO, arXiv 2503.20783: no per-response length normalisation; TRL divides by
    max_completion_length). Pass the generation budget (``max_new_tokens``), as the trainer
    does, so the loss of a row does not depend on how wide the batch happens to be padded;
    ``norm_len=None`` falls back to T = loss_mat.shape[-1], the padded width."""
    L = loss_mat.shape[-1] if norm_len is None else norm_len
    per_seq = torch.where(mask.bool(), loss_mat, torch.zeros_like(loss_mat)).sum(-1)
    return _mean_over_sequences(per_seq / L, mask)


AGG_UNITS = {"token-mean": "tokens", "seq-mean-token-mean": "sequences",
             "seq-mean-token-sum": "sequences", "seq-mean-token-sum-norm": "sequences"}
"""What each aggregation averages over: response tokens, or responses with ≥ 1 token (for
seq-mean-token-sum-norm the denominator is B'·L with L constant, so B' alone sets the share)."""


def agg_units(mask: torch.Tensor, agg: str = "token-mean") -> torch.Tensor:
    """The denominator count of ``agg`` over ``mask`` (B, T): Σ m for token-mean, the number of
    rows with a token for the sequence means. A micro-batch whose loss is aggregated by ``agg``
    and weighted by agg_units(micro)/agg_units(batch) adds up to the batch's loss."""
    LOSS_AGGREGATIONS.get(agg)                                 # unknown name: the registry error
    m = mask.bool()
    return (m.sum() if AGG_UNITS[agg] == "tokens" else m.any(dim=-1).sum()).float()


def aggregate_loss(loss_mat: torch.Tensor, mask: torch.Tensor, agg: str = "token-mean",
                   norm_len: int | None = None) -> torch.Tensor:
    """Scalar loss from per-token losses (B, T) by ``LOSS_AGGREGATIONS[agg]``; ``norm_len`` is
    Dr. GRPO's constant L (seq-mean-token-sum-norm only)."""
    return LOSS_AGGREGATIONS.get(agg)(loss_mat, mask, norm_len)


# ---------------------------------------------------------------------------------------------
# Importance ratios: fn(logp, old_logp, mask) -> log ρ (B, T), 0 where mask is 0

RATIOS: Registry[Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = \
    Registry("ratio")


@RATIOS.register("token")
def _log_ratio_token(logp: torch.Tensor, old_logp: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
    """log ρ_t = log π(y_t) − log π_old(y_t) (PPO, Schulman et al. 2017)."""
    return torch.where(mask.bool(), logp - old_logp, torch.zeros_like(logp))


@RATIOS.register("sequence")
def _log_ratio_sequence(logp: torch.Tensor, old_logp: torch.Tensor,
                        mask: torch.Tensor) -> torch.Tensor:
    """GSPO (Zheng et al. 2025, arXiv 2507.18071): s_i = exp(mean_t (log π − log π_old)) over the
    response's tokens, used on every token in its GSPO-token form s_{i,t} = sg[s_i]·π_t/sg[π_t]:
    the value is s_i and ∇ s_{i,t} = s_i ∇ log π_t, so with ``agg="seq-mean-token-mean"`` and a
    sequence-level advantage the gradient equals GSPO's."""
    m = mask.bool()
    log_s = masked_mean(logp - old_logp, m, dim=-1)                      # (B,) log s_i
    log_ratio = log_s.detach()[:, None] + logp - logp.detach()           # (B, T)
    return torch.where(m, log_ratio, torch.zeros_like(log_ratio))


def ppo_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip_eps: float = 0.2, clip_eps_high: float | None = None,
                    ratio: str = "token", agg: str = "token-mean", norm_len: int | None = None
                    ) -> tuple[torch.Tensor, dict[str, float]]:
    """L = −min(ρ A, clip(ρ, 1 − ε, 1 + ε_high) A), aggregated by ``agg`` (PPO, Schulman et al.
    2017, arXiv 1707.06347; ε_high ≠ ε is DAPO's clip-higher, arXiv 2503.14476; ``None``: ε).
    ``norm_len``: Dr. GRPO's constant L for ``agg="seq-mean-token-sum-norm"``.

    logp, old_logp, advantages, mask: (B, T). ``ratio="token"``: ρ_t = exp(log π − log π_old);
    ``ratio="sequence"``: GSPO's length-normalised sequence ratio (use a small ε there, ~3e-4).
    Metrics: actor/pg_loss, actor/clipfrac (fraction of tokens where the clipped term is the
    smaller one, i.e. the gradient is cut), actor/approx_kl (k3 of π_old‖π: (ρ − 1) − log ρ per
    token), actor/ratio_mean."""
    m = mask.bool()
    log_ratio = RATIOS.get(ratio)(logp, old_logp, m)
    rho = torch.exp(log_ratio)                                           # (B, T)
    A = torch.where(m, advantages, torch.zeros_like(advantages))
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    surr1 = rho * A
    surr2 = torch.clamp(rho, 1.0 - clip_eps, 1.0 + eps_high) * A
    pg_losses = -torch.min(surr1, surr2)
    loss = aggregate_loss(pg_losses, m, agg, norm_len)
    with torch.no_grad():
        token_log_ratio = torch.where(m, logp - old_logp, torch.zeros_like(logp))
        metrics = {
            "actor/pg_loss": loss.item(),
            "actor/clipfrac": masked_mean((surr2 < surr1).float(), m).item(),
            "actor/approx_kl": masked_mean(torch.expm1(token_log_ratio) - token_log_ratio,
                                           m).item(),
            "actor/ratio_mean": masked_mean(rho, m).item(),
        }
    return loss, metrics


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, clip_eps: float | None = 0.2, agg: str = "token-mean"
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """L_V = ½ max((V − R)², (V_old + clip(V − V_old, −ε, ε) − R)²), aggregated by ``agg``
    (clipped value loss of PPO as in OpenAI baselines / cleanrl; ``clip_eps=None`` → ½ (V − R)²).

    values, old_values, returns, mask: (B, T). Metrics: critic/vf_loss, critic/vf_clipfrac
    (fraction of tokens where the clipped error is the larger one), critic/explained_variance
    (1 − Var[R − V_old]/Var[R] over the mask, nan when Var[R] = 0, as cleanrl)."""
    m = mask.bool()
    vf_losses1 = (values - returns) ** 2
    if clip_eps is None:
        vf_losses2 = vf_losses1
    else:
        v_clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
        vf_losses2 = (v_clipped - returns) ** 2
    loss = 0.5 * aggregate_loss(torch.max(vf_losses1, vf_losses2), m, agg)
    with torch.no_grad():
        var_R = _masked_var(returns, m)
        var_err = _masked_var(returns - old_values, m)
        explained = (1.0 - var_err / var_R).item() if var_R > 0 else float("nan")
        metrics = {
            "critic/vf_loss": loss.item(),
            "critic/vf_clipfrac": masked_mean((vf_losses2 > vf_losses1).float(), m).item(),
            "critic/explained_variance": explained,
        }
    return loss, metrics


def _masked_var(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return masked_mean((x - masked_mean(x, m)) ** 2, m)


def kl_loss(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, kind: str = "k3",
            agg: str = "token-mean", norm_len: int | None = None, clamp: float | None = None
            ) -> tuple[torch.Tensor, dict[str, float]]:
    """KL(π‖π_ref) as a loss term, GRPO-style: the per-token estimator ``kind`` (k3 =
    π_ref/π − log(π_ref/π) − 1, DeepSeekMath eq. 4; or k1, k2), clamped to [−c, c] when
    ``clamp`` = c is given (verl clamps k3 at 10; rewardlab does not by default), aggregated by
    ``agg`` (``norm_len`` as in :func:`aggregate_loss`). logp, ref_logp, mask: (B, T).
    Metrics: actor/kl_loss."""
    m = mask.bool()
    safe_logp = torch.where(m, logp, torch.zeros_like(logp))
    safe_ref = torch.where(m, ref_logp, torch.zeros_like(ref_logp))
    kl = kl_penalty(safe_logp, safe_ref, kind)
    if clamp is not None:
        kl = kl.clamp(-clamp, clamp)
    loss = aggregate_loss(kl, m, agg, norm_len)
    return loss, {"actor/kl_loss": loss.item()}


# ---------------------------------------------------------------------------------------------
# Implicit PRM (PRIME: Cui et al. 2025, arXiv 2502.01456; Yuan et al. 2024, "Free Process
# Rewards without Process Labels", arXiv 2412.01981)

def implicit_process_rewards(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                             beta: float) -> torch.Tensor:
    """r_t = β · (log π_φ(y_t | y_<t) − log π_ref(y_t | y_<t)) on response tokens, 0 on padding;
    logp (log π_φ), ref_logp, mask: (B, T). Differentiable through ``logp``."""
    m = mask.bool()
    return torch.where(m, beta * (logp - ref_logp), torch.zeros_like(logp))


def implicit_prm_loss(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                      labels: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict]:
    """The implicit PRM's outcome loss (Yuan et al. 2024, eq. 3; PRIME eq. 4): the response's
    outcome logit is the summed implicit reward z = β Σ_t m_t (log π_φ − log π_ref), and

        L = −(1/B) Σ_i [ y_i log σ(z_i) + (1 − y_i) log(1 − σ(z_i)) ]

    with y_i ∈ [0, 1] the outcome label (1 = correct). logp, ref_logp, mask (B, T); labels (B,).
    Metrics: ``prime/rm_loss``, ``prime/rm_acc`` (fraction with 1[z > 0] = 1[y > 0.5]) and
    ``prime/rm_logit`` (mean z)."""
    z = implicit_process_rewards(logp, ref_logp, mask, beta).sum(1)            # (B,)
    y = torch.as_tensor(labels, dtype=z.dtype, device=z.device).flatten()
    if y.shape != z.shape:
        raise ValueError(f"labels must have shape ({z.shape[0]},), got {tuple(y.shape)}")
    loss = F.binary_cross_entropy_with_logits(z, y)
    with torch.no_grad():
        acc = ((z > 0) == (y > 0.5)).float().mean()
    return loss, {"prime/rm_loss": float(loss.detach()), "prime/rm_acc": float(acc),
                  "prime/rm_logit": float(z.detach().mean())}
