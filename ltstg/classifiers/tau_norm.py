"""τ-normalisation (Kang et al., 2020): shrink the stage-1 weights' norms, no training."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from ltstg.errors import LtstgError
from ltstg.methods import Settings, register_classifier

if TYPE_CHECKING:
    import torch

    from ltstg.data.features import TrainingFeatures


class TauNormSettings(Settings):
    tau: float = Field(1.0, ge=0, description="τ of τ-normalisation")


def tau_normalize(weight: torch.Tensor, bias: torch.Tensor | None, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """w_c / ||w_c||^tau, which shrinks the head classes' larger weight norms without any training.

    The bias is dropped, as in classifier-balancing's tau_norm.py (logits are pure dot products):
    we return a zero bias (C,) so the result loads into a LinearClassifier unchanged.
    """
    import torch

    if weight.dim() != 2:
        raise LtstgError(f"tau-normalisation needs a (C, D) weight, got shape {tuple(weight.shape)}.")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise LtstgError(f"tau-normalisation bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}.")
    norms = weight.norm(dim=1, keepdim=True).clamp_min(torch.finfo(weight.dtype).tiny)  # (C, 1)
    normalized = weight / norms.pow(tau)
    return normalized, torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)


@register_classifier(TauNormSettings, name="tau-norm", label="τ-norm", post_hoc=True, in_every_id=True, position=3)
def tau_norm(settings: Any, inputs: TrainingFeatures) -> tuple[torch.Tensor, torch.Tensor]:
    return tau_normalize(inputs.weight, inputs.bias, settings.tau)
