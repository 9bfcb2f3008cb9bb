"""Isotropic Gaussian feature noise, the simplest sample-agnostic baseline."""
from __future__ import annotations

import torch

from ltstg.errors import LtstgError


class NoiseAugmenter:
    """a + N(0, std^2 I) for every sample of every class: what STG's learned shifts are compared to."""

    def __init__(self, std: float) -> None:
        if not std >= 0:
            raise LtstgError(f"noise std must be >= 0, got {std}.")
        self.std = float(std)

    def augment(self, features: torch.Tensor, labels: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        """Add fresh noise drawn from `generator` so runs repeat bit-for-bit."""
        noise = torch.randn(features.shape, generator=generator, device=features.device, dtype=features.dtype)  # (B, D)
        return features + self.std * noise
