"""Loading policies and tokenizers, and the testbed policy factory.

Everything goes through ``AutoTokenizer`` / ``AutoModelForCausalLM``: a hub id and a local
directory load the same way, and a testbed model saved by :func:`make_testbed_policy` reloads
like any hub model. Padding side, pad token and EOS are settled once, in
:func:`prepare_tokenizer`.
"""

from __future__ import annotations

import os

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import PartialState

from rewardlab.data.testbed import build_tokenizer
from rewardlab.io import DataError


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoRAConfig:
    """A LoRA adapter on the policy, through peft (RL only). ``r = 0``: off, the whole model trains."""

    r: int = 0
    """Adapter rank; 0 switches LoRA off. With r > 0 only the adapter (and a value head) trains,
    the reference model is the policy with its adapter switched off (no second copy), and
    checkpoints and ``final/`` hold the adapter (loaded onto ``name_or_path``)."""
    alpha: float = 16.0
    """lora_alpha: the update B·A is scaled by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapter's input during the update (0 keeps the update's log-probs equal to the
    sampler's, so an on-policy ratio starts at exactly 1)."""
    target_modules: str | list[str] = "all-linear"
    """Modules that get an adapter: all-linear (every Linear but the output layer), or names, as a
    list or comma-separated (e.g. q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj)."""
    save_merged: bool = False
    """Also write ``final_merged/``: the adapter merged into the base weights, a plain model that
    ``AutoModelForCausalLM.from_pretrained`` loads without peft."""

    @property
    def enabled(self) -> bool:
        return self.r > 0

    def validate(self) -> None:
        if self.r < 0:
            raise ValueError(f"lora.r must be >= 0 (0: off), got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.modules():
            raise ValueError("lora.target_modules is empty")

    def modules(self) -> str | list[str]:
        """``target_modules`` as peft takes it: the string ``all-linear`` or a list of names."""
        t = self.target_modules
        if isinstance(t, str):
            if t.strip().lower() == "all-linear":
                return "all-linear"
            t = t.split(",")
        return [m.strip() for m in t if m.strip()]


@dataclass
class ModelConfig:
    """Which model to load and how."""

    name_or_path: str = "testbed"
    """A hub id, a local directory saved with ``save_pretrained``, or ``testbed`` (a fresh
    random-initialised testbed policy is created under the run directory)."""
    dtype: str = "auto"
    """float32 | bfloat16 | float16 | auto (bfloat16 on a GPU that supports it, else float32).
    Training runs bfloat16 as the autocast dtype over float32 weights (``mixed_precision``)."""
    device: str = "auto"
    """cpu | cuda | cuda:N | auto."""
    trust_remote_code: bool = False
    """Run code shipped with a hub model. Off unless you ask for it."""
    size: str = "small"
    """Testbed policy size (tiny | small | base); ignored for other models."""
    mixed_precision: bool = True
    """Training with dtype bfloat16 (what ``auto`` picks on a GPU): keep float32 weights and
    optimizer state and run the passes under ``torch.autocast`` in bfloat16, as accelerate's bf16
    and verl's FSDP mixed precision do. false trains the bfloat16 weights themselves, where AdamW
    steps below a weight's precision are lost: at lr 1e-6 a weight of 0.02 (bfloat16 spacing
    1.2e-4 there) never changes. Only training reads it."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """A LoRA adapter instead of full fine-tuning (``rl`` only; r = 0, the default: off)."""


@dataclass(frozen=True)
class Precision:
    """How a model being trained is stored and run: ``storage``, the dtype its weights are loaded
    in (a ``dtype`` setting); ``compute``, the autocast dtype of its passes (None: no autocast)."""

    storage: str
    compute: torch.dtype | None = None
    device_type: str = "cpu"

    def autocast(self):
        """The context its forward passes (sampling, scoring, losses, evaluation) run in."""
        if self.compute is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.compute)


def full_precision(like: torch.Tensor):
    """A context without autocast on ``like``'s device: the small heads whose outputs are compared
    or differenced (values for GAE, reward scores for Clip/Delta and best-of-N) compute in their
    own dtype also under bfloat16 autocast, which would keep ~3 significant digits."""
    return torch.autocast(device_type=like.device.type, enabled=False)


def training_precision(dtype: str, device: str = "auto", mixed: bool = True) -> Precision:
    """float32 weights + bfloat16 autocast for a bfloat16 run with ``mixed`` (see
    :attr:`ModelConfig.mixed_precision`), else ``dtype`` as it is. float16 with ``mixed`` is
    refused: its gradients need loss scaling, which rewardlab does not do."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if dt in (torch.bfloat16, torch.float16) and mixed:
        if dt == torch.float16:
            raise ValueError("training in float16 needs loss scaling, which rewardlab does not do: "
                             "use dtype=bfloat16 (mixed precision) or float32, or "
                             "mixed_precision=false to train the float16 weights themselves")
        return Precision("float32", torch.bfloat16, dev.type)
    return Precision(dtype, None, dev.type)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: this process's accelerator under ``accelerate launch`` / ``torchrun`` (cuda:<local
    rank>), else cuda when there is one, else the CPU."""
    if device == "auto":
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            dev = PartialState(cpu=not torch.cuda.is_available()).device
            return torch.device("cpu") if dev.type == "cpu" else dev
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)} or auto")
    return DTYPES[dtype]


def prepare_tokenizer(tok):
    """Left padding (for generation), a pad token (the EOS token when none is defined), and an
    EOS token. Returns the tokenizer."""
    if tok.eos_token is None:
        raise ValueError("tokenizer has no EOS token; rewardlab needs one to end responses")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_tokenizer(name_or_path: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    return prepare_tokenizer(tok)


def first_line(e: BaseException) -> str:
    """The first non-blank line of an exception's message (transformers' run to many lines)."""
    return next((ln.strip() for ln in str(e).splitlines() if ln.strip()), e.__class__.__name__)


def check_model_path(ref: str | Path) -> None:
    """A model reference that names a local path must be a directory: :class:`DataError` for a
    file, or for a path that does not exist (a hub id, ``org/name``, is left to the loader)."""
    s = str(ref)
    p = Path(s).expanduser()
    if p.exists():
        if not p.is_dir():
            raise DataError(s, "expected a model directory, got a file")
    elif s.startswith((".", "/", "~")) or s.count("/") > 1:
        raise DataError(s, "model directory not found")


def load_model_and_tokenizer(name_or_path: str | Path, dtype: str = "auto", device: str = "auto",
                             trust_remote_code: bool = False, model_class=None, **model_kwargs):
    """Load ``(model, tokenizer)`` from a hub id or local directory.

    ``model_class`` defaults to ``AutoModelForCausalLM``; reward models pass their own class
    (e.g. ``AutoModelForTokenClassification``) and config overrides in ``model_kwargs``
    (``num_labels=2``), both handed to ``from_pretrained``."""
    from transformers import AutoModelForCausalLM

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    check_model_path(name_or_path)
    cls = model_class or AutoModelForCausalLM
    try:
        tok = load_tokenizer(name_or_path, trust_remote_code)
        model = cls.from_pretrained(str(name_or_path), dtype=torch_dtype,
                                    trust_remote_code=trust_remote_code, **model_kwargs)
    except (OSError, ValueError) as e:   # no model files, a damaged config, no usable tokenizer
        raise DataError(name_or_path, f"cannot load the model: {first_line(e)}") from None
    model.to(dev)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
        ids = stop_token_ids(model, tok)
        model.generation_config.eos_token_id = ids[0] if len(ids) == 1 else (ids or None)
    return model, tok


def stop_token_ids(model, tokenizer) -> list[int]:
    """The tokens that end a response: the tokenizer's EOS first, then every id in the model's
    ``generation_config.eos_token_id`` (an int or a list), without repeats.

    Chat models often end a turn with a token other than the tokenizer's EOS and list both in
    their generation config (Llama-3-Instruct: ``<|eot_id|>`` and ``<|end_of_text|>``; Gemma-it:
    ``<end_of_turn>`` and ``<eos>``): sampling stops at any of them, and the response mask, the
    success reward and the ORM score end at the first one, as ``model.generate`` does."""
    ids: list[int] = []
    gc = getattr(model, "generation_config", None)
    extra = getattr(gc, "eos_token_id", None)
    extra = [] if extra is None else ([extra] if isinstance(extra, int) else list(extra))
    for i in [getattr(tokenizer, "eos_token_id", None), *extra]:
        if i is not None and int(i) not in ids:
            ids.append(int(i))
    return ids


TESTBED_SIZES = {
    # name: (hidden, layers, heads, intermediate)
    "tiny": (64, 2, 4, 128),
    "small": (128, 4, 4, 256),
    "base": (192, 6, 6, 512),
}


def testbed_model_config(vocab_size: int, size: str = "small", max_positions: int = 128, tok=None):
    """A small Llama-architecture config for the testbed."""
    from transformers import LlamaConfig

    if size not in TESTBED_SIZES:
        raise ValueError(f"unknown testbed size {size!r}; use one of {sorted(TESTBED_SIZES)}")
    h, n_layer, n_head, inter = TESTBED_SIZES[size]
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=h, intermediate_size=inter, num_hidden_layers=n_layer,
        num_attention_heads=n_head, num_key_value_heads=n_head, max_position_embeddings=max_positions,
        tie_word_embeddings=True, rms_norm_eps=1e-5,
        pad_token_id=getattr(tok, "pad_token_id", None), bos_token_id=getattr(tok, "bos_token_id", None),
        eos_token_id=getattr(tok, "eos_token_id", None))


def make_testbed_policy(out_dir: str | Path, size: str = "small", seed: int = 0) -> Path:
    """Create a random-initialised testbed policy + tokenizer and save both in HF format."""
    from transformers import AutoModelForCausalLM


    out = Path(out_dir)
    tok = build_tokenizer()
    cfg = testbed_model_config(len(tok), size, tok=tok)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def share_tied_weights(model, state_dict: dict, prefix: str = "") -> dict:
    """``state_dict`` with the tied weights of ``model`` (``all_tied_weights_keys``, e.g. lm_head =
    embed_tokens) sharing one tensor again, where the two copies are equal: a state dict gathered
    from FSDP shards holds separate copies, which ``save_pretrained`` would store twice. ``prefix``
    is the model's own prefix in the keys (``"backbone."`` in a reward model's state dict)."""
    out = dict(state_dict)
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    if isinstance(tied, dict):
        for k, src in tied.items():
            k, src = prefix + k, prefix + src
            if k in out and src in out and torch.equal(out[k], out[src]):
                out[k] = out[src]
    return out


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
