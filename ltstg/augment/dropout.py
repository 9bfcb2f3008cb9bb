"""Feature dropout, a baseline that perturbs features without any notion of semantics."""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ltstg.errors import LtstgError
from ltstg.methods import Settings, register_augmenter, scope_field

if TYPE_CHECKING:
    import torch

    from ltstg.data.features import TrainingFeatures
    from ltstg.store import Artifact


class DropoutAugment(Settings):
    name: Literal["dropout"] = "dropout"
    scope: Literal["tail", "all"] = scope_field("all")
    p: float = Field(0.2, ge=0, lt=1, description="probability that a feature dimension is dropped")


class DropoutAugmenter:
    """nn.Dropout in training mode, but with the caller's generator so runs repeat."""

    def __init__(self, p: float) -> None:
        if not 0 <= p < 1:
            raise LtstgError(f"dropout p must be in [0, 1), got {p}.")
        self.p = float(p)

    def augment(self, features: torch.Tensor, labels: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        """Zero each entry with probability p and rescale survivors so the expected feature is unchanged."""
        import torch

        draw = torch.rand(features.shape, generator=generator, device=features.device)  # (B, D)
        keep = draw >= self.p
        return torch.where(keep, features / (1.0 - self.p), torch.zeros((), dtype=features.dtype, device=features.device))


@register_augmenter(DropoutAugment, label="Dropout", no_op="p", position=4)
def build(
    settings: DropoutAugment, inputs: TrainingFeatures, stg: Artifact | None, device: torch.device
) -> DropoutAugmenter:
    return DropoutAugmenter(p=settings.p)
