"""Finite or nothing: no artifact whose weights, features or training scores hold NaN or infinity is committed.

A non-finite value is never a result: a NaN classifier scores as "always class 0", a NaN STG turns every tail
feature it touches into NaN, and both would otherwise pass as converged. Tensors and metrics that use NaN to
mean "not measured" (a class without test images, a stage 1 never evaluated) are named here and left alone.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ltstg.errors import LtstgError

class Diverged(LtstgError):
    """A stage whose training went non-finite: an error for a stage on its own; in a selection, a candidate that
    is said, recorded and never chosen."""


CHECKED_KINDS = ("backbone", "features", "stg", "classifier")  # what later stages train or predict with
MAY_BE_NAN = {"backbone": {"test_top1", "val_mean_class"}}  # metrics whose NaN means "not measured"
# training scores; the rest (diagnostics such as an STG's held-out baselines) may be NaN where nothing was measured
SCORES = ("train_loss", "temperature", "val_")
TENSORS_MAY_BE_NAN = {"classifier": {"borrowed_cosine"}}  # NaN: a sample that borrowed nothing (not in the tail)
CHUNK = 1 << 24  # elements checked at a time: a bool mask of a 5 GB features matrix would cost 1.25 GB


def nonfinite_problems(kind: str, tensors: dict[str, torch.Tensor], metrics: dict[str, Any]) -> list[str]:
    """What in a stage's output is not finite, one line each (empty: all finite or not checked)."""
    if kind not in CHECKED_KINDS:
        return []
    problems = []
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and name not in TENSORS_MAY_BE_NAN.get(kind, set()):
            bad = _count_nonfinite(tensor)
            if bad:
                problems.append(f"{name} holds {bad} non-finite of {tensor.numel()} values")
    for name, value in metrics.items():
        if not name.startswith(SCORES) or name in MAY_BE_NAN.get(kind, set()):
            continue
        if isinstance(value, (int, float)) and not math.isfinite(float(value)):
            problems.append(f"its {name} is {value}")
    return problems


def _count_nonfinite(tensor: torch.Tensor) -> int:
    flat = tensor.detach().reshape(-1)
    return sum(int((~torch.isfinite(flat[start : start + CHUNK])).sum()) for start in range(0, flat.numel(), CHUNK))


def diverged(stage: str, epoch: int, loss: float, hint: str) -> str | None:
    """The one line that stops a stage at the first epoch whose mean loss is not finite (None while it is)."""
    if math.isfinite(loss):
        return None
    return f"{stage}: the training loss of epoch {epoch + 1} is {loss}: it diverged, and nothing is committed; {hint}"
