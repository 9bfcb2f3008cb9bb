"""How stages tell the caller about progress without knowing about terminals."""
from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """`progress(task, done, total, **metrics)`: the CLI draws it as a rich bar; tests record it."""

    def __call__(self, task: str, done: int, total: int, **metrics: float) -> None: ...


def silent(task: str, done: int, total: int, **metrics: float) -> None:
    """Progress that goes nowhere (tests, non-main ranks)."""
    return None
