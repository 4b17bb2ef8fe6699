"""LoRA policies through peft: loading, the reference model, merged export.

With ``model.lora.r > 0`` (:class:`rewardlab.models.loading.LoRAConfig`) the RL policy is the
base model ``model.name_or_path`` wrapped by ``peft.get_peft_model``: only the adapter's A and B
matrices train (B starts at zero, so the wrapped model computes exactly what the base computes).
The reference model of the KL term is the same network with the adapter switched off
(``with policy.disable_adapter():``), not a second copy, so before the first update the reference
log-probs equal the policy's bit for bit. Checkpoints and ``final/`` hold the adapter
(``adapter_config.json`` + ``adapter_model.safetensors``) and the tokenizer; a run resumes by
loading the base from ``name_or_path`` and the adapter from its checkpoint. A PeftModel is not
a plain Llama-family module, so :mod:`rewardlab.models.fast` never runs it
(:func:`rewardlab.models.fast.fast_path_unsupported`): its log-prob passes (old, reference,
update) go through transformers. Sampling (``sampling.engine=auto``) runs on a merged view
instead (:func:`merged_sampler`): the base network with each LoRA layer standing in as a plain
Linear of weight W + s·B·A, computed afresh for every sampling call (the training weights are
never merged), which the fast sampler runs when the architecture allows. Its tokens depend only
on the row and the seed, not on which rows share a batch, so a run over several processes (each
sampling its rows, under FSDP on gathered weights) samples what one process samples.
``sampling.engine=hf`` samples the PeftModel with ``generate`` as before.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path

import torch

from rewardlab.models.fast import fast_path_unsupported
from rewardlab.models.loading import load_model_and_tokenizer, load_tokenizer, LoRAConfig, ModelConfig


def is_peft(model) -> bool:
    """Whether ``model`` is a peft ``PeftModel`` (False without importing peft when nothing has
    imported it: no model can be one then)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def require_peft():
    """The peft module, imported on first use (the optional 'lora' extra: importing it costs
    ~3 s, which runs without LoRA, e.g. every demo worker, do not pay); ImportError saying how to
    install it when it is missing."""
    try:
        import peft
    except ImportError:
        raise ImportError("model.lora.r > 0 needs peft: pip install 'rewardlab[lora]'") from None
    return peft


def peft_config(cfg: LoRAConfig):
    """rewardlab's :class:`LoRAConfig` as peft's ``LoraConfig`` for a causal LM."""
    return require_peft().LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=cfg.modules(), bias="none", task_type="CAUSAL_LM")


def load_policy(mc: ModelConfig, checkpoint: str | Path | None = None, dtype: str | None = None):
    """``(policy, tokenizer)`` for training, in storage dtype ``dtype`` (default ``mc.dtype``).

    LoRA off: the full model from ``checkpoint`` (a resumed run) or ``mc.name_or_path``.
    LoRA on: the base from ``mc.name_or_path`` with a fresh adapter (``get_peft_model``), or with
    the checkpoint's adapter (``PeftModel.from_pretrained(..., is_trainable=True)``); the base
    weights are frozen either way."""
    dtype = dtype or mc.dtype
    if not mc.lora.enabled:
        return load_model_and_tokenizer(checkpoint or mc.name_or_path, dtype, mc.device,
                                        mc.trust_remote_code)
    peft = require_peft()
    base, tok = load_model_and_tokenizer(mc.name_or_path, dtype, mc.device, mc.trust_remote_code)
    with warnings.catch_warnings():   # peft asks transformers 5 for a deprecated attribute
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
        if checkpoint is None:
            model = peft.get_peft_model(base, peft_config(mc.lora))
        else:
            model = peft.PeftModel.from_pretrained(base, str(checkpoint), is_trainable=True)
    return model, tok


def reference_model(policy, mc: ModelConfig, dtype: str | None = None):
    """The frozen reference policy of the KL term: a LoRA policy itself (used inside
    :func:`adapter_off`), else a second copy of ``mc.name_or_path``."""
    if is_peft(policy):
        return policy
    ref, _ = load_model_and_tokenizer(mc.name_or_path, dtype or mc.dtype, mc.device, mc.trust_remote_code)
    return ref.eval().requires_grad_(False)


def adapter_off(model):
    """A context in which a PeftModel runs as its base model (the adapter bypassed); for any other
    model, nothing."""
    return model.disable_adapter() if is_peft(model) else contextlib.nullcontext()


def save_merged(adapter_dir: str | Path, mc: ModelConfig, out: str | Path,
                dtype: str | None = None) -> Path | None:
    """The adapter saved in ``adapter_dir`` merged into a fresh CPU copy of the base
    ``mc.name_or_path`` (loaded in ``dtype``, default ``mc.dtype``) and saved, with the tokenizer,
    as a plain model under ``out``: what ``AutoModelForCausalLM.from_pretrained(out)`` loads
    without peft. The training model is left as it is (its weights are never merged and
    unmerged). None, writing nothing, when ``mc.lora`` is off."""
    if not mc.lora.enabled:
        return None
    peft = require_peft()
    model, _ = load_model_and_tokenizer(mc.name_or_path, dtype or mc.dtype, "cpu", mc.trust_remote_code)
    merged = peft.PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    out = Path(out)
    merged.save_pretrained(str(out))
    has_tok = (Path(adapter_dir) / "tokenizer_config.json").exists()
    load_tokenizer(adapter_dir if has_tok else mc.name_or_path, mc.trust_remote_code).save_pretrained(str(out))
    return out


def _merged_linear(layer) -> torch.nn.Linear | None:
    """A plain Linear computing what the peft LoRA ``layer`` computes with its active adapters:
    weight W + Σ_a s_a·B_a·A_a (peft's ``get_delta_weight``; dropout is the identity when
    sampling), the base bias shared. None for a layer this cannot stand in for (DoRA, merged or
    disabled adapters, a non-Linear base)."""
    base = layer.get_base_layer()
    if type(base) is not torch.nn.Linear or getattr(layer, "merged", False) or layer.disable_adapters:
        return None
    adapters = [a for a in layer.active_adapters if a in layer.lora_A]
    if any(layer.use_dora.get(a, False) for a in adapters):
        return None
    with torch.no_grad():
        w = base.weight.detach()
        for a in adapters:
            w = w + layer.get_delta_weight(a).to(w.dtype)
    lin = torch.nn.Linear(base.in_features, base.out_features, bias=False, device="meta")
    lin.weight = torch.nn.Parameter(w, requires_grad=False)
    lin.bias = base.bias
    return lin


@contextlib.contextmanager
def merged_sampler(model, engine: str = "auto"):
    """A context yielding the model to sample a LoRA policy with: for a PeftModel (and
    ``engine`` not ``hf``) its base network with every LoRA layer swapped for a plain Linear of
    the merged weight (:func:`_merged_linear`) and peft's marker hidden, so that
    :mod:`rewardlab.models.fast` runs it; the layers and the marker are put back on exit. The
    training weights are not touched (W + s·B·A is a new tensor, built again at every call, so
    a sharded model's gathered weights work too). Yields ``model`` itself for any other model,
    and when some layer cannot be merged or the fast path cannot run the base anyway (then
    ``generate`` on the PeftModel is the exact path). Use it without gradients."""
    if not is_peft(model) or engine == "hf":
        yield model
        return
    lora = require_peft().tuners.lora
    base = model.get_base_model()
    swaps = []
    for name, mod in base.named_modules():
        if isinstance(mod, lora.LoraLayer):
            lin = _merged_linear(mod) if isinstance(mod, lora.Linear) else None
            if lin is None:
                swaps = None
                break
            parent_name, _, child = name.rpartition(".")
            swaps.append((base.get_submodule(parent_name) if parent_name else base, child, mod, lin))
    if not swaps:
        yield model
        return
    marker = base.__dict__.pop("peft_config", None)
    try:
        for parent, child, _, lin in swaps:
            setattr(parent, child, lin)
        if fast_path_unsupported(base) is not None:
            for parent, child, mod, _ in swaps:
                setattr(parent, child, mod)
            swaps = []
            if marker is not None:
                base.__dict__["peft_config"] = marker
                marker = None
            yield model
        else:
            yield base
    finally:
        for parent, child, mod, _ in swaps:
            setattr(parent, child, mod)
        if marker is not None:
            base.__dict__["peft_config"] = marker
