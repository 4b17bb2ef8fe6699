"""Tensor helpers every model pass shares: padding, positions, last tokens.

Shape vocabulary: B rows, L padded length.
"""

from __future__ import annotations

from typing import Sequence

import torch

IGNORE_INDEX = -100
"""Label of a position that no loss reads (prompt tokens, padding, untagged positions)."""


def pad_ids(seqs: Sequence[Sequence[int]], pad_id: int, padding_side: str = "right"
            ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Pad to (B, L). Returns (input_ids, attention_mask, shift) where ``shift[b]`` is the
    number of pad tokens put before row b (0 for right padding)."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    shift = []
    for b, s in enumerate(seqs):
        off = width - len(s) if padding_side == "left" else 0
        ids[b, off:off + len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[b, off:off + len(s)] = 1
        shift.append(off)
    return ids, mask, shift


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-padding position of each row, (B,), for left or right padding.

    idx_b = max{t : mask_bt = 1} (0 for an all-padding row; callers that cannot use such a row
    check for it first)."""
    pos = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * pos[None, :]).argmax(dim=1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left padding does not shift them (B, L)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def pad_stack(ts: list[torch.Tensor], pad: int, left: bool) -> torch.Tensor:
    """Concatenate (b_i, L_i) tensors row-wise into (Σ b_i, max L_i), padding each with ``pad``
    on the left (``left``) or the right."""
    width = max(t.shape[1] for t in ts)
    out = []
    for t in ts:
        extra = width - t.shape[1]
        if extra:
            fill = torch.full((t.shape[0], extra), pad, dtype=t.dtype, device=t.device)
            t = torch.cat([fill, t] if left else [t, fill], dim=1)
        out.append(t)
    return torch.cat(out, dim=0)
