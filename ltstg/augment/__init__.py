"""Feature-level augmenters for stage 3, one interface so retrain has a single code path."""
from __future__ import annotations

from typing import Literal, Protocol

import torch

from ltstg.augment.dropout import DropoutAugmenter
from ltstg.augment.isda import IsdaAugmenter
from ltstg.augment.noise import NoiseAugmenter
from ltstg.augment.none import NoAugmenter
from ltstg.augment.stg import StgAugmenter
from ltstg.errors import LtstgError

AugmenterName = Literal["none", "stg", "isda", "noise", "dropout"]

AUGMENTERS: dict[str, type] = {
    "none": NoAugmenter,
    "stg": StgAugmenter,
    "isda": IsdaAugmenter,
    "noise": NoiseAugmenter,
    "dropout": DropoutAugmenter,
}


class Augmenter(Protocol):
    """What retrain relies on: a fresh (B, D) tensor from a batch, every draw from `generator`."""

    def augment(self, features: torch.Tensor, labels: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        ...


def get_augmenter(name: str) -> type:
    """Look an augmenter up by its recipe name so a typo fails with the list of valid ones."""
    if name not in AUGMENTERS:
        known = ", ".join(sorted(AUGMENTERS))
        raise LtstgError(f"unknown augmenter {name!r}; known augmenters: {known}.")
    return AUGMENTERS[name]


__all__ = [
    "AUGMENTERS",
    "Augmenter",
    "AugmenterName",
    "DropoutAugmenter",
    "IsdaAugmenter",
    "NoAugmenter",
    "NoiseAugmenter",
    "StgAugmenter",
    "get_augmenter",
]
