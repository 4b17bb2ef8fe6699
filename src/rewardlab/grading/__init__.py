"""Final answers: extraction, equivalence and calculator-annotation checks (never ``eval``).

- :func:`extract_answer` / :func:`grade` / :func:`is_equiv` — :mod:`rewardlab.grading.answers`
- :func:`parse_expr` / :func:`check_calc_annotations` / :func:`step_arithmetic_ok` —
  :mod:`rewardlab.grading.calc`
- the symbolic stage's worker processes — :mod:`rewardlab.grading.symbolic`
"""

from rewardlab.grading.answers import (extract_answer, grade, is_equiv, last_boxed,
                                       normalize_answer, STYLES)
from rewardlab.grading.calc import check_calc_annotations, parse_expr, step_arithmetic_ok


__all__ = [
    "STYLES",
    "extract_answer",
    "grade",
    "is_equiv",
    "last_boxed",
    "normalize_answer",
    "parse_expr",
    "check_calc_annotations",
    "step_arithmetic_ok",
]
