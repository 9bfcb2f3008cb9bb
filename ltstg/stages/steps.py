"""How each stage is wired to its parents; shared by the single commands and `ltstg run`."""
from __future__ import annotations

from ltstg.recipe import Recipe, id_settings
from ltstg.stages import Context, Result, run_stage
from ltstg.store import Artifact


def dataset_step(ctx: Context, recipe: Recipe, *, name: str | None = None) -> Result:
    from ltstg.stages.make_dataset import load_source, make_dataset

    settings = recipe.dataset
    source = load_source(settings, recipe.seed)
    defining = {**id_settings(settings), "source_fingerprint": source.fingerprint}
    return run_stage(
        ctx,
        "dataset",
        defining,
        [],
        lambda generator, checkpoint: make_dataset(settings, source, seed=recipe.seed, report=ctx.report),
        seed=recipe.seed,
        name=name,
        record=settings,
    )


def pretrain_step(ctx: Context, recipe: Recipe, dataset: Artifact, *, name: str | None = None) -> Result:
    from ltstg.stages.pretrain import pretrain, resolve_precision

    settings = recipe.pretrain
    # "auto" means different things on different devices: the id hashes what it resolved to
    defining = {**id_settings(settings), "precision": resolve_precision(settings.precision, ctx.device)}
    return run_stage(
        ctx,
        "backbone",
        defining,
        [dataset],
        lambda generator, checkpoint: pretrain(
            settings, dataset, seed=recipe.seed, device=ctx.device, generator=generator,
            report=ctx.report, checkpoint=checkpoint,
        ),
        seed=recipe.seed,
        name=name,
        record=settings,
    )


def features_step(ctx: Context, recipe: Recipe, backbone: Artifact, dataset: Artifact, *, name: str | None = None) -> Result:
    from ltstg.stages.extract_features import extract_features
    from ltstg.stages.pretrain import resolve_precision

    settings = recipe.pretrain
    precision = resolve_precision(settings.precision, ctx.device)
    return run_stage(
        ctx,
        "features",
        {"feature_views": settings.feature_views, "precision": precision},
        [backbone, dataset],
        lambda generator, checkpoint: extract_features(
            backbone, dataset, feature_views=settings.feature_views, precision=precision,
            device=ctx.device, generator=generator, workers=settings.workers, report=ctx.report,
        ),
        seed=recipe.seed,
        name=name,
    )
