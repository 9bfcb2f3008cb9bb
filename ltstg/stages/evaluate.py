"""Stage 4: score a linear classifier on frozen features, and put several scores side by side
(as rows; `ltstg.tables` draws them).

Evaluation only ever sees the effective linear classifier (weight, bias): the STG and the class
tokens are training-time tools and never touch a test feature.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ltstg.data.features import split_tensors
from ltstg.data.longtail import assign_groups
from ltstg.errors import LtstgError
from ltstg.metrics import classification_metrics, confusion_pairs, expected_calibration_error, per_class_accuracy
from ltstg.recipe import EvalSettings
from ltstg.stages import Output, require_kind
from ltstg.store import SHORT, Artifact

VAL_METRICS = ("top1", "mean_class", "ece", "nll", "ece_calibrated", "nll_calibrated")  # what retrain keeps of val


def split_logits(
    weight: torch.Tensor, bias: torch.Tensor, features: Artifact, split: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits = a @ W.T + b (M, C) of one split's features, and its labels (M,); a classifier that does not fit
    the features is one clear error."""
    inputs, labels = split_tensors(features, split)
    num_classes = features["class_counts"].numel()
    if inputs.dim() != 2 or weight.shape != (num_classes, inputs.shape[1]) or bias.shape != (num_classes,):
        raise LtstgError(
            f"the classifier ({tuple(weight.shape)} weight, {tuple(bias.shape)} bias) does not fit features "
            f"{features.id[:SHORT]} ({num_classes} classes, {split} features {tuple(inputs.shape)}); "
            "evaluate it on the features it was trained on."
        )
    return inputs.float() @ weight.float().T + bias.float(), labels.long()


def score(
    weight: torch.Tensor,
    bias: torch.Tensor,
    features: Artifact,
    settings: EvalSettings,
    *,
    split: str = "test",
    temperature: float | None = None,
    computed: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Metrics and per-class tensors of logits = a @ W.T + b on one split; shared by eval and retrain.

    With a temperature (fitted on the validation split by retrain), ECE and NLL are also given for the
    logits divided by it (`ece_calibrated`, `nll_calibrated`); the predictions, and so top-1, are the same.
    `computed`: that split's logits and labels, where the caller already has them.
    """
    logits, labels = computed if computed is not None else split_logits(weight, bias, features, split)  # (M, C), (M,)
    counts = features["class_counts"]
    num_classes = counts.numel()
    metrics = classification_metrics(
        logits,
        labels,
        counts,
        many_min=int(features.info.get("many_above", 100)),
        few_max=int(features.info.get("few_below", 20)),
        ece_bins=settings.ece_bins,
    )
    if temperature is not None:
        calibrated = logits / temperature
        metrics["ece_calibrated"] = expected_calibration_error(calibrated.softmax(dim=1), labels, bins=settings.ece_bins)
        metrics["nll_calibrated"] = float(F.cross_entropy(calibrated, labels))
        metrics["temperature"] = float(temperature)
    preds = logits.argmax(dim=1)  # (M,)
    pairs, counts = confusion_pairs(preds, labels)  # sparse: C² int64 cells would dwarf the rest at many classes
    tensors = {
        "per_class_accuracy": per_class_accuracy(preds, labels, num_classes).float(),  # (C,), NaN: no samples
        "confusion_pairs": pairs,  # (K, 2) (true, predicted) cells that are not 0; metrics.dense_confusion
        "confusion_counts": counts,  # (K,)
    }
    return metrics, tensors


def evaluate(classifier: Artifact, features: Artifact, settings: EvalSettings, *, split: str = "test") -> Output:
    """Top-1, many/medium/few, ECE and NLL of one classifier, so every method is scored by one code path."""
    require_kind(classifier, "classifier")
    require_kind(features, "features")
    metrics, tensors = score(
        classifier["weight"], classifier["bias"], features, settings, split=split, temperature=temperature_of(classifier)
    )
    counts = features["class_counts"]
    info = {
        "method": classifier.info.get("method", classifier.info.get("classifier", "?")),
        "split": split,
        "class_names": features.info.get("class_names") or [str(c) for c in range(counts.numel())],
        "groups": features.info.get("groups")
        or assign_groups(counts.tolist(), features.info.get("many_above", 100), features.info.get("few_below", 20)),
    }
    notes = []
    pairs, cell_counts = tensors["confusion_pairs"], tensors["confusion_counts"]
    per_class = torch.zeros(counts.numel(), dtype=torch.long).index_add_(0, pairs[:, 0], cell_counts)  # (C,) per true class
    if int(per_class.min()) != int(per_class.max()):
        notes.append(
            f"the {split} split is not balanced ({int(per_class.min())} to {int(per_class.max())} images per class): "
            f"top-1 weights classes by their {split} counts; mean_class ({100 * metrics['mean_class']:.1f}%) "
            "weights them equally, as the paper's balanced test sets do"
        )
    return Output("report", tensors, metrics, info, key_metric="top1", notes=notes)


def temperature_of(classifier: Artifact) -> float | None:
    """The temperature retrain fitted on the validation split; None for a classifier made without one."""
    return float(classifier["temperature"]) if "temperature" in classifier.tensors else None


def converged(classifier: Artifact) -> bool:
    """False when retrain recorded that this classifier did not converge (a classifier it did not train passes)."""
    return classifier.metrics.get("converged", 1.0) != 0.0


def compare_rows(reports: list[Artifact], classifiers: list[Artifact] | None = None) -> list[dict]:
    """One flat row per report (fractions, None for an empty group), ready for a table or JSON; with the
    reports' classifiers, a row also counts whether its classifier did not converge."""
    rows = []
    for index, report in enumerate(reports):
        require_kind(report, "report")
        metrics = report.metrics
        rows.append(
            {
                "method": report.info.get("method", "?"),
                "all": metrics.get("top1"),
                "mean_class": metrics.get("mean_class"),
                "many": metrics.get("many"),
                "medium": metrics.get("medium"),
                "few": metrics.get("few"),
                "ece": metrics.get("ece"),
                "nll": metrics.get("nll"),
                "ece_calibrated": metrics.get("ece_calibrated"),
                "nll_calibrated": metrics.get("nll_calibrated"),
                "id": report.id[:SHORT],
                "not_converged": int(classifiers is not None and not converged(classifiers[index])),
            }
        )
    return rows
