"""The layout of a features artifact: which splits it holds, each as (features, labels)."""
from __future__ import annotations

import torch

from ltstg.errors import LtstgError
from ltstg.store import SHORT, Artifact

SPLITS = ("test", "val", "train")


def split_tensors(features: Artifact, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The (features, labels) of one split, or one error listing the splits this artifact has."""
    present = [name for name in SPLITS if f"{name}_features" in features.tensors and f"{name}_labels" in features.tensors]
    if split not in present:
        raise LtstgError(
            f"features artifact {features.id[:SHORT]} has no {split!r} split; it has: {', '.join(present) or 'none'}."
        )
    return features[f"{split}_features"], features[f"{split}_labels"]
