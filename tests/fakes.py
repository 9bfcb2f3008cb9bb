"""Small fake artifacts shared by several test files."""
from __future__ import annotations

import torch

from ltstg.store import Artifact


def gaussian_features(counts, *, dim: int, seed: int = 0, spread: float = 3.0) -> Artifact:
    """A features artifact of Gaussian classes around random centres, with names c0, c1, ..."""
    g = torch.Generator().manual_seed(seed)
    counts_t = torch.tensor(counts)
    labels = torch.repeat_interleave(torch.arange(len(counts)), counts_t)  # (N,)
    centres = spread * torch.randn(len(counts), dim, generator=g)  # (C, D)
    train = centres[labels] + torch.randn(labels.numel(), dim, generator=g)  # (N, D)
    tensors = {"train_features": train, "train_labels": labels, "class_counts": counts_t}
    info = {"class_names": [f"c{c}" for c in range(len(counts))]}
    return Artifact("f" * 64, {"kind": "features", "info": info}, tensors)
