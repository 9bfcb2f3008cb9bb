"""Class-balanced sampling for classifier re-training (cRT, Kang et al., 2020)."""
from __future__ import annotations

import torch

from ltstg.errors import LtstgError


def class_balanced_indices(labels: torch.Tensor, num_draws: int, *, generator: torch.Generator) -> torch.Tensor:
    """Draw a class uniformly, then a sample of it uniformly, so every class is seen equally often.

    Draws are independent (with replacement), like classifier-balancing's ClassAwareSampler in
    expectation; classes absent from `labels` are never drawn. Indices live on `labels`' device.
    """
    if labels.dim() != 1 or labels.numel() == 0:
        raise LtstgError(f"class-balanced sampling needs a non-empty 1-D label tensor, got shape {tuple(labels.shape)}.")
    if num_draws < 0:
        raise LtstgError(f"class-balanced sampling needs num_draws >= 0, got {num_draws}.")
    device = labels.device
    order = torch.argsort(labels, stable=True)  # (N,), sample indices grouped by class
    _, counts = torch.unique_consecutive(labels[order], return_counts=True)  # (K,) for the K present classes
    starts = torch.cumsum(counts, dim=0) - counts  # (K,)
    classes = torch.randint(counts.numel(), (num_draws,), generator=generator, device=device)  # (num_draws,)
    # float64 keeps the within-class position exact for classes of up to 2^53 samples.
    within = torch.rand(num_draws, generator=generator, device=device, dtype=torch.float64)
    position = (within * counts[classes]).long().clamp_max(counts[classes] - 1)
    return order[starts[classes] + position]
