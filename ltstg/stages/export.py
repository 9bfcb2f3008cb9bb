"""Take a model out of the store: the stage-1 backbone with a stage-3 classifier folded into its head, written in
timm's Hub layout (`model.safetensors` + `config.json`), so `timm.create_model("local-dir:DIR", pretrained=True)`
loads it without ltstg (CIFAR nets: after `import ltstg`, which registers them).

Every stage-3 classifier is, at test time, one linear layer (cRT's, LWS's scaled one, τ-norm's normalised
one, MiSLAS's): the artifact keeps that effective weight and bias, so folding is copying them into the backbone's
`fc`. A BatchNorm-shifted row (Kang's cRT, MiSLAS) also takes the shifted statistics its features were extracted
with. The temperature fitted on validation, the class names, the preprocessing and the lineage go in config.json.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ltstg.data.inputs import EVAL_CROP, IMAGENET_MEAN, IMAGENET_STD, channel_stats
from ltstg.errors import LtstgError
from ltstg.stages.extract_features import SHIFTED
from ltstg.stages.pretrain import load_backbone
from ltstg.store import SHORT, Artifact, Store, require_kind
from ltstg.version import __version__

FORMAT = 1  # of config.json's "ltstg" section


@dataclass
class Lineage:
    """The artifacts a classifier stands on, read from its parents: what an export folds together."""

    classifier: Artifact
    features: Artifact
    backbone: Artifact
    dataset: Artifact

    @classmethod
    def of(cls, store: Store, classifier: Artifact) -> Lineage:
        require_kind(classifier, "classifier")
        features = store.get(classifier.parents[0], "features")
        return cls(classifier, features, store.get(features.parents[0], "backbone"),
                   store.get(features.parents[1], "dataset"))

    @classmethod
    def named(cls, store: Store, ref: str | None) -> Lineage:
        """From a classifier, or from a report of one (the id a run's table shows), by id prefix or name; without
        a reference, the newest classifier."""
        if ref is None:
            return cls.of(store, store.find(None, "classifier"))
        found = store.resolve(ref)
        kind = store.info(found).kind
        if kind == "report":
            return cls.of(store, store.get(store.get(found, "report").parents[0], "classifier"))
        if kind != "classifier":
            raise LtstgError(f"{ref!r} is a {kind} artifact; give a classifier, or a report of one (a run's id column).")
        return cls.of(store, store.get(found, "classifier"))

    def ids(self) -> dict[str, str]:
        return {kind: getattr(self, kind).id for kind in ("dataset", "backbone", "features", "classifier")}


def folded_model(lineage: Lineage) -> tuple[nn.Module, dict[str, Any]]:
    """The backbone with the classifier in its head (eval mode, on the CPU), and the config that describes it."""
    classifier, features = lineage.classifier, lineage.features
    model = load_backbone(lineage.backbone, torch.device("cpu"))
    head = model.get_classifier()
    weight, bias = classifier["weight"].float(), classifier["bias"].float()  # (C, D), (C,)
    if not isinstance(head, nn.Linear) or head.weight.shape != weight.shape or head.bias is None:
        shape = tuple(head.weight.shape) if isinstance(head, nn.Linear) else type(head).__name__
        raise LtstgError(
            f"classifier {classifier.id[:SHORT]} ({tuple(weight.shape)} weight) cannot be folded into backbone "
            f"{lineage.backbone.id[:SHORT]}'s head ({shape}): export needs a linear head of the same shape."
        )
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
        if features.info.get("bn_shift"):
            _shift(model, features)
    return model, _config(lineage)


def _shift(model: nn.Module, features: Artifact) -> None:
    """Put the BatchNorm statistics the features were extracted with into the backbone."""
    norms = {name: m for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    missing = [f"{SHIFTED}{name}.running_mean" for name in norms if f"{SHIFTED}{name}.running_mean" not in features.tensors]
    if missing:
        raise LtstgError(
            f"features {features.id[:SHORT]} were BatchNorm-shifted before ltstg kept the shifted statistics, so the "
            "classifier cannot be exported with them; re-extract them (ltstg run … --force, or delete that artifact)."
        )
    for name, module in norms.items():
        for buffer in ("running_mean", "running_var"):
            getattr(module, buffer).copy_(features[f"{SHIFTED}{name}.{buffer}"])


def _config(lineage: Lineage) -> dict[str, Any]:
    """timm's data config of the export, and ltstg's own section: temperature, preprocessing, lineage."""
    dataset, classifier = lineage.dataset, lineage.classifier
    size = int(dataset.settings.get("size") or dataset["test_images"].shape[1])
    if dataset.info.get("storage") == "paths":
        mean, std, crop, preprocess = IMAGENET_MEAN, IMAGENET_STD, EVAL_CROP, "files"
    else:
        mean, std = channel_stats(dataset["train_images"])
        crop, preprocess = 1.0, "squash"
    temperature = classifier.tensors.get("temperature")
    return {
        "data_config": {"input_size": (3, size, size), "mean": tuple(mean), "std": tuple(std),
                        "interpolation": "bilinear" if preprocess == "files" else "bicubic", "crop_pct": crop,
                        "crop_mode": "center" if preprocess == "files" else "squash"},
        "label_names": list(lineage.features.info["class_names"]),
        "ltstg": {
            "format": FORMAT,
            "version": __version__,
            "temperature": float(temperature) if temperature is not None else None,
            # squash: any image resized to size × size as make-dataset stored it (bicubic); files: shorter side to
            # size / crop_pct, then a centre crop, as the evaluation of file-backed data sets reads them
            "preprocess": preprocess,
            "size": size,
            "classifier": classifier.settings.get("classifier"),
            "bn_shift": bool(lineage.features.info.get("bn_shift")),
            # eval scored features extracted at this precision and kept at this storage; predict runs float32
            "features_precision": lineage.features.info.get("precision", "fp32"),
            "features_storage": lineage.features.info.get("storage", "float32"),
            "lineage": lineage.ids(),
        },
    }


def export(lineage: Lineage, out: str | Path, *, onnx: bool = False) -> dict[str, Any]:
    """Write the folded model to `out` (a new or empty folder), all or nothing: it is assembled in a temporary
    folder beside `out` and renamed into place. Returns what was written."""
    from timm.models import save_for_hf

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LtstgError(f"--out {out}: exists and is not an empty folder; name a new one.")
    if onnx:
        _require_onnx()
    model, config = folded_model(lineage)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as error:
        raise LtstgError(f"--out {out}: cannot write there ({error.strerror or error}).") from None
    try:
        save_for_hf(model, str(staging), model_config={"label_names": config["label_names"], "ltstg": config["ltstg"]},
                    safe_serialization=True, data_config=config["data_config"])
        if onnx:
            _write_onnx(model, config, staging / "model.onnx")
        _readable(staging)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError):  # a full disk, a folder made read-only meanwhile: nothing is left behind
            raise LtstgError(f"--out {out}: the export could not be written ({error.strerror or error}).") from None
        raise
    files = sorted(p.name for p in out.iterdir())
    return {"out": str(out), "files": files, "architecture": json.loads((out / "config.json").read_text())["architecture"],
            **config["ltstg"]}


def _readable(folder: Path) -> None:
    """The permissions of a folder made with mkdir and files made with open (the umask's), not mkdtemp's private
    ones: an export is meant to be shared."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def _require_onnx() -> None:
    """Before any work: the onnx extra (onnx and onnxscript: pip install 'ltstg[onnx]')."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise LtstgError(f"--format onnx needs the onnx extra ({error.name} is missing): pip install 'ltstg[onnx]'.") from None


def _write_onnx(model: nn.Module, config: dict[str, Any], path: Path) -> None:
    """The same logits as an ONNX graph with a free batch size; torch's exporter says nothing on stdout."""
    example = torch.zeros(2, *config["data_config"]["input_size"])
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(model, (example,), dynamo=True, verbose=False, input_names=["images"], output_names=["logits"],
                                dynamic_shapes=({0: batch},))
    program.save(str(path))
