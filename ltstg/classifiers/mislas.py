"""MiSLAS (Zhong et al., 2021) as far as it applies to cached features: learned per-class logit scales on a
linear layer that starts from stage 1 and learns slower, trained with label-aware smoothing."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from ltstg.methods import Settings, register_classifier

if TYPE_CHECKING:
    import torch

    from ltstg.data.features import TrainingFeatures
    from ltstg.models.heads import ScaledLinearClassifier


class MislasSettings(Settings):
    smooth_head: float = Field(0.3, ge=0, lt=1, description="mislas: label-aware smoothing ε of the largest class")
    smooth_tail: float = Field(0.0, ge=0, lt=1, description="mislas: label-aware smoothing ε of the smallest class")
    smooth_shape: Literal["concave", "linear", "convex"] = Field("concave", description="mislas: ε between the two")
    lr_factor: float = Field(
        0.1, gt=0, le=1, description="mislas: the linear layer learns at lr × lr_factor, the per-class scales at lr"
    )


def parameter_groups(model: ScaledLinearClassifier, settings: Any) -> list[dict[str, Any]]:
    """The linear layer learns at lr × lr_factor, the per-class scales at lr."""
    return [{"params": model.linear.parameters(), "lr": settings.lr * settings.lr_factor}, {"params": [model.scales]}]


def smoothing(settings: Any, inputs: TrainingFeatures) -> torch.Tensor:
    """Label-aware smoothing: ε from smooth_head for the largest class to smooth_tail for the smallest."""
    from ltstg.training import label_aware_smoothing

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
    from ltstg.models.heads import ScaledLinearClassifier, new_linear

    start = new_linear(inputs.dim, inputs.num_classes, seed) if init == "fresh" else None
    weight = start.weight.detach() if start is not None else inputs.weight
    bias = start.bias.detach() if start is not None else inputs.bias
    return ScaledLinearClassifier(weight.to(inputs.weight.device), bias.to(inputs.weight.device))
