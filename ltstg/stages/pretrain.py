"""Stage 1: train the backbone with mixup on the long-tailed training set.

Small images live as one uint8 tensor on the compute device and are cropped, flipped and
normalised there in batches; file-based sets (ImageNet-LT, Places-LT) go through a DataLoader.
Each epoch ends with a checkpoint, so a killed run continues where it stopped.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.optim.lr_scheduler import LambdaLR

from ltstg.data.inputs import FileInputs, ImageInputs, TensorInputs
from ltstg.errors import LtstgError
from ltstg.ranks import world
from ltstg.models.backbones import build_model, feature_dim, load_weights
from ltstg.recipe import PretrainSettings
from ltstg.progress import Progress, silent
from ltstg.stages import Checkpoint, Output, Stateful, keep, resume
from ltstg.stages.finite import Diverged, diverged
from ltstg.store import Artifact
from ltstg.training import make_scheduler, mixup, soft_cross_entropy


def image_inputs(dataset: Artifact, device: torch.device, workers: int | None = None, channels_last: bool = False) -> ImageInputs:
    """Device-resident tensors for small images, a DataLoader over files for split-list sources.

    `channels_last` makes batches come out in that layout (free for tensors: they are built NHWC), so a
    channels_last model needs no per-batch copy; `workers` None: from the core count.
    """
    from ltstg.stages.make_dataset import decode_strings

    if dataset.info.get("storage") == "paths":
        splits = {
            name: (decode_strings(dataset[f"{name}_paths"]), dataset[f"{name}_labels"])
            for name in dataset.info["splits"]
        }
        return FileInputs(dataset.info["root"] or "", splits, dataset.settings.get("size", 224), device, workers,
                          channels_last)
    splits = {name: (dataset[f"{name}_images"], dataset[f"{name}_labels"]) for name in dataset.info["splits"]}
    return TensorInputs(splits, device, channels_last)


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto = bf16 on a GPU, fp32 on a CPU (bf16 on the CPU is the user's explicit choice)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast(device: torch.device, precision: str) -> torch.autocast:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


@dataclass(frozen=True)
class _Run:
    """The fixed facts of one pretraining run, read by every epoch and changed by none."""

    settings: PretrainSettings
    inputs: ImageInputs
    device: torch.device
    precision: str
    memory_format: torch.memory_format
    num_classes: int
    rank: int
    world_size: int
    steps_per_epoch: int
    progress: Progress


@dataclass(frozen=True)
class _Training:
    """What an epoch updates; `trained` is `model` wrapped for DDP and torch.compile, `model` itself is bare."""

    model: nn.Module
    trained: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    mix_rng: np.random.Generator
    generator: torch.Generator


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
    run, model, notes = _setup(settings, dataset, seed=seed, device=device, progress=progress)
    optimizer, scheduler = _optimizer(settings, model, run.steps_per_epoch)
    mix_rng = np.random.default_rng(seed)
    # state dicts come from the bare model, never from its DDP / torch.compile wrapper
    stateful: Stateful = {"model": model, "optimizer": optimizer, "scheduler": scheduler}
    start_epoch, saved = resume(checkpoint, stateful, generator, epochs=settings.epochs)
    history = json.loads(saved["history"]) if saved else _empty_history()
    if saved:
        mix_rng.bit_generator.state = json.loads(saved["mix_rng"])
    training = _Training(model, _wrapped(model, run), optimizer, scheduler, mix_rng, generator)

    for epoch in range(start_epoch, settings.epochs):
        loss, img_s = train_one_epoch(run, training, epoch)
        stop = diverged("pretrain", epoch, loss, "lower pretrain.lr, or use --precision fp32.")
        if stop and run.world_size == 1:  # under DDP each rank sees its own loss: the check before the store stops all
            raise Diverged(stop)
        history["loss"].append(loss)
        history["lr"].append(optimizer.param_groups[0]["lr"])
        history["img_s"].append(img_s)
        if (epoch + 1) % settings.eval_every == 0 or epoch + 1 == settings.epochs:
            if run.rank == 0:
                history["eval_epoch"].append(epoch + 1)
                history["eval_top1"].append(evaluate_images(model, run.inputs, device, run.precision, progress)[0])
                if "val" in run.inputs.splits:  # what stage-1 settings are compared on; the test split only reports
                    history.setdefault("val_mean_class", []).append(
                        evaluate_images(model, run.inputs, device, run.precision, progress, split="val")[1]
                    )
        if epoch + 1 < settings.epochs:
            keep(checkpoint, stateful, generator, epoch=epoch,
                 mix_rng=json.dumps(mix_rng.bit_generator.state), history=json.dumps(history))
    return _backbone_output(run, model, history, notes)


def _setup(
    settings: PretrainSettings, dataset: Artifact, *, seed: int, device: torch.device, progress: Progress
) -> tuple[_Run, nn.Module, list[str]]:
    """Inputs, processes and the initial model, checked before the first step so bad input fails early."""
    # channels_last pays on the CPU too (oneDNN's convolutions are NHWC): about 1.2x for resnet32_cifar in fp32
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    inputs = image_inputs(dataset, device, settings.workers, channels_last=memory_format == torch.channels_last)
    num_classes = len(dataset.info["class_names"])
    precision = resolve_precision(settings.precision, device)
    rank, world_size = world()
    if settings.batch_size % world_size:
        raise LtstgError(f"batch size {settings.batch_size} does not split evenly over {world_size} processes.")
    model, notes = _initial_model(settings, num_classes, seed=seed, device=device, memory_format=memory_format)
    steps_per_epoch = inputs.train_steps(settings.batch_size, world_size)
    if steps_per_epoch == 0:
        raise LtstgError(
            f"pretrain.batch_size {settings.batch_size} gives no training step over {inputs.num_train} images on "
            f"{world_size} process(es) (BatchNorm needs at least 2 images per process); lower pretrain.batch_size."
        )
    run = _Run(settings, inputs, device, precision, memory_format, num_classes, rank, world_size, steps_per_epoch,
               progress)
    return run, model, notes


def _initial_model(
    settings: PretrainSettings, num_classes: int, *, seed: int, device: torch.device, memory_format: torch.memory_format
) -> tuple[nn.Module, list[str]]:
    """The seeded model, from `init_weights` where given, on `device`; notes say what the weights file lacked."""
    notes = []
    model = build_model(settings.model, num_classes, seed=seed)
    if settings.init_weights is not None:
        dropped = load_weights(model, settings.init_weights)
        if dropped:
            notes.append(f"init_weights: dropped {', '.join(dropped)} (another class count); "
                         f"the {num_classes}-class classifier starts from random weights")
    return model.to(device).to(memory_format=memory_format), notes


def _optimizer(settings: PretrainSettings, model: nn.Module, steps_per_epoch: int) -> tuple[torch.optim.SGD, LambdaLR]:
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
    return optimizer, scheduler


def _empty_history() -> dict[str, list[float]]:
    return {"loss": [], "lr": [], "eval_epoch": [], "eval_top1": [], "img_s": []}


def _wrapped(model: nn.Module, run: _Run) -> nn.Module:
    """The module the training steps call: DDP over several processes, then torch.compile if asked."""
    trained = model
    if run.world_size > 1:
        device = run.device
        trained = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if run.settings.compile:
        # static shapes: the last, partial batch gets a graph of its own instead of turning every later full
        # batch onto a dynamic-shape graph (and one more recompile)
        trained = torch.compile(trained, dynamic=False)
    return trained


def train_one_epoch(run: _Run, training: _Training, epoch: int) -> tuple[float, float]:
    """One pass of mixup SGD over this process's share of the training set: (mean loss, images per second)."""
    settings, device, model = run.settings, run.device, training.model
    optimizer, scheduler = training.optimizer, training.scheduler
    model.train()
    shown = run.rank == 0 and run.progress is not silent  # reading the loss is a host sync: only for a reader
    started = time.perf_counter()
    seen, loss_sum = 0, torch.zeros((), device=device)
    batches = run.inputs.train_batches(settings.batch_size, training.generator, run.rank, run.world_size)
    for step, (images, labels) in enumerate(batches):
        with autocast(device, run.precision):
            mixed, targets = mixup(
                images.contiguous(memory_format=run.memory_format), labels, run.num_classes,
                settings.mixup_alpha, training.mix_rng, training.generator, settings.label_smoothing,
            )
            loss = soft_cross_entropy(training.trained(mixed), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.detach() * len(labels)
        seen += len(labels)
        if shown and (step % 10 == 0 or step == run.steps_per_epoch - 1):
            elapsed = time.perf_counter() - started
            run.progress(
                "pretrain", epoch * run.steps_per_epoch + step + 1, settings.epochs * run.steps_per_epoch,
                epoch=epoch + 1, loss=float(loss.detach()), lr=optimizer.param_groups[0]["lr"],
                img_s=seen * run.world_size / max(elapsed, 1e-9),
            )
    if device.type == "cuda":  # queued kernels finish inside the epoch's time, not the next one's
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - started
    total = seen * run.world_size
    if run.world_size > 1:  # the loss of every rank's shard, not of rank 0's alone
        totals = torch.stack([loss_sum.float(), torch.tensor(float(seen), device=device)])
        dist.all_reduce(totals)
        loss_sum, total = totals[0], int(totals[1])
    return float(loss_sum) / max(total, 1), total / max(elapsed, 1e-9)


def _backbone_output(run: _Run, model: nn.Module, history: dict[str, list[float]], notes: list[str]) -> Output:
    settings = run.settings
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
    if history.get("val_mean_class"):
        metrics["val_mean_class"] = history["val_mean_class"][-1]
    info = {
        "model": settings.model,
        "num_classes": run.num_classes,
        "feature_dim": feature_dim(model),
        "mean": list(run.inputs.mean),
        "std": list(run.inputs.std),
        "precision": run.precision,
        "world_size": run.world_size,
        # img_s is timing: metadata, so the tensors of a rerun stay bit for bit the same
        "history": {key: history[key] for key in ("eval_epoch", "eval_top1", "val_mean_class", "img_s") if key in history},
    }
    return Output("backbone", tensors, metrics, info, key_metric="test_top1", notes=notes)


@torch.no_grad()
def evaluate_images(
    model: nn.Module,
    inputs: ImageInputs,
    device: torch.device,
    precision: str,
    progress: Progress = silent,
    split: str = "test",
) -> tuple[float, float]:
    """Top-1 and class-balanced accuracy (the mean over the classes the split holds) of the stage-1 classifier."""
    was_training = model.training
    model.eval()
    hits = counts = torch.zeros((), dtype=torch.float64)  # (C,) once the first batch has added to them
    for images, labels in inputs.eval_batches(split, 512):
        with autocast(device, precision):
            logits = model(images)
        right = (logits.argmax(dim=1) == labels).double().cpu()
        hits = hits + torch.bincount(labels.cpu(), weights=right, minlength=logits.shape[1])
        counts = counts + torch.bincount(labels.cpu(), minlength=logits.shape[1])
    model.train(was_training)
    present = counts > 0
    if not bool(present.any()):  # an empty split
        return 0.0, 0.0
    return float(hits.sum() / counts.sum()), float((hits[present] / counts[present]).mean())


def load_backbone(backbone: Artifact, device: torch.device) -> nn.Module:
    """Rebuild the trained model from a backbone artifact (eval mode, on `device`)."""
    info = backbone.info
    model = build_model(info["model"], info["num_classes"], seed=0)
    state = {k[len("model."):]: v for k, v in backbone.tensors.items() if k.startswith("model.")}
    model.load_state_dict(state)
    return model.to(device).eval()
