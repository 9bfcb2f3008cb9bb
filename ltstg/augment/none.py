"""The identity augmenter: the plain cRT / LWS / tau-norm baselines."""
from __future__ import annotations

import torch


class NoAugmenter:
    """Train on the features as they are, so baselines share retrain's code path."""

    def augment(self, features: torch.Tensor, labels: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        """Return a copy, so callers may modify the result without touching the cached features."""
        return features.clone()
