"""Reward models: ORM, PRM (LM-head and head forms) and Bradley–Terry, with one scoring API.

Every reward model is a standard Hugging Face model, read through its backbone's last hidden
states h (B, L, H):

- ``orm``  (:class:`OutcomeRM`): a ``*ForSequenceClassification`` model with ``num_labels=1``;
  its head ``score`` (``nn.Linear(H, 1)``, no bias) gives the logit; score = σ(logit) at the last
  non-padding token. Trained with BCE on every solution token (or the last one).
- ``bt``   (:class:`BradleyTerryRM`): the same model; score = the raw logit r at the last
  token. Trained with −log σ(r_c − r_r − m) + c·(r_c + r_r)².
- ``prm``  (:class:`ProcessRM`): a step tag after every step (layouts in
  :mod:`rewardlab.reward_models.data`); at each tag, pair logits z = (z_bad, z_good) are read and
  p_k = softmax(z)[1] = P('+'). Form ``lm`` (Math-Shepherd, seed blog): a causal LM,
  z = the LM logits of the label tokens ('-', '+'), i.e. h·W_U[[bad, good]]ᵀ — no new
  parameters. Form ``head`` (Qwen2.5-Math-PRM, TRL PRMTrainer): a ``*ForTokenClassification``
  model with 2 labels (0 = bad, 1 = good), z = its head ``score``. All K step scores come from
  ONE forward pass over the tagged text; the solution score is product (default), min or last
  of p_1..p_K (K = 0 scores 1.0).

Saved layout (``RewardModel.save_pretrained(dir)``, reloaded by :func:`load_reward_model`):
a checkpoint that the plain transformers Auto class loads with its trained head
(``AutoModelForTokenClassification`` / ``AutoModelForSequenceClassification`` /
``AutoModelForCausalLM``), its tokenizer, the spec (kind, form, layout, tag, label tokens,
aggregation) under ``rewardlab_rm`` in ``config.json`` and in ``rewardlab_rm.json``, and a model
card ``README.md`` that shows how to score with transformers alone.

Also loaded: directories saved in the first layout (a causal LM plus ``rm_head.safetensors``;
converted on load, :func:`convert_reward_model` rewrites them), TRL-trained token-classification
PRMs (layout ``trl``: labels on the ``"\\n"`` after each step) and Qwen2.5-Math-PRM
(``*ForProcessRewardModel``: tag ``<extra_0>``, chat layout, a 2-layer head).

Scoring::

    rm = load_reward_model("runs/prm/final")
    [res] = rm.score(["sam has 3 apples . buys 4 more . how many apples ?"],
                     [["3 + 4 = 7", "#### 7"]])
    res.step_scores, res.score        # [p_1, p_2], p_1 * p_2
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from rewardlab.io import DataError, write_json
from rewardlab.models.batching import last_token_index, pad_ids, position_ids_from_mask
from rewardlab.models.fast import decoder_stack, response_states
from rewardlab.models.sampling import use_fast_engine
from rewardlab.models.loading import full_precision, load_model_and_tokenizer, share_tied_weights
from rewardlab.reward_models.data import (collate_orm, collate_prm, encode_plain, encode_prm,
                                          encode_prm_chat, encode_prm_trl, Encoded,
                                          QWEN_PRM_SYSTEM, resolve_token_id)
from rewardlab.reward_models.losses import aggregate, AGGREGATIONS, step_probs
from rewardlab.training.modelcard import ModelCard


SPEC_FILE = "rewardlab_rm.json"
ENSEMBLE_FILE = "rewardlab_ensemble.json"
"""An ensemble's manifest: ``{"members": [paths, relative to its folder or absolute],
"reduce": "mean" | "min"}`` (:func:`save_ensemble`, :class:`EnsembleRM`)."""
HEAD_FILE = "rm_head.safetensors"
"""The first layout's separate head file (read for conversion, no longer written)."""
CONFIG_KEY = "rewardlab_rm"
"""The key of the spec in ``config.json``."""
FORMAT_VERSION = 2
KINDS = ("orm", "prm", "bt")
FORMS = ("lm", "head")
LAYOUTS = ("rewardlab", "trl", "qwen")
PRM_ID2LABEL = {0: "bad", 1: "good"}


@dataclass
class RMSpec:
    """What kind of reward model, and how it reads its input."""

    kind: str = "prm"
    """orm | prm | bt."""
    form: str = "lm"
    """PRM only: lm (label-token logits of the LM head) | head (2-class token head)."""
    tag: str = " ки"
    """PRM step tag put after every step (Math-Shepherd ' ки'; seed blog '<|prm_label|>';
    Qwen2.5-Math-PRM '<extra_0>'). A tag that is not one token is added to the vocabulary."""
    good_token: str = "+"
    """LM-head form: the label token of a good step."""
    bad_token: str = "-"
    """LM-head form: the label token of a bad step."""
    aggregation: str = "product"
    """PRM solution score: product | min | last of the step scores."""
    layout: str = "rewardlab"
    """PRM text layout: rewardlab (``question\\n step_1 TAG \\n step_2 TAG ...``) | trl (TRL
    PRMTrainer: BOS, question, every step followed by the separator ``tag``, default ``"\\n"``)
    | qwen (Qwen2.5-Math-PRM: chat template, steps joined and ended by ``tag``)."""
    offset: float = 0.0
    """ORM/BT: a constant added to the head's logit (the bias of a head saved in the first
    layout; 0 for every model trained now)."""

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"reward model kind {self.kind!r} is not one of {list(KINDS)}")
        if self.form not in FORMS:
            raise ValueError(f"PRM form {self.form!r} is not one of {list(FORMS)}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation {self.aggregation!r} is not one of {list(AGGREGATIONS)}")
        if self.kind == "prm" and not self.tag:
            raise ValueError("a PRM needs a non-empty step tag")
        if self.kind == "prm" and self.form == "lm" and self.good_token == self.bad_token:
            raise ValueError("good_token and bad_token must differ")
        if self.layout not in LAYOUTS:
            raise ValueError(f"PRM layout {self.layout!r} is not one of {list(LAYOUTS)}")
        if self.layout != "rewardlab" and self.kind != "prm":
            raise ValueError(f"layout {self.layout!r} is for PRMs; ORM/BT use layout rewardlab")
        if self.offset and self.kind == "prm":
            raise ValueError("offset is for ORM/BT reward models")

    def to_json(self) -> dict:
        d = {"kind": self.kind, "form": self.form, "tag": self.tag,
             "labels": [self.good_token, self.bad_token], "aggregation": self.aggregation,
             "layout": self.layout, "format_version": FORMAT_VERSION}
        if self.offset:
            d["offset"] = self.offset
        return d

    @classmethod
    def from_json(cls, d: dict) -> "RMSpec":
        good, bad = d.get("labels", ["+", "-"])
        spec = cls(kind=d["kind"], form=d.get("form", "lm"), tag=d.get("tag", " ки"),
                   good_token=good, bad_token=bad, aggregation=d.get("aggregation", "product"),
                   layout=d.get("layout", "rewardlab"), offset=float(d.get("offset", 0.0)))
        spec.validate()
        return spec


@dataclass
class ScoreResult:
    """One solution's scores: ``step_scores`` p_1..p_K (PRM; empty for ORM/BT) and ``score``
    (PRM: aggregated; ORM: σ(logit); BT: the raw scalar)."""

    step_scores: list[float] = field(default_factory=list)
    score: float = 0.0


def _hidden_size(backbone) -> int:
    cfg = backbone.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return int(getattr(cfg, "hidden_size", None) or backbone.get_input_embeddings().embedding_dim)


class RewardModel(nn.Module):
    """A reward model: a Hugging Face model (``backbone``) read through its last hidden states.
    Subclasses set ``kind`` and implement :meth:`encode` and :meth:`_score_batch`.

    ``backbone`` is a ``*ForSequenceClassification`` (ORM/BT), ``*ForTokenClassification`` (PRM,
    head form) or ``*ForCausalLM`` (PRM, LM-head form) model; :attr:`head` is its
    classification head ``backbone.score`` (None for the LM-head form)."""

    kind: str = ""
    fsdp_forward_methods: tuple[str, ...] = ()
    """The methods that run the model (instead of ``forward``): under FSDP they go through its
    forward hooks (:func:`rewardlab.training.distributed.register_forward_methods`)."""

    def __init__(self, backbone, tokenizer, spec: RMSpec):
        super().__init__()
        spec.validate()
        if spec.kind != self.kind:
            raise ValueError(f"{type(self).__name__} is kind {self.kind!r}, "
                             f"spec says {spec.kind!r}")
        if _uses_head(spec) and not isinstance(getattr(backbone, "score", None), nn.Module):
            raise ValueError(f"a {spec.kind} reward model needs a classification model "
                             f"(*ForSequenceClassification / *ForTokenClassification) with a "
                             f"'score' head, not {type(backbone).__name__}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.spec = spec
        self.padding_side = "right"
        """Padding used by :meth:`score` (both sides give the same scores)."""

    # -- model ---------------------------------------------------------------------------
    @property
    def head(self) -> nn.Module | None:
        """The classification head (``backbone.score``), or None (LM-head form PRM)."""
        return self.backbone.score if _uses_head(self.spec) else None

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def aggregation(self) -> str:
        return self.spec.aggregation

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last-layer hidden states (B, L, H); positions follow the mask (left padding safe)."""
        out = self.backbone.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                       position_ids=position_ids_from_mask(attention_mask),
                                       use_cache=False)
        return out.last_hidden_state

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        head = self.head
        with full_precision(h):   # the head's own dtype, also under bfloat16 autocast
            return head(h.to(next(head.parameters()).dtype))

    # -- text -------------------------------------------------------------------------------
    def encode(self, question: str, steps: Sequence[str]) -> Encoded:
        raise NotImplementedError

    # -- scoring ----------------------------------------------------------------------------
    aggregate = staticmethod(aggregate)

    def score(self, questions: list[str], steps: list[list[str]], batch_size: int = 64
              ) -> list[ScoreResult]:
        """Score solutions (``steps[i]`` = the steps of solution i, no trailing newlines).

        Rows are length-sorted into batches of ``batch_size``; results come back in input order.
        No gradient (inference mode: the results are Python floats; ``no_grad`` for a model
        sharded by FSDP, whose gathered weights live in buffers it reuses outside the call); the
        model is put in eval mode for the call."""
        with torch.no_grad() if _fsdp_sharded(self) or _zero3_partitioned(self) else torch.inference_mode():
            return self._score(questions, steps, batch_size)

    def _score(self, questions: list[str], steps: list[list[str]], batch_size: int
               ) -> list[ScoreResult]:
        if len(questions) != len(steps):
            raise ValueError(f"score: {len(questions)} questions but {len(steps)} step lists")
        if batch_size < 1:
            raise ValueError("score: batch_size must be >= 1")
        encs = [self.encode(q, s) for q, s in zip(questions, steps)]
        order = sorted(range(len(encs)), key=lambda i: -len(encs[i].input_ids))
        results: list[ScoreResult | None] = [None] * len(encs)
        was_training = self.training
        self.eval()
        try:
            for s in range(0, len(order), batch_size):
                idx = order[s:s + batch_size]
                for i, r in zip(idx, self._score_batch([encs[i] for i in idx])):
                    results[i] = r
        finally:
            self.train(was_training)
        return results  # type: ignore[return-value]

    def _score_batch(self, encs: list[Encoded]) -> list[ScoreResult]:
        raise NotImplementedError

    # -- saving -----------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path, card: ModelCard | None = None, **kwargs) -> Path:
        """A standard transformers checkpoint (see the module docstring) with the tokenizer, the
        spec (``config.json`` → ``rewardlab_rm``, and ``rewardlab_rm.json``) and a model card
        ``README.md`` (``card``, or one made from the spec alone)."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        cfg = self.backbone.config
        setattr(cfg, CONFIG_KEY, self.spec.to_json())
        if _uses_head(self.spec) and self.spec.kind == "prm":
            cfg.id2label, cfg.label2id = dict(PRM_ID2LABEL), {v: k for k, v in PRM_ID2LABEL.items()}
        if getattr(cfg, "pad_token_id", None) is None:
            cfg.pad_token_id = self.tokenizer.pad_token_id
        if kwargs.get("state_dict") is not None:   # this module's (gathered from FSDP shards)
            kwargs["state_dict"] = backbone_state_dict(self.backbone, kwargs["state_dict"])
        self.backbone.save_pretrained(str(out), **kwargs)
        self.tokenizer.save_pretrained(str(out))
        (out / HEAD_FILE).unlink(missing_ok=True)   # a stale first-layout head would be misread
        write_json(out / SPEC_FILE, self.spec.to_json())
        (card or self.model_card()).write(out)
        return out

    def model_card(self, base: str | None = None, data: Sequence[str] = (),
                   metrics: dict | None = None, command: str | None = None) -> ModelCard:
        """This model's card: what it is, the input layout, and transformers-only usage."""
        return reward_model_card(self.spec, base or _base_name(self.backbone), list(data),
                                 dict(metrics or {}), command)


def backbone_state_dict(backbone, state_dict: dict) -> dict:
    """The backbone's part of a reward model's state dict (keys ``backbone.*``, prefix dropped;
    keys without it are taken as the backbone's already), tied weights sharing one tensor."""
    state_dict = share_tied_weights(backbone, state_dict, "backbone.")
    return {k[len("backbone."):] if k.startswith("backbone.") else k: v
            for k, v in state_dict.items()}


def _fsdp_sharded(model: nn.Module) -> bool:
    """Whether ``model`` was sharded with FSDP2 (``fully_shard``)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:   # pragma: no cover - torch built without distributed
        return False
    return isinstance(model, FSDPModule)


def _zero3_partitioned(model: nn.Module) -> bool:
    """Whether ``model`` holds parameters partitioned by DeepSpeed ZeRO-3 (they carry ``ds_id``
    and are empty outside the forward of the module that owns them)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def _owned(t: torch.Tensor) -> torch.Tensor:
    """``t``, copied when it is a view: under FSDP the output of a model method carries the
    backward hook that gathers the weights again, and an in-place op on a view would drop it."""
    return t.clone() if t._is_view() else t


def _uses_head(spec: RMSpec) -> bool:
    return not (spec.kind == "prm" and spec.form == "lm")


def _base_name(backbone) -> str | None:
    return getattr(backbone.config, "_name_or_path", None) or getattr(backbone, "name_or_path", None)


class _ScalarRM(RewardModel):
    """A scalar head read at the last non-padding token."""

    fsdp_forward_methods = ("token_logits",)

    def encode(self, question: str, steps: Sequence[str]) -> Encoded:
        return encode_plain(self.tokenizer, question, steps)

    def token_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Scalar head at every position (+ the spec's offset), (B, L) float32."""
        z = self._head(self.hidden_states(input_ids, attention_mask)).squeeze(-1).float()
        return _owned(z + self.spec.offset if self.spec.offset else z)

    def sequence_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                        ) -> torch.Tensor:
        """Raw head value r at the last non-padding token, (B,)."""
        logits = self.token_logits(input_ids, attention_mask)              # (B, L)
        last = last_token_index(attention_mask)
        return logits[torch.arange(logits.shape[0], device=logits.device), last]

    def _to_score(self, r: torch.Tensor) -> torch.Tensor:
        return r

    def _score_batch(self, encs: list[Encoded]) -> list[ScoreResult]:
        b = collate_orm(encs, None, self.tokenizer.pad_token_id, self.padding_side)
        r = self._to_score(self.sequence_scores(b["input_ids"].to(self.device),
                                                b["attention_mask"].to(self.device)))
        return [ScoreResult([], float(v)) for v in r.tolist()]


class OutcomeRM(_ScalarRM):
    """ORM: score = σ(head(h)) at the last token."""

    kind = "orm"

    def _to_score(self, r: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(r)


class BradleyTerryRM(_ScalarRM):
    """Bradley–Terry RM: score = the raw scalar at the last token."""

    kind = "bt"


class ProcessRM(RewardModel):
    """PRM in LM-head or head form (see the module docstring)."""

    kind = "prm"
    fsdp_forward_methods = ("pair_logits",)

    def __init__(self, backbone, tokenizer, spec: RMSpec):
        super().__init__(backbone, tokenizer, spec)
        if spec.layout == "trl":   # the separator need not be one token: read at its last one
            sep = tokenizer(spec.tag, add_special_tokens=False)["input_ids"]
            if not sep:
                raise ValueError(f"the step separator {spec.tag!r} encodes as no token")
            self.tag_id = int(sep[-1])
        else:
            self.tag_id = resolve_token_id(tokenizer, spec.tag, "step tag")
        if spec.form == "lm":
            self.good_id = resolve_token_id(tokenizer, spec.good_token, "good label token")
            self.bad_id = resolve_token_id(tokenizer, spec.bad_token, "bad label token")

    def encode(self, question: str, steps: Sequence[str]) -> Encoded:
        if self.spec.layout == "trl":
            return encode_prm_trl(self.tokenizer, question, steps, self.spec.tag)
        if self.spec.layout == "qwen":
            return encode_prm_chat(self.tokenizer, question, steps, self.spec.tag, self.tag_id)
        return encode_prm(self.tokenizer, question, steps, self.spec.tag, self.tag_id)

    def pair_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """z = (z_bad, z_good) at every position, (B, L, 2) float32."""
        return self._pair_head(self.hidden_states(input_ids, attention_mask))

    def _pair_head(self, h: torch.Tensor) -> torch.Tensor:
        """(z_bad, z_good) (…, 2) float32 from last-layer hidden states h (…, H)."""
        if self.head is not None:
            return _owned(self._head(h).float())
        unembed = self.backbone.get_output_embeddings()
        idx = torch.tensor([self.bad_id, self.good_id], device=h.device)
        if _zero3_partitioned(unembed):   # read only inside its own forward (DeepSpeed's hooks)
            with full_precision(h):
                z = unembed(h.to(unembed.weight.dtype)).float()[..., idx]   # (B, L, 2)
            cap = getattr(self.backbone.config, "final_logit_softcapping", None)
            return _owned(torch.tanh(z / cap) * cap if cap else z)
        w = unembed.weight[idx]                                            # (2, H)
        with full_precision(h):                                            # float32, as _head
            z = h.float() @ w.float().T                                    # (B, L, 2)
        if getattr(unembed, "bias", None) is not None:
            z = z + unembed.bias[idx].float()
        cap = getattr(self.backbone.config, "final_logit_softcapping", None)
        if cap:
            z = torch.tanh(z / cap) * cap
        return _owned(z)

    engine: str = "auto"
    """Scoring pass: ``auto`` runs Llama, Mistral and Qwen2 backbones through
    :func:`rewardlab.models.fast.response_states` (each distinct question once, its keys/values
    shared by the solutions that follow it, e.g. the n samples of an RL group) | ``hf``. Same
    scores up to float rounding."""

    def _fast_scoring(self, encs: list[Encoded]) -> bool:
        if self.engine != "auto" or self.spec.layout != "rewardlab" or self.training:
            return False
        if not all(0 < e.n_prompt <= min(e.tag_positions, default=e.n_prompt) for e in encs):
            return False
        # checked on every call, not cached: the backbone may since have been sharded (FSDP)
        return use_fast_engine(decoder_stack(self.backbone), "auto", sampling=False)

    def _fast_step_probs(self, encs: list[Encoded]) -> list[list[float]]:
        """P('+') at each tag through the fast pass: rows [left-padded question | right-padded
        solution + one filler token]; output j of the pass is position P−1+j, so the tag at
        solution index k is output k+1 (the filler makes the last tag's output part of it)."""
        pad = self.tokenizer.pad_token_id
        q_ids, q_mask, _ = pad_ids([e.input_ids[:e.n_prompt] for e in encs], pad, "left")
        r_ids, r_mask, _ = pad_ids([e.input_ids[e.n_prompt:] + [pad] for e in encs], pad, "right")
        dev = self.device
        z = response_states(decoder_stack(self.backbone), self._pair_head,
                            torch.cat([q_ids, r_ids], 1).to(dev), torch.cat([q_mask, r_mask], 1).to(dev),
                            r_ids.shape[1])
        p = step_probs(z).cpu()
        return [[float(p[b, t - e.n_prompt + 1]) for t in e.tag_positions] for b, e in enumerate(encs)]

    def _score_batch(self, encs: list[Encoded]) -> list[ScoreResult]:
        if self._fast_scoring(encs):
            return [ScoreResult(steps, aggregate(steps, self.spec.aggregation))
                    for steps in self._fast_step_probs(encs)]
        b = collate_prm(encs, None, self.tokenizer.pad_token_id, self.padding_side)
        p = step_probs(self.pair_logits(b["input_ids"].to(self.device),
                                        b["attention_mask"].to(self.device))).cpu()  # (B, L)
        out = []
        for row, tags in zip(p, b["tag_mask"]):
            steps = row[tags].tolist()                                     # (K,) in order
            out.append(ScoreResult(steps, aggregate(steps, self.spec.aggregation)))
        return out


RM_CLASSES: dict[str, type[RewardModel]] = {}


def register_rm(cls: type[RewardModel]) -> type[RewardModel]:
    """Add a reward-model class to the registry under its ``kind`` (duplicates refused)."""
    if cls.kind in RM_CLASSES:
        raise ValueError(f"reward model kind {cls.kind!r} is already registered")
    RM_CLASSES[cls.kind] = cls
    return cls


for _cls in (OutcomeRM, ProcessRM, BradleyTerryRM):
    register_rm(_cls)


# --------------------------------------------------------------------------------------------
# Building, loading, converting


def _auto_class(spec: RMSpec):
    """The transformers Auto class of a reward model of this spec."""
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification,
                              AutoModelForTokenClassification)
    if spec.kind == "prm":
        return AutoModelForCausalLM if spec.form == "lm" else AutoModelForTokenClassification
    return AutoModelForSequenceClassification


def _class_kwargs(spec: RMSpec) -> dict:
    """Config overrides for ``from_pretrained`` of the Auto class."""
    if not _uses_head(spec):
        return {}
    if spec.kind == "prm":
        return {"num_labels": 2, "id2label": dict(PRM_ID2LABEL),
                "label2id": {v: k for k, v in PRM_ID2LABEL.items()}}
    return {"num_labels": 1}


def _load_backbone(path: str | Path, spec: RMSpec, dtype: str, device: str,
                   trust_remote_code: bool):
    """(backbone, tokenizer) through the spec's Auto class; a head-form backbone keeps its head
    in float32 (scores that are compared or differenced) and has a pad token in its config."""
    try:
        backbone, tok = load_model_and_tokenizer(path, dtype, device, trust_remote_code,
                                                 model_class=_auto_class(spec),
                                                 **_class_kwargs(spec))
    except ValueError as e:
        if "Unrecognized configuration class" not in str(e):
            raise
        raise ValueError(f"the architecture of {path} has no {_auto_class(spec).__name__} class "
                         f"in transformers, which a {spec.kind} reward model"
                         f"{' (head form)' if spec.kind == 'prm' else ''} needs"
                         + ("; use form=lm" if spec.kind == "prm" else "")) from None
    if _uses_head(spec):
        backbone.score.to(torch.float32)
        if getattr(backbone.config, "pad_token_id", None) is None:
            backbone.config.pad_token_id = tok.pad_token_id
    return backbone, tok


def _new_head(spec: RMSpec, hidden: int) -> nn.Module | None:
    """Scalar head (orm/bt, no bias, as ``*ForSequenceClassification``) or 2-class head (prm
    head form), init N(0, 1/(H+1)) and bias 0."""
    if not _uses_head(spec):
        return None
    head = nn.Linear(hidden, 2 if spec.kind == "prm" else 1, bias=spec.kind == "prm")
    nn.init.normal_(head.weight, std=1.0 / math.sqrt(hidden + 1))
    if head.bias is not None:
        nn.init.zeros_(head.bias)
    return head


def _set_head(backbone, head: nn.Module) -> None:
    """Copy ``head``'s parameters into ``backbone.score`` (same shapes)."""
    with torch.no_grad():
        for name, p in backbone.score.named_parameters():
            p.copy_(getattr(head, name).to(p.device, p.dtype))


def ensure_single_token(tokenizer, backbone, text: str) -> bool:
    """Make ``text`` one token: if the tokenizer splits it (or maps it to unk), add it as a
    special token and resize the backbone's embeddings. Returns True when it was added."""
    try:
        resolve_token_id(tokenizer, text)
        return False
    except ValueError:
        pass
    tokenizer.add_special_tokens({"extra_special_tokens": [text]},
                                 replace_extra_special_tokens=False)
    backbone.resize_token_embeddings(len(tokenizer))
    resolve_token_id(tokenizer, text, "added token")
    return True


def build_reward_model(base: str | Path, spec: RMSpec, device: str = "auto", dtype: str = "float32",
                       add_missing_tokens: bool = True, trust_remote_code: bool = False,
                       seed: int | None = None) -> RewardModel:
    """A fresh reward model on top of a causal LM (a hub id or a saved policy directory): the
    backbone is loaded through the spec's Auto class (``*ForTokenClassification`` /
    ``*ForSequenceClassification`` / ``*ForCausalLM``) and a head gets a fresh seeded init.

    For a PRM the step tag (and, in LM-head form, the label tokens) must be single tokens; with
    ``add_missing_tokens`` those that are not are added as special tokens and the embeddings are
    resized (the seed blog's ``<|prm_label|>``)."""

    spec.validate()
    backbone, tok = _load_backbone(base, spec, dtype, device, trust_remote_code)
    if seed is not None:
        torch.manual_seed(seed)
    if spec.kind == "prm" and spec.layout != "trl":
        needed = [spec.tag] + ([spec.good_token, spec.bad_token] if spec.form == "lm" else [])
        for text in needed:
            if add_missing_tokens:
                ensure_single_token(tok, backbone, text)
            else:
                resolve_token_id(tok, text, "token")
    head = _new_head(spec, _hidden_size(backbone))
    if head is not None:
        _set_head(backbone, head)
    return RM_CLASSES[spec.kind](backbone, tok, spec)


def lm_prm_spec(tag: str, good_token: str = "+", bad_token: str = "-") -> RMSpec:
    """The spec that reads a plain causal LM as an LM-head PRM (Math-Shepherd: ``tag=" ки"``):
    ``tag`` after every step, p_k = P(good_token) against P(bad_token) at the k-th tag.
    Raises ValueError for an empty tag or equal label tokens."""
    spec = RMSpec(kind="prm", form="lm", tag=tag, good_token=good_token, bad_token=bad_token)
    spec.validate()
    return spec


def _read_config(d: Path) -> dict:
    try:
        return json.loads((d / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def _is_qwen_prm(config: dict) -> bool:
    return any(str(a).endswith("ForProcessRewardModel") for a in config.get("architectures") or [])


def _is_token_classifier(config: dict) -> bool:
    # transformers writes no id2label for its default of 2 labels
    n = config.get("num_labels") or len(config.get("id2label") or {}) or 2
    return n == 2 and any(str(a).endswith("ForTokenClassification")
                          for a in config.get("architectures") or [])


def detect_spec(path: str | Path) -> RMSpec | None:
    """The spec of the reward model saved in ``path``, or None when it is none we recognise:
    rewardlab's (``config.json`` → ``rewardlab_rm``, or ``rewardlab_rm.json``), Qwen2.5-Math-PRM
    (``*ForProcessRewardModel``: tag ``<extra_0>``, qwen layout) or a 2-label token classifier,
    read as a TRL PRMTrainer model (labels on the ``"\\n"`` after each step)."""
    d = Path(path)
    config = _read_config(d)
    for raw in (config.get(CONFIG_KEY), _read_json(d / SPEC_FILE)):
        if raw:
            return RMSpec.from_json(raw)
    if _is_qwen_prm(config):
        return RMSpec(kind="prm", form="head", tag="<extra_0>", layout="qwen")
    if _is_token_classifier(config):
        return RMSpec(kind="prm", form="head", tag="\n", layout="trl")
    return None


def _read_json(p: Path):
    if not p.exists():
        return None
    return json.loads(p.read_text())


def saved_reward_model_dir(path: str | Path) -> Path:
    """The directory holding a reward model: ``path`` or, for a ``train-rm`` run directory,
    ``path/final`` (one saved by rewardlab, a TRL token-classification PRM or a
    Qwen2.5-Math-PRM). Raises DataError for anything else (before any model loads)."""

    p = Path(path)
    for d in (p, p / "final"):
        if (d / SPEC_FILE).exists():
            return d
        config = _read_config(d)
        if config.get(CONFIG_KEY) or _is_qwen_prm(config) or _is_token_classifier(config):
            return d
    if not p.is_dir():
        raise DataError(p, "reward-model directory not found")
    raise DataError(p, f"not a rewardlab reward model (no {SPEC_FILE}); train one with "
                       "`rewardlab train-rm`, or use a plain causal LM as an LM-head PRM by "
                       "giving its step tag (rl: reward.prm.tag; bon: --prm-tag; library: "
                       "spec=RMSpec(tag=...))")


def _score_tensors(d: Path) -> dict[str, torch.Tensor]:
    """Every ``score.*`` tensor of the safetensors weights in ``d`` (prefix dropped)."""
    from safetensors import safe_open
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                if k.startswith("score."):
                    out[k[len("score."):]] = st.get_tensor(k)
    return out


def load_reward_model(path: str | Path, device: str = "auto", *, dtype: str = "auto",
                      spec: RMSpec | None = None, trust_remote_code: bool = False
                      ) -> RewardModel | EnsembleRM:
    """Load a reward model: one saved by :meth:`RewardModel.save_pretrained` (a ``train-rm`` run
    directory loads its ``final/`` model), an ensemble (:func:`save_ensemble`), one saved in the first layout (converted on load), a
    TRL-trained token-classification PRM or a Qwen2.5-Math-PRM (see :func:`detect_spec`).
    ``spec`` overrides what the files say; it lets a plain causal LM be used as an LM-head PRM
    (e.g. Math-Shepherd: ``RMSpec(tag=" ки")``)."""
    from safetensors.torch import load_file


    p = _local_dir(path)
    if spec is None and (p / ENSEMBLE_FILE).exists():
        return _load_ensemble(p, device, dtype, trust_remote_code)
    if spec is None:
        p = saved_reward_model_dir(p)
        try:
            spec = detect_spec(p)
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(p / SPEC_FILE, f"unreadable reward-model spec: {e}") from None
        if spec is None:   # pragma: no cover - saved_reward_model_dir refused it already
            raise DataError(p, "not a reward model")
    spec.validate()
    backbone, tok = _load_backbone(p, spec, dtype, device, trust_remote_code)
    legacy = _uses_head(spec) and (p / HEAD_FILE).exists() and not _read_config(p).get(CONFIG_KEY)
    if legacy:   # first layout: a causal LM + rm_head.safetensors (weight, bias)
        state = load_file(str(p / HEAD_FILE))
        bias = state.get("bias")
        if spec.kind != "prm" and bias is not None:
            spec = RMSpec(**{**spec.__dict__, "offset": float(bias.reshape(-1)[0])})
            state = {"weight": state["weight"]}
        backbone.score.load_state_dict(state)
    elif _uses_head(spec):
        state = _score_tensors(p)
        if {"0.weight", "2.weight"} <= state.keys():   # Qwen2.5-Math-PRM: Linear, ReLU, Linear
            h = _hidden_size(backbone)
            mlp = nn.Sequential(nn.Linear(h, h), nn.ReLU(),
                                nn.Linear(h, state["2.weight"].shape[0]))
            mlp.load_state_dict(state)
            backbone.score = mlp.to(backbone.device, torch.float32)
        else:   # the head as saved (float32), also when the backbone loads in bf16
            want = backbone.score.state_dict()
            if state.keys() == want.keys() and all(state[k].shape == want[k].shape for k in want):
                backbone.score.load_state_dict(state)
    return RM_CLASSES[spec.kind](backbone, tok, spec)


class EnsembleRM:
    """Reward models of one kind scored as one (Coste et al. 2023, arXiv 2310.02743: an
    ensemble is harder to over-optimise than any of its members). For members m = 1..M,

        mean: r = (1/M) Σ_m r_m        min: r = min_m r_m

    of the ORM/BT scores, or of each PRM step score p_k (the solution score is then the first
    member's aggregation of the reduced p_1..p_K). Scoring, ``kind``, ``spec``, ``tokenizer``,
    ``encode`` and ``aggregate`` work as on a single :class:`RewardModel`."""

    REDUCE = ("mean", "min")

    def __init__(self, members: Sequence[RewardModel], reduce: str = "mean"):
        if not members:
            raise ValueError("an ensemble needs at least one reward model")
        kinds = sorted({m.kind for m in members})
        if len(kinds) != 1:
            raise ValueError(f"an ensemble's members must be of one kind, got {kinds}")
        if reduce not in self.REDUCE:
            raise ValueError(f"ensemble reduce must be one of {list(self.REDUCE)}, got {reduce!r}")
        self.members, self.reduce = list(members), reduce
        self.kind, self.spec = members[0].kind, members[0].spec
        self.tokenizer, self.encode = members[0].tokenizer, members[0].encode
        self.aggregate = members[0].aggregate

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    def _reduce(self, xs: list[float]) -> float:
        return float(min(xs) if self.reduce == "min" else sum(xs) / len(xs))

    def score(self, questions: list[str], steps: list[list[str]], batch_size: int = 64
              ) -> list[ScoreResult]:
        """Every member's :meth:`RewardModel.score`, reduced per solution (and per step)."""
        per = [m.score(questions, steps, batch_size) for m in self.members]
        out = []
        for rs in zip(*per):
            if self.kind == "prm":
                p = [self._reduce(list(col)) for col in zip(*(r.step_scores for r in rs))]
                out.append(ScoreResult(p, float(self.aggregate(p, self.spec.aggregation))))
            else:
                out.append(ScoreResult([], self._reduce([r.score for r in rs])))
        return out


def save_ensemble(out: str | Path, members: Sequence[str | Path], reduce: str = "mean") -> Path:
    """Write the manifest of an ensemble of saved reward models into ``out`` (members inside
    ``out`` are stored relative to it, so the folder can move); every member must load as a
    reward model of one kind. :func:`load_reward_model` on ``out`` loads the ensemble."""
    out = Path(out)
    if reduce not in EnsembleRM.REDUCE:
        raise ValueError(f"ensemble reduce must be one of {list(EnsembleRM.REDUCE)}, got {reduce!r}")
    if not members:
        raise ValueError("an ensemble needs at least one reward model")
    kinds = {}
    for m in members:
        d = saved_reward_model_dir(m)
        spec = detect_spec(d)
        kinds[str(m)] = spec.kind if spec is not None else "?"
    if len(set(kinds.values())) != 1:
        raise ValueError(f"an ensemble's members must be of one kind, got {kinds}")
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for m in members:
        m = Path(m).resolve()
        try:
            names.append(str(m.relative_to(out.resolve())))
        except ValueError:
            names.append(str(m))
    write_json(out / ENSEMBLE_FILE, {"members": names, "reduce": reduce})
    return out


def _load_ensemble(p: Path, device: str, dtype: str, trust_remote_code: bool) -> EnsembleRM:
    try:
        manifest = json.loads((p / ENSEMBLE_FILE).read_text())
        members, reduce = manifest["members"], manifest.get("reduce", "mean")
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise TypeError("'members' must be a list of paths")
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(p / ENSEMBLE_FILE, f"unreadable ensemble manifest: {e}") from None
    try:
        return EnsembleRM([load_reward_model(p / m, device, dtype=dtype,
                                             trust_remote_code=trust_remote_code)
                           for m in members], reduce)
    except ValueError as e:
        raise DataError(p / ENSEMBLE_FILE, str(e)) from None


HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]
"""What :func:`load_reward_model` fetches of a hub repository (config, weights, tokenizer)."""


def _local_dir(path: str | Path) -> Path:
    """``path``, or for a hub id (``owner/name`` that is no local path) its local snapshot of
    :data:`HUB_FILES`, so that a hub reward model is recognised like a directory. Falls back to
    ``path`` itself (offline, no such repository, weights not in safetensors)."""
    p = Path(path)
    parts = str(path).split("/")
    if p.exists() or len(parts) != 2 or not all(parts) or str(path).startswith((".", "~")):
        return p
    try:
        from huggingface_hub import snapshot_download
        d = Path(snapshot_download(str(path), allow_patterns=HUB_FILES))
    except Exception:   # noqa: BLE001 - any hub failure: let from_pretrained report it
        return p
    return d if any(d.glob("*.safetensors")) else p


def convert_reward_model(src: str | Path, dst: str | Path, device: str = "cpu") -> Path:
    """Rewrite a reward model in the current layout (e.g. one saved in the first layout, or a
    TRL / Qwen PRM with its spec recorded): load it, then save it to ``dst``. Scores are
    unchanged. (What a ``rewardlab convert SRC DST`` command would run.)"""
    rm = load_reward_model(src, device, dtype="float32")
    return rm.save_pretrained(dst)


# --------------------------------------------------------------------------------------------
# Model cards


_PRM_READ = {
    "head": ("AutoModelForTokenClassification",
             "p = model(ids).logits[0].softmax(-1)[:, 1]              # P(good) at every token"),
    "lm": ("AutoModelForCausalLM",
           "good, bad = (tok.encode(t, add_special_tokens=False)[0] for t in spec[\"labels\"])\n"
           "p = model(ids).logits[0][:, [bad, good]].softmax(-1)[:, 1]  # P(good) at every token"),
}


def _usage(spec: RMSpec) -> tuple[str, str]:
    """(transformers Auto class, a snippet that scores ``question``/``steps`` into ``scores``)."""
    head = ["import torch",
            "from transformers import AutoTokenizer, {cls}",
            "",
            "path = \".\"   # this directory, or its hub id",
            "tok = AutoTokenizer.from_pretrained(path)",
            "model = {cls}.from_pretrained(path, dtype=torch.float32).eval()",
            "spec = model.config.rewardlab_rm",
            "question = \"sam has 3 apples . buys 4 more . how many apples ?\"",
            "steps = [\"3 + 4 = 7\", \"#### 7\"]"]
    if spec.kind != "prm":
        cls = "AutoModelForSequenceClassification"
        last = ("score = torch.sigmoid(logit).item()   # P(correct)" if spec.kind == "orm"
                else "score = logit.item()                   # Bradley-Terry reward")
        body = ["text = question + \"\\n\" + \"\\n\".join(steps)",
                "ids = tok(text, add_special_tokens=False, return_tensors=\"pt\").input_ids",
                "with torch.no_grad():",
                "    logit = model(ids).logits[0, 0] + spec.get(\"offset\", 0.0)",
                last]
    else:
        cls, read = _PRM_READ[spec.form]
        read = read.replace("\n", "\n    ")
        if spec.layout == "trl":
            body = ["sep = tok(spec[\"tag\"], add_special_tokens=False).input_ids",
                    "ids, reads = ([tok.bos_token_id] if tok.bos_token_id is not None else []), []",
                    "ids += tok(question, add_special_tokens=False).input_ids",
                    "for s in steps:",
                    "    ids += tok(s, add_special_tokens=False).input_ids + sep",
                    "    reads.append(len(ids) - 1)",
                    "ids = torch.tensor([ids])"]
        elif spec.layout == "qwen":
            body = [f"msgs = [{{\"role\": \"system\", \"content\": {QWEN_PRM_SYSTEM!r}}},",
                    "        {\"role\": \"user\", \"content\": question},",
                    "        {\"role\": \"assistant\", \"content\": \"\".join(s + spec[\"tag\"] for s in steps)}]",
                    "text = tok.apply_chat_template(msgs, tokenize=False)",
                    "ids = tok(text, add_special_tokens=False, return_tensors=\"pt\").input_ids",
                    "tag_id = tok.encode(spec[\"tag\"], add_special_tokens=False)[0]",
                    "reads = (ids[0] == tag_id).nonzero().flatten()"]
        else:
            body = ["tag = spec[\"tag\"]",
                    "text = question + \"\\n\" + \"\\n\".join(s + tag for s in steps)",
                    "ids = tok(text, add_special_tokens=False, return_tensors=\"pt\").input_ids",
                    "tag_id = tok.encode(tag, add_special_tokens=False)[0]",
                    "reads = (ids[0] == tag_id).nonzero().flatten()   # one tag per step"]
        agg = {"product": "math.prod(step_scores)", "min": "min(step_scores, default=1.0)",
               "last": "(step_scores or [1.0])[-1]"}[spec.aggregation]
        body += ["with torch.no_grad():",
                 f"    {read}",
                 "step_scores = p[reads].tolist()                  # p_1..p_K",
                 f"score = {agg}"]
        head = ["import math"] + head
    return cls, "\n".join([line.format(cls=cls) for line in head] + body)


def reward_model_card(spec: RMSpec, base: str | None = None, data: Sequence[str] = (),
                      metrics: dict | None = None, command: str | None = None) -> ModelCard:
    """The model card of a reward model of ``spec`` (see :class:`ModelCard`)."""
    cls, usage = _usage(spec)
    if spec.kind == "prm":
        what = ("process reward model (PRM): it scores every step of a solution, "
                "p_k = P(step k is good | the question and steps 1..k)")
        form = (f"form `head`: a 2-label token classifier (`{cls}`, labels 0 = bad, 1 = good), "
                "p_k = softmax(logits)[1] at the step's tag" if spec.form == "head" else
                f"form `lm`: a causal LM (`{cls}`); p_k = softmax over the LM logits of the label "
                f"tokens {spec.bad_token!r} (bad) and {spec.good_token!r} (good) at the step's tag")
        layout = {"rewardlab": f"`question + \"\\n\" + step_1 + TAG + \"\\n\" + step_2 + TAG ...` "
                               "with no BOS; the score is read at each TAG",
                  "trl": "TRL PRMTrainer: BOS, the question, then each step followed by the "
                         "separator TAG (each piece tokenised alone); read at the separator's "
                         "last token",
                  "qwen": "the chat template: the question as the user turn, the steps joined "
                          "and ended by TAG as the assistant turn; read at each TAG"}[spec.layout]
        details = [form, f"Step tag (TAG): `{spec.tag!r}`; input layout: {layout}",
                   f"Solution score: the {spec.aggregation} of the step scores"]
        tags, pipeline = ["rewardlab", "reward-model", "process-reward-model"], (
            "token-classification" if spec.form == "head" else "text-generation")
    else:
        what = ("outcome reward model (ORM): P(the final answer is correct) for a whole solution"
                if spec.kind == "orm" else
                "Bradley–Terry reward model: a scalar reward, higher for preferred solutions")
        details = [f"`{cls}` with `num_labels=1`; the logit is read at the last token",
                   "Input layout: `question + \"\\n\" + \"\\n\".join(steps)`, no BOS, no EOS",
                   ("Score: sigmoid(logit)" if spec.kind == "orm" else "Score: the logit")
                   + (f"; add {spec.offset:.6g} to the logit (the head's bias, which "
                      f"`{cls}` has no place for)" if spec.offset else "")]
        tags, pipeline = ["rewardlab", "reward-model",
                          "outcome-reward-model" if spec.kind == "orm" else "bradley-terry"], \
            "text-classification"
    details.append("Settings: `config.json` → `rewardlab_rm` (also in `rewardlab_rm.json`); "
                   "`rewardlab.reward_models.models.load_reward_model(path)` loads it with them")
    return ModelCard(title=f"rewardlab {spec.kind.upper()} reward model",
                     summary=f"A {what}, trained with rewardlab. Plain transformers loads it with "
                             f"`{cls}` and its trained head.",
                     base=base, data=list(data), metrics=dict(metrics or {}), command=command,
                     details=details, usage=usage, tags=tags, pipeline_tag=pipeline)
