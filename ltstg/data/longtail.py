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


def shuffled_by_class(labels: Sequence[int] | np.ndarray, num_classes: int, seed: int) -> list[np.ndarray]:
    """Each class's row indices in the seeded order LDAM-DRW's IMBALANCECIFAR draws them.

    Classes are visited in label order 0..C-1 and each class's indices shuffled by one private
    RandomState, so the same seed on the same labels gives the published subsets as prefixes.
    """
    labels = np.asarray(labels, dtype=np.int64)  # (N,)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise LtstgError(
            f"labels range over {labels.min()}..{labels.max()} but the profile has {num_classes} classes; "
            "give one count per class."
        )
    random = np.random.RandomState(seed)
    orders = []
    for c in range(num_classes):
        indices = np.where(labels == c)[0]
        random.shuffle(indices)
        orders.append(indices)
    return orders


def select_long_tail(labels: Sequence[int] | np.ndarray, counts: Sequence[int], seed: int) -> np.ndarray:
    """Indices kept per class, identical to LDAM-DRW's IMBALANCECIFAR but from a private RandomState:
    the first counts[c] of each class's shuffled order (`shuffled_by_class`)."""
    orders = shuffled_by_class(labels, len(counts), seed)
    for c, (order, count) in enumerate(zip(orders, counts)):
        if len(order) < count:
            raise LtstgError(
                f"class {c} has {len(order)} images but the long-tail profile asks for {count}; "
                "lower n_max or use a source with more images of that class."
            )
    kept = [order[:count] for order, count in zip(orders, counts)]
    return np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)


BORROW_SHARE = 0.1  # at most this share of a class's kept training images may become validation images


def split_off_validation(
    labels: Sequence[int] | np.ndarray, counts: Sequence[int], per_class: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, val rows): the long-tail subset of `select_long_tail`, and `per_class` val images of each
    class drawn from the images that subset left unused, next in the same shuffled order.

    A class with fewer unused images than `per_class` gives the rest from the end of its kept images, but
    no more than a tenth of them (BORROW_SHARE), so its training count drops below the profile's by at most
    that and its validation set may be smaller than `per_class`.
    """
    orders = shuffled_by_class(labels, len(counts), seed)
    train, val = [], []
    for c, (order, count) in enumerate(zip(orders, counts)):
        if len(order) < count:
            raise LtstgError(
                f"class {c} has {len(order)} images but the long-tail profile asks for {count}; "
                "lower n_max or use a source with more images of that class."
            )
        unused = order[count:count + per_class]
        borrowed = min(per_class - len(unused), int(BORROW_SHARE * count))  # from the kept images, last first
        train.append(order[:count - borrowed])
        val.append(np.concatenate([unused, order[count - borrowed:count]]))
    empty = np.zeros(0, dtype=np.int64)
    return (np.concatenate(train) if train else empty), (np.concatenate(val) if val else empty)


def split_off_share(labels: Sequence[int] | np.ndarray, num_classes: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, val rows): a stratified `share` of each class for validation, at least one image of every
    class that can spare one (keeps one for training), drawn by a seeded shuffle."""
    orders = shuffled_by_class(labels, num_classes, seed)
    train, val = [], []
    for order in orders:
        taken = min(max(round(share * len(order)), 1), len(order) - 1) if len(order) > 1 else 0
        val.append(order[:taken])
        train.append(np.sort(order[taken:]))
    empty = np.zeros(0, dtype=np.int64)
    return (np.concatenate(train) if train else empty), (np.concatenate(val) if val else empty)


def assign_groups(counts: Sequence[int], many_min: int = 100, few_max: int = 20) -> list[str]:
    """Shot group of each class from its train count, so reports never hard-code index ranges."""
    return ["many" if count > many_min else "few" if count < few_max else "medium" for count in counts]
