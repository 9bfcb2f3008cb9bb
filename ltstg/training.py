"""Training pieces: mixup with soft targets, label-aware smoothing and the per-step learning-rate schedule."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR

from ltstg.errors import LtstgError

SCHEDULES = ("multistep", "cosine", "constant")


def _smoothed_one_hot(labels: torch.Tensor, num_classes: int, label_smoothing: float) -> torch.Tensor:
    """One-hot rows with label smoothing spread uniformly over all classes, as F.cross_entropy does it."""
    # a scatter, not F.one_hot: on the CPU that checks the labels' range with a host read every batch
    one_hot = torch.zeros(labels.numel(), num_classes, device=labels.device).scatter_(1, labels[:, None], 1.0)  # (B, C)
    return one_hot * (1.0 - label_smoothing) + label_smoothing / num_classes


def mixup(
    inputs: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    alpha: float,
    rng: np.random.Generator,
    generator: torch.Generator,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each sample with a permuted partner; lam comes from numpy since torch's Beta takes no generator."""
    if alpha < 0:
        raise LtstgError(f"Mixup alpha must be >= 0 (0 turns mixup off), got {alpha}.")
    targets = _smoothed_one_hot(labels, num_classes, label_smoothing)
    if alpha == 0:
        return inputs, targets
    lam = float(rng.beta(alpha, alpha))
    perm = torch.randperm(inputs.shape[0], generator=generator, device=inputs.device)  # (B,)
    mixed = lam * inputs + (1.0 - lam) * inputs[perm]
    return mixed, lam * targets + (1.0 - lam) * targets[perm]


def soft_cross_entropy(logits: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy against soft targets, in float32 so bf16 logits don't lose the small terms."""
    return -(soft_targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


SMOOTH_SHAPES = {
    # position x in [0, 1] between the smallest (0) and the largest (1) class -> share of (head - tail)
    "concave": lambda x: np.sin(x * np.pi / 2),
    "linear": lambda x: x,
    "convex": lambda x: 1 - np.cos(x * np.pi / 2),
}


def label_aware_smoothing(counts: Sequence[int], head: float, tail: float, shape: str = "concave") -> torch.Tensor:
    """MiSLAS's per-class ε: `tail` for the rarest class rising to `head` for the largest (Zhong et al., Eq. 5).

    Larger classes, on which the network is most over-confident, get the stronger smoothing.
    """
    if shape not in SMOOTH_SHAPES:
        raise LtstgError(f"unknown smoothing shape {shape!r}; known shapes: {', '.join(SMOOTH_SHAPES)}.")
    counts_array = np.asarray(counts, dtype=np.float64)  # (C,)
    spread = counts_array.max() - counts_array.min()
    position = (counts_array - counts_array.min()) / spread if spread > 0 else np.ones_like(counts_array)
    return torch.from_numpy(tail + (head - tail) * SMOOTH_SHAPES[shape](position)).float()  # (C,)


def smoothed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, epsilon: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with a per-class smoothing ε_y spread over all C classes (ε = 0 is plain cross-entropy)."""
    log_probs = F.log_softmax(logits.float(), dim=1)  # (B, C)
    eps = epsilon.to(logits.device)[labels]  # (B,)
    nll = -log_probs.gather(1, labels.unsqueeze(1)).squeeze(1)  # (B,)
    return ((1 - eps) * nll - eps * log_probs.mean(dim=1)).mean()


def lr_factor(
    epoch: float,
    *,
    epochs: int,
    warmup_epochs: int,
    schedule: Literal["multistep", "cosine", "constant"],
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
) -> float:
    """Multiplier of the base lr at a fractional epoch: linear warm-up, then the chosen decay."""
    if schedule not in SCHEDULES:
        raise LtstgError(f"Unknown lr schedule '{schedule}'; use one of {', '.join(SCHEDULES)}.")
    if epoch < warmup_epochs:
        return epoch / warmup_epochs
    if schedule == "multistep":
        return gamma ** sum(epoch >= milestone for milestone in milestones)
    if schedule == "cosine":
        progress = min(1.0, (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1e-12))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    steps_per_epoch: int,
    *,
    epochs: int,
    warmup_epochs: int,
    schedule: Literal["multistep", "cosine", "constant"],
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    per: Literal["step", "epoch"] = "step",
) -> LambdaLR:
    """Per-iteration LambdaLR read at each step's midpoint, so warm-up starts near 0 and milestones hit epoch edges.

    With `per="epoch"` the lr holds for a whole epoch at the value of its start, as Kang et al.'s and MiSLAS's
    stage 2 set it (the last of 10 cosine epochs runs at 0.024 × lr, not near 0).
    """
    if schedule not in SCHEDULES:
        raise LtstgError(f"Unknown lr schedule '{schedule}'; use one of {', '.join(SCHEDULES)}.")
    if per == "epoch" and warmup_epochs:
        raise LtstgError("an lr set once per epoch cannot warm up (its whole first epoch would run at lr 0).")
    milestones = tuple(milestones)

    def factor(step: int) -> float:
        return lr_factor(
            step // steps_per_epoch if per == "epoch" else (step + 0.5) / steps_per_epoch,
            epochs=epochs,
            warmup_epochs=warmup_epochs,
            schedule=schedule,
            milestones=milestones,
            gamma=gamma,
        )

    return LambdaLR(optimizer, factor)
