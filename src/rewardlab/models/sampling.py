"""Batched rollouts: n samples per prompt with a KV cache, and per-token log-probabilities.

Sampling goes through ``model.generate`` (transformers keeps the KV cache, top-p and EOS
handling) or, for Llama-family models, through the fused decoder in :mod:`rewardlab.models.fast`
(the same computation, 1.3–1.5× the tokens/s on the testbed policy; ``SamplingConfig.engine``).
Log-probabilities are then computed in one teacher-forced forward pass per micro-batch, which is
exactly what the PPO/GRPO loss later recomputes, so the ratio at the first update is 1 up to float
error.

Layout (shape vocabulary B, P, T): prompts are LEFT-padded to P; responses are RIGHT-padded to T;
``response_mask`` is 1 on real response tokens including the EOS token, 0 on padding.
"""

from __future__ import annotations


from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from rewardlab.models.batching import pad_stack, position_ids_from_mask
from rewardlab.models.fast import (fast_generate, fast_path_unsupported, generation_config_extras,
                                   response_logits)
from rewardlab.models.loading import stop_token_ids


ENGINES = ("auto", "fast", "hf")


def check_engine(engine: str, what: str) -> None:
    """Raise ValueError naming the setting ``what`` unless ``engine`` is one of :data:`ENGINES`."""
    if engine not in ENGINES:
        raise ValueError(f"{what} must be one of {' | '.join(ENGINES)}, got {engine!r}")


@dataclass
class SamplingConfig:
    """How responses are sampled."""

    RANGES: ClassVar[dict[str, str]] = {
        "n": "[1, 100000]", "temperature": "[0, inf)", "top_p": "(0, 1]", "max_new_tokens": "[1, 1000000]",
        "batch_size": "[1, inf)"}

    n: int = 1
    """Samples per prompt."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    max_new_tokens: int = 48
    """Longest response, in tokens (EOS included)."""
    batch_size: int = 256
    """Sequences generated together (prompts × n are chunked to this)."""
    engine: str = "auto"
    """Sampler: ``hf`` (``model.generate``), ``fast`` (rewardlab's fused decoder for Llama, Mistral
    and Qwen2 models, :mod:`rewardlab.models.fast`; an error for other models) or ``auto`` (fast
    where supported, else hf)."""

    def __post_init__(self):
        check_engine(self.engine, "sampling.engine")


@dataclass
class RolloutBatch:
    """Sampled responses, B = len(prompts) × n rows, ordered prompt-major (row = i·n + j)."""

    prompt_ids: torch.Tensor      # (B, P) left-padded
    prompt_mask: torch.Tensor     # (B, P)
    response_ids: torch.Tensor    # (B, T) right-padded
    response_mask: torch.Tensor   # (B, T) 1 on real tokens incl. EOS
    texts: list[str]              # decoded responses without special tokens
    prompt_index: list[int]       # row -> index into the prompt list
    finished: torch.Tensor        # (B,) bool, ended with EOS
    logprobs: torch.Tensor | None = None  # (B, T) log π(token) at the sampling temperature
    meta: dict = field(default_factory=dict)

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    def select(self, idx: list[int] | torch.Tensor) -> "RolloutBatch":
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        il = idx_t.tolist()
        return RolloutBatch(
            self.prompt_ids[idx_t], self.prompt_mask[idx_t], self.response_ids[idx_t],
            self.response_mask[idx_t], [self.texts[i] for i in il],
            [self.prompt_index[i] for i in il], self.finished[idx_t],
            None if self.logprobs is None else self.logprobs[idx_t], dict(self.meta))


def response_mask_from_ids(response_ids: torch.Tensor,
                           eos_id: int | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask 1 up to and including the first EOS (all ones where no EOS). Returns (mask, finished).
    ``eos_id``: one id, or several (the first of any of them ends the response)."""
    ids = [eos_id] if isinstance(eos_id, int) else list(eos_id)
    is_eos = torch.isin(response_ids, torch.tensor(ids, dtype=response_ids.dtype,
                                                   device=response_ids.device))   # (B, T)
    finished = is_eos.any(dim=1)
    first = torch.where(finished, is_eos.float().argmax(dim=1),
                        torch.full_like(finished, response_ids.shape[1] - 1, dtype=torch.long))
    pos = torch.arange(response_ids.shape[1], device=response_ids.device)
    mask = (pos[None, :] <= first[:, None]).long()
    return mask, finished


def forward_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_response: int,
                     temperature: float = 1.0, micro_batch: int = 64,
                     return_entropy: bool = False, fast: bool = False):
    """log π(y_t | x, y_<t) for the last ``n_response`` positions, (B, T); no gradient.
    ``fast``: through :func:`rewardlab.models.fast.response_logits` (see :func:`logprobs_with_grad`).

    Runs in ``torch.inference_mode`` (no autograd bookkeeping per op); the results are ordinary
    tensors, usable in a later loss."""
    outs, ents = [], []
    with torch.inference_mode():
        for s in range(0, input_ids.shape[0], micro_batch):
            lp, ent = logprobs_with_grad(model, input_ids[s:s + micro_batch],
                                         attention_mask[s:s + micro_batch], n_response, temperature,
                                         return_entropy, fast=fast)
            outs.append(lp)
            ents.append(ent)
    lp = torch.cat(outs)
    return (lp, torch.cat(ents)) if return_entropy else lp


def response_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, n_response: int,
                      temperature: float = 1.0, return_entropy: bool = False, entropy_grad: bool = True):
    """log π(y_t | x, y_<t) = log_softmax(z_{t-1} / τ)[y_t] for the last ``n_response`` tokens.

    logits (B, P+T, V) of a teacher-forced pass over input_ids (B, P+T); returns (B, T) log-probs
    and, when asked, the (B, T) entropies of the same distributions (else None)."""
    return token_logprobs(logits[:, -n_response - 1:-1, :], input_ids[:, -n_response:], temperature,
                          return_entropy, entropy_grad)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                   return_entropy: bool = False, entropy_grad: bool = True):
    """log_softmax(z_t / τ)[y_t] for logits (B, T, V) aligned with the labels y (B, T) they
    predict; and the entropies −Σ_v p_v log p_v (B, T) when asked (else None). With
    ``entropy_grad=False`` the entropies are computed without gradient (for logging only: the
    backward pass then skips them)."""
    logits = logits.float()
    if temperature and temperature != 1.0:
        logits = logits / temperature
    logp_all = F.log_softmax(logits, dim=-1)
    lp = logp_all.gather(-1, labels.unsqueeze(-1)).squeeze(-1)          # (B, T)
    ent = None
    if return_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            ent = -(logp_all.exp() * logp_all).sum(-1)
    return lp, ent


def logprobs_with_grad(model, input_ids, attention_mask, n_response: int, temperature: float = 1.0,
                       return_entropy: bool = False, fast: bool = False, entropy_grad: bool = True):
    """Teacher-forced response log-probs (and entropies) for one micro-batch, with gradient.

    ``fast``: the logits come from :func:`rewardlab.models.fast.response_logits`, which runs each
    distinct prompt once and shares its keys/values with the rows that repeat it (the same
    numbers as ``model(...)``, fewer FLOPs when prompts repeat, as in GRPO groups)."""
    if fast:
        logits = response_logits(model, input_ids, attention_mask, n_response)   # (B, T, V)
        return token_logprobs(logits, input_ids[:, -n_response:], temperature, return_entropy,
                              entropy_grad)
    logits = model(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids_from_mask(attention_mask)).logits   # (B, P+T, V)
    return response_logprobs(logits, input_ids, n_response, temperature, return_entropy, entropy_grad)


MAX_SAMPLES_PER_PROMPT = 100_000
MAX_SAMPLED_TOKENS = 2_000_000_000
"""Limits of one sampling call: samples per prompt, and rows × max_new_tokens in all (sizes past
them would run until memory runs out, not finish)."""


def check_sample_count(n_prompts: int, n: int, max_new_tokens: int) -> None:
    """ValueError naming the size when ``n_prompts`` prompts × ``n`` samples × ``max_new_tokens``
    exceed :data:`MAX_SAMPLES_PER_PROMPT` / :data:`MAX_SAMPLED_TOKENS`."""
    if n > MAX_SAMPLES_PER_PROMPT:
        raise ValueError(f"sampling: n={n:,} samples per prompt is more than the limit of "
                         f"{MAX_SAMPLES_PER_PROMPT:,}")
    if n_prompts * n * max_new_tokens > MAX_SAMPLED_TOKENS:
        raise ValueError(f"sampling: {n_prompts:,} prompts × n={n:,} × max_new_tokens={max_new_tokens:,} "
                         f"= {n_prompts * n * max_new_tokens:,} tokens is more than the limit of "
                         f"{MAX_SAMPLED_TOKENS:,}")


@torch.no_grad()
def generate_rollouts(model, tokenizer, prompts: list[str], cfg: SamplingConfig | None = None,
                      seed: int | None = None, compute_logprobs: bool = True,
                      use_cache: bool = True, show_progress: bool = False,
                      logprob_rows: int = 64, skip_rows: int = 0,
                      sampler_logprobs: bool = False) -> RolloutBatch:
    """Sample ``cfg.n`` responses for every prompt (see the module docstring for the layout);
    with ``compute_logprobs``, their log-probs in passes of ``logprob_rows`` rows, or, with
    ``sampler_logprobs`` where the fast engine sampled every row, the sampler's own (no extra
    pass; equal up to float rounding: :func:`rewardlab.models.fast.fast_generate`).

    ``skip_rows``: these prompts are rows ``skip_rows …`` of a larger batch sampled with the same
    ``seed`` (one process's shard); the fast engine then draws the uniforms those rows get in the
    whole batch, so a sharded run samples the tokens a one-process run samples."""
    cfg = cfg or SamplingConfig()
    if cfg.n < 1 or cfg.max_new_tokens < 1:
        raise ValueError("sampling: n and max_new_tokens must be >= 1")
    check_sample_count(len(prompts), cfg.n, cfg.max_new_tokens)
    device = next(model.parameters()).device
    if seed is not None:
        torch.manual_seed(seed)
    if skip_rows and cfg.temperature != 0:   # the fast sampler's (row, step) uniforms of earlier rows
        torch.rand(skip_rows, cfg.max_new_tokens, device=device)
    rows = [i for i in range(len(prompts)) for _ in range(cfg.n)]
    greedy = cfg.temperature == 0
    was_training = model.training
    model.eval()
    chunks = []
    rng = range(0, len(rows), cfg.batch_size)
    if show_progress:
        from rich.progress import track
        rng = track(rng, description="sampling")
    fast = use_fast_engine(model, cfg.engine, use_cache)
    stop = stop_token_ids(model, tokenizer)
    eos = stop[0] if len(stop) == 1 else (stop or None)
    min_new = getattr(getattr(model, "generation_config", None), "min_new_tokens", None)
    for s in rng:
        idx = rows[s:s + cfg.batch_size]
        # each distinct prompt tokenized once (a prompt repeats n times), then one row per sample
        distinct = list(dict.fromkeys(idx))
        enc = tokenizer([prompts[i] for i in distinct], return_tensors="pt", padding=True,
                        add_special_tokens=False)
        slot = {i: j for j, i in enumerate(distinct)}
        where = torch.tensor([slot[i] for i in idx])
        enc = {k: v[where].to(device) for k, v in enc.items()}
        if fast and bool(enc["attention_mask"][:, -1].all()):  # left-padded prompts

            want_lp = compute_logprobs and sampler_logprobs
            resp = fast_generate(model, enc["input_ids"], enc["attention_mask"], cfg.max_new_tokens,
                                 eos, tokenizer.pad_token_id,
                                 temperature=cfg.temperature, top_p=cfg.top_p,
                                 min_new_tokens=min_new or 0, return_logprobs=want_lp)
            resp, lp = resp if want_lp else (resp, None)
            chunks.append((enc["input_ids"], enc["attention_mask"], resp, lp))
            continue
        gen_kwargs = dict(max_new_tokens=cfg.max_new_tokens, do_sample=not greedy,
                          pad_token_id=tokenizer.pad_token_id, eos_token_id=eos,
                          use_cache=use_cache)
        if not greedy:
            gen_kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
        out = model.generate(**enc, **gen_kwargs)
        chunks.append((enc["input_ids"], enc["attention_mask"], out[:, enc["input_ids"].shape[1]:], None))
    if was_training:
        model.train()
    prompt_ids = pad_stack([c[0] for c in chunks], tokenizer.pad_token_id, left=True)
    prompt_mask = pad_stack([c[1] for c in chunks], 0, left=True)
    resp = pad_stack([c[2] for c in chunks], tokenizer.pad_token_id, left=False)
    if resp.shape[1] == 0:
        raise RuntimeError("generation returned no tokens")
    mask, finished = response_mask_from_ids(resp, stop)
    resp = torch.where(mask.bool(), resp, torch.full_like(resp, tokenizer.pad_token_id))
    texts = decode_responses(tokenizer, resp, mask, finished)
    batch = RolloutBatch(prompt_ids, prompt_mask, resp, mask, texts, rows, finished)
    if compute_logprobs and all(c[3] is not None for c in chunks):   # the sampler's own
        batch.logprobs = pad_stack([c[3] for c in chunks], 0, left=False)[:, :resp.shape[1]] * mask
    elif compute_logprobs:
        batch.logprobs = forward_logprobs(model, batch.input_ids, batch.attention_mask,
                                          resp.shape[1], temperature=cfg.temperature or 1.0,
                                          micro_batch=logprob_rows, fast=fast) * mask
    return batch


def use_fast_engine(model, engine: str, use_cache: bool = True, sampling: bool = True) -> bool:
    """Whether ``engine`` (auto | fast | hf) runs ``model`` through :mod:`rewardlab.models.fast`:
    only where that is exactly what transformers would compute (a supported architecture and, for
    ``sampling``, no extra logits processors in the model's generation config)."""

    what = "sampling.engine" if sampling else "engine"
    check_engine(engine, what)
    if engine == "hf" or not use_cache:
        if engine == "fast":
            raise ValueError(f"{what}=fast always uses a KV cache (use_cache=False needs engine=hf)")
        return False
    reason = fast_path_unsupported(model) or (generation_config_extras(model) if sampling else None)
    if reason and engine == "fast":
        raise ValueError(f"{what}=fast cannot run this model: {reason}; use engine=auto or hf")
    return reason is None


def decode_responses(tokenizer, response_ids: torch.Tensor, mask: torch.Tensor,
                     finished: torch.Tensor | None = None) -> list[str]:
    """The text of each response's masked tokens, special tokens skipped; with ``finished``
    (B,) bool, a finished row's last masked token (its stop token, which need not be a special
    token) is left out too."""
    lens = mask.sum(1)
    if finished is not None:
        lens = lens - finished.long()
    lens = lens.tolist()
    return [tokenizer.decode(r[:n].tolist(), skip_special_tokens=True)
            for r, n in zip(response_ids, lens)]


