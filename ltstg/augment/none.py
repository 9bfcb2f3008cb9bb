"""The identity augmenter: the plain cRT / LWS / tau-norm baselines."""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from ltstg.methods import Settings, register_augmenter

if TYPE_CHECKING:
    import torch

    from ltstg.data.features import TrainingFeatures
    from ltstg.store import Artifact


class NoAugment(Settings):
    name: Literal["none"] = "none"


class NoAugmenter:
    """Train on the features as they are, so baselines share retrain's code path."""

    def augment(self, features: torch.Tensor, labels: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        """Return a copy, so callers may modify the result without touching the cached features."""
        return features.clone()


@register_augmenter(NoAugment, label="", position=0)
def build(settings: NoAugment, inputs: TrainingFeatures, stg: Artifact | None, device: torch.device) -> NoAugmenter:
    return NoAugmenter()
