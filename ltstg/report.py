"""How stages tell the caller about progress without knowing about terminals."""
from __future__ import annotations

from typing import Protocol


class Report(Protocol):
    def __call__(self, task: str, done: int, total: int, **metrics: float) -> None: ...


def silent(task: str, done: int, total: int, **metrics: float) -> None:
    """A report that drops everything (tests, non-main ranks)."""
    return None
