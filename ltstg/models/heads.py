"""The stage-3 heads that train on cached features: cRT's linear layer, LWS's scaled frozen layer and MiSLAS's
scaled trainable one. Each folds into one linear classifier `(weight, bias)`, so evaluation has one code path.
Their settings and builders live with their methods (`ltstg/classifiers/`), which import this module only when
they build a head, so loading a recipe needs no torch."""
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

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Already one linear classifier."""
        return self.weight, self.bias


def new_linear(dim: int, num_classes: int, seed: int) -> LinearClassifier:
    """A freshly initialised linear layer from a private seed, so outside RNG state is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # torch.manual_seed would also reseed CUDA, outside the fork
        return LinearClassifier(dim, num_classes)


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
