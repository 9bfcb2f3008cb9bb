"""LWS (Kang et al., 2020): learn one scale per class on top of the frozen stage-1 classifier."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ltstg.errors import LtstgError
from ltstg.methods import Settings, register_classifier

if TYPE_CHECKING:
    from ltstg.data.features import TrainingFeatures


class LwsSettings(Settings):
    """LWS has no settings of its own: sampling, lr and epochs are every trained classifier's."""


class LwsClassifier(nn.Module):
    """LWS: keep the stage-1 weights frozen and learn only one scale per class, init 1.

    Follows classifier-balancing's code (models/TauNormClassifier.py, used by cls_lws.yaml), which
    scales the whole logit, bias included: logits_c = scale_c * (w_c . a + b_c). The paper's
    formula scales only w_c (it has no bias); with a zero bias the two are the same.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        if weight.dim() != 2 or bias.shape != (weight.shape[0],):
            raise LtstgError(
                f"LWS needs a (C, D) weight and a (C,) bias, got {tuple(weight.shape)} and {tuple(bias.shape)}."
            )
        self.register_buffer("weight", weight.detach().clone())  # (C, D), frozen
        self.register_buffer("bias", bias.detach().clone())  # (C,), frozen
        self.scales = nn.Parameter(torch.ones(weight.shape[0], dtype=weight.dtype, device=weight.device))  # (C,)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Rescale frozen logits per class so only the decision boundaries' balance is learned."""
        return nn.functional.linear(features, self.weight, self.bias) * self.scales

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """scale_c · (w_c · a + b_c) is the linear classifier (scale_c · w_c, scale_c · b_c)."""
        return self.weight * self.scales.unsqueeze(1), self.bias * self.scales


@register_classifier(LwsSettings, name="lws", label="LWS", position=1)
def build(settings: Any, inputs: TrainingFeatures, seed: int, init: str) -> LwsClassifier:
    """LWS starts from the stage-1 weights with unit scales: nothing random to seed."""
    return LwsClassifier(inputs.weight, inputs.bias)
