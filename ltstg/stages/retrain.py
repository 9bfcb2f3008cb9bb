"""Stage 3: re-balance the classifier on frozen features (cRT, LWS, τ-norm, ...), optionally augmenting them.

The classifiers and augmenters are registered methods (`ltstg.methods`, one module each in
`ltstg/classifiers/` and `ltstg/augment/`); this module is the loop they share. Trained classifiers see
class-balanced (or plain) mini-batches whose features went through one augmenter first; post-hoc ones
need no training. Every result is handed on as one effective linear classifier (weight, bias), so
evaluation has a single code path. Each epoch ends with a checkpoint, so a killed run continues where
it stopped. The input checks live in `retrain_checks`.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ltstg.augment.scope import scoped
from ltstg.calibration import fit_temperature
from ltstg.data.balanced import ClassAwareSampler, class_balanced_indices
from ltstg.data.features import TrainingFeatures, training_features
from ltstg.errors import LtstgError
from ltstg.stages.finite import Diverged, diverged
from ltstg.methods import PLAIN, ClassifierEntry, get_augmenter, get_classifier
from ltstg.progress import Progress, silent
from ltstg.recipe import EvalSettings, RetrainSettings
from ltstg.stages import Checkpoint, Output, keep, resume
from ltstg.stages.evaluate import VAL_METRICS, score, split_logits
from ltstg.stages.retrain_checks import check_inputs
from ltstg.store import SHORT, Artifact
from ltstg.training import make_scheduler, smoothed_cross_entropy

UNTRAINED_SHARE = 0.9  # a fresh classifier whose loss above its floor kept this share of a uniform guess's did not train
HALF_TRAINED = 0.5  # ... nor did one that kept half of it and is below the stage-1 classifier on validation
MIN_MOVED = 1e-3  # a classifier from stage 1 that moved less than this (relative) barely trained
STILL_FALLING = 0.5  # the last fifth of the epochs still lowered the loss at half the run's average rate or more
NOISE = 0.02  # ... by more than this share of the loss above its floor per epoch (smaller drops are batch noise)
CLASS_BALANCED_SAMPLINGS = ("balanced", "class_aware")  # samplings that draw every class equally often
BELOW_STAGE1 = 0.02  # validation class-balanced accuracy this far below the stage-1 classifier's is worth a warning


def resolved_init(settings: RetrainSettings) -> str:
    """Where the classifier starts: what `init: auto` means for it (fresh for cRT, Kang et al.), or the init asked."""
    if settings.init != "auto":
        return settings.init
    return get_classifier(settings.classifier).auto_init


def method_label(settings: RetrainSettings) -> str:
    """The name a comparison table shows for these settings, e.g. "cRT+STG" or "τ-norm"."""
    augment = get_augmenter(settings.augment.name).label
    base = get_classifier(settings.classifier).label
    return f"{base}+{augment}" if augment else base


def retrain(
    settings: RetrainSettings,
    features: Artifact,
    stg: Artifact | None,
    *,
    seed: int,
    device: torch.device | str,
    generator: torch.Generator,
    progress: Progress = silent,
    checkpoint: Checkpoint | None = None,
) -> Output:
    """Re-train (or post-hoc adjust) the classifier on frozen features so tail classes get fair boundaries."""
    device = torch.device(device)
    check_inputs(settings, features, stg)
    classifier = get_classifier(settings.classifier)
    if classifier.trainable:
        weight, bias, tensors, metrics = fit(
            settings, classifier, features, stg, seed=seed, device=device, generator=generator,
            progress=progress, checkpoint=checkpoint,
        )
    else:  # on the CPU, where the stage-1 classifier is
        weight, bias = classifier.post_hoc(settings, training_features(features, torch.device("cpu")))
        tensors, metrics = {"curve.loss": torch.zeros(0)}, {}  # no training, no curve
    tensors["weight"] = weight.contiguous()  # (C, D)
    tensors["bias"] = bias.contiguous()  # (C,)
    val_metrics, temperature, notes = validate(tensors["weight"], tensors["bias"], features)
    metrics.update(val_metrics)
    if classifier.trainable:  # judged with the validation scores where there are some
        unconverged = convergence_notes(metrics, settings)
        metrics["converged"] = float(not unconverged)
        notes = unconverged + notes
    if temperature is not None:
        tensors["temperature"] = torch.tensor([temperature], dtype=torch.float32)  # (1,): logits / T are calibrated
    info = {
        "classifier": settings.classifier,
        "augment": settings.augment.name,
        "method": method_label(settings),
        "init": resolved_init(settings) if classifier.trainable else "stage1",
        "feature_dim": int(tensors["weight"].shape[1]),
        "num_classes": int(tensors["weight"].shape[0]),
    }
    key_metric = "val_mean_class" if "val_mean_class" in metrics else None
    return Output("classifier", tensors, metrics, info, key_metric=key_metric, notes=notes)


def validate(
    weight: torch.Tensor, bias: torch.Tensor, features: Artifact
) -> tuple[dict[str, float], float | None, list[str]]:
    """Scores on the validation split (what `ltstg run` selects on; the test split is never read here), the
    temperature fitted there (Guo et al.), and a warning when the classifier is below stage 1's on it."""
    if "val_features" not in features.tensors:
        return {}, None, [
            f"features {features.id[:SHORT]} have no validation split (made before ltstg had one): no temperature "
            "scaling and nothing to select on; re-run make-dataset and pretrain to get one"
        ]
    logits, labels = split_logits(weight, bias, features, "val")  # (M, C), (M,)
    temperature = fit_temperature(logits, labels)
    scores, _ = score(weight, bias, features, EvalSettings(), split="val", temperature=temperature,
                      computed=(logits, labels))
    stage1, _ = score(features["classifier.weight"], features["classifier.bias"], features, EvalSettings(), split="val")
    metrics = {f"val_{key}": value for key, value in scores.items() if key in VAL_METRICS}
    metrics["temperature"] = temperature
    metrics["stage1_val_mean_class"] = stage1["mean_class"]
    notes = []
    if metrics["val_mean_class"] < stage1["mean_class"] - BELOW_STAGE1:
        notes.append(
            f"warning: class-balanced validation accuracy {100 * metrics['val_mean_class']:.1f}% is below the stage-1 "
            f"classifier's {100 * stage1['mean_class']:.1f}% that it replaces"
        )
    return metrics, temperature, notes


def fit(
    settings: RetrainSettings,
    classifier: ClassifierEntry,
    features: Artifact,
    stg: Artifact | None,
    *,
    seed: int,
    device: torch.device,
    generator: torch.Generator,
    progress: Progress,
    checkpoint: Checkpoint | None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], dict[str, float]]:
    """Train a registered classifier on augmented features and fold it into (weight, bias), with its loss
    curve, the augmenter's extra tensors, and the metrics that say whether it converged."""
    inputs = training_features(features, device)
    augmenter_entry = get_augmenter(settings.augment.name)
    augmenter = scoped(augmenter_entry.build(settings.augment, inputs, stg, device), settings.augment, stg,
                       inputs.num_classes)
    model = classifier.build(settings, inputs, seed, resolved_init(settings)).to(device)
    curve, changed = train(
        settings, model, augmenter, inputs, generator=generator, progress=progress, checkpoint=checkpoint
    )
    metrics = {"augmented_share": sum(changed) / (len(changed) * inputs.labels.numel())}
    weight, bias = (value.detach().cpu() for value in model.folded())
    tensors = {"curve.loss": torch.tensor(curve, dtype=torch.float32)}  # (epochs,)
    stage1 = features["classifier.weight"].float(), features["classifier.bias"].float()
    floor = loss_floor(epsilon_of(settings, classifier, inputs), inputs.labels, settings.sampling)
    metrics.update(convergence(curve, floor, (weight, bias), stage1, resolved_init(settings)))
    if augmenter_entry.outputs is not None:
        tensors.update(augmenter_entry.outputs(augmenter, inputs))
    return weight, bias, tensors, metrics


def epsilon_of(settings: RetrainSettings, classifier: ClassifierEntry, inputs: TrainingFeatures) -> torch.Tensor:
    """The classifier's per-class label smoothing ε (C,); zeros for plain cross-entropy."""
    if classifier.smoothing is not None:
        return classifier.smoothing(settings, inputs)
    return torch.zeros(inputs.num_classes, device=inputs.labels.device)


def loss_floor(epsilon: torch.Tensor, labels: torch.Tensor, sampling: str) -> float:
    """The lowest training loss the targets allow: the mean entropy of the smoothed targets over the draws.

    A target (1 − ε)·onehot + ε/C has entropy > 0 when ε > 0, so a perfect classifier under smoothing
    still scores above 0; balanced sampling weighs every class alike, instance sampling by its count.
    """
    num_classes = epsilon.numel()
    eps = epsilon.double().cpu()  # (C,)
    on = 1 - eps + eps / num_classes
    off = eps / num_classes
    entropy = -(on * on.log()) - (num_classes - 1) * torch.where(off > 0, off * off.log(), torch.zeros_like(off))
    if sampling in CLASS_BALANCED_SAMPLINGS:
        return float(entropy.mean())
    counts = torch.bincount(labels.cpu(), minlength=num_classes).double()
    return float((entropy * counts).sum() / counts.sum())


def convergence(
    curve: list[float],
    floor: float,
    trained: tuple[torch.Tensor, torch.Tensor],
    stage1: tuple[torch.Tensor, torch.Tensor],
    init: str,
) -> dict[str, float]:
    """The signs of training that hold whatever the init, the smoothing and the augmentation: the last loss and
    its floor, how far a classifier from stage 1 moved, and how fast the loss still fell at the end."""
    num_classes = trained[0].shape[0]
    metrics = {"train_loss": curve[-1], "loss_floor": floor, "chance_loss": math.log(num_classes)}
    if init == "stage1":  # (W, b) against the stage-1 classifier it started from
        start = torch.cat([stage1[0], stage1[1].unsqueeze(1)], dim=1).double()  # (C, D + 1)
        end = torch.cat([trained[0], trained[1].unsqueeze(1)], dim=1).double()
        metrics["moved"] = float((end - start).norm() / start.norm().clamp_min(1e-12))
    window = len(curve) // 5
    if window >= 2:  # the last fifth's mean against the fifth before it, per epoch: one epoch's mean is too noisy
        before, last = curve[-2 * window:-window], curve[-window:]
        metrics["tail_rate"] = (sum(before) - sum(last)) / window / window
        metrics["mean_rate"] = (curve[0] - curve[-1]) / (len(curve) - 1)
    return metrics


def convergence_notes(metrics: dict[str, float], settings: RetrainSettings) -> list[str]:
    """One line per sign that the classifier did not converge; the runner prints them and stores them."""
    notes = []
    loss, floor, chance = metrics["train_loss"], metrics["loss_floor"], metrics["chance_loss"]
    fix = f"raise retrain.epochs (now {settings.epochs}) or retrain.lr (now {settings.lr:g})"
    kept = (loss - floor) / max(chance - floor, 1e-12)  # share of a uniform guess's loss above the floor
    below = metrics.get("stage1_val_mean_class", 0.0) - metrics.get("val_mean_class", 1.0)
    if "moved" not in metrics and (kept > UNTRAINED_SHARE or (kept > HALF_TRAINED and below > BELOW_STAGE1)):
        notes.append(
            f"warning: the classifier did not converge: its final training loss {loss:.3f} kept {100 * kept:.0f}% of a "
            f"uniform guess's (ln C = {chance:.3f}; {floor:.3f} is the lowest its targets allow)"
            + (f" and it is {100 * below:.1f} points below the stage-1 classifier on validation" if below > 0 else "")
            + f"; {fix}, or start from stage 1 (retrain.init=stage1)"
        )
    if metrics.get("moved", 1.0) < MIN_MOVED:
        notes.append(
            f"warning: the classifier did not converge: it barely moved from the stage-1 classifier it started from "
            f"(relative change {metrics['moved']:.1e}); {fix}"
        )
    tail_rate, mean_rate = metrics.get("tail_rate", 0.0), metrics.get("mean_rate", 0.0)
    # under the cosine schedule the lr ends near 0 by design, so what moves at the end is batch noise
    falling = tail_rate >= STILL_FALLING * mean_rate and tail_rate > NOISE * max(loss - floor, 0.0)
    if settings.schedule == "constant" and mean_rate > 0 and falling:
        notes.append(
            f"warning: the classifier did not converge: its training loss was still falling over the last fifth of "
            f"the epochs ({tail_rate:.3g} per epoch against {mean_rate:.3g} on average) at a constant lr; raise "
            f"retrain.epochs (now {settings.epochs}) or use the cosine schedule"
        )
    return notes


class _NoState:
    """What the checkpoint keeps for an augmenter without running statistics (all but ISDA): nothing."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore: the augmenter keeps no statistics."""


def train(
    settings: RetrainSettings,
    model: nn.Module,
    augmenter: Any,
    inputs: TrainingFeatures,
    *,
    generator: torch.Generator,
    progress: Progress = silent,
    checkpoint: Checkpoint | None = None,
) -> tuple[list[float], list[int]]:
    """Adam or SGD + cross-entropy on augmented mini-batches for `epochs` × ceil(N / batch) steps.

    Returns the per-epoch mean loss and the per-epoch number of draws the augmenter changed; an
    augmenter that changed none in an epoch stops the run, since its result would be plain cRT.
    """
    classifier = get_classifier(settings.classifier)
    steps_per_epoch = math.ceil(inputs.labels.numel() / settings.batch_size)
    groups = classifier.parameter_groups(model, settings) if classifier.parameter_groups else model.parameters()
    optimizer = make_optimizer(settings, groups)
    epsilon = epsilon_of(settings, classifier, inputs)  # (C,) per-class label smoothing; zeros = plain cross-entropy
    # paper: "cosine learning rate that decays from 0.001 to 0" (ImageNet-LT/Places); CIFAR is silent (retrain.schedule)
    scheduler = make_scheduler(
        optimizer, steps_per_epoch, epochs=settings.epochs, warmup_epochs=0, schedule=settings.schedule,
        per=settings.schedule_step,
    )
    sampler = (ClassAwareSampler(inputs.labels, settings.samples_per_class, generator=generator)
               if settings.sampling == "class_aware" else None)
    # the checkpoint's keys, as older checkpoints hold them: classifier, optimizer, scheduler, augmenter,
    # generator, epoch, curve, changed; a class-aware sampler's position joins them
    stateful = {"classifier": model, "optimizer": optimizer, "scheduler": scheduler,
                "augmenter": augmenter if hasattr(augmenter, "state_dict") else _NoState()}
    if sampler is not None:
        stateful["sampler"] = sampler
    start_epoch, saved = resume(checkpoint, stateful, generator, epochs=settings.epochs)
    curve = [float(x) for x in saved["curve"]] if saved else []  # (epochs done so far,)
    changed = [int(x) for x in saved["changed"]] if saved else []
    model.train()
    for epoch in range(start_epoch, settings.epochs):
        loss, count = train_epoch(settings, model, augmenter, inputs, optimizer, scheduler, epsilon, generator, sampler)
        stop = diverged("retrain", epoch, loss, "lower retrain.lr or the augmenter's strength.")
        if stop:
            raise Diverged(stop)
        curve.append(loss)
        changed.append(count)
        if count == 0 and settings.augment.name != PLAIN:
            raise LtstgError(
                f"augmenter {settings.augment.name!r} changed no training sample in epoch {epoch + 1}, so the result "
                f"would be plain {classifier.label}; check its settings ({settings.augment})."
            )
        if epoch + 1 < settings.epochs:
            keep(checkpoint, stateful, generator, epoch=epoch,
                 curve=torch.tensor(curve, dtype=torch.float64), changed=torch.tensor(changed, dtype=torch.long))
        total_steps = settings.epochs * steps_per_epoch
        progress("retrain", (epoch + 1) * steps_per_epoch, total_steps, epoch=epoch + 1, loss=curve[-1])
    return curve, changed


def train_epoch(
    settings: RetrainSettings,
    model: nn.Module,
    augmenter: Any,
    inputs: TrainingFeatures,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epsilon: torch.Tensor,
    generator: torch.Generator,
    sampler: ClassAwareSampler | None = None,
) -> tuple[float, int]:
    """One epoch of N draws: the mean loss, and how many draws the augmenter changed."""
    num_train = inputs.labels.numel()
    order = sampler.draws(num_train) if sampler is not None else epoch_order(inputs.labels, settings.sampling, generator)
    view = draw_views(inputs, generator)  # (N,) 0 = original, k = view k-1; None without views
    loss_sum = torch.zeros((), dtype=torch.float64, device=inputs.labels.device)
    changed_sum = torch.zeros((), dtype=torch.long, device=inputs.labels.device)
    for step in range(math.ceil(num_train / settings.batch_size)):
        start, stop = step * settings.batch_size, (step + 1) * settings.batch_size
        batch = order[start:stop]  # (B,)
        labels = inputs.labels[batch]  # (B,)
        batch_features = pick_features(inputs, batch, None if view is None else view[start:stop])
        augmented = augmenter.augment(batch_features, labels, generator=generator)  # (B, D)
        loss = smoothed_cross_entropy(model(augmented), labels, epsilon)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.detach().double() * batch.numel()
        changed_sum += (augmented != batch_features).any(dim=1).sum()
    return float(loss_sum) / num_train, int(changed_sum)


def make_optimizer(settings: RetrainSettings, groups: Any) -> torch.optim.Optimizer:
    """Adam, as the STG paper trains stage 3, or SGD with momentum, as Kang et al.'s cRT and MiSLAS's stage 2;
    the weight decay applies to every parameter group, as both of theirs do."""
    if settings.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.wd)
    return torch.optim.Adam(groups, lr=settings.lr, weight_decay=settings.wd)


def epoch_order(labels: torch.Tensor, sampling: str, generator: torch.Generator) -> torch.Tensor:
    """N draws per epoch: class-balanced (with replacement, cRT) or a plain shuffle (instance).

    paper is silent on what an epoch of balanced sampling is; we take N draws (retrain.epochs counts them).
    """
    num_train = labels.numel()
    if sampling == "balanced":
        return class_balanced_indices(labels, num_train, generator=generator)
    return torch.randperm(num_train, generator=generator, device=labels.device)


def draw_views(inputs: TrainingFeatures, generator: torch.Generator) -> torch.Tensor | None:
    """Which copy each of the epoch's N draws uses: the original or one of the K views, uniformly.

    paper is silent on extra views (pretrain.feature_views); we treat the original as one more view.
    """
    if inputs.views is None:
        return None
    num_copies = inputs.views.shape[0] + 1
    return torch.randint(num_copies, (inputs.labels.numel(),), generator=generator, device=inputs.labels.device)


def pick_features(inputs: TrainingFeatures, batch: torch.Tensor, view: torch.Tensor | None) -> torch.Tensor:
    """The batch's rows, each from the copy its draw chose; without views, the original rows."""
    rows = inputs.features[batch]  # (B, D)
    if view is None:
        return rows
    from_view = torch.nonzero(view > 0).flatten()  # (V,)
    rows[from_view] = inputs.views[view[from_view] - 1, batch[from_view]].float()  # stored float16 or float32
    return rows
