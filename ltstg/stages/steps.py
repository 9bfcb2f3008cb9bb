"""How each stage is wired to its parents; shared by the single commands and `ltstg run`."""
from __future__ import annotations

import hashlib

from ltstg.data.inputs import FILE_INPUTS_REVISION
from ltstg import ranks
from ltstg.errors import LtstgError
from ltstg.methods import uses_stg
from ltstg.models.backbones import check_weights_file, weights_file
from ltstg.recipe import Recipe, RetrainSettings, chosen_settings, id_settings
from ltstg.stages import Context, Result, run_stage, stage_id
from ltstg.stages.retrain_checks import features_shift, wanted_shift
from ltstg.store import SHORT, Artifact


def dataset_step(ctx: Context, recipe: Recipe, *, name: str | None = None) -> Result:
    from ltstg.stages.make_dataset import load_source, make_dataset

    settings = recipe.dataset
    # the data set is drawn by its own seed, so `--seeds` compares training runs on one data set
    source = load_source(settings, settings.subset_seed)
    defining = {**id_settings(settings), "source_fingerprint": source.fingerprint}
    return run_stage(
        ctx,
        "dataset",
        defining,
        [],
        lambda generator, checkpoint: make_dataset(settings, source, seed=settings.subset_seed, progress=ctx.progress),
        seed=settings.subset_seed,
        name=name,
        record=settings,
    )


def pretrain_step(ctx: Context, recipe: Recipe, dataset: Artifact, *, name: str | None = None) -> Result:
    from ltstg.stages.pretrain import pretrain, resolve_precision

    settings = recipe.pretrain
    # "auto" means different things on different devices: the id hashes what it resolved to; how often
    # the stage-1 classifier is tested and how many feature views follow change no weight
    defining = {**id_settings(settings), "precision": resolve_precision(settings.precision, ctx.device)}
    for untouched in ("eval_every", "feature_views", "feature_storage"):
        defining.pop(untouched)
    world_size = int(ctx.run_options.get("world_size", 1))
    if world_size > 1:  # each process normalises its own share of a batch (no SyncBatchNorm): other weights
        defining["world_size"] = world_size
    if dataset.info.get("storage") == "paths":  # how FileInputs draws crops and counts steps changed once
        defining["file_inputs"] = FILE_INPUTS_REVISION
    if settings.init_weights is not None:  # the file's content defines the result, not where it sits
        defining["init_weights_sha256"] = file_sha256(str(weights_file(settings.init_weights)))
        if not ctx.store.exists(stage_id("backbone", defining, recipe.seed, [dataset])) or ctx.force:
            check_weights_file(settings.init_weights)
    if ctx.alone:  # a rank's share of a run under torchrun: stage 1 was made by every rank together, before it
        return Result(ctx.store.get(stage_id("backbone", defining, recipe.seed, [dataset]), "backbone"), reused=True)
    if not ctx.force:  # decided by the first rank, so that every rank stops alike
        ranks.first_rank(lambda: _refuse_checkpoint_of_another_world(ctx, defining, recipe.seed, dataset))
    return run_stage(
        ctx,
        "backbone",
        defining,
        [dataset],
        lambda generator, checkpoint: pretrain(
            settings, dataset, seed=recipe.seed, device=ctx.device, generator=generator,
            progress=ctx.progress, checkpoint=checkpoint,
        ),
        seed=recipe.seed,
        name=name,
        record=settings,
        every_rank=True,  # under torchrun: one DDP run over all ranks
    )


MAX_PROCESSES = 256  # world sizes looked for when a stage 1 has no checkpoint of its own


def _refuse_checkpoint_of_another_world(ctx: Context, defining: dict, seed: int, dataset: Artifact) -> None:
    """A stage 1 whose settings were checkpointed by a run on another number of processes stops: that checkpoint
    resumes only there (the process count defines the weights), and this run would silently start over beside it."""
    mine = stage_id("backbone", defining, seed, [dataset])
    if ctx.store.exists(mine) or ctx.store.checkpoint_path(mine).exists():
        return
    here = int(defining.get("world_size", 1))
    alike = {key: value for key, value in defining.items() if key != "world_size"}
    for other in range(1, MAX_PROCESSES + 1):
        settings = alike if other == 1 else {**alike, "world_size": other}
        if other != here and ctx.store.checkpoint_path(stage_id("backbone", settings, seed, [dataset])).exists():
            launch = "without torchrun" if other == 1 else f"under torchrun with {other} processes in all"
            raise LtstgError(
                f"stage 1 of these settings has a checkpoint from a run on {other} process(es), and this run has "
                f"{here}, which trains other weights: rerun the same command {launch} to resume it, or add --force "
                f"to start over on {here}."
            )


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as error:
        raise LtstgError(f"cannot read weights file {path} ({error.strerror or error}).") from None
    return digest.hexdigest()


def features_step(
    ctx: Context,
    recipe: Recipe,
    backbone: Artifact,
    dataset: Artifact,
    *,
    name: str | None = None,
    bn_shift_batch: int | None = None,
) -> Result:
    """The backbone's features; with `bn_shift_batch`, the BatchNorm-shifted variant (an artifact of its own)."""
    from ltstg.stages.extract_features import extract_features
    from ltstg.stages.pretrain import resolve_precision

    settings = recipe.pretrain
    precision = resolve_precision(settings.precision, ctx.device)
    defining: dict[str, object] = {"feature_views": settings.feature_views, "precision": precision}
    if bn_shift_batch is not None:  # only then, so the plain features keep the ids they always had
        defining["bn_shift_batch"] = bn_shift_batch
    if settings.feature_storage != "float32":  # likewise
        defining["feature_storage"] = settings.feature_storage
    return run_stage(
        ctx,
        "features",
        defining,
        [backbone, dataset],
        lambda generator, checkpoint: extract_features(
            backbone, dataset, feature_views=settings.feature_views, precision=precision,
            feature_storage=settings.feature_storage, device=ctx.device, generator=generator, workers=settings.workers,
            progress=ctx.progress, bn_shift_batch=bn_shift_batch,
        ),
        seed=recipe.seed,
        name=name,
    )


def features_for(ctx: Context, recipe: Recipe, settings: RetrainSettings, features: Artifact) -> Result | None:
    """The features step a stage-3 method needs besides `features` (None: `features` serve): for
    `retrain.bn_shift`, the variant of the same backbone whose BatchNorm statistics shifted on class-aware
    batches of the method's batch size; for a method without it given shifted features, the plain ones."""
    wanted = wanted_shift(settings)
    if features_shift(features) == wanted:
        return None
    backbone, dataset = (ctx.store.get(parent, kind) for parent, kind in zip(features.parents, ("backbone", "dataset")))
    made = features.settings  # the variant repeats the given features' views, storage, precision and seed
    pretrain = recipe.pretrain.model_copy(update={"feature_views": made["feature_views"], "precision": made["precision"],
                                                  "feature_storage": made.get("feature_storage", "float32")})
    same = recipe.model_copy(update={"pretrain": pretrain, "seed": made.get("seed", recipe.seed)})
    return features_step(ctx, same, backbone, dataset, bn_shift_batch=wanted)


def fit_stg_step(ctx: Context, recipe: Recipe, features: Artifact, *, name: str | None = None) -> Result:
    from ltstg.stages.fit_stg import fit_stg, with_memory_size

    settings = with_memory_size(recipe.stg, features["class_counts"])  # the id holds the memory `auto` came to
    return run_stage(
        ctx,
        "stg",
        settings,
        [features],
        lambda generator, checkpoint: fit_stg(
            settings, features, seed=recipe.seed, device=ctx.device, generator=generator,
            progress=ctx.progress, checkpoint=checkpoint,
        ),
        seed=recipe.seed,
        name=name,
    )


def retrain_step(
    ctx: Context,
    recipe: Recipe,
    settings: RetrainSettings,
    features: Artifact,
    stg: Artifact | None,
    *,
    name: str | None = None,
) -> Result:
    """Only an augmenter that uses the STG (the STG, or one kept to its tail) makes it a parent, so baselines don't
    change when the STG does."""
    from ltstg.stages.retrain import retrain

    needs = uses_stg(settings.augment)
    if needs and stg is None:
        raise LtstgError(f"augment {settings.augment.name!r}" + (" with scope tail" if settings.augment.name != "stg"
                         else "") + " needs an STG artifact: run `ltstg fit-stg` first or pass --stg ID.")
    if needs and stg is not None and stg.parents[:1] != [features.id]:
        raise LtstgError(
            f"STG {stg.id[:SHORT]} was fitted on features {stg.parents[0][:SHORT] if stg.parents else '?'}, not on "
            f"{features.id[:SHORT]}; fit one on these features (`ltstg fit-stg --features {features.id[:SHORT]}`)."
        )
    parents = [features, stg] if needs and stg is not None else [features]
    return run_stage(
        ctx,
        "classifier",
        settings,
        parents,
        lambda generator, checkpoint: retrain(
            settings, features, stg if needs else None, seed=recipe.seed, device=ctx.device,
            generator=generator, progress=ctx.progress, checkpoint=checkpoint,
        ),
        seed=recipe.seed,
        name=name,
        record=chosen_settings(settings),  # another classifier's own fields are no part of this one
    )


def eval_step(ctx: Context, recipe: Recipe, classifier: Artifact, features: Artifact, *, name: str | None = None) -> Result:
    from ltstg.stages.evaluate import evaluate

    return run_stage(
        ctx,
        "report",
        recipe.eval,
        [classifier, features],
        lambda generator, checkpoint: evaluate(classifier, features, recipe.eval),
        seed=recipe.seed,
        name=name,
    )
