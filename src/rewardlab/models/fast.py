"""A fast path for sampling from Llama-family decoders (Llama, Mistral, Qwen2) on small batches.

Why: at the sizes RL on the testbed uses (a 0.7M-parameter policy, 64 sequences), one decoding
step through ``model.generate`` costs ~5 ms, almost all of it Python around ~100 small tensor
ops per step: module calls, the cache object growing every layer's K/V with ``torch.cat``,
attention-mask construction, logits processors. The arithmetic is ~0.1 GFLOP. This module runs
the same decoder as a few fused functional calls over the model's **own weights**:

    h   = x + W_o · attn(RoPE(W_q·n₁(x)), RoPE(W_k·n₁(x)), W_v·n₁(x))      n = RMSNorm
    out = h + W_down · (silu(W_gate·n₂(h)) ⊙ W_up·n₂(h))

with q/k/v (and gate/up) projections concatenated into one matmul, the K/V cache preallocated
once per call and written in place, and RoPE's cos/sin taken from the model's own
``rotary_emb`` module (so every RoPE scaling type the model supports is honoured).

Only used where it is exactly the model's computation: :func:`fast_path_unsupported` names what
rules a model out (another architecture, LoRA/quantised layers, sliding windows, device maps …)
and callers then fall back to ``model.generate``. Tests check logits and greedy tokens against
transformers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


def fast_path_unsupported(model) -> str | None:
    """Why :func:`fast_generate` cannot run ``model`` exactly, or None when it can."""
    cfg = getattr(model, "config", None)
    mt = getattr(cfg, "model_type", None)
    if mt not in SUPPORTED_MODEL_TYPES:
        return f"model_type {mt!r} (fast path: {', '.join(SUPPORTED_MODEL_TYPES)})"
    if getattr(model, "hf_device_map", None):
        return "model is dispatched with a device map"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act {cfg.hidden_act!r}"
    if getattr(cfg, "use_sliding_window", False) or (mt == "mistral" and getattr(cfg, "sliding_window", None)):
        return "sliding-window attention"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        return "unexpected module layout"
    for layer in inner.layers:
        att, mlp = layer.self_attn, layer.mlp
        for lin in (att.q_proj, att.k_proj, att.v_proj, att.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj):
            if type(lin) is not torch.nn.Linear:  # LoRA, quantised or otherwise wrapped layers
                return f"layer type {type(lin).__name__}"
        if getattr(att, "sliding_window", None):
            return "sliding-window attention"
    if type(getattr(model, "lm_head", None)) is not torch.nn.Linear:
        return "lm_head is not a plain Linear"
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type in ("dynamic", "longrope"):  # angles that change with the sequence length
        return f"rope_type {rope_type!r}"
    return None


# generation-config settings that add logits processors to ``model.generate``; the fast path has
# none of them, so a model that sets one is sampled with ``generate``
_PROCESSOR_DEFAULTS = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "min_length": 0,
                       "min_new_tokens": None, "bad_words_ids": None, "suppress_tokens": None,
                       "begin_suppress_tokens": None, "forced_bos_token_id": None,
                       "forced_eos_token_id": None, "typical_p": 1.0, "min_p": None,
                       "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "encoder_repetition_penalty": 1.0,
                       "sequence_bias": None, "renormalize_logits": False}


def generation_config_extras(model) -> str | None:
    """The first generation-config setting of ``model`` that ``model.generate`` would turn into a
    logits processor the fast path lacks (e.g. ``repetition_penalty=1.1``), or None."""
    gc = getattr(model, "generation_config", None)
    if gc is None:
        return None
    for key, default in _PROCESSOR_DEFAULTS.items():
        value = getattr(gc, key, default)
        if value not in (default, None) and not (key == "min_length" and value == 0):
            return f"generation_config.{key}={value!r}"
    return None


class _Weights:
    """The model's weights, q/k/v and gate/up concatenated (taken once per call, no gradient)."""

    def __init__(self, model):
        cfg = model.config
        inner = model.model
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.hidden = cfg.hidden_size
        self.embed = inner.embed_tokens.weight
        self.rotary = inner.rotary_emb
        self.norm_w, self.norm_eps = inner.norm.weight, _eps(inner.norm)
        self.lm_head_w, self.lm_head_b = model.lm_head.weight, model.lm_head.bias
        self.layers = []
        for layer in inner.layers:
            a, m = layer.self_attn, layer.mlp
            qkv_b = None
            if a.q_proj.bias is not None:
                qkv_b = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
            gu_b = None
            if m.gate_proj.bias is not None:
                gu_b = torch.cat([m.gate_proj.bias, m.up_proj.bias])
            self.layers.append(dict(
                n1=layer.input_layernorm.weight, eps1=_eps(layer.input_layernorm),
                qkv=torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]), qkv_b=qkv_b,
                o=a.o_proj.weight, o_b=a.o_proj.bias,
                n2=layer.post_attention_layernorm.weight, eps2=_eps(layer.post_attention_layernorm),
                gu=torch.cat([m.gate_proj.weight, m.up_proj.weight]), gu_b=gu_b,
                down=m.down_proj.weight, down_b=m.down_proj.bias))


def _eps(norm) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))


def _rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """w ⊙ x / sqrt(mean(x²) + eps), computed in float32 like transformers' RMSNorm."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), w, eps)
    return w * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _layers_forward(W: _Weights, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                    attn_mask: torch.Tensor, k_cache: list[torch.Tensor], v_cache: list[torch.Tensor],
                    start: int) -> torch.Tensor:
    """Run every decoder layer on x (B, S, hidden) whose RoPE angles are cos/sin (B, 1, S, d).

    Keys/values of the S new tokens are written to columns [start, start+S) of each layer's cache
    (B, n_kv, C, d); queries attend to columns [0, start+S) under ``attn_mask`` (B, 1, S, start+S),
    True = may attend."""
    B, S, _ = x.shape
    H, Hkv, d = W.n_heads, W.n_kv, W.head_dim
    end = start + S
    for i, L in enumerate(W.layers):
        h = _rms_norm(x, L["n1"], L["eps1"])
        qkv = F.linear(h, L["qkv"], L["qkv_b"]).view(B, S, H + 2 * Hkv, d).transpose(1, 2)
        qk, v = qkv[:, :H + Hkv], qkv[:, H + Hkv:]
        qk = qk * cos + _rotate_half(qk) * sin              # RoPE on queries and keys at once
        k_cache[i][:, :, start:end] = qk[:, H:]
        v_cache[i][:, :, start:end] = v
        a = F.scaled_dot_product_attention(qk[:, :H], k_cache[i][:, :, :end], v_cache[i][:, :, :end],
                                           attn_mask=attn_mask, enable_gqa=Hkv != H)
        x = x + F.linear(a.transpose(1, 2).reshape(B, S, H * d), L["o"], L["o_b"])
        h = _rms_norm(x, L["n2"], L["eps2"])
        gate, up = F.linear(h, L["gu"], L["gu_b"]).chunk(2, dim=-1)
        x = x + F.linear(F.silu(gate) * up, L["down"], L["down_b"])
    return x


def _rope_table(W: _Weights, n: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (n, d) for positions 0..n-1 from the model's own rotary embedding."""
    pos = torch.arange(n, device=like.device)[None]
    cos, sin = W.rotary(like, pos)
    return cos[0], sin[0]


def _logits(W: _Weights, x: torch.Tensor) -> torch.Tensor:
    return F.linear(_rms_norm(x, W.norm_w, W.norm_eps), W.lm_head_w, W.lm_head_b)


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probability mass
    reaches ``top_p`` (the most likely token always stays), set the rest to -inf.

    With p the probabilities sorted in descending order, token j is dropped iff
    Σ_{i<j} p_i ≥ top_p (ties in the sort broken as ``torch.sort`` does)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    drop = probs.cumsum(-1) - probs >= top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def sample_next(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Next tokens (B,) from last-position logits (B, V): argmax when temperature is 0, else a
    draw from softmax(top_p_filter(logits / temperature))."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = top_p_filter(logits.float() / temperature, top_p)
    return torch.multinomial(logits.softmax(-1), 1).squeeze(-1)


@torch.no_grad()
def fast_generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                  eos_token_id: int, pad_token_id: int, temperature: float = 1.0,
                  top_p: float = 1.0) -> torch.Tensor:
    """Sample up to ``max_new_tokens`` tokens after LEFT-padded prompts (B, P).

    Returns the response ids (B, T), T ≤ max_new_tokens: after a row's EOS it holds
    ``pad_token_id``; generation stops early once every row has produced EOS (as
    ``model.generate`` does). Randomness comes from torch's global generator. Prompts must be
    left-padded: every row's last column is a real token."""
    reason = fast_path_unsupported(model)
    if reason:
        raise ValueError(f"fast_generate does not support this model: {reason}")
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError("fast_generate: input_ids and attention_mask must both be (B, P)")
    if not bool(attention_mask[:, -1].all()):
        raise ValueError("fast_generate: prompts must be left-padded (a row ends in padding)")
    if max_new_tokens < 1:
        raise ValueError("fast_generate: max_new_tokens must be >= 1")
    if eos_token_id is None:
        eos_token_id = -1  # never produced: every row runs to max_new_tokens
    W = _Weights(model)
    B, P = input_ids.shape
    dev, dtype = input_ids.device, W.embed.dtype
    C = P + max_new_tokens
    k_cache = [torch.zeros(B, W.n_kv, C, W.head_dim, device=dev, dtype=dtype) for _ in W.layers]
    v_cache = [torch.zeros_like(k) for k in k_cache]
    valid = torch.zeros(B, C, dtype=torch.bool, device=dev)      # key columns a query may see
    valid[:, :P] = attention_mask.bool()
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    causal = torch.ones(P, P, dtype=torch.bool, device=dev).tril()
    mask = causal[None, None] & valid[:, None, None, :P]
    mask = mask | torch.eye(P, dtype=torch.bool, device=dev)[None, None]  # pad rows: no empty softmax
    cos_t, sin_t = _rope_table(W, C, W.embed)
    x = _layers_forward(W, F.embedding(input_ids, W.embed), cos_t[positions][:, None],
                        sin_t[positions][:, None], mask, k_cache, v_cache, 0)
    logits = _logits(W, x[:, -1])
    pos = positions[:, -1]
    out = torch.full((B, max_new_tokens), pad_token_id, dtype=torch.long, device=dev)
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    n = 0
    for t in range(max_new_tokens):
        tok = sample_next(logits, temperature, top_p)
        tok = torch.where(done, torch.full_like(tok, pad_token_id), tok)
        out[:, t] = tok
        n = t + 1
        done = done | (tok == eos_token_id)
        if t == max_new_tokens - 1 or bool(done.all()):
            break
        col = P + t
        valid[:, col] = True
        pos = pos + 1
        x = _layers_forward(W, F.embedding(tok[:, None], W.embed), cos_t[pos][:, None, None],
                            sin_t[pos][:, None, None], valid[:, None, None, :col + 1], k_cache, v_cache, col)
        logits = _logits(W, x[:, -1])
    return out[:, :n]
