"""Reward-model data: the text layout, step-tag location, JSONL rows and batch collation.

**PRM text layout** (LM-head and head forms alike; ``TAG`` is the step tag, e.g. ``" ки"``)::

    question + "\\n" + step_1 + TAG + "\\n" + step_2 + TAG + ... + "\\n" + step_K + TAG

The prompt is the policy's (``question + "\\n"``), every step is followed directly by the tag and
steps are separated by ``"\\n"``; there is no BOS (``add_special_tokens=False``, as for the
policy's prompts) and no EOS. The K tags are found by token id after tokenising the whole text;
a tag that the tokenizer merges with its neighbours (so that it is not one token of the tag's id
at every step end) is refused with a ValueError, as is a step or question that contains the tag.

Two more PRM layouts read public PRMs as they were trained: ``trl`` (TRL ``PRMTrainer``: BOS,
the question, then every step followed by the separator ``"\\n"``, read at the separator;
:func:`encode_prm_trl`) and ``qwen`` (Qwen2.5-Math-PRM: the chat template, the steps joined and
ended by ``<extra_0>``; :func:`encode_prm_chat`).

**ORM / Bradley–Terry layout**: ``question + "\\n" + "\\n".join(steps)`` (the policy's prompt and
response, without EOS); the score is read at the last token.

**Label convention.** PRM labels are a float tensor (B, L): ``-100`` at every position that is
not a step tag, and at the k-th tag the target P('+') of step k (1.0 good, 0.0 bad, soft labels
in between). ORM labels are ``-100`` on the prompt and padding and the outcome on every solution
token (or only on the last token with ``last_only=True``). Example (runs as a test):

>>> from rewardlab.data.testbed import build_tokenizer
>>> tok = build_tokenizer()
>>> tag_id = resolve_token_id(tok, " ки", "tag")
>>> enc = encode_prm(tok, "sam has 3 apples . buys 4 more . how many apples ?",
...                  ["3 + 4 = 7", "#### 7"], " ки", tag_id)
>>> tok.convert_ids_to_tokens(enc.input_ids)[-10:]
['3', ' +', ' 4', ' =', ' 7', ' ки', '\\n', '####', ' 7', ' ки']
>>> enc.tag_positions == [len(enc.input_ids) - 5, len(enc.input_ids) - 1]
True
>>> batch = collate_prm([enc], [[1.0, 0.25]], pad_id=tok.pad_token_id)
>>> batch["labels"][0, -5:].tolist()
[1.0, -100.0, -100.0, -100.0, 0.25]
>>> int((batch["labels"] != -100).sum())
2
"""

from __future__ import annotations


import math
import os
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch

from rewardlab.data.formats import iter_records
from rewardlab.data.steps import split_steps
from rewardlab.io import check_row, DataError
from rewardlab.models.batching import IGNORE_INDEX, pad_ids


# --------------------------------------------------------------------------------------------
# Text layout and tokenisation


@dataclass
class Encoded:
    """One tokenised RM input."""

    input_ids: list[int]
    tag_positions: list[int] = field(default_factory=list)
    """PRM: index of the k-th step's tag token (K entries); empty for ORM/BT."""
    n_prompt: int = 0
    """Tokens of ``question + "\\n"`` (the rest is the solution)."""


def resolve_token_id(tokenizer, text: str, what: str = "token") -> int:
    """The id of ``text`` when the tokenizer encodes it as exactly one known token, else
    ValueError (say how to fix it)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1 or (tokenizer.unk_token_id is not None and ids[0] == tokenizer.unk_token_id):
        raise ValueError(
            f"{what} {text!r} is not a single token of this tokenizer (it encodes as {ids}); "
            "choose a token in the vocabulary or add it with tokenizer.add_special_tokens "
            "and model.resize_token_embeddings (build_reward_model(..., add_missing_tokens=True) "
            "does both)")
    return int(ids[0])


def prm_text(question: str, steps: Sequence[str], tag: str) -> tuple[str, list[tuple[int, int]]]:
    """The tagged PRM text and the character span of each step's tag."""
    text = question + "\n"
    spans = []
    for k, step in enumerate(steps):
        if k:
            text += "\n"
        text += step
        spans.append((len(text), len(text) + len(tag)))
        text += tag
    return text, spans


def plain_text(question: str, steps: Sequence[str]) -> str:
    """The ORM/BT text: the policy's prompt and response without EOS."""
    return question + "\n" + "\n".join(steps)


def _tokenize(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]] | None]:
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]), None


def encode_prm(tokenizer, question: str, steps: Sequence[str], tag: str, tag_id: int) -> Encoded:
    """Tokenise the tagged text (layout in the module docstring) and locate the K tags by id.

    Raises ValueError when a step or the question contains the tag, or when the tag does not come
    out as one token of id ``tag_id`` at every step end (the tokenizer merged it with its
    neighbours)."""
    _check_no_tag(question, steps, tag)
    text, spans = prm_text(question, steps, tag)
    ids, offsets = _tokenize(tokenizer, text)
    positions = [i for i, t in enumerate(ids) if t == tag_id]
    ok = len(positions) == len(spans)
    if ok and offsets is not None:  # the k-th tag token must overlap the k-th tag's characters
        ok = all(offsets[p][0] < e and offsets[p][1] > s for p, (s, e) in zip(positions, spans))
    if not ok:
        raise ValueError(
            f"the step tag {tag!r} (token id {tag_id}) is merged with neighbouring text by the "
            f"tokenizer: found {len(positions)} tag tokens for {len(spans)} steps in {text!r}. "
            "Use a tag the tokenizer always splits off (a special token added with "
            "tokenizer.add_special_tokens, or a tag with a leading space such as ' ки')")
    n_prompt = _count_prompt_tokens(tokenizer, question, ids, offsets)
    return Encoded(ids, positions, n_prompt)


def _check_no_tag(question: str, steps: Sequence[str], tag: str) -> None:
    if tag in question:
        raise ValueError(f"the question contains the step tag {tag!r}; choose another tag")
    for k, step in enumerate(steps):
        if tag in step:
            raise ValueError(f"step {k + 1} contains the step tag {tag!r}; choose another tag")


def encode_prm_trl(tokenizer, question: str, steps: Sequence[str], separator: str = "\n"
                   ) -> Encoded:
    """TRL ``PRMTrainer`` layout: ``[BOS] + ids(question) + Σ_k (ids(step_k) + ids(separator))``,
    each piece tokenised on its own (BOS only when the tokenizer has one, no separator between
    the question and the first step); step k is read at the LAST token of its separator."""
    sep = list(tokenizer(separator, add_special_tokens=False)["input_ids"])
    if not sep:
        raise ValueError(f"the step separator {separator!r} encodes as no token")
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = ([bos] if bos is not None else []) + list(
        tokenizer(question, add_special_tokens=False)["input_ids"])
    n_prompt = len(ids)
    positions = []
    for step in steps:
        ids += list(tokenizer(step, add_special_tokens=False)["input_ids"]) + sep
        positions.append(len(ids) - 1)
    return Encoded(ids, positions, n_prompt)


QWEN_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
"""The system prompt Qwen2.5-Math-PRM is used with."""


def encode_prm_chat(tokenizer, question: str, steps: Sequence[str], tag: str, tag_id: int,
                    system: str = QWEN_PRM_SYSTEM) -> Encoded:
    """Qwen2.5-Math-PRM layout: the tokenizer's chat template over a system message, the
    question as the user turn and ``tag.join(steps) + tag`` as the assistant turn; step k is
    read at the k-th tag token. Raises ValueError without a chat template or when the tags do not
    come out as K tokens of id ``tag_id``."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the qwen PRM layout needs a tokenizer with a chat template")
    _check_no_tag(question, steps, tag)
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": question},
        {"role": "assistant", "content": "".join(s + tag for s in steps)}]
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    positions = [i for i, t in enumerate(ids) if t == tag_id]
    if len(positions) != len(steps):
        raise ValueError(f"the step tag {tag!r} (token id {tag_id}) came out {len(positions)} "
                         f"times for {len(steps)} steps in the chat-formatted text")
    return Encoded(ids, positions, positions[0] if positions else len(ids))


def encode_plain(tokenizer, question: str, steps: Sequence[str]) -> Encoded:
    """Tokenise the ORM/BT text; ``n_prompt`` counts the tokens that start in the prompt."""
    ids, offsets = _tokenize(tokenizer, plain_text(question, steps))
    return Encoded(ids, [], _count_prompt_tokens(tokenizer, question, ids, offsets))


def _count_prompt_tokens(tokenizer, question: str, ids: list[int], offsets) -> int:
    n_chars = len(question) + 1
    if offsets is not None:
        return sum(1 for s, _ in offsets if s < n_chars)
    return min(len(ids), len(tokenizer(question + "\n", add_special_tokens=False)["input_ids"]))


# --------------------------------------------------------------------------------------------
# Collation (shape vocabulary: B rows, L padded length)


def collate_prm(encs: Sequence[Encoded], step_labels: Sequence[Sequence[float]] | None,
                pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """input_ids / attention_mask (B, L), tag_mask (B, L) bool, and labels (B, L) float:
    IGNORE_INDEX everywhere except the tags, where it holds the step's target P('+')."""
    ids, mask, shift = pad_ids([e.input_ids for e in encs], pad_id, padding_side)
    tag_mask = torch.zeros_like(ids, dtype=torch.bool)
    labels = torch.full(ids.shape, IGNORE_INDEX, dtype=torch.float32)
    for b, e in enumerate(encs):
        pos = [p + shift[b] for p in e.tag_positions]
        tag_mask[b, pos] = True
        if step_labels is not None:
            if len(step_labels[b]) != len(pos):
                raise ValueError(f"row {b}: {len(step_labels[b])} labels for {len(pos)} steps")
            labels[b, pos] = torch.tensor([float(y) for y in step_labels[b]], dtype=torch.float32)
    return {"input_ids": ids, "attention_mask": mask, "tag_mask": tag_mask, "labels": labels}


def collate_orm(encs: Sequence[Encoded], outcomes: Sequence[float] | None, pad_id: int,
                padding_side: str = "right", last_only: bool = False) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask (B, L) and labels (B, L) float: the outcome on every solution
    token (or the last token only), IGNORE_INDEX on the prompt and padding."""
    ids, mask, shift = pad_ids([e.input_ids for e in encs], pad_id, padding_side)
    labels = torch.full(ids.shape, IGNORE_INDEX, dtype=torch.float32)
    if outcomes is not None:
        for b, e in enumerate(encs):
            end = shift[b] + len(e.input_ids)
            start = end - 1 if last_only else shift[b] + min(e.n_prompt, len(e.input_ids) - 1)
            labels[b, start:end] = float(outcomes[b])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def collate_pairs(chosen: Sequence[Encoded], rejected: Sequence[Encoded], pad_id: int,
                  padding_side: str = "right", read: str = "last") -> dict[str, torch.Tensor]:
    """Chosen rows then rejected rows in one (2B, L) batch, and ``read_index`` (2B,): where each
    row's score is read — the last token (``read="last"``, Bradley–Terry) or the last step tag
    (``read="last_tag"``, PRM step preferences)."""
    encs = list(chosen) + list(rejected)
    ids, mask, shift = pad_ids([e.input_ids for e in encs], pad_id, padding_side)
    if read == "last":
        idx = [shift[b] + len(e.input_ids) - 1 for b, e in enumerate(encs)]
    elif read == "last_tag":
        idx = [shift[b] + e.tag_positions[-1] for b, e in enumerate(encs)]
    else:
        raise ValueError(f"read must be 'last' or 'last_tag', not {read!r}")
    return {"input_ids": ids, "attention_mask": mask,
            "read_index": torch.tensor(idx, dtype=torch.long)}


# --------------------------------------------------------------------------------------------
# JSONL rows


@dataclass
class StepRow:
    """A PRM/ORM training row: ``{"id","question","steps","step_labels","outcome"}``."""

    question: str
    steps: list[str]
    step_labels: list[float] | None
    outcome: float | None
    id: str | None = None
    source: tuple[str, int] = ("", 0)
    """(file, line) the row came from, for error messages."""


@dataclass
class PairRow:
    """A preference row: BT ``{"question","chosen","rejected"}`` (chosen/rejected are step
    lists, or response texts split into lines after an optional ``prefix`` of steps, as
    ``rewardlab pairs`` writes them), or a PRM step preference ``{"question","prefix","chosen_step","rejected_step"}``
    stored as ``chosen = prefix + [chosen_step]``, ``rejected = prefix + [rejected_step]``."""

    question: str
    chosen: list[str]
    rejected: list[str]
    source: tuple[str, int] = ("", 0)


def _as_prob(v, path, line, fld) -> float:
    if isinstance(v, bool):
        return float(v)
    if not isinstance(v, (int, float)) or not math.isfinite(float(v)) or not 0.0 <= v <= 1.0:
        raise DataError(path, f"expected a label in [0, 1] (0/1 or a probability), got {v!r}",
                        line, fld)
    return float(v)


def _step_list(v, path, line, fld, allow_empty: bool = False) -> list[str]:
    if not isinstance(v, list):
        raise DataError(path, f"expected a list of step strings, got {type(v).__name__}", line, fld)
    if not v and not allow_empty:
        raise DataError(path, "expected at least one step", line, fld)
    for i, s in enumerate(v):
        if not isinstance(s, str):
            raise DataError(path, f"step {i + 1} is a {type(s).__name__}, expected a string",
                            line, fld)
        if not s.strip():
            raise DataError(path, f"step {i + 1} is empty", line, fld)
    return list(v)


def _nonempty_str(v, path, line, fld) -> str:
    if not v.strip():
        raise DataError(path, "is empty", line, fld)
    return v


def read_rm_rows(paths: str | os.PathLike | Iterable[str | os.PathLike], kind: str,
                 preference: bool = False, fmt: str = "auto") -> list[StepRow] | list[PairRow]:
    """Read and check RM training rows from one or more JSONL files.

    kind "prm" needs question/steps/step_labels (len(step_labels) == len(steps)); "orm" needs
    question/steps/outcome; "bt" needs question/chosen/rejected; "prm" with ``preference=True``
    needs question/prefix/chosen_step/rejected_step. TRL's formats are read too (stepwise
    supervision for prm/orm, unpaired prompt/completion/label for orm, preference for bt),
    detected per row or forced by ``fmt`` (rewardlab.data.formats). A bad row raises DataError
    naming the file, the line and the field."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list = []
    for path in paths:
        if kind == "bt":
            out += _read_bt(path, fmt)
        elif kind == "prm" and preference:
            out += _read_step_pref(path, fmt)
        elif kind in ("prm", "orm"):
            out += _read_steps(path, kind, fmt)
        else:
            raise ValueError(f"unknown reward-model kind {kind!r}; use orm, prm or bt")
    return out


def _read_steps(path, kind: str, fmt: str = "auto") -> list[StepRow]:
    need = ["question", "steps", "step_labels" if kind == "prm" else "outcome"]
    rows = []
    for line, r, _ in iter_records(path, kind, fmt):
        check_row(path, line, r, need, {"question": str, "steps": list, "step_labels": list,
                                        "id": (str, int)})
        steps = _step_list(r["steps"], path, line, "steps")
        labels = None
        if r.get("step_labels") is not None:
            labels = [_as_prob(v, path, line, "step_labels") for v in r["step_labels"]]
            if len(labels) != len(steps):
                raise DataError(path, f"has {len(labels)} labels for {len(steps)} steps", line,
                                "step_labels")
        elif kind == "prm":
            raise DataError(path, "is null; a PRM row needs one label per step", line,
                            "step_labels")
        outcome = None
        if r.get("outcome") is not None:
            outcome = _as_prob(r["outcome"], path, line, "outcome")
        elif kind == "orm":
            raise DataError(path, "is null; an ORM row needs the solution's outcome", line,
                            "outcome")
        rows.append(StepRow(_nonempty_str(r["question"], path, line, "question"), steps, labels,
                            outcome, None if r.get("id") is None else str(r["id"]),
                            (str(path), line)))
    return rows


def _response_steps(v, path, line, fld) -> list[str]:
    """A step list as it is, or a response text (``rewardlab pairs`` rows) split into its lines."""
    if isinstance(v, str):
        steps = split_steps(v, "lines")
        if not steps:
            raise DataError(path, "expected a non-empty response", line, fld)
        return steps
    return _step_list(v, path, line, fld)


def _read_bt(path, fmt: str = "auto") -> list[PairRow]:
    rows = []
    for line, r, _ in iter_records(path, "bt", fmt):
        check_row(path, line, r, ["question", "chosen", "rejected"],
                  {"question": str, "chosen": (list, str), "rejected": (list, str),
                   "prefix": list})
        prefix = _step_list(r.get("prefix") or [], path, line, "prefix", allow_empty=True)
        rows.append(PairRow(_nonempty_str(r["question"], path, line, "question"),
                            prefix + _response_steps(r["chosen"], path, line, "chosen"),
                            prefix + _response_steps(r["rejected"], path, line, "rejected"),
                            (str(path), line)))
    return rows


def _read_step_pref(path, fmt: str = "auto") -> list[PairRow]:
    rows = []
    for line, r, _ in iter_records(path, "prm-preference", fmt):
        check_row(path, line, r, ["question", "prefix", "chosen_step", "rejected_step"],
                  {"question": str, "prefix": list, "chosen_step": str, "rejected_step": str})
        prefix = _step_list(r["prefix"], path, line, "prefix", allow_empty=True)
        chosen = _nonempty_str(r["chosen_step"], path, line, "chosen_step")
        rejected = _nonempty_str(r["rejected_step"], path, line, "rejected_step")
        rows.append(PairRow(_nonempty_str(r["question"], path, line, "question"),
                            prefix + [chosen], prefix + [rejected], (str(path), line)))
    return rows
