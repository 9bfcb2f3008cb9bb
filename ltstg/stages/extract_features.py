"""Frozen eval-mode features of every image, so stages 2-4 never touch images again; optionally after
MiSLAS's BatchNorm shift, re-estimated on class-aware batches (`shift_batchnorm`)."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ltstg.data.balanced import ClassAwareSampler
from ltstg.data.inputs import ImageInputs
from ltstg.errors import LtstgError
from ltstg.models.backbones import extract_pooled
from ltstg.progress import Progress, silent
from ltstg.stages import Output
from ltstg.stages.pretrain import autocast, image_inputs, load_backbone
from ltstg.store import Artifact

BATCH = 512
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}  # pretrain.feature_storage
SHIFT_SAMPLES_PER_CLASS = 4  # MiSLAS's stage-2 class-aware sampler (Kang et al.'s num_samples_cls)


@torch.no_grad()
def extract_features(
    backbone: Artifact,
    dataset: Artifact,
    *,
    feature_views: int,
    precision: str,
    feature_storage: str = "float32",
    device: torch.device,
    generator: torch.Generator,
    workers: int | None = None,
    progress: Progress = silent,
    bn_shift_batch: int | None = None,
) -> Output:
    """Pooled features (and stage-1 logits' weights) of train and test images, plus K augmented views, kept in
    `feature_storage` (float16 halves the artifact; readers convert to float32, views per batch); with
    `bn_shift_batch`, from a backbone whose BatchNorm statistics were first re-estimated on class-aware batches."""
    model = load_backbone(backbone, device)
    inputs = image_inputs(dataset, device, workers)
    shift = None
    if bn_shift_batch is not None:  # its own generator, so the views get the same crops as the plain features'
        own = torch.Generator(device=generator.device).manual_seed(generator.initial_seed() + 1)
        shift = shift_batchnorm(model, inputs, dataset["train_labels"], batch_size=bn_shift_batch,
                                generator=own, device=device, precision=precision, progress=progress)
    tensors: dict[str, torch.Tensor] = {}
    splits = dataset.info["splits"]
    total = sum(len(dataset[f"{s}_labels"]) for s in splits) + feature_views * inputs.num_train
    dim = model.get_classifier().weight.shape[1]
    storage = STORAGE_DTYPES[feature_storage]
    done = [0]

    def fill(out: torch.Tensor, batches: Any) -> None:
        def seen(count: int) -> None:
            done[0] += count
            progress("features", done[0], total)

        fill_rows(out, batches, model, device=device, precision=precision, seen=seen)

    for split in splits:
        tensors[f"{split}_features"] = torch.empty(len(dataset[f"{split}_labels"]), dim, dtype=storage)  # (N, D)
        fill(tensors[f"{split}_features"], (images for images, _ in inputs.eval_batches(split, BATCH)))
        tensors[f"{split}_labels"] = dataset[f"{split}_labels"]
    if feature_views:  # written view by view into one tensor: never a list of them beside their stack
        tensors["train_views"] = torch.empty(feature_views, inputs.num_train, dim, dtype=storage)  # (K, N, D)
        for view in tensors["train_views"]:
            fill(view, inputs.view_batches(BATCH, generator))
    classifier = model.get_classifier()
    tensors["classifier.weight"] = classifier.weight.detach().float().cpu()  # (C, D)
    tensors["classifier.bias"] = classifier.bias.detach().float().cpu()  # (C,)
    tensors["class_counts"] = dataset["class_counts"]
    logits = tensors["test_features"].float() @ tensors["classifier.weight"].T + tensors["classifier.bias"]
    top1 = float((logits.argmax(dim=1) == tensors["test_labels"]).float().mean())
    info = {
        "class_names": dataset.info["class_names"],
        "groups": dataset.info["groups"],
        "num_classes": len(dataset.info["class_names"]),
        "feature_dim": int(tensors["train_features"].shape[1]),
        "feature_views": feature_views,
        "precision": precision,
        "storage": feature_storage,
        "many_above": dataset.settings.get("many_above", 100),
        "few_below": dataset.settings.get("few_below", 20),
    }
    if shift is not None:
        info["bn_shift"] = shift
        tensors.update(shifted_statistics(model))  # what `ltstg export` puts back into the backbone
    metrics = {
        "train": float(len(tensors["train_labels"])),
        "test": float(len(tensors["test_labels"])),
        "dim": float(info["feature_dim"]),
        "stage1_top1": top1,
    }
    return Output("features", tensors, metrics, info, key_metric="stage1_top1")


@torch.no_grad()
def fill_rows(out: torch.Tensor, batches: Any, model: nn.Module, *, device: torch.device, precision: str,
              seen: Callable[[int], None]) -> None:
    """Pooled features of `batches` into `out`, row by row: on the CPU straight into it, elsewhere into one
    buffer on the device (no host sync per batch) copied over once. `seen` hears each batch's size."""
    buffer = out if device.type == "cpu" else torch.empty(out.shape, dtype=out.dtype, device=device)
    start = 0
    for images in batches:
        with autocast(device, precision):
            buffer[start : start + len(images)] = extract_pooled(model, images)
        start += len(images)
        seen(len(images))
    if start != len(out):
        raise RuntimeError(f"the image batches held {start} images, not {len(out)}")
    if buffer is not out:
        out.copy_(buffer)


SHIFTED = "bn_shift."  # prefix of the shifted BatchNorm statistics kept in a features artifact


def shifted_statistics(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every BatchNorm layer's running mean and variance after the shift, keyed `bn_shift.<layer>.<buffer>`: the
    features were extracted with them, so a model taken out of the store needs them too."""
    return {f"{SHIFTED}{name}.{buffer}": getattr(module, buffer).detach().float().cpu().clone()
            for name, module in model.named_modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)
            for buffer in ("running_mean", "running_var")}


@torch.no_grad()
def shift_batchnorm(
    model: nn.Module,
    inputs: ImageInputs,
    labels: torch.Tensor,
    *,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
    precision: str,
    progress: Progress = silent,
) -> dict[str, Any]:
    """MiSLAS's `shift_bn` for a frozen backbone: the BatchNorm running statistics re-estimated on one epoch
    (N images) of class-aware, augmented training batches; no weight changes. Returns what it did.

    MiSLAS (train_stage2.py) keeps the backbone in train mode through its 10 stage-2 epochs, so the running
    statistics drift towards class-balanced batches by exponential averaging (momentum 0.1) while the
    classifier trains on batch-normalised features. Here they are a cumulative average over one epoch, then
    fixed, and every feature is extracted in eval mode with them.
    """
    norms = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise LtstgError("retrain.bn_shift: this backbone has no BatchNorm layer whose statistics could shift.")
    order = ClassAwareSampler(labels.cpu(), SHIFT_SAMPLES_PER_CLASS, generator=generator).draws(inputs.num_train)
    momenta = [module.momentum for module in norms]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # a cumulative average over every batch of the pass
    model.train()
    batches = images_seen = 0
    for images in inputs.sample_batches(order, batch_size, generator):
        if len(images) < 2:  # one image has no batch statistics
            continue
        with autocast(device, precision):
            extract_pooled(model, images)
        batches, images_seen = batches + 1, images_seen + len(images)
        progress("bn-shift", images_seen, inputs.num_train)
    model.eval()
    for module, momentum in zip(norms, momenta):
        module.momentum = momentum
    if batches == 0:  # the statistics were reset and nothing replaced them
        raise LtstgError(
            f"retrain.bn_shift: no batch of at least 2 of the {inputs.num_train} training images at batch size "
            f"{batch_size}; lower retrain.batch_size."
        )
    return {"batch_size": batch_size, "batches": batches, "images": images_seen, "layers": len(norms),
            "sampling": f"class_aware, {SHIFT_SAMPLES_PER_CLASS} per class", "average": "cumulative"}
