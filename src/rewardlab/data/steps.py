"""Step splitting, the one place: a solution or a response → its reasoning steps.

Two layouts: one step per line (GSM8K, the testbed) and blank-line-separated paragraphs (MATH).
:func:`step_texts` / :func:`step_char_ends` split a policy's response on a separator (the PRM's
input steps and the token positions of its rewards come from the same split);
:func:`split_steps` splits a dataset's reference solution.
"""

from __future__ import annotations

import re


def _step_pieces(text: str, separator: str):
    """(start offset, piece) of every non-empty ``separator``-split piece of ``text`` (a piece of
    only whitespace is not a step)."""
    if not separator:
        raise ValueError("separator must be a non-empty string")
    pos = 0
    for piece in text.split(separator):
        if piece.strip():
            yield pos, piece
        pos += len(piece) + len(separator)


def step_char_ends(text: str, separator: str = "\n") -> list[int]:
    """Exclusive end offset in ``text`` of every non-empty step (``separator``-split pieces with
    trailing whitespace excluded; whitespace-only pieces are not steps)."""
    return [pos + len(piece.rstrip()) for pos, piece in _step_pieces(text, separator)]


def step_texts(text: str, separator: str = "\n") -> list[str]:
    """The steps whose ends :func:`step_char_ends` gives: the non-empty ``separator``-split pieces
    of ``text``, stripped (so the PRM scores exactly the steps whose last tokens get its rewards)."""
    return [piece.strip() for _, piece in _step_pieces(text, separator)]


STEP_SPLITS = ("lines", "blank")


def _merge_asy(parts: list[str]) -> list[str]:
    """Re-join paragraphs that a blank line split inside an ``[asy]...[/asy]`` figure (MATH)."""
    out: list[str] = []
    open_asy = False
    for part in parts:
        if open_asy:
            out[-1] += "\n\n" + part
        else:
            out.append(part)
        open_asy = out[-1].count("[asy]") > out[-1].count("[/asy]")
    return out


def split_steps(solution: str, step_split: str = "lines") -> list[str]:
    """Split a solution into stripped, non-empty steps.

    ``"lines"``: one step per line (GSM8K, testbed); ``"blank"``: blank-line-separated paragraphs
    (MATH); any other string is a regular expression to split on.
    """
    if step_split == "lines":
        parts = solution.splitlines()
    elif step_split == "blank":
        parts = _merge_asy(re.split(r"\n[ \t]*\n", solution))
    else:
        try:
            parts = re.split(step_split, solution)
        except re.error as e:
            raise ValueError(f"step_split {step_split!r} is neither {STEP_SPLITS} nor a valid "
                             f"regular expression: {e}") from None
    return [p.strip() for p in parts if p and p.strip()]
