"""Final-answer extraction and equivalence.

``is_equiv`` tries three stages, cheapest first:

1. exact match after :func:`normalize_answer` (``$``, spaces, ``\\left``/``\\right``, ``\\dfrac``,
   ``\\text{ units}``, degrees, ``x=3`` → ``3``, ``1,000`` → ``1000``, trailing ``.`` ...);
2. exact rational comparison when both sides are plain numbers or arithmetic (``1/2``,
   ``\\frac{1}{2}``, ``0.5``, ``1\\frac{4}{5}``) — parsed by :mod:`rewardlab.grading.calc`, no eval;
   two numbers that differ are not equivalent (``0.33`` ≠ ``\\frac{1}{3}``);
3. symbolic equality with math-verify in a worker process, killed after ``timeout`` seconds
   (:mod:`rewardlab.grading.symbolic`), so the limit holds in any thread.
"""

from __future__ import annotations

import logging
import re
from fractions import Fraction

from rewardlab.grading.calc import to_number
from rewardlab.grading.symbolic import symbolic_equiv


logger = logging.getLogger(__name__)

MAX_ANSWER_CHARS = 5000  # longer answers are only compared verbatim
MAX_NUMERIC_CHARS = 200  # longer normalised answers skip the numeric stage
MAX_SYMBOLIC_CHARS = 1000  # longer normalised answers skip the symbolic stage
STYLES = ("gsm8k", "math")

# ---------------------------------------------------------------------------------------------
# extraction

_GSM8K_NUM_RE = re.compile(r"(?:(?<![\w)])-)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")
_LEADING_NUM_RE = re.compile(r"^-?(?:\d+(?:\.\d+)?|\.\d+)(?:/\d+)?")


def _clean_gsm8k(text: str) -> str | None:
    """``"$1,000.00 dollars."`` → ``"1000.00"``: drop ``$``, thousands commas, units, periods.

    Text that does not start with a number gives its last number (``"The answer is 18"``), else
    the text itself without trailing periods.
    """
    s = text.replace("\\$", "").replace("$", "").strip()
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)
    s = re.sub(r"^-\s+(?=\d)", "-", s)
    m = _LEADING_NUM_RE.match(s)
    if m:
        return m.group(0)
    nums = _GSM8K_NUM_RE.findall(s)  # "#### The answer is 18"
    if nums:
        return nums[-1].replace(",", "")
    s = s.rstrip(". ")
    return s or None


def _extract_gsm8k(text: str) -> str | None:
    """Text after the last ``####`` (its first line), else the last number in the text."""
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip()
        return _clean_gsm8k(tail.split("\n", 1)[0]) if tail else None
    nums = _GSM8K_NUM_RE.findall(text)
    return _clean_gsm8k(nums[-1]) if nums else None


def _braced(text: str, start: int) -> str | None:
    """Content of the brace group opening at ``text[start] == '{'`` (escapes skipped), or None."""
    depth, i = 0, start
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:i]
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` or ``\\fbox{...}`` (nested braces respected).

    ``\\boxed 5`` (no braces) gives ``5``. An unclosed last box gives None.
    """
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if idx < 0:
        return None
    i = idx + (6 if text.startswith("\\boxed", idx) else 5)
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] == "{":
        content = _braced(text, i)
    elif i > idx + 5 and text[i - 1] == " ":  # "\boxed 5"
        content = re.split(r"[\s$]", text[i:], maxsplit=1)[0]
    else:
        return None
    content = content.strip() if content is not None else None
    return content or None


def extract_answer(text: str | None, style: str = "gsm8k") -> str | None:
    """The final answer in a response, or None if there is none.

    style "gsm8k": the text after the last ``####``, else the last number in the text; ``$``,
    thousands commas and trailing units/periods dropped (``"#### $1,000."`` → ``"1000"``).
    style "math": the content of the last ``\\boxed{...}`` / ``\\fbox{...}``, else None.
    """
    if text is None:
        return None
    if style == "gsm8k":
        return _extract_gsm8k(str(text))
    if style == "math":
        return last_boxed(str(text))
    raise ValueError(f"unknown answer style {style!r}; expected one of {STYLES}")


# ---------------------------------------------------------------------------------------------
# normalisation

_SPACING_RE = re.compile(r"\\[!,;:> ]|~|\\quad|\\qquad|\\displaystyle")
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])")
_UNIT_TEXT_RE = re.compile(r"\\(?:text|mbox|textrm|mathrm)\{\s[^{}]*\}(?:\^\{?\d\}?)?\s*$")
_TEXT_WRAP_RE = re.compile(r"\\(?:text|textbf|textit|textrm|mbox|mathrm|mathbf|boldsymbol)\{([^{}]*)\}")
_DEGREE_RE = re.compile(r"\^\s*\{?\\circ\}?|\\circ|°|\\degree")
_FRAC_SHORT_RE = re.compile(r"\\frac(?:\s*(\d)|\{([^{}]*)\})(?:\s*(\d)|\{([^{}]*)\})")
_SQRT_SHORT_RE = re.compile(r"\\sqrt\s*(\d)")
_ASSIGN_RE = re.compile(r"^[a-zA-Z](?:_\{?\w+\}?)?=(?!=)")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_CHOICE_RE = re.compile(r"^\(([A-Ea-e])\)$")


MAX_UNIT_PASSES = 4  # trailing units stripped (``5 \text{ m}\text{ s}``); each pass is linear


def _strip_units(s: str) -> str:
    """Drop trailing ``\\text{ units}`` (leading space inside the braces marks a unit), up to
    MAX_UNIT_PASSES of them (``\\text{ a}`` × 10⁴ would otherwise take 10⁴ passes)."""
    for _ in range(MAX_UNIT_PASSES):
        new = _UNIT_TEXT_RE.sub("", s).rstrip()
        if new == s:
            break
        s = new
    return s


def _unwrap_text(s: str) -> str:
    """``\\text{Evelyn}`` → ``Evelyn`` (innermost groups first)."""
    for _ in range(10):
        new = _TEXT_WRAP_RE.sub(r"\1", s)
        if new == s:
            break
        s = new
    return s


def _fix_fracs(s: str) -> str:
    """``\\frac12``, ``\\frac 59``, ``\\frac9{19}`` → ``\\frac{1}{2}`` ...; ``\\sqrt2`` → ``\\sqrt{2}``."""
    s = _FRAC_SHORT_RE.sub(lambda m: "\\frac{%s}{%s}" % (m.group(1) or m.group(2),
                                                       m.group(3) or m.group(4)), s)
    return _SQRT_SHORT_RE.sub(r"\\sqrt{\1}", s)


def normalize_answer(ans: str | None) -> str:
    """Canonical string form of an answer for exact comparison ("" for None).

    Drops ``$``, spacing commands and spaces, ``\\left``/``\\right``, trailing ``\\text{ units}``,
    degrees and ``%``; unwraps ``\\text{..}``; ``\\dfrac``/``\\tfrac`` → ``\\frac``; ``x=3`` → ``3``;
    ``1,000`` → ``1000``; ``.5`` → ``0.5``; ``(C)`` → ``C``; a trailing ``.`` is removed.
    """
    if ans is None:
        return ""
    s = str(ans).strip().replace("\n", " ")
    s = s.replace("\\$", "").replace("$", "")
    s = _SPACING_RE.sub(" ", s)
    s = _LEFT_RIGHT_RE.sub("", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = _strip_units(s)
    s = _DEGREE_RE.sub("", s)
    s = _unwrap_text(s)
    s = s.replace("\\%", "").replace("%", "")
    s = _fix_fracs(s)
    s = re.sub(r"\s+", "", s)
    s = re.sub(r"(?<=\d)\{,\}(?=\d)", "", s)
    s = s.rstrip(".").rstrip(",")
    s = _ASSIGN_RE.sub("", s, count=1)
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    s = re.sub(r"^(-?)\.(?=\d)", r"\g<1>0.", s)
    m = _CHOICE_RE.match(s)
    return m.group(1).upper() if m else s


# ---------------------------------------------------------------------------------------------
# numeric stage

_FRAC_RE = re.compile(r"\\frac\{([^{}]*)\}\{([^{}]*)\}")
_MIXED_RE = re.compile(r"^(-?)(\d+)\\frac\{(\d+)\}\{(\d+)\}$")


def to_fraction(norm: str) -> Fraction | None:
    """Exact value of a normalised answer that is plain arithmetic, else None (never raises).

    ``\\frac{a}{b}`` → ``(a)/(b)``, ``\\cdot``/``\\times`` → ``*``, ``^{n}`` → ``^(n)``; a mixed
    number ``1\\frac{4}{5}`` is 1 + 4/5.
    """
    if not norm or len(norm) > MAX_NUMERIC_CHARS or not re.search(r"\d", norm):
        return None
    m = _MIXED_RE.match(norm)
    if m:
        sign, whole, num, den = m.groups()
        if int(den) == 0:
            return None
        val = int(whole) + Fraction(int(num), int(den))
        return -val if sign else val
    s = norm
    for _ in range(20):
        new = _FRAC_RE.sub(r"((\1)/(\2))", s)
        if new == s:
            break
        s = new
    s = s.replace("\\cdot", "*").replace("\\times", "*").replace("\\div", "/")
    s = s.replace("{", "(").replace("}", ")")
    return to_number(s)


# ---------------------------------------------------------------------------------------------
# equivalence

_warned_symbolic = False


def _symbolic(pred: str, gold: str, timeout: float) -> bool:
    """Stage 3, tolerant of a worker that cannot start (logged once, graded False)."""
    global _warned_symbolic
    try:
        return symbolic_equiv(pred, gold, timeout)
    except (RuntimeError, OSError) as e:
        if not _warned_symbolic:
            logger.warning("symbolic grading unavailable (%s); falling back to exact/numeric", e)
            _warned_symbolic = True
        return False


def is_equiv(pred: str | None, gold: str | None, timeout: float = 5.0) -> bool:
    """Whether ``pred`` is the same answer as ``gold``: normalised exact → numeric → symbolic.

    None on either side is never equivalent. The symbolic stage (math-verify, with ``gold`` as
    the reference) runs in a worker process and counts as not equivalent after ``timeout``
    seconds of wall time, waiting for a free worker included, from any number of threads; only
    the pool's first start-up in a process (~1 s) is not counted (replacements start in the
    background). Text is never evaluated as code.
    """
    if pred is None or gold is None:
        return False
    pred, gold = str(pred).strip(), str(gold).strip()
    if not pred or not gold:
        return False
    if pred == gold:
        return True
    if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return False
    np_, ng = normalize_answer(pred), normalize_answer(gold)
    if np_ and np_ == ng:
        return True
    fp, fg = to_fraction(np_), to_fraction(ng)
    if fp is not None and fg is not None:
        return fp == fg
    if fg is not None and not any(c.isdigit() for c in np_):
        return False  # a numeric gold never equals text without a digit: skip the symbolic stage
    if len(np_) > MAX_SYMBOLIC_CHARS or len(ng) > MAX_SYMBOLIC_CHARS or timeout <= 0:
        return False
    return _symbolic(pred, gold, timeout)


def grade(response_text: str | None, gold: str | None, style: str = "gsm8k",
          timeout: float = 5.0) -> bool:
    """``is_equiv(extract_answer(response_text, style), gold)``."""
    return is_equiv(extract_answer(response_text, style), gold, timeout=timeout)


__all__ = ["extract_answer", "last_boxed", "normalize_answer", "to_fraction", "is_equiv", "grade",
           "STYLES"]
