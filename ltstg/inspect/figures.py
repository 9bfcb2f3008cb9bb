"""The long-tail pictures from stored artifacts: each function gathers what one picture needs and draws it.

Classifiers are scored on the test features they were trained on, so every picture agrees with `eval`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ltstg.data.features import split_tensors
from ltstg.data.longtail import assign_groups
from ltstg.inspect import plots
from ltstg.metrics import confusion_matrix, expected_calibration_error, per_class_accuracy, reliability_bins
from ltstg.store import Artifact, require_kind

Labelled = Sequence[tuple[str, Artifact]]  # (label for the legend, classifier artifact)
CONFUSION_CELLS = 100  # rows and columns of the confusion picture at most


def _counts_and_groups(features: Artifact) -> tuple[list[int], list[str]]:
    counts = features["class_counts"].tolist()
    groups = features.info.get("groups") or assign_groups(
        counts, features.info.get("many_above", 100), features.info.get("few_below", 20)
    )
    return counts, list(groups)


def _test_probs(classifier: Artifact, features: Artifact) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities (M, C) and labels (M,) of one classifier on the test features."""
    require_kind(classifier, "classifier")
    inputs, labels = split_tensors(features, "test")
    logits = inputs.float() @ classifier["weight"].float().T + classifier["bias"].float()  # (M, C)
    return logits.softmax(dim=1), labels.long()


def per_class_figure(classifiers: Labelled, features: Artifact, path: str | Path) -> Path:
    counts, groups = _counts_and_groups(features)
    series = {}
    for label, classifier in classifiers:
        probs, labels = _test_probs(classifier, features)
        series[label] = per_class_accuracy(probs.argmax(dim=1), labels, len(counts)).nan_to_num(0.0).tolist()
    return plots.plot_per_class(series, counts, groups, path)


def weight_norms_figure(classifiers: Labelled, features: Artifact, path: str | Path) -> Path:
    counts, groups = _counts_and_groups(features)
    series = {label: classifier["weight"].float().norm(dim=1).tolist() for label, classifier in classifiers}
    return plots.plot_weight_norms(series, counts, groups, path)


def reliability_figure(classifiers: Labelled, features: Artifact, path: str | Path, *, bins: int = 15) -> Path:
    panels = {}
    for label, classifier in classifiers:
        probs, labels = _test_probs(classifier, features)
        panels[label] = {**reliability_bins(probs, labels, bins), "ece": expected_calibration_error(probs, labels, bins)}
    return plots.plot_reliability(panels, path)


def confusion_figure(label: str, classifier: Artifact, features: Artifact, path: str | Path) -> Path:
    """The test confusion matrix; with more than CONFUSION_CELLS classes, of CONFUSION_CELLS groups of classes
    adjacent in the ranking by training count (a C x C picture of 8,142 classes would show nothing)."""
    counts, _ = _counts_and_groups(features)
    probs, labels = _test_probs(classifier, features)
    preds = probs.argmax(dim=1)
    del probs
    names = features.info.get("class_names") or [str(c) for c in range(len(counts))]
    title = f"{label}: test confusion, row-normalised"
    if len(counts) > CONFUSION_CELLS:
        group = torch.empty(len(counts), dtype=torch.long)  # (C,) each class's group, head to tail
        group[torch.tensor(plots.count_order(counts))] = torch.arange(len(counts)) * CONFUSION_CELLS // len(counts)
        counts = torch.bincount(group, weights=torch.tensor(counts, dtype=torch.float64)).long().tolist()
        names = [f"group {g}" for g in range(CONFUSION_CELLS)]
        preds, labels = group[preds], group[labels]
        title = f"{label}: test confusion of {CONFUSION_CELLS} groups of classes by training count, row-normalised"
    matrix = confusion_matrix(preds, labels, len(counts))
    return plots.plot_confusion(matrix, counts, names, path, title=title)


def curves_figure(backbone: Artifact, stg: Artifact | None, path: str | Path) -> Path:
    require_kind(backbone, "backbone")
    history = backbone.info.get("history", {})
    stg_loss = stg["curve.loss"].tolist() if stg is not None else None
    return plots.plot_curves(
        backbone["history.loss"].tolist(), history.get("eval_epoch", []), history.get("eval_top1", []), stg_loss, path
    )


def kl_figure(report: Artifact, path: str | Path) -> Path:
    """Heat map of a stored kl-report, each sample labelled with the head class it borrowed."""
    samples = report.info["samples"]
    labels = [f"{s['sample']}: →{s['borrowed_head_name']}" for s in samples]
    title = f"KL between the STG's Gaussians, {report.info['class_name']} samples"
    return plots.plot_kl_heatmap(report.tensors["kl"], labels, path, title=title)
