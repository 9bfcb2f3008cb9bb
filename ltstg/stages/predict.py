"""Use a model taken out of the store: top-k labels with calibrated probabilities for new image files.

The model is an exported folder (`ltstg export`) or a classifier artifact folded on the fly (`export.folded_model`);
either way an image reaches it as the evaluation saw the data set's images (`preprocess` in config.json), so
predicting the test split's files gives `ltstg eval`'s predictions where eval's features were float32 (features
made in bf16 or kept in float16 round differently: near-ties may then fall the other way, and predict says so).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from ltstg.data.batch_augment import to_model_input
from ltstg.data.imagefolder import UNREADABLE, read_image
from ltstg.data.inputs import eval_transform
from ltstg.errors import LtstgError
from ltstg.progress import Progress, silent

LIST_SUFFIX = ".txt"  # an IMAGES argument with this suffix is a list of image paths, one per line


@dataclass
class Predictor:
    """A folded model with what it needs to read an image and calibrate its logits."""

    model: nn.Module
    label_names: list[str]
    size: int
    preprocess: str  # "squash" | "files": see export._config
    mean: tuple[float, ...]
    std: tuple[float, ...]
    temperature: float | None
    features_precision: str = "fp32"  # how the features eval scored were made; predict runs float32 end to end
    features_storage: str = "float32"

    @classmethod
    def from_config(cls, model: nn.Module, config: dict[str, Any]) -> Predictor:
        """From an export's config.json (or the config `folded_model` returns, whose data config is apart)."""
        data = config.get("data_config") or config["pretrained_cfg"]
        own = config["ltstg"]
        return cls(model.eval(), [str(name) for name in config["label_names"]], int(own["size"]), own["preprocess"],
                   tuple(data["mean"]), tuple(data["std"]), own.get("temperature"),
                   own.get("features_precision", "fp32"), own.get("features_storage", "float32"))

    @classmethod
    def from_folder(cls, folder: str | Path) -> Predictor:
        """An exported folder, loaded through timm as any user would load it."""
        import timm

        import ltstg.models  # noqa: F401 (registers the CIFAR nets with timm)

        path = Path(folder) / "config.json"
        try:
            config = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise LtstgError(f"MODEL {folder}: no readable config.json of an ltstg export ({error}).") from None
        if not isinstance(config.get("ltstg"), dict):
            raise LtstgError(f"MODEL {folder}: its config.json has no ltstg section; export the model with ltstg export.")
        return cls.from_config(timm.create_model(f"local-dir:{folder}", pretrained=True), config)


def image_paths(arguments: Sequence[str]) -> list[str]:
    """Files as given, folders as every image file under them (sorted), `.txt` files as lists of paths (one per
    line, relative to the list's folder); a path that does not exist is one error naming it."""
    paths: list[str] = []
    known = set(Image.registered_extensions())
    for argument in arguments:
        if os.path.isdir(argument):
            found = sorted(os.path.join(folder, name) for folder, _, names in os.walk(argument) for name in names
                           if os.path.splitext(name)[1].lower() in known)
            paths.extend(found)
        elif argument.endswith(LIST_SUFFIX) and os.path.isfile(argument):
            base = os.path.dirname(argument)
            with open(argument, encoding="utf-8") as listing:
                paths.extend(os.path.join(base, line.strip()) for line in listing if line.strip())
        elif os.path.exists(argument):
            paths.append(argument)
        else:
            raise LtstgError(f"IMAGES: {argument} does not exist.")
    if not paths:
        raise LtstgError(f"IMAGES: no image file in {', '.join(arguments)}.")
    return paths


def predict(predictor: Predictor, paths: Sequence[str], *, device: torch.device, top_k: int = 5,
            batch_size: int = 256, progress: Progress = silent) -> list[dict[str, Any]]:
    """One row per path, in order: the top-k labels with probabilities (softmax of logits / T, T fitted on
    validation), or `skipped` with the reason the file could not be read."""
    model = predictor.model.to(device)
    top_k = min(top_k, len(predictor.label_names))
    rows: list[dict[str, Any]] = []
    done = 0
    for batch_paths, images, reasons in _batches(predictor, paths, batch_size):
        logits = torch.empty(0, len(predictor.label_names))  # (0, C): a batch of unreadable files only
        if images is not None:
            with torch.no_grad():
                logits = model(images.to(device)).float().cpu()  # (B, C)
        scaled = logits / predictor.temperature if predictor.temperature else logits
        probabilities = scaled.softmax(dim=1)
        row_of_image = iter(range(len(logits)))
        for path in batch_paths:
            if path in reasons:
                rows.append({"path": path, "skipped": reasons[path]})
                continue
            index = next(row_of_image)
            values, labels = probabilities[index].topk(top_k)
            rows.append({"path": path, "label": int(labels[0]), "top": [
                {"label": int(label), "name": predictor.label_names[int(label)], "probability": float(value)}
                for value, label in zip(values, labels)]})
        done += len(batch_paths)
        progress("predict", done, len(paths))
    return rows


def _batches(predictor: Predictor, paths: Sequence[str], batch_size: int
             ) -> Iterator[tuple[list[str], torch.Tensor | None, dict[str, str]]]:
    """Batches of model input, with the paths of each batch and why any of them could not be read."""
    for start in range(0, len(paths), batch_size):
        part = list(paths[start : start + batch_size])
        read, reasons = [], {}
        for path in part:
            try:
                read.append(_read(predictor, path))
            except UNREADABLE as error:
                reasons[path] = str(error).split("\n")[0] or type(error).__name__
        images = torch.stack(read) if read else None
        if images is not None and predictor.preprocess == "squash":
            images = to_model_input(images, predictor.mean, predictor.std)  # (B, 3, S, S)
        elif images is not None:
            mean = torch.tensor(predictor.mean).view(3, 1, 1)
            std = torch.tensor(predictor.std).view(3, 1, 1)
            images = images.float().mul_(1.0 / 255).sub_(mean).div_(std)  # as FileInputs normalises
        yield part, images, reasons


def _read(predictor: Predictor, path: str) -> torch.Tensor:
    """One file as the evaluation read the data set's images: (S, S, 3) uint8 stored as make-dataset decoded it,
    or (3, S, S) uint8 through the file-backed evaluation transform."""
    if predictor.preprocess == "squash":
        return torch.from_numpy(np.array(read_image(path, predictor.size)))  # a writable copy
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    return eval_transform(predictor.size)(rgb)
