"""The long-tail protocol of Cao et al. (LDAM-DRW): per-class counts, the seeded selection, shot groups."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from ltstg.errors import LtstgError

PROFILES = ("exp", "step")


def make_profile(n_max: int, num_classes: int, imbalance: float, profile: Literal["exp", "step"]) -> list[int]:
    """Images kept per class, written as in LDAM-DRW so the float rounding gives the published counts."""
    if profile not in PROFILES:
        raise LtstgError(f"unknown long-tail profile {profile!r}; known profiles: {', '.join(PROFILES)}.")
    if n_max < 1 or num_classes < 1:
        raise LtstgError(f"a long-tail profile needs n_max >= 1 and num_classes >= 1, got {n_max} and {num_classes}.")
    if imbalance < 1:
        raise LtstgError(f"imbalance (--imb) must be at least 1 (largest / smallest class), got {imbalance}.")
    factor = 1.0 / imbalance
    if profile == "step":
        head = num_classes // 2
        return [n_max] * head + [int(n_max * factor)] * (num_classes - head)
    if num_classes == 1:
        return [n_max]
    return [int(n_max * (factor ** (c / (num_classes - 1.0)))) for c in range(num_classes)]


def select_long_tail(labels: Sequence[int] | np.ndarray, counts: Sequence[int], seed: int) -> np.ndarray:
    """Indices kept per class, identical to LDAM-DRW's IMBALANCECIFAR but from a private RandomState.

    Classes are visited in label order 0..C-1; each class's indices are shuffled and the first
    counts[c] kept, so the same seed on the same labels gives the published subsets.
    """
    labels = np.asarray(labels, dtype=np.int64)  # (N,)
    if labels.size and (labels.min() < 0 or labels.max() >= len(counts)):
        raise LtstgError(
            f"labels range over {labels.min()}..{labels.max()} but the profile has {len(counts)} classes; "
            "give one count per class."
        )
    random = np.random.RandomState(seed)
    kept = []
    for c, count in enumerate(counts):
        indices = np.where(labels == c)[0]
        if len(indices) < count:
            raise LtstgError(
                f"class {c} has {len(indices)} images but the long-tail profile asks for {count}; "
                "lower n_max or use a source with more images of that class."
            )
        random.shuffle(indices)
        kept.append(indices[:count])
    return np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)


def assign_groups(counts: Sequence[int], many_min: int = 100, few_max: int = 20) -> list[str]:
    """Shot group of each class from its train count, so reports never hard-code index ranges."""
    return ["many" if count > many_min else "few" if count < few_max else "medium" for count in counts]
