"""The layout of a features artifact: which splits it holds, each as (features, labels), and the
training data stage 3's methods see."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ltstg.errors import LtstgError
from ltstg.store import SHORT, Artifact

SPLITS = ("test", "val", "train")


def split_tensors(features: Artifact, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The (features, labels) of one split in float32, or one error listing the splits this artifact has."""
    present = [name for name in SPLITS if f"{name}_features" in features.tensors and f"{name}_labels" in features.tensors]
    if split not in present:
        raise LtstgError(
            f"features artifact {features.id[:SHORT]} has no {split!r} split; it has: {', '.join(present) or 'none'}."
        )
    return features[f"{split}_features"].float(), features[f"{split}_labels"]


@dataclass(frozen=True)
class TrainingFeatures:
    """The checked training data of one retrain run, on the compute device: what every stage-3 method builds from."""

    features: torch.Tensor  # (N, D)
    labels: torch.Tensor  # (N,)
    views: torch.Tensor | None  # (K, N, D) extra augmented views as stored (float16 or float32), or None
    class_counts: torch.Tensor  # (C,)
    weight: torch.Tensor  # (C, D) stage-1 classifier
    bias: torch.Tensor  # (C,)

    @property
    def num_classes(self) -> int:
        return self.class_counts.numel()

    @property
    def dim(self) -> int:
        return self.features.shape[1]


def training_features(features: Artifact, device: torch.device) -> TrainingFeatures:
    """The training split, its extra views, class counts and stage-1 classifier of a features artifact, in float32
    but for the views: they stay as stored (the largest tensor; `pick_features` converts the rows it draws)."""
    views = features.tensors.get("train_views")
    return TrainingFeatures(
        features=features["train_features"].to(device, torch.float32),
        labels=features["train_labels"].to(device, torch.long),
        views=views.to(device) if views is not None else None,
        class_counts=features["class_counts"].to(device, torch.long),
        weight=features["classifier.weight"].float().to(device),
        bias=features["classifier.bias"].float().to(device),
    )
