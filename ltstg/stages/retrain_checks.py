"""Stage 3's input checks: everything wrong with the settings and artifacts, as one error, before any heavy step.

The features artifact is checked here; the methods are checked from what they registered (post-hoc or
trained, which inits they take, the strength at which an augmenter does nothing) and by their own checks.
"""
from __future__ import annotations

from typing import Any

import torch

from ltstg.errors import LtstgError
from ltstg.methods import PLAIN, classifiers, either, get_augmenter, get_classifier, uses_stg
from ltstg.models.stg import stg_problems
from ltstg.store import SHORT, Artifact, require_kind

FEATURE_TENSORS = ("train_features", "train_labels", "test_features", "test_labels", "class_counts",
                   "classifier.weight", "classifier.bias")


def check_inputs(settings: Any, features: Artifact, stg: Artifact | None) -> None:
    """Every problem with the settings and artifacts, as one error, before any heavy step."""
    require_kind(features, "features")
    missing = [name for name in FEATURE_TENSORS if name not in features.tensors]
    if missing:
        raise LtstgError(
            f"features artifact {features.id[:SHORT]} lacks {', '.join(missing)}; "
            "re-extract the features with this ltstg version."
        )
    classifier, augmenter = get_classifier(settings.classifier), get_augmenter(settings.augment.name)
    problems = method_problems(settings) + feature_problems(features) + shift_problems(settings, features)
    for entry in (classifier, augmenter):
        if entry.checks is not None:
            problems.extend(entry.checks(settings, features, stg))
    if augmenter.name != "stg" and uses_stg(settings.augment):  # kept to the tail: the STG's split must fit
        train = features["train_features"]
        problems.extend(problem.replace("augment 'stg'", "augment.scope tail") for problem in stg_problems(
            stg, features["class_counts"].numel(), train.shape[1] if train.dim() == 2 else -1))
    if problems:
        raise LtstgError("\n".join(problems))


def method_problems(settings: Any) -> list[str]:
    """Combinations the registries rule out: an augmenter for a classifier that trains nothing, an augmenter
    at the strength where it changes nothing, and an init the classifier does not take."""
    classifier, augmenter = get_classifier(settings.classifier), get_augmenter(settings.augment.name)
    problems = []
    if not classifier.trainable and settings.augment.name != PLAIN:
        trained = either([name for name, entry in classifiers().items() if entry.trainable])
        problems.append(
            f"classifier {settings.classifier!r} is not trained, so augment {settings.augment.name!r} would be "
            f"ignored; use --classifier {trained}, or augment {PLAIN}."
        )
    strength = augmenter.no_op
    if strength is not None and getattr(settings.augment, strength) == 0:
        problems.append(
            f"augment {settings.augment.name!r} with {strength} 0 changes no sample, so the result would be plain "
            f"{classifier.label}; use augment {PLAIN} for that, or a {strength} above 0."
        )
    if settings.init != "auto" and settings.init not in classifier.inits:
        taking = either([name for name, entry in classifiers().items() if settings.init in entry.inits])
        problems.append(
            f"classifier {settings.classifier!r} builds on the stage-1 classifier, so init {settings.init!r} does not "
            f"apply; use --classifier {taking}, or init auto."
        )
    return problems


def wanted_shift(settings: Any) -> int | None:
    """The batch size of the BatchNorm shift a method's features need (None: the plain features)."""
    return settings.batch_size if settings.bn_shift else None


def features_shift(features: Artifact) -> int | None:
    """The batch size of the BatchNorm shift these features were extracted after (None: plain)."""
    return features.info.get("bn_shift", {}).get("batch_size")


def shift_problems(settings: Any, features: Artifact) -> list[str]:
    """The features are BatchNorm-shifted exactly when `retrain.bn_shift` says so, at the method's batch size,
    so the flag recorded with the classifier never misstates what it trained on."""
    shifted, wanted = features_shift(features), wanted_shift(settings)
    if shifted == wanted:
        return []
    have = f"were extracted after a BatchNorm shift on batches of {shifted}" if shifted else "are plain (no BatchNorm shift)"
    return [f"features {features.id[:SHORT]} {have}, but retrain.bn_shift is {str(settings.bn_shift).lower()}"
            + (f" at batch size {wanted}" if wanted else "") + "; `ltstg retrain` and `ltstg run` pick the matching "
            "features themselves: leave --features out, or give the matching ones."]


def feature_problems(features: Artifact) -> list[str]:
    """Shapes, labels, counts and values of the training and test features and the stage-1 classifier."""
    label = f"features artifact {features.id[:SHORT]}"
    train = features["train_features"]
    train_labels = features["train_labels"]
    counts = features["class_counts"]
    weight, bias = features["classifier.weight"], features["classifier.bias"]
    num_classes = counts.numel()
    dim = train.shape[1] if train.dim() == 2 else -1
    problems = []
    if train.dim() != 2 or train.shape[0] == 0:
        problems.append(f"{label}: train_features must be a non-empty (N, D) matrix, got {tuple(train.shape)}.")
    elif train_labels.shape != (train.shape[0],):
        problems.append(f"{label}: train_labels has shape {tuple(train_labels.shape)}, expected ({train.shape[0]},).")
    elif counts.dim() != 1 or num_classes < 2:
        problems.append(f"{label}: class_counts must list at least 2 classes, got shape {tuple(counts.shape)}.")
    elif train_labels.min() < 0 or train_labels.max() >= num_classes:
        problems.append(f"{label}: train_labels lie outside [0, {num_classes}).")
    elif not torch.equal(torch.bincount(train_labels.long(), minlength=num_classes), counts.long()):
        problems.append(f"{label}: class_counts disagrees with train_labels; re-extract the features.")
    elif not bool(torch.isfinite(train).all()):
        problems.append(f"{label}: train_features hold NaN or infinite values; re-extract the features.")
    test, test_labels = features["test_features"], features["test_labels"]
    if test.dim() != 2 or test.shape[1] != dim or test_labels.shape != (test.shape[0],):
        problems.append(
            f"{label}: test features {tuple(test.shape)} / labels {tuple(test_labels.shape)} do not match "
            f"the training feature size {dim}."
        )
    elif test_labels.numel() and (test_labels.min() < 0 or test_labels.max() >= num_classes):
        problems.append(f"{label}: test_labels lie outside [0, {num_classes}).")
    if weight.shape != (num_classes, dim) or bias.shape != (num_classes,):
        problems.append(
            f"{label}: the stage-1 classifier is {tuple(weight.shape)} + {tuple(bias.shape)}, "
            f"expected ({num_classes}, {dim}) + ({num_classes},)."
        )
    views = features.tensors.get("train_views")
    if views is not None and (views.dim() != 3 or tuple(views.shape[1:]) != tuple(train.shape)):
        expected = ", ".join(map(str, train.shape))
        problems.append(f"{label}: train_views has shape {tuple(views.shape)}, expected (K, {expected}).")
    return problems
