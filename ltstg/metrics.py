"""Stage-4 metrics: top-1, many/medium/few-shot accuracy, calibration and NLL."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ltstg.errors import LtstgError


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) counts, rows true class and columns predicted class, in one bincount."""
    flat = labels.long() * num_classes + preds.long()  # (N,)
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def confusion_pairs(preds: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The confusion matrix's nonzero cells: (K, 2) (true, predicted) pairs in row-major order and their (K,)
    counts. At most N cells, where the dense matrix has C² (530 MB of int64 at iNaturalist's 8,142 classes)."""
    pairs, counts = torch.unique(torch.stack([labels.long(), preds.long()], dim=1), dim=0, return_counts=True)
    return pairs, counts


def dense_confusion(pairs: torch.Tensor, counts: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The (C, C) matrix of `confusion_pairs`, rows true class and columns predicted class."""
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.long)
    matrix[pairs[:, 0], pairs[:, 1]] = counts.long()
    return matrix


def per_class_accuracy(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Accuracy of each true class (C,), float; NaN for a class with no samples, so it is not mistaken for 0."""
    totals = torch.bincount(labels.long(), minlength=num_classes).double()  # (C,)
    hits = torch.bincount(labels.long()[preds == labels], minlength=num_classes).double()  # (C,)
    return hits / totals  # 0/0 gives NaN for empty classes


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> dict[str, torch.Tensor]:
    """Per equal-width confidence bin: sample count, summed confidence and summed correctness (bins,) each.

    Bin b covers ((b-1)/bins, b/bins], right-closed as in Guo et al.'s code; confidence is the top probability.
    """
    confidence, preds = probs.double().max(dim=1)  # (N,)
    correct = (preds == labels).double()
    index = (confidence * bins).ceil().long().sub(1).clamp(0, bins - 1)  # (N,)
    return {
        "count": torch.bincount(index, minlength=bins).double(),
        "confidence_sum": torch.bincount(index, weights=confidence, minlength=bins),
        "correct_sum": torch.bincount(index, weights=correct, minlength=bins),
    }


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """Guo et al.'s ECE: sum over equal-width confidence bins of |accuracy - confidence| weighted by bin size."""
    binned = reliability_bins(probs, labels, bins)
    return float((binned["confidence_sum"] - binned["correct_sum"]).abs().sum() / max(labels.numel(), 1))


def classification_metrics(
    logits: torch.Tensor,
    labels: torch.Tensor,
    train_counts: torch.Tensor,
    *,
    many_min: int = 100,
    few_max: int = 20,
    ece_bins: int = 15,
) -> dict[str, float]:
    """Flat floats for the eval table: overall and per-group accuracy, ECE and NLL.

    "top1" is the plain sample accuracy and "mean_class" the mean of the per-class accuracies; on a
    balanced test set (every paper benchmark) they are equal.
    Groups come from train counts: many > many_min, few < few_max, medium otherwise (paper: >100,
    20-100, <20). A group's score is the mean accuracy of its classes that have test samples; a group
    with no such class is left out of the dict rather than reported as NaN.
    """
    if logits.dim() != 2 or labels.shape != (logits.shape[0],) or logits.shape[0] == 0:
        raise LtstgError(
            f"metrics need (N, C) logits and (N,) labels with N > 0, got {tuple(logits.shape)} and {tuple(labels.shape)}."
        )
    if few_max > many_min + 1:
        raise LtstgError(f"few_max ({few_max}) must not exceed many_min + 1 ({many_min + 1}): the groups would overlap.")
    num_classes = logits.shape[1]
    if train_counts.shape != (num_classes,):
        raise LtstgError(f"train counts must have one entry per class ({num_classes}), got shape {tuple(train_counts.shape)}.")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise LtstgError(f"test labels must lie in [0, {num_classes}), found {labels.min().item()}..{labels.max().item()}.")
    logits = logits.float()
    preds = logits.argmax(dim=1)
    accuracy = per_class_accuracy(preds, labels, num_classes)  # (C,)
    counts = train_counts.to(accuracy.device)
    groups = {"many": counts > many_min, "few": counts < few_max}
    groups["medium"] = ~(groups["many"] | groups["few"])
    result = {"top1": float((preds == labels).double().mean()), "mean_class": float(accuracy.nanmean())}
    for name in ("many", "medium", "few"):
        members = accuracy[groups[name] & ~accuracy.isnan()]
        if members.numel() > 0:
            result[name] = float(members.mean())
    result["ece"] = expected_calibration_error(logits.softmax(dim=1), labels, bins=ece_bins)
    result["nll"] = float(F.cross_entropy(logits, labels))
    return result
