"""Stage 1: train the backbone with mixup on the long-tailed training set.

Small images live as one uint8 tensor on the compute device and are cropped, flipped and
normalised there in batches; file-based sets (ImageNet-LT, Places-LT) go through a DataLoader.
Each epoch ends with a checkpoint, so a killed run continues where it stopped.
"""
from __future__ import annotations

import json
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from ltstg.data.inputs import FileInputs, ImageInputs, TensorInputs
from ltstg.errors import LtstgError
from ltstg.models import build_model, feature_dim, load_weights
from ltstg.recipe import PretrainSettings
from ltstg.progress import Progress, silent
from ltstg.stages import Checkpoint, Output
from ltstg.store import Artifact
from ltstg.training import make_scheduler, mixup, soft_cross_entropy


def image_inputs(dataset: Artifact, device: torch.device, workers: int = 4, channels_last: bool = False) -> ImageInputs:
    """Device-resident tensors for small images, a DataLoader over files for split-list sources.

    `channels_last` makes tensor batches come out in that layout (free: they are built NHWC), so a
    channels_last model needs no per-batch copy.
    """
    from ltstg.stages.make_dataset import decode_strings

    if dataset.info.get("storage") == "paths":
        splits = {
            name: (decode_strings(dataset[f"{name}_paths"]), dataset[f"{name}_labels"])
            for name in dataset.info["splits"]
        }
        return FileInputs(dataset.info["root"] or "", splits, dataset.settings.get("size", 224), device, workers)
    splits = {name: (dataset[f"{name}_images"], dataset[f"{name}_labels"]) for name in dataset.info["splits"]}
    return TensorInputs(splits, device, channels_last)


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto = bf16 on a GPU, fp32 on a CPU (bf16 on the CPU is the user's explicit choice)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast(device: torch.device, precision: str) -> torch.autocast:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def world() -> tuple[int, int]:
    """(rank, world size) under torchrun, (0, 1) otherwise."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def pretrain(
    settings: PretrainSettings,
    dataset: Artifact,
    *,
    seed: int,
    device: torch.device,
    generator: torch.Generator,
    progress: Progress = silent,
    checkpoint: Checkpoint | None = None,
) -> Output:
    """Learn f(x; θ) and a stage-1 classifier with mixup, SGD, warm-up and a step or cosine schedule."""
    # channels_last pays on the CPU too (oneDNN's convolutions are NHWC): about 1.2x for resnet32_cifar in fp32
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    inputs = image_inputs(dataset, device, settings.workers, channels_last=memory_format == torch.channels_last)
    num_classes = len(dataset.info["class_names"])
    precision = resolve_precision(settings.precision, device)
    rank, world_size = world()
    if settings.batch_size % world_size:
        raise LtstgError(f"batch size {settings.batch_size} does not split evenly over {world_size} processes.")

    notes = []
    model = build_model(settings.model, num_classes, seed=seed)
    if settings.init_weights is not None:
        dropped = load_weights(model, settings.init_weights)
        if dropped:
            notes.append(f"init_weights: dropped {', '.join(dropped)} (another class count); "
                         f"the {num_classes}-class classifier starts from random weights")
    model = model.to(device).to(memory_format=memory_format)
    steps_per_epoch = inputs.train_steps(settings.batch_size, world_size)
    if steps_per_epoch == 0:
        raise LtstgError(
            f"pretrain.batch_size {settings.batch_size} gives no training step over {inputs.num_train} images on "
            f"{world_size} process(es) (BatchNorm needs at least 2 images per process); lower pretrain.batch_size."
        )
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.wd)
    scheduler = make_scheduler(
        optimizer,
        steps_per_epoch,
        epochs=settings.epochs,
        warmup_epochs=settings.warmup_epochs,
        schedule=settings.schedule,
        milestones=settings.milestones,
        gamma=settings.gamma,
    )
    mix_rng = np.random.default_rng(seed)
    history: dict[str, list[float]] = {"loss": [], "lr": [], "eval_epoch": [], "eval_top1": [], "img_s": []}
    start_epoch = 0
    state = checkpoint.load(of=settings.epochs) if checkpoint is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        mix_rng.bit_generator.state = json.loads(state["mix_rng"])
        history = json.loads(state["history"])
        start_epoch = int(state["epoch"]) + 1

    trained = model
    if world_size > 1:
        trained = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if settings.compile:
        trained = torch.compile(trained)

    total_steps = settings.epochs * steps_per_epoch
    for epoch in range(start_epoch, settings.epochs):
        model.train()
        started = time.perf_counter()
        seen, loss_sum = 0, torch.zeros((), device=device)
        for step, (images, labels) in enumerate(inputs.train_batches(settings.batch_size, generator, rank, world_size)):
            with autocast(device, precision):
                mixed, targets = mixup(
                    images.contiguous(memory_format=memory_format), labels, num_classes,
                    settings.mixup_alpha, mix_rng, generator, settings.label_smoothing,
                )
                loss = soft_cross_entropy(trained(mixed), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * len(labels)
            seen += len(labels)
            if step % 10 == 0 or step == steps_per_epoch - 1:
                elapsed = time.perf_counter() - started
                progress(
                    "pretrain", epoch * steps_per_epoch + step + 1, total_steps,
                    epoch=epoch + 1, loss=float(loss.detach()), lr=optimizer.param_groups[0]["lr"],
                    img_s=seen * world_size / max(elapsed, 1e-9),
                )
        elapsed = time.perf_counter() - started
        history["loss"].append(float(loss_sum) / max(seen, 1))
        history["lr"].append(optimizer.param_groups[0]["lr"])
        history["img_s"].append(seen * world_size / max(elapsed, 1e-9))
        if (epoch + 1) % settings.eval_every == 0 or epoch + 1 == settings.epochs:
            if rank == 0:
                history["eval_epoch"].append(epoch + 1)
                history["eval_top1"].append(evaluate_images(model, inputs, device, precision, progress))
        if checkpoint is not None and epoch + 1 < settings.epochs:
            checkpoint.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "generator": generator.get_state(),
                    "mix_rng": json.dumps(mix_rng.bit_generator.state),
                    "history": json.dumps(history),
                    "epoch": epoch,
                }
            )

    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors["history.loss"] = torch.tensor(history["loss"], dtype=torch.float32)
    tensors["history.lr"] = torch.tensor(history["lr"], dtype=torch.float32)
    timed = history["img_s"][1:] or history["img_s"]  # the first epoch pays for warm-up of kernels and caches
    metrics = {
        "test_top1": history["eval_top1"][-1] if history["eval_top1"] else float("nan"),
        "train_loss": history["loss"][-1],
        "img_s": float(np.median(timed)),
        "epochs": float(settings.epochs),
    }
    info = {
        "model": settings.model,
        "num_classes": num_classes,
        "feature_dim": feature_dim(model),
        "mean": list(inputs.mean),
        "std": list(inputs.std),
        "precision": precision,
        "world_size": world_size,
        "history": {"eval_epoch": history["eval_epoch"], "eval_top1": history["eval_top1"]},
    }
    return Output("backbone", tensors, metrics, info, key_metric="test_top1", notes=notes)


@torch.no_grad()
def evaluate_images(
    model: nn.Module, inputs: ImageInputs, device: torch.device, precision: str, progress: Progress = silent
) -> float:
    """Top-1 of the stage-1 classifier on the test split."""
    was_training = model.training
    model.eval()
    correct, total = 0, 0
    for images, labels in inputs.eval_batches("test", 512):
        with autocast(device, precision):
            logits = model(images)
        correct += int((logits.argmax(dim=1) == labels).sum())
        total += len(labels)
    model.train(was_training)
    return correct / max(total, 1)


def load_backbone(backbone: Artifact, device: torch.device) -> nn.Module:
    """Rebuild the trained model from a backbone artifact (eval mode, on `device`)."""
    info = backbone.info
    model = build_model(info["model"], info["num_classes"], seed=0)
    state = {k[len("model."):]: v for k, v in backbone.tensors.items() if k.startswith("model.")}
    model.load_state_dict(state)
    return model.to(device).eval()
