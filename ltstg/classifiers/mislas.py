"""MiSLAS (Zhong et al., 2021) as far as it applies to cached features: learned per-class logit scales on a
linear layer that starts from stage 1 and learns slower, trained with label-aware smoothing."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field
from torch import nn

from ltstg.classifiers.crt import new_linear
from ltstg.errors import LtstgError
from ltstg.methods import Settings, register_classifier
from ltstg.training import label_aware_smoothing

if TYPE_CHECKING:
    from ltstg.data.features import TrainingFeatures


class MislasSettings(Settings):
    smooth_head: float = Field(0.3, ge=0, lt=1, description="mislas: label-aware smoothing ε of the largest class")
    smooth_tail: float = Field(0.0, ge=0, lt=1, description="mislas: label-aware smoothing ε of the smallest class")
    smooth_shape: Literal["concave", "linear", "convex"] = Field("concave", description="mislas: ε between the two")
    lr_factor: float = Field(
        0.1, gt=0, le=1, description="mislas: the linear layer learns at lr × lr_factor, the per-class scales at lr"
    )


class ScaledLinearClassifier(nn.Module):
    """MiSLAS's stage-2 head on cached features: a trainable linear layer whose logits get learned per-class scales.

    MiSLAS (dvlab-research/MiSLAS, train_stage2.py) starts the linear layer from the stage-1 classifier
    and multiplies its logits by `LearnableWeightScaling` (init 1); both are trained, the layer at a
    smaller lr (retrain.lr_factor). Its BatchNorm shift acts on the features, not on this head: `retrain.bn_shift`.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        if weight.dim() != 2 or bias.shape != (weight.shape[0],):
            raise LtstgError(
                f"a scaled classifier needs a (C, D) weight and a (C,) bias, got {tuple(weight.shape)} and {tuple(bias.shape)}."
            )
        self.linear = nn.Linear(weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)
        self.scales = nn.Parameter(torch.ones(weight.shape[0], dtype=weight.dtype, device=weight.device))  # (C,)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features) * self.scales

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """scale_c · (w_c · a + b_c) as one linear classifier (scale_c · w_c, scale_c · b_c)."""
        return self.linear.weight * self.scales.unsqueeze(1), self.linear.bias * self.scales


def parameter_groups(model: ScaledLinearClassifier, settings: Any) -> list[dict[str, Any]]:
    """The linear layer learns at lr × lr_factor, the per-class scales at lr."""
    return [{"params": model.linear.parameters(), "lr": settings.lr * settings.lr_factor}, {"params": [model.scales]}]


def smoothing(settings: Any, inputs: TrainingFeatures) -> torch.Tensor:
    """Label-aware smoothing: ε from smooth_head for the largest class to smooth_tail for the smallest."""
    counts = inputs.class_counts.tolist()
    return label_aware_smoothing(counts, settings.smooth_head, settings.smooth_tail, settings.smooth_shape).to(
        inputs.labels.device
    )


@register_classifier(
    MislasSettings, name="mislas", label="MiSLAS", inits=("fresh", "stage1"),
    parameter_groups=parameter_groups, smoothing=smoothing, in_every_id=True, position=2,
)
def build(settings: Any, inputs: TrainingFeatures, seed: int, init: str) -> ScaledLinearClassifier:
    """From the stage-1 classifier, or from a fresh layer when retrain.init=fresh, with unit scales."""
    start = new_linear(inputs, seed) if init == "fresh" else None
    weight = start.weight.detach() if start is not None else inputs.weight
    bias = start.bias.detach() if start is not None else inputs.bias
    return ScaledLinearClassifier(weight.to(inputs.weight.device), bias.to(inputs.weight.device))
