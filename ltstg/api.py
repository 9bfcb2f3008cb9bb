"""The public Python API: the same functions the CLI runs, for use inside one's own code.

    import ltstg
    store = ltstg.open_store(".artifacts")
    features = ltstg.load(store, "features")                    # newest, or a name / id prefix
    augment = ltstg.stg_augmenter(ltstg.load(store, "stg"), features, lam=1.5)
    x_aug = augment.augment(x, y, generator=torch.Generator().manual_seed(0))
    model = ltstg.load_backbone(ltstg.load(store, "backbone"))  # a timm model

Everything here checks its input as the CLI does and raises LtstgError with the same one-line messages.
"""
from __future__ import annotations

from pathlib import Path

import torch
from pydantic import ValidationError
from torch import nn

from ltstg.augment.stg import StgAugment, StgAugmenter, stg_arguments
from ltstg.errors import LtstgError
from ltstg.recipe import load_recipe, settings_error
from ltstg.runtime import make_context, resolve_device
from ltstg.stages.pipeline import MethodRun, check_run, check_seeds, run_recipe, shared_part
from ltstg.stages.pretrain import load_backbone as _load_backbone
from ltstg.store import Artifact, Store

__all__ = [
    "Artifact", "LtstgError", "Store", "StgAugmenter", "load", "load_backbone", "open_store", "run", "stg_augmenter",
]


def open_store(path: str | Path = ".artifacts") -> Store:
    """An existing artifact store (as `--store`); a missing folder is an error, not an empty store."""
    if not isinstance(path, (str, Path)):
        raise LtstgError(f"open_store takes the store's folder as a path, not {type(path).__name__}.")
    store = Store(path)
    store.require()
    return store


def load(store: Store, kind: str, ref: str | None = None) -> Artifact:
    """A verified artifact of `kind` by name, id prefix or, without `ref`, the newest (as the CLI picks it)."""
    if not isinstance(store, Store):
        raise LtstgError(f"load takes a store from ltstg.open_store(path), not {type(store).__name__}.")
    return store.find(ref, kind)


def stg_augmenter(
    stg: Artifact,
    source: Artifact,
    *,
    lam: float = 1.5,
    t: float = 0.5,
    mu: str = "eq3",
    device: torch.device | str = "cpu",
) -> StgAugmenter:
    """The paper's tail-class augmentation (Eq. 3-4) from an stg artifact, for the classes of a features or
    dataset artifact; call `.augment(features, labels, generator=...)` on any batch of those features."""
    _require_artifact(stg, "stg", "stg")
    _require_artifact(source, "source", "features or dataset")
    if source.kind not in ("features", "dataset"):
        raise LtstgError(f"artifact {source.id[:12]} is a {source.kind} artifact; give a features or dataset artifact.")
    try:
        settings = StgAugment(lam=lam, t=t, mu=mu)
    except ValidationError as error:
        raise settings_error(error, "stg_augmenter") from None
    device = resolve_device(str(device))
    features = source.tensors.get("train_features") if source.kind == "features" else None
    arguments = stg_arguments(
        stg, settings, source["class_counts"], device, features=features, labels=source.tensors.get("train_labels")
    )
    return StgAugmenter(**arguments)


def _require_artifact(value: object, argument: str, kind: str) -> None:
    if not isinstance(value, Artifact):
        raise LtstgError(f"{argument} must be a {kind} artifact (ltstg.load(store, ...)), not {type(value).__name__}.")


def load_backbone(backbone: Artifact, device: torch.device | str = "cpu") -> nn.Module:
    """The trained stage-1 network of a backbone artifact as a timm model in eval mode
    (`forward_features`, `forward_head(x, pre_logits=True)`, `num_features`)."""
    _require_artifact(backbone, "backbone", "backbone")
    if backbone.kind != "backbone":
        raise LtstgError(f"artifact {backbone.id[:12]} is a {backbone.kind} artifact, not a backbone.")
    return _load_backbone(backbone, resolve_device(str(device)))


def run(
    recipe: str | Path,
    store: str | Path = ".artifacts",
    *,
    seeds: list[int] | None = None,
    until: str = "eval",
    vary_from: str = "pretrain",
    methods: list[str] | None = None,
    device: str = "cpu",
) -> list[MethodRun]:
    """`ltstg run RECIPE` without the terminal: every stage, reusing what the store already holds.

    `device` is "cpu", "cuda", "cuda:N" or "auto", set up as `ltstg --device` sets it up (ltstg.runtime).
    """
    if not isinstance(recipe, (str, Path)):
        raise LtstgError(f"run takes a recipe file (e.g. recipes/synthetic-lt.yaml), not {type(recipe).__name__}.")
    settings = load_recipe(recipe)
    check_run(settings, until, methods, vary_from)  # before any stage 1 under torchrun
    check_seeds(settings, seeds or [settings.seed])
    ctx = make_context(store, device)
    shared = shared_part(ctx, [({}, settings)], seeds, until, methods, vary_from)
    if shared and not ctx.is_main:
        return []  # under torchrun, a rank other than the first: its part (stage 1, its share of stages 2-4) is done
    runs, _ = run_recipe(ctx, settings, seeds=seeds or [settings.seed], until=until, methods=methods,
                         vary_from=vary_from, stage1_made=shared)
    return runs
