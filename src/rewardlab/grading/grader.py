"""``Grader``: grade many responses of one style, with the equivalence check memoised."""

from __future__ import annotations

from rewardlab.grading.answers import extract_answer, is_equiv


class Grader:
    """``rewardlab.grading.grade`` with ``is_equiv`` memoised on (answer, gold): many samples of
    one problem share an answer, and the symbolic stage is costly."""

    def __init__(self, style: str = "gsm8k"):
        self.style = style
        self._cache: dict[tuple[str, str], bool] = {}

    def answer(self, response: str) -> str | None:
        return extract_answer(response, self.style)

    def equiv(self, pred: str | None, gold: str) -> bool:
        if pred is None:
            return False
        key = (pred, gold)
        if key not in self._cache:
            self._cache[key] = bool(is_equiv(pred, gold))
        return self._cache[key]

    def __call__(self, response: str, gold: str) -> tuple[str | None, bool]:
        """``(extracted answer, correct)`` of one response."""
        pred = self.answer(response)
        return pred, self.equiv(pred, gold)
