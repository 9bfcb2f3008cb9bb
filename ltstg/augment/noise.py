"""Isotropic Gaussian feature noise, the simplest sample-agnostic baseline."""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ltstg.errors import LtstgError
from ltstg.methods import Settings, register_augmenter, scope_field

if TYPE_CHECKING:
    import torch

    from ltstg.data.features import TrainingFeatures
    from ltstg.store import Artifact


class NoiseAugment(Settings):
    name: Literal["noise"] = "noise"
    scope: Literal["tail", "all"] = scope_field("all")
    std: float = Field(0.5, ge=0, description="std of the isotropic Gaussian noise added to every feature")


class NoiseAugmenter:
    """a + N(0, std^2 I) for every sample of every class: what STG's learned shifts are compared to."""

    def __init__(self, std: float) -> None:
        if not std >= 0:
            raise LtstgError(f"noise std must be >= 0, got {std}.")
        self.std = float(std)

    def augment(self, features: torch.Tensor, labels: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        """Add fresh noise drawn from `generator` so runs repeat bit-for-bit."""
        import torch

        noise = torch.randn(features.shape, generator=generator, device=features.device, dtype=features.dtype)  # (B, D)
        return features + self.std * noise


@register_augmenter(NoiseAugment, label="Noise", no_op="std", position=3)
def build(settings: NoiseAugment, inputs: TrainingFeatures, stg: Artifact | None, device: torch.device) -> NoiseAugmenter:
    return NoiseAugmenter(std=settings.std)
