"""Class prototypes and nearest-prototype lookup, shared by fit-stg, retrain and inspect."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def class_means(features: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Mean feature of each class in `classes` (K,) -> (K, D)."""
    return torch.stack([features[labels == c].mean(dim=0) for c in classes.tolist()])


def nearest_prototype(features: torch.Tensor, prototypes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the most cosine-similar prototype for each feature, and that similarity.

    paper is silent on "most similar head class": we take the nearest head mean by cosine.
    """
    similarity = F.normalize(features, dim=1) @ F.normalize(prototypes, dim=1).T  # (N, K)
    best, index = similarity.max(dim=1)
    return index, best
