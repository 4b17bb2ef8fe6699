"""Step ends → token indices: t_end(k), the index of the last response token of step k, where the
PRM reward of step k is placed (SPEC "Training reward of one response").

A step is a non-empty piece of the decoded response split on ``separator`` ("\\n" for GSM8K and
the testbed, "\\n\\n" for MATH paragraphs), surrounding whitespace excluded, so the final
``#### <answer>`` line is the last step. Steps are found in the text, tokens are what the policy
emitted, and the two do not align: one token may hold ".\\n", "\\n\\n" or even the end of one
step and the start of the next, and a byte-level BPE may split one character over several
tokens. So t_end(k) is defined on character spans: the index of the LAST token whose span
overlaps step k's text (for a token ".\\n" that is the ".\\n" token itself; a separator-only
token after the step never counts).

Character spans come from the tokenizer itself: reach(i), the characters of the decoded text
that tokens 0..i have produced, is the length of decode(ids[:i+1]) as a prefix of the text (a
trailing "\\ufffd" of a partial UTF-8 character does not count, so a character split over
several byte-level tokens belongs to the token that completes it), and
t_end(k) = min{i : reach(i) ≥ end of step k}. It is found in two stages:

1. a guess from the fast tokenizer's ``offset_mapping`` (one O(T) call), used when re-encoding
   the decoded text gives back exactly the same ids; every guess is then checked against the
   definition, reach(t) ≥ b > reach(t − 1) (2 prefix decodes per step);
2. binary search on reach for steps without a confirmed guess (non-canonical token sequences,
   slow tokenizers): O(log T) prefix decodes per step, batched over steps into one call of the
   Rust decoder per round.

Special tokens (EOS, padding) decode to nothing, so they never end a step.

>>> step_char_ends("3 + 4 = 7\\n7 - 2 = 5\\n#### 5")
[9, 19, 26]
>>> # tokens "3", " +", " 4", " =", " 7", "\\n", "7", " -": step 1 ends at character 9
>>> step_ends_from_char_spans([1, 3, 5, 7, 9, 10, 11, 13], [9])
[4]
"""

from __future__ import annotations


import bisect
import os
from typing import Callable, Sequence

import torch

from rewardlab.data.steps import step_char_ends


Decoder = Callable[[list[list[int]]], list[str]]


def step_ends_from_char_spans(char_ends: Sequence[int], step_char_ends: Sequence[int]) -> list[int]:
    """t_end(k) for every step from cumulative token character ends (pure core, no tokenizer).

    Token i covers characters [char_ends[i−1], char_ends[i]) (char_ends[−1] = 0; a zero-length
    token covers nothing); ``char_ends`` is non-decreasing. Step k ends at character
    step_char_ends[k] = b (exclusive), so the last token overlapping it is the one holding
    character b − 1: t_end(k) = min{i : char_ends[i] ≥ b}."""
    if any(b < a for a, b in zip(char_ends, char_ends[1:])):
        raise ValueError("char_ends must be non-decreasing")
    out = []
    for b in step_char_ends:
        if b < 1:
            raise ValueError(f"step end {b} must be >= 1 (steps are non-empty)")
        i = bisect.bisect_left(char_ends, b)
        if i == len(char_ends):
            raise ValueError(f"step ends at character {b}, past the tokens' text "
                             f"({char_ends[-1] if char_ends else 0} characters)")
        out.append(i)
    return out


def _batch_decoder(tokenizer) -> Decoder:
    """Decode many id lists without special tokens, in one call into the Rust decoder when the
    tokenizer has one (``backend_tokenizer`` of a fast tokenizer, or a ``tokenizers.Tokenizer``)."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if hasattr(backend, "decode_batch"):
        return lambda seqs: backend.decode_batch(seqs, skip_special_tokens=True)
    return lambda seqs: [tokenizer.decode(s, skip_special_tokens=True,
                                          clean_up_tokenization_spaces=False) for s in seqs]


def _reach(prefix_text: str, text: str) -> int:
    """Characters of ``text`` a prefix's decode has produced: the common-prefix length (a trailing
    "\\ufffd" of a partial UTF-8 character does not count)."""
    if text.startswith(prefix_text):
        return len(prefix_text)
    stripped = prefix_text.rstrip("\ufffd")
    if text.startswith(stripped):
        return len(stripped)
    return len(os.path.commonprefix([prefix_text, text]))


def _offset_guesses(ids: list[int], text: str, tokenizer, bounds: list[int]) -> list[int] | None:
    """t_end guesses from ``offset_mapping`` when re-encoding ``text`` round-trips to ``ids``.

    Offsets become cumulative ends; tokens sharing a character (byte-level pieces of one
    character) give it to the last of them, as reach does: end_i = min(end_i, start_{i+1})."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (TypeError, ValueError, NotImplementedError):
        return None
    if list(enc["input_ids"]) != ids:
        return None
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    char_ends, top = [], 0
    for i, (_, end) in enumerate(offsets):
        if i + 1 < len(offsets):
            end = min(end, offsets[i + 1][0])
        top = max(top, end)
        char_ends.append(top)
    try:
        return step_ends_from_char_spans(char_ends, bounds)
    except ValueError:
        return None


def _search_step_ends(ids: list[int], text: str, bounds: list[int], decode: Decoder,
                      guesses: list[int] | None) -> list[int]:
    """min{i : reach(i) ≥ b} for every step end b, by checking the guesses and binary search."""
    def reach(token_indices: list[int]) -> list[int]:            # reach(i), reach(−1) = 0
        texts = decode([ids[:i + 1] for i in token_indices if i >= 0])
        it = iter(texts)
        return [_reach(next(it), text) if i >= 0 else 0 for i in token_indices]

    K, n = len(bounds), len(ids)
    lo, hi = [0] * K, [n - 1] * K                                # answer in [lo, hi]
    if guesses is not None:
        r = reach(guesses + [g - 1 for g in guesses])
        for k, (g, b) in enumerate(zip(guesses, bounds)):
            if r[k] >= b:
                hi[k] = g
                if r[K + k] < b:
                    lo[k] = g                                    # confirmed
            else:
                lo[k] = g + 1
    active = [k for k in range(K) if lo[k] < hi[k]]
    while active:
        mids = [(lo[k] + hi[k]) // 2 for k in active]
        for k, mid, r in zip(active, mids, reach(mids)):
            if r >= bounds[k]:
                hi[k] = mid
            else:
                lo[k] = mid + 1
        active = [k for k in active if lo[k] < hi[k]]
    return lo


def step_end_positions(response_ids: Sequence[int] | torch.Tensor, tokenizer,
                       separator: str = "\n", n_tokens: int | None = None) -> list[int]:
    """t_end(k) for every step of one response: token indices into ``response_ids`` (see the
    module docstring for the definition and the method).

    ``response_ids`` are the response's token ids (T,); only the first ``n_tokens`` count (the
    real response tokens, so right padding is ignored); special tokens such as EOS never end a
    step. Returns one index per non-empty step of the decoded text, in order (K may be 0)."""
    ids_all = [int(t) for t in (response_ids.tolist() if isinstance(response_ids, torch.Tensor)
                                else response_ids)]
    if n_tokens is not None:
        ids_all = ids_all[:n_tokens]
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    keep = [i for i, t in enumerate(ids_all) if t not in special]     # positions of real text
    ids = [ids_all[i] for i in keep]
    decode = _batch_decoder(tokenizer)
    text = decode([ids])[0] if ids else ""
    bounds = step_char_ends(text, separator)
    if not bounds:
        return []
    guesses = _offset_guesses(ids, text, tokenizer, bounds)
    t_ends = _search_step_ends(ids, text, bounds, decode, guesses)
    return [keep[t] for t in t_ends]


def batch_step_end_positions(response_ids: torch.Tensor, response_mask: torch.Tensor, tokenizer,
                             separator: str = "\n") -> list[list[int]]:
    """:func:`step_end_positions` for a right-padded batch: response_ids, response_mask (B, T);
    row b uses its first response_mask[b].sum() tokens. Returns B lists of t_end(k)."""
    n_real = response_mask.long().sum(dim=1).tolist()                  # (B,)
    return [step_end_positions(row, tokenizer, separator, n_tokens=int(n))
            for row, n in zip(response_ids.tolist(), n_real)]
