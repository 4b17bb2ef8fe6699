"""A safe arithmetic parser for calculator annotations and numeric answers (never ``eval``).

Grammar (recursive descent, exact rational arithmetic with :class:`fractions.Fraction`)::

    expr    := term (('+' | '-') term)*
    term    := unary (('*' | '/' | '×' | '÷') unary)*
    unary   := ('-' | '+') unary | power
    power   := postfix (('**' | '^') unary)?          # right-associative: 2^3^2 = 2^9
    postfix := atom '%'?                               # 50% = 1/2
    atom    := number | '(' expr ')'
    number  := digits with optional thousands commas (1,000) and decimals (.5, 3.25)

Anything else — names, calls, strings, brackets other than parentheses — raises ``ValueError``.
Sizes are bounded so that hostile input cannot exhaust time or memory: input length, nesting depth,
exponents (integer, |e| <= MAX_EXPONENT), the bit length of every power result and of every
intermediate value (MAX_VALUE_BITS: ``2^1000 * 2^1000 * …`` stops there). The step
checkers look at no more than MAX_ANNOTATIONS annotations and MAX_EQUATIONS ``=`` signs of a
text, each within a window of _PLAIN_WINDOW characters, and their patterns have no nested
ambiguity (each character of an expression can be matched one way only), so their time grows
at most linearly with the text (benchmarks/grader_fuzz.py: under 50 ms for 100 kB of hostile text).

GSM8K solutions carry calculator annotations ``<<48/2=24>>``; :func:`check_calc_annotations` checks
each one and :func:`step_arithmetic_ok` summarises a step.
"""

from __future__ import annotations

import re
from fractions import Fraction

MAX_EXPR_CHARS = 2000  # longer expressions are refused outright
MAX_DEPTH = 100  # parentheses / unary-sign nesting
MAX_EXPONENT = 1000  # |e| of any power
MAX_RESULT_BITS = 4096  # bit length of a power's numerator/denominator
MAX_VALUE_BITS = 8192  # bit length of any intermediate numerator/denominator (any 2000-char literal fits)
MAX_ANNOTATIONS = 64  # calculator annotations checked per text (the rest are left out)
MAX_EQUATIONS = 64  # '=' signs examined per step for plain equations (the rest are left out)

_TOKEN_RE = re.compile(r"""
    \s*(?:
      (?P<num>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)
    | (?P<op>\*\*|[-+*/^%()×÷])
    )""", re.VERBOSE)
_ANNOTATION_RE = re.compile(r"<<([^<>]*?)=([^<>=]*)>>")
_NUMBER_RE = re.compile(r"^\s*(-?)\s*\$?\s*((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)\s*(%?)\s*$")


def _tokenize(s: str) -> list[str]:
    """Split ``s`` into number and operator tokens; ValueError on any other character."""
    tokens, pos, n = [], 0, len(s)
    while pos < n:
        m = _TOKEN_RE.match(s, pos)
        if m is None or m.end() == pos:
            if s[pos:].strip() == "":
                break
            raise ValueError(f"unexpected character {s[pos:pos + 1]!r} at position {pos}")
        tokens.append(m.group("num") or m.group("op"))
        pos = m.end()
    return tokens


def _number(tok: str) -> Fraction:
    """A number token → Fraction (commas dropped, ``3.`` allowed)."""
    tok = tok.replace(",", "")
    if tok.endswith("."):
        tok = tok[:-1]
    return Fraction(tok)


def _power(base: Fraction, exp: Fraction) -> Fraction:
    """base ** exp for an integer exponent within the size bounds; ValueError otherwise."""
    if exp.denominator != 1:
        raise ValueError("non-integer exponent")
    e = exp.numerator
    if abs(e) > MAX_EXPONENT:
        raise ValueError(f"exponent {e} exceeds the limit {MAX_EXPONENT}")
    if base == 0 and e < 0:
        raise ValueError("zero to a negative power")
    bits = max(abs(base.numerator).bit_length(), base.denominator.bit_length())
    if bits * abs(e) > MAX_RESULT_BITS:
        raise ValueError("power result too large")
    return base ** e


def _bounded(v: Fraction) -> Fraction:
    """``v``, unless its numerator or denominator is longer than MAX_VALUE_BITS (ValueError)."""
    if v.numerator.bit_length() > MAX_VALUE_BITS or v.denominator.bit_length() > MAX_VALUE_BITS:
        raise ValueError(f"intermediate value longer than {MAX_VALUE_BITS} bits")
    return v


class _Parser:
    """Recursive-descent parser over a token list (see the module docstring for the grammar)."""

    def __init__(self, tokens: list[str]):
        self.toks, self.i, self.depth = tokens, 0, 0

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise ValueError("unexpected end of expression")
        self.i += 1
        return tok

    def _enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ValueError(f"expression nested deeper than {MAX_DEPTH}")

    def expr(self) -> Fraction:
        val = self.term()
        while self.peek() in ("+", "-"):
            val = _bounded(val + self.term() if self.take() == "+" else val - self.term())
        return val

    def term(self) -> Fraction:
        val = self.unary()
        while self.peek() in ("*", "/", "×", "÷"):
            op, rhs = self.take(), self.unary()
            if op in ("*", "×"):
                val = _bounded(val * rhs)
            elif rhs == 0:
                raise ValueError("division by zero")
            else:
                val = _bounded(val / rhs)
        return val

    def unary(self) -> Fraction:
        if self.peek() in ("-", "+"):
            self._enter()
            sign = self.take()
            val = self.unary()
            self.depth -= 1
            return -val if sign == "-" else val
        return self.power()

    def power(self) -> Fraction:
        base = self.postfix()
        if self.peek() in ("**", "^"):
            self.take()
            self._enter()
            exp = self.unary()
            self.depth -= 1
            return _power(base, exp)
        return base

    def postfix(self) -> Fraction:
        val = self.atom()
        if self.peek() == "%":
            self.take()
            val = val / 100
        return val

    def atom(self) -> Fraction:
        tok = self.take()
        if tok == "(":
            self._enter()
            val = self.expr()
            if self.take() != ")":
                raise ValueError("expected ')'")
            self.depth -= 1
            return val
        if tok[0].isdigit() or tok[0] == ".":
            return _number(tok)
        raise ValueError(f"unexpected token {tok!r}")


def parse_expr(s: str) -> Fraction:
    """Evaluate an arithmetic expression exactly: ``parse_expr("1,000 * (3 - 1/2)") == 2500``.

    Supports + - * / (also × ÷), parentheses, unary signs, decimals, thousands commas, ``%`` and
    integer powers ``**`` / ``^`` with bounded size. Raises ``ValueError`` on anything else.
    """
    if not isinstance(s, str):
        raise ValueError(f"expected a string, got {type(s).__name__}")
    if len(s) > MAX_EXPR_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPR_CHARS} characters")
    tokens = _tokenize(s)
    if not tokens:
        raise ValueError("empty expression")
    parser = _Parser(tokens)
    val = parser.expr()
    if parser.peek() is not None:
        raise ValueError(f"unexpected token {parser.peek()!r}")
    return val


def _parse_value(s: str) -> tuple[Fraction, int | None]:
    """An annotation's right-hand side → (value, decimals shown, or None when it is exact)."""
    m = _NUMBER_RE.match(s)
    if m is None:
        return parse_expr(s), None
    sign, num, pct = m.groups()
    val = _number(num) * (-1 if sign else 1) / (100 if pct else 1)
    decimals = len(num.split(".", 1)[1]) if "." in num else None
    return val, (decimals + (2 if pct else 0)) if decimals is not None else None


def values_match(computed: Fraction, shown: Fraction, decimals: int | None) -> bool:
    """True if ``shown`` equals ``computed``, or is it rounded (or truncated) to ``decimals`` places.

    An integer ``shown`` (decimals None) must match exactly unless ``computed`` is not an integer,
    in which case rounding to a whole number is accepted (GSM8K writes ``<<10/3=3>>``).
    """
    if computed == shown:
        return True
    places = decimals if decimals is not None else 0
    if decimals is None and computed.denominator == 1:
        return False
    unit = Fraction(1, 10 ** places)
    return abs(computed - shown) <= unit  # covers round-half-up, round-half-even and truncation


def check_calc_annotations(text: str, limit: int = MAX_ANNOTATIONS) -> list[dict]:
    """Check the GSM8K calculator annotations ``<<expr=value>>`` in ``text`` (the first
    ``limit`` of them).

    Returns one dict per annotation, in order: ``{"expr", "value", "ok"}`` where ``ok`` is True if
    the expression's exact value matches the shown value (allowing rounding to the shown number
    of decimals), False if it does not, and None if either side cannot be parsed.
    """
    out = []
    for m in _ANNOTATION_RE.finditer(text or ""):
        if len(out) >= limit:
            break
        expr, value = m.group(1).strip(), m.group(2).strip()
        try:
            computed = parse_expr(expr)
            shown, decimals = _parse_value(value)
            ok: bool | None = values_match(computed, shown, decimals)
        except (ValueError, ZeroDivisionError, OverflowError):
            ok = None
        out.append({"expr": expr, "value": value, "ok": ok})
    return out


_PLAIN_NUM = r"\$?\d[\d,]*(?:\.\d+)?%?"
_PLAIN_OP = r"(?:\*\*|[-+*/×÷^]|(?<=[\d\s)])[xX](?=[\s\d$(]))"
# Every piece of whitespace belongs to exactly one ``\s*`` (after an operator, after each sign or
# parenthesis): ``\s*[-(]*\s*`` would let the space of each ``+ 2`` go to either side, 2^n ways to
# fail for an n-term sum that does not end in a number ("1 + 2 + … + 22 + n = 500" took seconds).
_PLAIN_EXPR = (rf"(?:[-(]\s*)*{_PLAIN_NUM}\)*"
               rf"(?:\s*{_PLAIN_OP}\s*(?:[-(]\s*)*{_PLAIN_NUM}\)*)*")
_LHS_RE = re.compile(rf"({_PLAIN_EXPR})\s*$")
_RHS_RE = re.compile(rf"^\s*({_PLAIN_EXPR})")
_HAS_OP_RE = re.compile(rf"\d\)*\s*{_PLAIN_OP}")
_AMBIGUOUS_BEFORE_RE = re.compile(
    r"(?:[\d\-+*/×÷^()=.,]|\d[a-zA-Z]+|(?:^|[^a-zA-Z])[a-zA-Z]|[^\x00-\x7f])\s*$")
_AMBIGUOUS_AFTER_RE = re.compile(r"^(?:\s+\d|[a-zA-Z]*\s*(?:[-+*/×÷^]|\*\*)\s*[\d(])")
_PLAIN_WINDOW = 200  # characters of text either side of '=' that are examined


def _plain_side(expr: str) -> str:
    """Normalise a plain-text expression for :func:`parse_expr` (``$`` dropped, ``x`` → ``*``)."""
    return re.sub(r"(?<=[\d\s)])[xX](?=[\s\d$(])", "*", expr.replace("$", ""))


def _plain_equations(text: str) -> list[tuple[str, str]]:
    """Unambiguous ``a op b = c`` equations written without annotations (``16 - 3 - 4 = 9``).

    Each ``=`` is examined on its own, so chains ``a = b = c`` give two equations. An equation is
    skipped when the left side might continue further left (``12 slices * 1/3 = 4``), when a
    mixed number or spaced digits make it ambiguous (``3 1/2 - 2``, ``$350 000``), or when the
    right side continues with an operator after a unit (``= 240g/5``).
    """
    text = text.replace("\u2013", "-").replace("\u2212", "-")
    parts = text.split("=", MAX_EQUATIONS)[:MAX_EQUATIONS + 1]   # the first MAX_EQUATIONS '='
    out = []
    for left, right in zip(parts, parts[1:]):
        left, right = left[-_PLAIN_WINDOW:], right[:_PLAIN_WINDOW]
        lm, rm = _LHS_RE.search(left), _RHS_RE.match(right)
        if lm is None or rm is None or not _HAS_OP_RE.search(lm.group(1)):
            continue
        if _AMBIGUOUS_BEFORE_RE.search(left[:lm.start()]) or _AMBIGUOUS_AFTER_RE.match(right[rm.end():]):
            continue
        out.append((_plain_side(lm.group(1)), _plain_side(rm.group(1))))
    return out


def _rhs_candidates(lhs: str, rhs: str) -> list[str]:
    """Readings of a plain equation's right side that count as a match.

    ``100-60=40%`` uses ``%`` as a unit while ``3/6=50%`` means 0.5, so without a ``%`` on the
    left both readings are tried; a chain ``$3/2 = $1.50+$3.00=$4.50`` may compare with the first
    number of the right side only.
    """
    cands = [rhs]
    first = re.match(r"\s*(-?\d[\d,]*(?:\.\d+)?%?)", rhs)
    if first is not None and first.group(1).strip() != rhs.strip():
        cands.append(first.group(1))
    if "%" not in lhs:
        cands += [c.replace("%", "") for c in cands if "%" in c]
    return cands


def _plain_equation_ok(lhs: str, rhs: str) -> bool | None:
    """Check one plain equation (True if any reading of the right side matches)."""
    try:
        computed = parse_expr(lhs)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    verdict: bool | None = None
    for cand in _rhs_candidates(lhs, rhs):
        try:
            shown, decimals = _parse_value(cand)
        except (ValueError, ZeroDivisionError, OverflowError):
            continue
        if values_match(computed, shown, decimals):
            return True
        verdict = False
    return verdict


def step_arithmetic_ok(step_text: str) -> bool | None:
    """Is the arithmetic in one solution step right?

    Checks the step's calculator annotations; a step without annotations falls back to plain
    ``a op b = c`` equations. Returns False if any checkable equation is wrong, True if at least one
    was checked and all are right, None if nothing in the step could be checked.
    """
    results = [r["ok"] for r in check_calc_annotations(step_text)]
    if not results:
        stripped = _ANNOTATION_RE.sub("", step_text or "")
        results = [_plain_equation_ok(lhs, rhs) for lhs, rhs in _plain_equations(stripped)]
    checked = [r for r in results if r is not None]
    if not checked:
        return None
    return all(checked)




def to_number(s: str) -> Fraction | None:
    """Exact value of a plain arithmetic string, or None if it is not one (never raises)."""
    try:
        return parse_expr(s)
    except (ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None


__all__ = ["parse_expr", "check_calc_annotations", "step_arithmetic_ok",
           "values_match", "to_number",
           "MAX_EXPONENT", "MAX_DEPTH", "MAX_VALUE_BITS", "MAX_ANNOTATIONS", "MAX_EQUATIONS"]

