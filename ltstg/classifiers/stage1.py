"""The stage-1 classifier as it is (`classifier: none`): the plain cross-entropy baseline of every table."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ltstg.methods import Settings, register_classifier

if TYPE_CHECKING:
    import torch

    from ltstg.data.features import TrainingFeatures


class Stage1Settings(Settings):
    """Nothing to set: the stage-1 classifier is taken unchanged."""


@register_classifier(Stage1Settings, name="none", label="CE (stage 1)", post_hoc=True, position=4)
def stage1(settings: Any, inputs: TrainingFeatures) -> tuple[torch.Tensor, torch.Tensor]:
    return inputs.weight.clone(), inputs.bias.clone()
