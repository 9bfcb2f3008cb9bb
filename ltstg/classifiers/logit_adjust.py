"""Post-hoc logit adjustment (Menon et al., ICLR 2021, "Long-tail learning via logit adjustment", Eq. 9).

The stage-1 classifier, trained with plain cross-entropy on the long-tailed set, learns the class prior
along with everything else; subtracting τ · log π_y from each logit takes it out again, which for the
balanced error is Bayes-consistent at τ = 1. On a linear classifier that is a change of the bias only:
b_y − τ · log π_y with π = class_counts / N, the weights kept as they are. No training.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from ltstg.methods import Settings, register_classifier

if TYPE_CHECKING:
    import torch

    from ltstg.data.features import TrainingFeatures
    from ltstg.store import Artifact


class LogitAdjustSettings(Settings):
    la_tau: float = Field(
        1.0, ge=0, description="logit-adjust: the logits lose la_tau × log(class prior); 0 = the stage-1 classifier"
    )


def log_prior(class_counts: torch.Tensor) -> torch.Tensor:
    """log π_y = log(n_y / N), in float64 so a class of one in a million keeps its digits."""
    counts = class_counts.double()
    return (counts / counts.sum()).log()  # (C,)


def checks(settings: Any, features: Artifact, stg: Artifact | None) -> list[str]:
    """log π_y is −∞ for a class without training samples: its logit would grow without bound."""
    import torch

    counts = features["class_counts"]
    empty = torch.nonzero(counts.flatten() <= 0).flatten().tolist()
    if not empty:
        return []
    return [
        f"classifier 'logit-adjust' needs every class in the training set (its prior is log n_y / N), but "
        f"class(es) {empty} have no training sample; use another classifier, or re-extract the features."
    ]


@register_classifier(LogitAdjustSettings, name="logit-adjust", label="Logit adj.", post_hoc=True, checks=checks)
def logit_adjust(settings: Any, inputs: TrainingFeatures) -> tuple[torch.Tensor, torch.Tensor]:
    """(w_y, b_y − la_tau · log π_y): the stage-1 weights, with the class prior taken out of the bias."""
    shift = (settings.la_tau * log_prior(inputs.class_counts)).to(inputs.bias.device, inputs.bias.dtype)  # (C,)
    return inputs.weight.clone(), inputs.bias - shift
