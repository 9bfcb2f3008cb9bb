"""Frozen eval-mode features of every image, so stages 2-4 never touch images again."""
from __future__ import annotations

import torch

from ltstg.models.backbones import extract_pooled
from ltstg.progress import Progress, silent
from ltstg.stages import Output
from ltstg.stages.pretrain import autocast, image_inputs, load_backbone
from ltstg.store import Artifact

BATCH = 512


@torch.no_grad()
def extract_features(
    backbone: Artifact,
    dataset: Artifact,
    *,
    feature_views: int,
    precision: str,
    device: torch.device,
    generator: torch.Generator,
    workers: int = 4,
    progress: Progress = silent,
) -> Output:
    """Pooled features (and stage-1 logits' weights) of train and test images, plus K augmented views."""
    model = load_backbone(backbone, device)
    inputs = image_inputs(dataset, device, workers)
    tensors: dict[str, torch.Tensor] = {}
    splits = dataset.info["splits"]
    total = sum(len(dataset[f"{s}_labels"]) for s in splits) + feature_views * inputs.num_train
    done = 0
    for split in splits:
        parts = []
        for images, _ in inputs.eval_batches(split, BATCH):
            with autocast(device, precision):
                parts.append(extract_pooled(model, images).float().cpu())
            done += len(images)
            progress("features", done, total)
        tensors[f"{split}_features"] = torch.cat(parts)  # (N, D)
        tensors[f"{split}_labels"] = dataset[f"{split}_labels"]
    views = []
    for _ in range(feature_views):
        parts = []
        for images in inputs.view_batches(BATCH, generator):
            with autocast(device, precision):
                parts.append(extract_pooled(model, images).float().cpu())
            done += len(images)
            progress("features", done, total)
        views.append(torch.cat(parts))
    if views:
        tensors["train_views"] = torch.stack(views)  # (K, N, D)
    classifier = model.get_classifier()
    tensors["classifier.weight"] = classifier.weight.detach().float().cpu()  # (C, D)
    tensors["classifier.bias"] = classifier.bias.detach().float().cpu()  # (C,)
    tensors["class_counts"] = dataset["class_counts"]
    logits = tensors["test_features"] @ tensors["classifier.weight"].T + tensors["classifier.bias"]
    top1 = float((logits.argmax(dim=1) == tensors["test_labels"]).float().mean())
    info = {
        "class_names": dataset.info["class_names"],
        "groups": dataset.info["groups"],
        "num_classes": len(dataset.info["class_names"]),
        "feature_dim": int(tensors["train_features"].shape[1]),
        "feature_views": feature_views,
        "precision": precision,
        "many_above": dataset.settings.get("many_above", 100),
        "few_below": dataset.settings.get("few_below", 20),
    }
    metrics = {
        "train": float(len(tensors["train_labels"])),
        "test": float(len(tensors["test_labels"])),
        "dim": float(info["feature_dim"]),
        "stage1_top1": top1,
    }
    return Output("features", tensors, metrics, info, key_metric="stage1_top1")
