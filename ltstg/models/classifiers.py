"""Stage-3 classifiers on frozen features: cRT, LWS and tau-normalisation (Kang et al., 2020).

All share one forward shape, features (B, D) -> logits (B, C), so retrain and eval have one code path.
"""
from __future__ import annotations

import torch
from torch import nn

from ltstg.errors import LtstgError


class LinearClassifier(nn.Linear):
    """cRT: a freshly initialised linear layer, re-trained on class-balanced batches.

    Initialised with the global RNG like any nn.Module; the caller seeds it inside fork_rng.
    Its state dict is plain `weight`/`bias`, so tau-normalised weights load into it directly.
    """

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__(dim, num_classes)


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


def tau_normalize(weight: torch.Tensor, bias: torch.Tensor | None, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """w_c / ||w_c||^tau, which shrinks the head classes' larger weight norms without any training.

    The bias is dropped, as in classifier-balancing's tau_norm.py (logits are pure dot products):
    we return a zero bias (C,) so the result loads into a LinearClassifier unchanged.
    """
    if weight.dim() != 2:
        raise LtstgError(f"tau-normalisation needs a (C, D) weight, got shape {tuple(weight.shape)}.")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise LtstgError(f"tau-normalisation bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}.")
    norms = weight.norm(dim=1, keepdim=True).clamp_min(torch.finfo(weight.dtype).tiny)  # (C, 1)
    normalized = weight / norms.pow(tau)
    return normalized, torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
