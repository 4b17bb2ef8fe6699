"""A tiny name → object registry: every configurable choice (refinement, advantage estimator,
loss) is looked up here, never through an if/elif chain.

>>> LOSSES = Registry("loss")
>>> @LOSSES.register("l2")
... def l2(x):
...     return x * x
>>> LOSSES.get("l2")(3)
9
>>> LOSSES.names()
['l2']
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind (``name`` is used in error messages, e.g. "refine")."""

    def __init__(self, name: str):
        self.name = name
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding ``obj`` under ``name``; a name registered twice raises ValueError."""
        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.name} '{name}' is already registered")
            self._entries[name] = obj
            return obj
        return add

    def get(self, name: str) -> T:
        """The entry called ``name``; an unknown name raises ValueError listing the valid ones."""
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"unknown {self.name} '{name}'; valid: "
                             f"{', '.join(self.names())}") from None

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.name!r}, {self.names()})"
