"""LWS (Kang et al., 2020): learn one scale per class on top of the frozen stage-1 classifier."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ltstg.methods import Settings, register_classifier

if TYPE_CHECKING:
    from ltstg.data.features import TrainingFeatures
    from ltstg.models.heads import LwsClassifier


class LwsSettings(Settings):
    """LWS has no settings of its own: sampling, lr and epochs are every trained classifier's."""


@register_classifier(LwsSettings, name="lws", label="LWS", position=1)
def build(settings: Any, inputs: TrainingFeatures, seed: int, init: str) -> LwsClassifier:
    """LWS starts from the stage-1 weights with unit scales: nothing random to seed."""
    from ltstg.models.heads import LwsClassifier

    return LwsClassifier(inputs.weight, inputs.bias)
