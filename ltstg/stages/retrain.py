"""Stage 3: re-balance the classifier on frozen features (cRT, LWS, τ-norm), optionally augmenting them.

The trained classifiers (cRT, LWS) see class-balanced (or plain) mini-batches whose features went
through one augmenter first: STG (paper Sec. 3.4), ISDA-style class Gaussians, noise, dropout or none.
τ-norm and the stage-1 classifier need no training. Every result is handed on as one effective
linear classifier (weight, bias), so evaluation has a single code path. Each epoch ends with a
checkpoint, so a killed run continues where it stopped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ltstg.augment import StgAugmenter, get_augmenter
from ltstg.data.balanced import class_balanced_indices
from ltstg.errors import LtstgError
from ltstg.metrics import per_class_accuracy
from ltstg.models.classifiers import LinearClassifier, LwsClassifier, ScaledLinearClassifier, tau_normalize
from ltstg.models.prototypes import class_means
from ltstg.models.stg import load_stg, stg_problems
from ltstg.recipe import EvalSettings, RetrainSettings
from ltstg.progress import Progress, silent
from ltstg.stages import Checkpoint, Output, require_kind
from ltstg.stages.evaluate import score
from ltstg.store import SHORT, Artifact
from ltstg.training import label_aware_smoothing, make_scheduler, smoothed_cross_entropy

CLASSIFIER_LABELS = {"crt": "cRT", "lws": "LWS", "mislas": "MiSLAS", "tau-norm": "τ-norm", "none": "CE (stage 1)"}
AUGMENT_LABELS = {"none": "", "stg": "STG", "isda": "ISDA", "noise": "Noise", "dropout": "Dropout"}
BORROW_CHUNK = 8192  # rows per nearest-prototype lookup, so (N, H) similarities never sit in memory at once
UNCONVERGED_LOSS = 0.9  # a final training loss above this share of ln C is what an untrained classifier gives
BALANCED_MARGIN = 0.02  # class-balanced training accuracy this far below stage 1's means the classifier did not train
NO_OP = {"stg": "lam", "isda": "lam", "noise": "std", "dropout": "p"}  # the setting at which an augmenter does nothing


@dataclass(frozen=True)
class Inputs:
    """The checked training data of one retrain run, on the compute device."""

    features: torch.Tensor  # (N, D)
    labels: torch.Tensor  # (N,)
    views: torch.Tensor | None  # (K, N, D) extra augmented views, or None
    class_counts: torch.Tensor  # (C,)
    weight: torch.Tensor  # (C, D) stage-1 classifier
    bias: torch.Tensor  # (C,)

    @property
    def num_classes(self) -> int:
        return self.class_counts.numel()

    @property
    def dim(self) -> int:
        return self.features.shape[1]


def resolved_init(settings: RetrainSettings) -> str:
    """Where the classifier starts: fresh for cRT (Kang et al.), the stage-1 classifier for everything else."""
    if settings.init != "auto":
        return settings.init
    return "fresh" if settings.classifier == "crt" else "stage1"


def method_label(settings: RetrainSettings) -> str:
    """The name a comparison table shows for these settings, e.g. "cRT+STG" or "τ-norm"."""
    augment = AUGMENT_LABELS[settings.augment.name]
    base = CLASSIFIER_LABELS[settings.classifier]
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
    stage1_weight = features["classifier.weight"].float()
    stage1_bias = features["classifier.bias"].float()
    tensors: dict[str, torch.Tensor] = {}
    metrics: dict[str, float] = {}
    notes: list[str] = []
    init = resolved_init(settings)
    if settings.classifier in POST_HOC:
        weight, bias = POST_HOC[settings.classifier](stage1_weight, stage1_bias, settings)
        tensors["curve.loss"] = torch.zeros(0)  # no training, no curve
    else:
        views = features.tensors.get("train_views")
        inputs = Inputs(
            features=features["train_features"].to(device, torch.float32),
            labels=features["train_labels"].to(device, torch.long),
            views=views.to(device, torch.float32) if views is not None else None,
            class_counts=features["class_counts"].to(device, torch.long),
            weight=stage1_weight.to(device),
            bias=stage1_bias.to(device),
        )
        augmenter = build_augmenter(settings, inputs, stg, device)
        build, fold = TRAINABLE[settings.classifier]
        model = build(inputs, seed, init).to(device)
        curve, changed = train(
            settings, model, augmenter, inputs, generator=generator, progress=progress, checkpoint=checkpoint
        )
        metrics["augmented_share"] = sum(changed) / (len(changed) * inputs.labels.numel())
        weight, bias = (value.detach().cpu() for value in fold(model))
        tensors["curve.loss"] = torch.tensor(curve, dtype=torch.float32)  # (epochs,)
        metrics.update(convergence(curve[-1], weight, bias, stage1_weight, stage1_bias, features))
        notes += convergence_notes(metrics, settings)
        metrics["converged"] = float(not notes)
        if isinstance(augmenter, StgAugmenter):
            tensors["borrowed_head"], tensors["borrowed_cosine"] = borrowed(augmenter, inputs)
    tensors["weight"] = weight.contiguous()  # (C, D)
    tensors["bias"] = bias.contiguous()  # (C,)
    test_metrics, _ = score(tensors["weight"], tensors["bias"], features, EvalSettings())
    metrics["top1"] = test_metrics["top1"]
    info = {
        "classifier": settings.classifier,
        "augment": settings.augment.name,
        "method": method_label(settings),
        "init": init if settings.classifier in TRAINABLE else "stage1",
        "feature_dim": int(tensors["weight"].shape[1]),
        "num_classes": int(tensors["weight"].shape[0]),
    }
    return Output("classifier", tensors, metrics, info, key_metric="top1", notes=notes)


def balanced_accuracy(weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean of per-class accuracies, so every class weighs the same however many samples it has."""
    weight, bias = weight.float(), bias.float()
    preds = torch.cat(
        [(chunk.float() @ weight.T + bias).argmax(dim=1) for chunk in torch.split(features, BORROW_CHUNK)]
    )  # (N,), in chunks so (N, C) logits never sit in memory at once
    per_class = per_class_accuracy(preds, labels.long(), weight.shape[0])  # (C,)
    return float(per_class[~per_class.isnan()].mean())


def convergence(
    final_loss: float,
    weight: torch.Tensor,
    bias: torch.Tensor,
    stage1_weight: torch.Tensor,
    stage1_bias: torch.Tensor,
    features: Artifact,
) -> dict[str, float]:
    """What says whether the classifier trained: its last loss against ln C, and class-balanced training accuracy
    on the un-augmented training features next to the stage-1 classifier's."""
    train_features, train_labels = features["train_features"], features["train_labels"]
    num_classes = weight.shape[0]
    return {
        "train_loss": final_loss,
        "chance_loss": math.log(num_classes),
        "balanced_train_top1": balanced_accuracy(weight, bias, train_features, train_labels),
        "stage1_balanced_train_top1": balanced_accuracy(stage1_weight, stage1_bias, train_features, train_labels),
    }


def convergence_notes(metrics: dict[str, float], settings: RetrainSettings) -> list[str]:
    """One line per sign that the classifier did not converge; the runner prints them and stores them."""
    notes = []
    loss, chance = metrics["train_loss"], metrics["chance_loss"]
    if loss > UNCONVERGED_LOSS * chance:
        notes.append(
            f"warning: the classifier did not converge: final training loss {loss:.3f} is near ln C = {chance:.3f} "
            f"(an untrained classifier); raise retrain.epochs (now {settings.epochs}) or retrain.lr (now {settings.lr:g}), "
            "or start from stage 1 (retrain.init=stage1)"
        )
    ours, stage1 = metrics["balanced_train_top1"], metrics["stage1_balanced_train_top1"]
    if ours < stage1 - BALANCED_MARGIN:
        notes.append(
            f"warning: the classifier did not converge: its class-balanced training accuracy {100 * ours:.1f}% is below "
            f"the stage-1 classifier's {100 * stage1:.1f}% it replaces; raise retrain.epochs or retrain.lr, "
            "or start from stage 1 (retrain.init=stage1)"
        )
    return notes


def train(
    settings: RetrainSettings,
    model: nn.Module,
    augmenter: Any,
    inputs: Inputs,
    *,
    generator: torch.Generator,
    progress: Progress = silent,
    checkpoint: Checkpoint | None = None,
) -> tuple[list[float], list[int]]:
    """Adam + cross-entropy on augmented mini-batches for `epochs` × ceil(N / batch) steps.

    Returns the per-epoch mean loss and the per-epoch number of draws the augmenter changed; an
    augmenter that changed none in an epoch stops the run, since its result would be plain cRT.
    """
    num_train = inputs.labels.numel()
    steps_per_epoch = math.ceil(num_train / settings.batch_size)
    optimizer = torch.optim.Adam(parameter_groups(model, settings), lr=settings.lr, weight_decay=settings.wd)
    epsilon = smoothing_of(settings, inputs)  # (C,) label-aware smoothing; zeros = plain cross-entropy
    # paper: "cosine learning rate that decays from 0.001 to 0" (ImageNet-LT/Places); CIFAR is silent (retrain.schedule)
    scheduler = make_scheduler(
        optimizer, steps_per_epoch, epochs=settings.epochs, warmup_epochs=0, schedule=settings.schedule
    )
    augmenter_state = getattr(augmenter, "state_dict", None)  # only ISDA keeps running statistics
    curve: list[float] = []
    changed: list[int] = []
    start_epoch = 0
    state = checkpoint.load(of=settings.epochs) if checkpoint is not None else None
    if state is not None:
        model.load_state_dict(state["classifier"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if augmenter_state is not None:
            augmenter.load_state_dict(state["augmenter"])
        generator.set_state(state["generator"])
        curve = [float(x) for x in state["curve"]]
        changed = [int(x) for x in state["changed"]]
        start_epoch = int(state["epoch"]) + 1

    model.train()
    for epoch in range(start_epoch, settings.epochs):
        order = epoch_order(inputs.labels, settings.sampling, generator)  # (N,)
        view = draw_views(inputs, generator)  # (N,) 0 = original, k = view k-1; None without views
        loss_sum = torch.zeros((), dtype=torch.float64, device=inputs.labels.device)
        changed_sum = torch.zeros((), dtype=torch.long, device=inputs.labels.device)
        for step in range(steps_per_epoch):
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
        curve.append(float(loss_sum) / num_train)
        changed.append(int(changed_sum))
        if changed[-1] == 0 and settings.augment.name != "none":
            raise LtstgError(
                f"augmenter {settings.augment.name!r} changed no training sample in epoch {epoch + 1}, so the result "
                f"would be plain {CLASSIFIER_LABELS[settings.classifier]}; check its settings ({settings.augment})."
            )
        if checkpoint is not None and epoch + 1 < settings.epochs:
            checkpoint.save(
                {
                    "classifier": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "augmenter": augmenter_state() if augmenter_state is not None else {},
                    "generator": generator.get_state(),
                    "epoch": epoch,
                    "curve": torch.tensor(curve, dtype=torch.float64),
                    "changed": torch.tensor(changed, dtype=torch.long),
                }
            )
        total_steps = settings.epochs * steps_per_epoch
        progress("retrain", (epoch + 1) * steps_per_epoch, total_steps, epoch=epoch + 1, loss=curve[-1])
    return curve, changed


def parameter_groups(model: nn.Module, settings: RetrainSettings) -> Any:
    """MiSLAS trains the linear layer at lr × lr_factor and the per-class scales at lr; others use one lr."""
    if isinstance(model, ScaledLinearClassifier):
        return [{"params": model.linear.parameters(), "lr": settings.lr * settings.lr_factor}, {"params": [model.scales]}]
    return model.parameters()


def smoothing_of(settings: RetrainSettings, inputs: Inputs) -> torch.Tensor:
    """Per-class ε: MiSLAS's label-aware smoothing for mislas, none (plain cross-entropy) otherwise."""
    if settings.classifier != "mislas":
        return torch.zeros(inputs.num_classes, device=inputs.labels.device)
    counts = inputs.class_counts.tolist()
    return label_aware_smoothing(counts, settings.smooth_head, settings.smooth_tail, settings.smooth_shape).to(
        inputs.labels.device
    )


def epoch_order(labels: torch.Tensor, sampling: str, generator: torch.Generator) -> torch.Tensor:
    """N draws per epoch: class-balanced (with replacement, cRT) or a plain shuffle (instance).

    paper is silent on what an epoch of balanced sampling is; we take N draws (retrain.epochs counts them).
    """
    num_train = labels.numel()
    if sampling == "balanced":
        return class_balanced_indices(labels, num_train, generator=generator)
    return torch.randperm(num_train, generator=generator, device=labels.device)


def draw_views(inputs: Inputs, generator: torch.Generator) -> torch.Tensor | None:
    """Which copy each of the epoch's N draws uses: the original or one of the K views, uniformly.

    paper is silent on extra views (pretrain.feature_views); we treat the original as one more view.
    """
    if inputs.views is None:
        return None
    num_copies = inputs.views.shape[0] + 1
    return torch.randint(num_copies, (inputs.labels.numel(),), generator=generator, device=inputs.labels.device)


def pick_features(inputs: Inputs, batch: torch.Tensor, view: torch.Tensor | None) -> torch.Tensor:
    """The batch's rows, each from the copy its draw chose; without views, the original rows."""
    rows = inputs.features[batch]  # (B, D)
    if view is None:
        return rows
    from_view = torch.nonzero(view > 0).flatten()  # (V,)
    rows[from_view] = inputs.views[view[from_view] - 1, batch[from_view]]
    return rows


def borrowed(augmenter: StgAugmenter, inputs: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """The head class each training sample borrows and its cosine; -1 and NaN for head samples (they borrow nothing)."""
    heads, cosines = [], []
    with torch.no_grad():
        for chunk in torch.split(inputs.features, BORROW_CHUNK):
            head, cosine = augmenter.borrowed(chunk)
            heads.append(head)
            cosines.append(cosine)
    tail = augmenter.is_tail.to(inputs.labels.device)[inputs.labels]  # (N,)
    head = torch.where(tail, torch.cat(heads), torch.full_like(tail, -1, dtype=torch.long))  # (N,)
    cosine = torch.where(tail, torch.cat(cosines), torch.full_like(tail, float("nan"), dtype=torch.float32))  # (N,)
    return head.cpu(), cosine.cpu()


# -- classifiers -------------------------------------------------------------------------------------


def _new_linear(inputs: Inputs, seed: int) -> LinearClassifier:
    """A freshly initialised linear layer from a private seed, so outside RNG state is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # torch.manual_seed would also reseed CUDA, outside the fork
        return LinearClassifier(inputs.dim, inputs.num_classes)


def _linear(inputs: Inputs, seed: int, init: str) -> nn.Module:
    """cRT: re-initialised (Kang et al.; DESIGN default) or started from the stage-1 classifier (retrain.init)."""
    model = _new_linear(inputs, seed)
    if init == "stage1":
        model.load_state_dict({"weight": inputs.weight.cpu(), "bias": inputs.bias.cpu()})
    return model


def _lws_on_stage1(inputs: Inputs, seed: int, init: str) -> nn.Module:
    """LWS starts from the stage-1 weights with unit scales: nothing random to seed."""
    return LwsClassifier(inputs.weight, inputs.bias)


def _scaled_linear(inputs: Inputs, seed: int, init: str) -> nn.Module:
    """MiSLAS: from the stage-1 classifier, or from a fresh layer when retrain.init=fresh, with unit scales."""
    start = _new_linear(inputs, seed) if init == "fresh" else None
    weight = start.weight.detach() if start is not None else inputs.weight
    bias = start.bias.detach() if start is not None else inputs.bias
    return ScaledLinearClassifier(weight.to(inputs.weight.device), bias.to(inputs.weight.device))


def _fold_lws(model: LwsClassifier) -> tuple[torch.Tensor, torch.Tensor]:
    """scale_c · (w_c · a + b_c) is the linear classifier (scale_c · w_c, scale_c · b_c)."""
    return model.weight * model.scales.unsqueeze(1), model.bias * model.scales


# name -> (build a trainable module, fold it into an effective (weight, bias))
TRAINABLE: dict[str, tuple[Callable[[Inputs, int, str], nn.Module], Callable[[Any], tuple[torch.Tensor, torch.Tensor]]]] = {
    "crt": (_linear, lambda model: (model.weight, model.bias)),
    "lws": (_lws_on_stage1, _fold_lws),
    "mislas": (_scaled_linear, lambda model: model.folded()),
}

# name -> (stage-1 weight, bias, settings) -> effective (weight, bias), no training
POST_HOC: dict[str, Callable[[torch.Tensor, torch.Tensor, RetrainSettings], tuple[torch.Tensor, torch.Tensor]]] = {
    "tau-norm": lambda weight, bias, settings: tau_normalize(weight, bias, settings.tau),
    "none": lambda weight, bias, settings: (weight.clone(), bias.clone()),
}


# -- augmenters --------------------------------------------------------------------------------------


def stg_arguments(
    stg: Artifact,
    augment: Any,
    class_counts: torch.Tensor,
    device: torch.device | str,
    *,
    features: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> dict[str, Any]:
    """StgAugmenter's arguments: the trained STG (eval mode), its head classes and prototypes, and the
    classes' counts (and, for the relative shift, training means); shared by retrain and the library API."""
    problems = stg_problems(stg, class_counts.numel(), stg.info.get("num_features", -1))
    if problems:
        raise LtstgError("\n".join(problems))
    means = None
    if augment.mu == "relative":  # only the relative shift needs every class's mean (a loop over C)
        if features is None or labels is None:
            raise LtstgError("STG mu 'relative' needs the training features (a features artifact) for the class means.")
        means = class_means(features.to(device, torch.float32), labels.to(device), torch.arange(class_counts.numel()))
    return {
        "predict": load_stg(stg, device),
        "prototypes": stg["head_prototypes"].to(device, torch.float32),
        "head_classes": stg["head_classes"].to(device, torch.long),
        "class_counts": class_counts.to(device, torch.long),
        "lam": augment.lam,
        "t": augment.t,
        "mu": augment.mu,
        "class_means": means,
    }


# augmenter name -> its constructor arguments; the classes come from the AUGMENTERS registry
AUGMENTER_ARGUMENTS: dict[str, Callable[[Any, Inputs, Artifact | None, torch.device], dict[str, Any]]] = {
    "none": lambda augment, inputs, stg, device: {},
    "stg": lambda augment, inputs, stg, device: stg_arguments(
        stg, augment, inputs.class_counts, device, features=inputs.features, labels=inputs.labels
    ),
    "isda": lambda augment, inputs, stg, device: {
        "num_classes": inputs.num_classes, "dim": inputs.dim, "lam": augment.lam, "device": device,
    },
    "noise": lambda augment, inputs, stg, device: {"std": augment.std},
    "dropout": lambda augment, inputs, stg, device: {"p": augment.p},
}


def build_augmenter(settings: RetrainSettings, inputs: Inputs, stg: Artifact | None, device: torch.device) -> Any:
    """The augmenter the recipe names, built through the registry with the parts it needs."""
    name = settings.augment.name
    return get_augmenter(name)(**AUGMENTER_ARGUMENTS[name](settings.augment, inputs, stg, device))


# -- input checks ------------------------------------------------------------------------------------


def check_inputs(settings: RetrainSettings, features: Artifact, stg: Artifact | None) -> None:
    """Every problem with the settings and artifacts, as one error, before any heavy step."""
    require_kind(features, "features")
    label = f"features artifact {features.id[:SHORT]}"
    names = ("train_features", "train_labels", "test_features", "test_labels", "class_counts",
             "classifier.weight", "classifier.bias")
    missing = [name for name in names if name not in features.tensors]
    if missing:
        raise LtstgError(f"{label} lacks {', '.join(missing)}; re-extract the features with this ltstg version.")
    problems = []
    if settings.classifier in POST_HOC and settings.augment.name != "none":
        problems.append(
            f"classifier {settings.classifier!r} is not trained, so augment {settings.augment.name!r} would be "
            "ignored; use --classifier crt, lws or mislas, or augment none."
        )
    strength = NO_OP.get(settings.augment.name)
    if strength is not None and getattr(settings.augment, strength) == 0:
        problems.append(
            f"augment {settings.augment.name!r} with {strength} 0 changes no sample, so the result would be plain "
            f"{CLASSIFIER_LABELS[settings.classifier]}; use augment none for that, or a {strength} above 0."
        )
    if settings.init == "fresh" and settings.classifier not in ("crt", "mislas"):
        problems.append(
            f"classifier {settings.classifier!r} builds on the stage-1 classifier, so init 'fresh' does not apply; "
            "use --classifier crt or mislas, or init auto."
        )
    train = features["train_features"]
    train_labels = features["train_labels"]
    counts = features["class_counts"]
    weight, bias = features["classifier.weight"], features["classifier.bias"]
    num_classes = counts.numel()
    dim = train.shape[1] if train.dim() == 2 else -1
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
    if settings.augment.name == "stg":
        problems.extend(stg_problems(stg, num_classes, dim))
    if problems:
        raise LtstgError("\n".join(problems))
