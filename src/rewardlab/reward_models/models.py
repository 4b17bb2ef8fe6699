"""Reward models: ORM, PRM (LM-head and head forms) and Bradley–Terry, with one scoring API.

Every reward model is a causal-LM backbone (``AutoModelForCausalLM``) plus, where needed, a small
head of our own, read from the backbone's last hidden states h (B, L, H):

- ``orm``  (:class:`OutcomeRM`): scalar head ``nn.Linear(H, 1)``; score = σ(head(h_last)) at the
  last non-padding token. Trained with BCE on every solution token (or the last one).
- ``bt``   (:class:`BradleyTerryRM`): the same scalar head; score = the raw scalar r at the last
  token. Trained with −log σ(r_c − r_r − m) + c·(r_c + r_r)².
- ``prm``  (:class:`ProcessRM`): a step tag after every step (layout in
  :mod:`rewardlab.reward_models.data`); at each tag, pair logits z = (z_bad, z_good) are read and
  p_k = softmax(z)[1] = P('+'). Form ``lm`` (Math-Shepherd, seed blog): z = the LM logits of the
  label tokens ('-', '+'), i.e. h·W_U[[bad, good]]ᵀ — no new parameters. Form ``head``
  (Qwen2.5-Math-PRM, TRL PRMTrainer): z = a 2-class token-classification head ``nn.Linear(H, 2)``.
  All K step scores come from ONE forward pass over the tagged text; the solution score is
  product (default), min or last of p_1..p_K (K = 0 scores 1.0).

Saved layout (``RewardModel.save_pretrained(dir)``, reloaded by :func:`load_reward_model`):
the backbone and tokenizer in Hugging Face format, ``rm_head.safetensors`` (the head, if any) and
``rewardlab_rm.json`` (kind, form, tag, labels, aggregation).

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
from rewardlab.models.batching import last_token_index, position_ids_from_mask
from rewardlab.models.loading import full_precision, load_model_and_tokenizer
from rewardlab.reward_models.data import (collate_orm, collate_prm, encode_plain, encode_prm,
                                          Encoded, resolve_token_id)
from rewardlab.reward_models.losses import aggregate, AGGREGATIONS, step_probs


SPEC_FILE = "rewardlab_rm.json"
HEAD_FILE = "rm_head.safetensors"
KINDS = ("orm", "prm", "bt")
FORMS = ("lm", "head")


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

    def to_json(self) -> dict:
        return {"kind": self.kind, "form": self.form, "tag": self.tag,
                "labels": [self.good_token, self.bad_token], "aggregation": self.aggregation,
                "format_version": 1}

    @classmethod
    def from_json(cls, d: dict) -> "RMSpec":
        good, bad = d.get("labels", ["+", "-"])
        spec = cls(kind=d["kind"], form=d.get("form", "lm"), tag=d.get("tag", " ки"),
                   good_token=good, bad_token=bad, aggregation=d.get("aggregation", "product"))
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
    """A backbone + head reward model. Subclasses set ``kind`` and implement :meth:`encode`
    and :meth:`_score_batch`."""

    kind: str = ""

    def __init__(self, backbone, tokenizer, spec: RMSpec, head: nn.Module | None = None):
        super().__init__()
        spec.validate()
        if spec.kind != self.kind:
            raise ValueError(f"{type(self).__name__} is kind {self.kind!r}, "
                             f"spec says {spec.kind!r}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.spec = spec
        self.head = head
        self.padding_side = "right"
        """Padding used by :meth:`score` (both sides give the same scores)."""

    # -- model ---------------------------------------------------------------------------
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
        with full_precision(h):   # the head's own dtype, also under bfloat16 autocast
            return self.head(h.to(self.head.weight.dtype))

    # -- text -------------------------------------------------------------------------------
    def encode(self, question: str, steps: Sequence[str]) -> Encoded:
        raise NotImplementedError

    # -- scoring ----------------------------------------------------------------------------
    aggregate = staticmethod(aggregate)

    @torch.inference_mode()
    def score(self, questions: list[str], steps: list[list[str]], batch_size: int = 64
              ) -> list[ScoreResult]:
        """Score solutions (``steps[i]`` = the steps of solution i, no trailing newlines).

        Rows are length-sorted into batches of ``batch_size``; results come back in input order.
        No gradient (inference mode: the results are Python floats); the model is put in eval
        mode for the call."""
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
    def save_pretrained(self, path: str | Path, **kwargs) -> Path:
        """Backbone + tokenizer in HF format, the head in safetensors, the spec as JSON."""
        from safetensors.torch import save_file


        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(str(out), **kwargs)
        self.tokenizer.save_pretrained(str(out))
        if self.head is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                      str(out / HEAD_FILE))
        write_json(out / SPEC_FILE, self.spec.to_json())
        return out


class _ScalarRM(RewardModel):
    """A scalar head read at the last non-padding token."""

    def encode(self, question: str, steps: Sequence[str]) -> Encoded:
        return encode_plain(self.tokenizer, question, steps)

    def token_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Scalar head at every position, (B, L) float32."""
        return self._head(self.hidden_states(input_ids, attention_mask)).squeeze(-1).float()

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

    def __init__(self, backbone, tokenizer, spec: RMSpec, head: nn.Module | None = None):
        super().__init__(backbone, tokenizer, spec, head)
        self.tag_id = resolve_token_id(tokenizer, spec.tag, "step tag")
        if spec.form == "lm":
            if head is not None:
                raise ValueError("the LM-head form PRM has no separate head")
            self.good_id = resolve_token_id(tokenizer, spec.good_token, "good label token")
            self.bad_id = resolve_token_id(tokenizer, spec.bad_token, "bad label token")
        elif head is None:
            raise ValueError("the head form PRM needs a 2-class head")

    def encode(self, question: str, steps: Sequence[str]) -> Encoded:
        return encode_prm(self.tokenizer, question, steps, self.spec.tag, self.tag_id)

    def pair_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """z = (z_bad, z_good) at every position, (B, L, 2) float32."""
        h = self.hidden_states(input_ids, attention_mask)                  # (B, L, H)
        if self.head is not None:
            return self._head(h).float()
        unembed = self.backbone.get_output_embeddings()
        idx = torch.tensor([self.bad_id, self.good_id], device=h.device)
        w = unembed.weight[idx]                                            # (2, H)
        with full_precision(h):                                            # float32, as _head
            z = h.float() @ w.float().T                                    # (B, L, 2)
        if getattr(unembed, "bias", None) is not None:
            z = z + unembed.bias[idx].float()
        cap = getattr(self.backbone.config, "final_logit_softcapping", None)
        if cap:
            z = torch.tanh(z / cap) * cap
        return z

    def _score_batch(self, encs: list[Encoded]) -> list[ScoreResult]:
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


def _new_head(spec: RMSpec, hidden: int) -> nn.Module | None:
    """Scalar head (orm/bt) or 2-class head (prm head form), init N(0, 1/(H+1)) and bias 0."""
    if spec.kind == "prm" and spec.form == "lm":
        return None
    head = nn.Linear(hidden, 2 if spec.kind == "prm" else 1)
    nn.init.normal_(head.weight, std=1.0 / math.sqrt(hidden + 1))
    nn.init.zeros_(head.bias)
    return head


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
    """A fresh reward model on top of a causal LM (a hub id or a saved policy directory).

    For a PRM the step tag (and, in LM-head form, the label tokens) must be single tokens; with
    ``add_missing_tokens`` those that are not are added as special tokens and the embeddings are
    resized (the seed blog's ``<|prm_label|>``)."""

    spec.validate()
    backbone, tok = load_model_and_tokenizer(base, dtype, device, trust_remote_code)
    if seed is not None:
        torch.manual_seed(seed)
    if spec.kind == "prm":
        needed = [spec.tag] + ([spec.good_token, spec.bad_token] if spec.form == "lm" else [])
        for text in needed:
            if add_missing_tokens:
                ensure_single_token(tok, backbone, text)
            else:
                resolve_token_id(tok, text, "token")
    head = _new_head(spec, _hidden_size(backbone))
    if head is not None:
        head.to(backbone.device)
    return RM_CLASSES[spec.kind](backbone, tok, spec, head)


def lm_prm_spec(tag: str, good_token: str = "+", bad_token: str = "-") -> RMSpec:
    """The spec that reads a plain causal LM as an LM-head PRM (Math-Shepherd: ``tag=" ки"``):
    ``tag`` after every step, p_k = P(good_token) against P(bad_token) at the k-th tag.
    Raises ValueError for an empty tag or equal label tokens."""
    spec = RMSpec(kind="prm", form="lm", tag=tag, good_token=good_token, bad_token=bad_token)
    spec.validate()
    return spec


def saved_reward_model_dir(path: str | Path) -> Path:
    """The directory holding a reward model saved by rewardlab: ``path`` or, for a ``train-rm``
    run directory, ``path/final``. Raises DataError for anything else (before any model loads)."""

    p = Path(path)
    for d in (p, p / "final"):
        if (d / SPEC_FILE).exists():
            return d
    if not p.is_dir():
        raise DataError(p, "reward-model directory not found")
    raise DataError(p, f"not a rewardlab reward model (no {SPEC_FILE}); train one with "
                       "`rewardlab train-rm`, or use a plain causal LM as an LM-head PRM by "
                       "giving its step tag (rl: reward.prm.tag; bon: --prm-tag; library: "
                       "spec=RMSpec(tag=...))")


def load_reward_model(path: str | Path, device: str = "auto", *, dtype: str = "auto",
                      spec: RMSpec | None = None, trust_remote_code: bool = False) -> RewardModel:
    """Reload a reward model saved by :meth:`RewardModel.save_pretrained` (``from_pretrained``
    of the backbone and tokenizer, the head from safetensors). A ``train-rm`` run directory
    loads its ``final/`` model. ``spec`` lets a plain causal LM be used as an LM-head PRM
    (e.g. Math-Shepherd: ``RMSpec(tag=" ки")``)."""
    from safetensors.torch import load_file


    p = Path(path)
    if spec is None:
        p = saved_reward_model_dir(p)
        try:
            spec = RMSpec.from_json(json.loads((p / SPEC_FILE).read_text()))
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(p / SPEC_FILE, f"unreadable reward-model spec: {e}") from None
    spec.validate()
    backbone, tok = load_model_and_tokenizer(p, dtype, device, trust_remote_code)
    head = _new_head(spec, _hidden_size(backbone))
    if head is not None:
        if not (p / HEAD_FILE).exists():
            raise DataError(p, f"missing {HEAD_FILE} for a {spec.kind} reward model")
        head.load_state_dict(load_file(str(p / HEAD_FILE)))
        head.to(backbone.device)
    return RM_CLASSES[spec.kind](backbone, tok, spec, head)
