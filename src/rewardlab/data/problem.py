"""The one record every dataset loader returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Problem:
    """A math problem with its reference solution.

    ``steps`` are the reference solution's reasoning steps where known (the last step holds the
    final answer); ``answer`` is the gold final answer as a string.
    """

    id: str
    question: str
    solution: str
    answer: str
    source: str
    steps: list[str] | None = None
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Problem":
        return cls(**{k: d[k] for k in ("id", "question", "solution", "answer", "source")},
                   steps=d.get("steps"), meta=d.get("meta") or {})
