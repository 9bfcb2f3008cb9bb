"""cRT (Kang et al., 2020): re-train the linear classifier on class-balanced batches, from scratch or from stage 1."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ltstg.methods import Settings, register_classifier

if TYPE_CHECKING:
    from ltstg.data.features import TrainingFeatures


class CrtSettings(Settings):
    """cRT has no settings of its own: sampling, lr and epochs are every trained classifier's."""


class LinearClassifier(nn.Linear):
    """cRT: a freshly initialised linear layer, re-trained on class-balanced batches.

    Initialised with the global RNG like any nn.Module; the caller seeds it inside fork_rng.
    Its state dict is plain `weight`/`bias`, so tau-normalised weights load into it directly.
    """

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__(dim, num_classes)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Already one linear classifier."""
        return self.weight, self.bias


def new_linear(inputs: TrainingFeatures, seed: int) -> LinearClassifier:
    """A freshly initialised linear layer from a private seed, so outside RNG state is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # torch.manual_seed would also reseed CUDA, outside the fork
        return LinearClassifier(inputs.dim, inputs.num_classes)


@register_classifier(CrtSettings, name="crt", label="cRT", inits=("fresh", "stage1"), auto_init="fresh", position=0)
def build(settings: Any, inputs: TrainingFeatures, seed: int, init: str) -> LinearClassifier:
    """Re-initialised (Kang et al.; DESIGN default) or started from the stage-1 classifier (retrain.init)."""
    model = new_linear(inputs, seed)
    if init == "stage1":
        model.load_state_dict({"weight": inputs.weight.cpu(), "bias": inputs.bias.cpu()})
    return model
