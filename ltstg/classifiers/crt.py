"""cRT (Kang et al., 2020): re-train the linear classifier on class-balanced batches, from scratch or from stage 1."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ltstg.methods import Settings, register_classifier

if TYPE_CHECKING:
    from ltstg.data.features import TrainingFeatures
    from ltstg.models.heads import LinearClassifier


class CrtSettings(Settings):
    """cRT has no settings of its own: sampling, lr and epochs are every trained classifier's."""


@register_classifier(CrtSettings, name="crt", label="cRT", inits=("fresh", "stage1"), auto_init="fresh", position=0)
def build(settings: Any, inputs: TrainingFeatures, seed: int, init: str) -> LinearClassifier:
    """Re-initialised (Kang et al.; DESIGN default) or started from the stage-1 classifier (retrain.init)."""
    from ltstg.models.heads import new_linear

    model = new_linear(inputs.dim, inputs.num_classes, seed)
    if init == "stage1":
        model.load_state_dict({"weight": inputs.weight.cpu(), "bias": inputs.bias.cpu()})
    return model
