"""The `ltstg` command line: parse flags, load the recipe, call a stage, render the result.

Only this module knows about the terminal: rich tables on stdout (or JSON with --json), progress
bars and notes on stderr, and exit code 2 with one red line per problem for user errors.
"""
from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.tree import Tree

from ltstg.errors import LtstgError

app = typer.Typer(
    help="Long-tailed image classification with the Semantic Transformation Generator (STG) and its baselines.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
inspect_app = typer.Typer(help="Look inside the store, the data and what the STG learned.", no_args_is_help=True)
app.add_typer(inspect_app, name="inspect")

stdout = Console(soft_wrap=True)
PLAIN_EVERY = 30.0
stderr = Console(stderr=True, soft_wrap=True)


@dataclass(frozen=True)
class Options:
    store: Path
    json: bool
    device: str
    seed: Optional[int]


@app.callback()
def main_options(
    ctx: typer.Context,
    store: Annotated[Path, typer.Option(envvar="LTSTG_STORE", help="Artifact store folder.")] = Path(".artifacts"),
    json_output: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda (auto = cuda when available).")] = "auto",
    seed: Annotated[Optional[int], typer.Option(help="Override the recipe's seed.")] = None,
) -> None:
    if device not in {"auto", "cpu", "cuda"} and not device.startswith("cuda:"):
        raise typer.BadParameter(f"{device!r} is not one of auto, cpu, cuda", param_hint="--device")
    ctx.obj = Options(store=store, json=json_output, device=device, seed=seed)


def guarded(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn LtstgError into red lines on stderr and exit code 2; everything else keeps its traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except LtstgError as error:
            for line in str(error).splitlines() or ["error"]:
                stderr.print(f"[red]error:[/red] {line}", markup=True, highlight=False)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            stderr.print(
                "interrupted: the stage in progress was not committed; a rerun resumes from its last checkpoint",
                highlight=False,
            )
            raise typer.Exit(130) from None

    return wrapper


class RichProgress:
    """The stages' `report(task, done, total, **metrics)` as rich progress bars on stderr."""

    def __init__(self, enabled: bool = True) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[metrics]}"),
            console=stderr,
            disable=not enabled,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}
        self.enabled = enabled
        self.plain = enabled and not stderr.is_terminal  # a log file gets a line every PLAIN_EVERY seconds
        self.last_line: dict[str, float] = {}
        self.said: set[str] = set()

    def __enter__(self) -> "RichProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.tasks:  # started on the first report: a command that fails early prints no empty bar line
            self.progress.stop()

    def __call__(self, task: str, done: int, total: int, **metrics: float) -> None:
        shown = "  ".join(f"{k} {_fmt(v)}" for k, v in metrics.items())
        if not self.tasks:
            self.progress.start()
        if task not in self.tasks:
            self.tasks[task] = self.progress.add_task(task, total=total, metrics=shown)
        self.progress.update(self.tasks[task], completed=done, total=total, metrics=shown)
        if self.plain:
            now = time.monotonic()
            if done >= total or now - self.last_line.get(task, 0.0) >= PLAIN_EVERY:
                self.last_line[task] = now
                stderr.print(f"{task} {done}/{total}  {shown}", highlight=False)

    def note(self, message: str) -> None:
        """Say a note once: a sweep that reuses one artifact, or gets one note from every report, repeats it."""
        if message in self.said:
            return
        self.said.add(message)
        self.progress.console.print(f"[dim]{message}[/dim]", highlight=False)


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e12:
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _options(ctx: typer.Context) -> Options:
    return ctx.obj


def _recipe(options: Options, path: Optional[Path], overrides: dict[str, Any]):
    from ltstg.recipe import load_recipe

    if options.seed is not None:
        overrides = {**overrides, "seed": options.seed}
    return load_recipe(path, overrides)


def _context(options: Options, report: RichProgress, force: bool = False):
    import torch

    from ltstg.progress import silent
    from ltstg.stages import Context
    from ltstg.store import Store

    rank, world_size, local_rank = _torchrun_env()
    device = _device(options.device)
    if world_size > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    main_rank = rank == 0
    return Context(
        store=Store(options.store),
        device=device,
        force=force,
        progress=report if main_rank else silent,
        note=report.note if main_rank else (lambda message: None),
        is_main=main_rank,
        # CPU numbers depend on the intra-op thread count (reductions split differently), so it is recorded
        run_options={"device": str(device), "world_size": world_size, "threads": torch.get_num_threads(),
                     "argv": sys.argv[1:]},
    )


def _torchrun_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the variables torchrun sets; (0, 1, 0) otherwise."""
    try:
        return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise LtstgError("RANK / WORLD_SIZE / LOCAL_RANK must be integers (they are set by torchrun).") from None


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LtstgError(f"--device {name} was asked for, but torch sees no CUDA device; use --device cpu.")
    if name.startswith("cuda:"):
        index = name.split(":", 1)[1]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise LtstgError(
                f"--device {name} does not exist: torch sees {torch.cuda.device_count()} CUDA device(s) (cuda:0 …)."
            )
    try:
        return torch.device(name)
    except RuntimeError:
        raise LtstgError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N.") from None


def pick(run: Any, ref: Optional[str], kind: str, *, parent: Optional[str] = None):
    """The artifact a command works on; without a reference, the newest (of `parent`'s children) and say which."""
    from ltstg.api import load

    if ref is not None:
        return load(run.store, kind, ref)
    newest = run.store.resolve(None, kind)  # refuses when a damaged artifact might be the newest
    candidates = [i for i in run.store.list(kind) if parent is None or i.parents[:1] == [parent]]
    if parent is not None and not candidates:
        raise LtstgError(f"no {kind} artifact made from {parent[:12]} in {run.store.root}; create one first or name one.")
    artifact_id = candidates[-1].id if parent is not None else newest
    run.note(f"using {kind} {artifact_id[:12]} (the newest{' for these features' if parent else ''})")
    return run.store.get(artifact_id, kind)


def emit(options: Options, payload: dict[str, Any], table: Table | Tree | None) -> None:
    """The result: JSON for scripts, or a rich table for people. Nothing else goes to stdout."""
    if options.json:
        sys.stdout.write(json.dumps(json_safe(payload), indent=2, default=str, allow_nan=False) + "\n")
    elif table is not None:
        stdout.print(table)


def json_safe(value: Any) -> Any:
    """NaN and infinities become null, so `jq` and strict JSON readers accept the output."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def result_table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in rows.items():
        table.add_row(key, _fmt(value))
    return table


def artifact_summary(result) -> dict[str, Any]:
    artifact = result.artifact
    return {
        "id": artifact.id,
        "kind": artifact.kind,
        "reused": result.reused,
        "parents": artifact.parents,
        "metrics": artifact.metrics,
        "wall_clock": artifact.meta.get("wall_clock"),
    }


def show_results(options: Options, results: list[Any], title: str) -> None:
    payload = {"artifacts": [artifact_summary(r) for r in results]}
    if len(results) == 1:
        payload = payload["artifacts"][0]
    table = Table(title=title, title_justify="left")
    for column in ("kind", "id", "status", "metrics", "seconds"):
        table.add_column(column, no_wrap=column != "metrics")
    for r in results:
        a = r.artifact
        metrics = "  ".join(f"{k} {_fmt(v)}" for k, v in a.metrics.items())
        table.add_row(a.kind, a.id[:12], "reused" if r.reused else "new", metrics, _fmt(a.meta.get("wall_clock")))
    emit(options, payload, table)


RecipeOption = Annotated[Optional[Path], typer.Option("--recipe", "-r", help="YAML recipe (see recipes/).")]
NameOption = Annotated[Optional[str], typer.Option(help="Also store the result under this name.")]
ForceOption = Annotated[bool, typer.Option(help="Recompute even if the artifact exists.")]


# -- make-dataset ------------------------------------------------------------------------------
@app.command("make-dataset")
@guarded
def make_dataset_command(
    ctx: typer.Context,
    source: Annotated[
        Optional[str], typer.Argument(help="synthetic | cifar10 | cifar100 | imagefolder | imagenet-lt | places-lt")
    ] = None,
    recipe: RecipeOption = None,
    root: Annotated[Optional[str], typer.Option(help="Local copy of the source / image root.")] = None,
    split_dir: Annotated[Optional[str], typer.Option(help="Folder with the *_LT_{train,val,test}.txt lists.")] = None,
    download: Annotated[Optional[bool], typer.Option("--download", help="Let torchvision download CIFAR.")] = None,
    imb: Annotated[Optional[float], typer.Option("--imb", help="Imbalance factor n_max/n_min (1 keeps all).")] = None,
    profile: Annotated[Optional[str], typer.Option(help="exp | step")] = None,
    size: Annotated[Optional[int], typer.Option(help="Image side for image folders.")] = None,
    strict: Annotated[Optional[bool], typer.Option("--strict", help="Fail on unreadable images.")] = None,
    name: NameOption = None,
    force: ForceOption = False,
) -> None:
    """Build a long-tailed data set artifact (images or paths, labels, class counts and groups)."""
    from ltstg.stages import steps

    options = _options(ctx)
    settings = _recipe(
        options,
        recipe,
        {
            "dataset.source": source,
            "dataset.root": root,
            "dataset.split_dir": split_dir,
            "dataset.download": download,
            "dataset.imbalance": imb,
            "dataset.profile": profile,
            "dataset.size": size,
            "dataset.strict": strict,
        },
    )
    with RichProgress(not options.json) as report:
        result = steps.dataset_step(_context(options, report, force), settings, name=name)
    show_results(options, [result], "make-dataset")


# -- pretrain ------------------------------------------------------------------------------------
@app.command("pretrain")
@guarded
def pretrain_command(
    ctx: typer.Context,
    recipe: RecipeOption = None,
    dataset: Annotated[Optional[str], typer.Option(help="Dataset artifact (id prefix or name; default newest).")] = None,
    model: Annotated[Optional[str], typer.Option(help="resnet32_cifar, resnet50, ... (any timm name).")] = None,
    init_weights: Annotated[Optional[str], typer.Option(help="Local weights file to start from.")] = None,
    epochs: Annotated[Optional[int], typer.Option()] = None,
    batch_size: Annotated[Optional[int], typer.Option()] = None,
    lr: Annotated[Optional[float], typer.Option()] = None,
    schedule: Annotated[Optional[str], typer.Option(help="multistep | cosine | constant")] = None,
    warmup_epochs: Annotated[Optional[int], typer.Option()] = None,
    mixup_alpha: Annotated[Optional[float], typer.Option(help="0 disables mixup.")] = None,
    precision: Annotated[Optional[str], typer.Option(help="auto | fp32 | bf16")] = None,
    eval_every: Annotated[Optional[int], typer.Option()] = None,
    feature_views: Annotated[Optional[int], typer.Option(help="Extra augmented views in the features artifact.")] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the model.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="DataLoader workers (file-based data sets).")] = None,
    name: NameOption = None,
    force: ForceOption = False,
) -> None:
    """Stage 1: train the backbone with mixup, then cache its features (two artifacts)."""
    from ltstg.stages import steps

    options = _options(ctx)
    settings = _recipe(
        options,
        recipe,
        {
            "pretrain.model": model,
            "pretrain.init_weights": init_weights,
            "pretrain.epochs": epochs,
            "pretrain.batch_size": batch_size,
            "pretrain.lr": lr,
            "pretrain.schedule": schedule,
            "pretrain.warmup_epochs": warmup_epochs,
            "pretrain.mixup_alpha": mixup_alpha,
            "pretrain.precision": precision,
            "pretrain.eval_every": eval_every,
            "pretrain.feature_views": feature_views,
            "pretrain.compile": compile,
            "pretrain.workers": workers,
        },
    )
    with RichProgress(not options.json and _torchrun_env()[0] == 0) as report:
        run = _context(options, report, force)
        data = pick(run, dataset, "dataset")
        backbone = steps.pretrain_step(run, settings, data, name=name)
        if not run.is_main:
            return
        features = steps.features_step(run, settings, backbone.artifact, data, name=f"{name}-features" if name else None)
    show_results(options, [backbone, features], "pretrain")


# -- fit-stg -------------------------------------------------------------------------------------
@app.command("fit-stg")
@guarded
def fit_stg_command(
    ctx: typer.Context,
    recipe: RecipeOption = None,
    features: Annotated[Optional[str], typer.Option(help="Features artifact (id prefix or name; default newest).")] = None,
    memory: Annotated[Optional[int], typer.Option(help="Size m of the memory dictionary (0 = mini-batch only).")] = None,
    epochs: Annotated[Optional[int], typer.Option()] = None,
    batch_size: Annotated[Optional[int], typer.Option()] = None,
    lr: Annotated[Optional[float], typer.Option()] = None,
    loss: Annotated[Optional[str], typer.Option(help="mse | kl")] = None,
    head_rule: Annotated[Optional[str], typer.Option(help="count | share | half: which classes are head.")] = None,
    head_share: Annotated[Optional[float], typer.Option(help="share rule: the head holds this share of the images.")] = None,
    head_min_count: Annotated[Optional[int], typer.Option(help="count rule: head = more train images than this.")] = None,
    smoothing: Annotated[Optional[float], typer.Option(help="Momentum of each sample's running ground truth.")] = None,
    name: NameOption = None,
    force: ForceOption = False,
) -> None:
    """Stage 2: learn the Semantic Transformation Generator on head-class features."""
    from ltstg.stages import steps

    options = _options(ctx)
    settings = _recipe(
        options,
        recipe,
        {
            "stg.memory": memory,
            "stg.epochs": epochs,
            "stg.batch_size": batch_size,
            "stg.lr": lr,
            "stg.loss": loss,
            "stg.head_rule": head_rule,
            "stg.head_share": head_share,
            "stg.head_min_count": head_min_count,
            "stg.smoothing": smoothing,
        },
    )
    with RichProgress(not options.json) as report:
        run = _context(options, report, force)
        parent = pick(run, features, "features")
        result = steps.fit_stg_step(run, settings, parent, name=name)
    show_results(options, [result], "fit-stg")


# -- retrain ---------------------------------------------------------------------------------------
@app.command("retrain")
@guarded
def retrain_command(
    ctx: typer.Context,
    recipe: RecipeOption = None,
    method: Annotated[Optional[str], typer.Option(help="A named method of the recipe's `methods`.")] = None,
    features: Annotated[Optional[str], typer.Option(help="Features artifact (default newest).")] = None,
    stg: Annotated[Optional[str], typer.Option(help="STG artifact for --augmenter stg (default newest).")] = None,
    classifier: Annotated[Optional[str], typer.Option(help="crt | lws | mislas | tau-norm | none")] = None,
    init: Annotated[Optional[str], typer.Option(help="auto | fresh | stage1: where a trained classifier starts.")] = None,
    augmenter: Annotated[Optional[str], typer.Option(help="none | stg | isda | noise | dropout")] = None,
    lam: Annotated[Optional[float], typer.Option(help="λ of stg / isda.")] = None,
    t: Annotated[Optional[float], typer.Option(help="Threshold t of the stg mask.")] = None,
    mu: Annotated[Optional[str], typer.Option(help="eq3 | relative | zero: how the STG's μ enters the shift.")] = None,
    std: Annotated[Optional[float], typer.Option(help="std of the noise augmenter.")] = None,
    p: Annotated[Optional[float], typer.Option(help="p of the dropout augmenter.")] = None,
    tau: Annotated[Optional[float], typer.Option(help="τ of τ-normalisation.")] = None,
    sampling: Annotated[Optional[str], typer.Option(help="balanced | instance")] = None,
    epochs: Annotated[Optional[int], typer.Option()] = None,
    lr: Annotated[Optional[float], typer.Option()] = None,
    batch_size: Annotated[Optional[int], typer.Option()] = None,
    name: NameOption = None,
    force: ForceOption = False,
) -> None:
    """Stage 3: re-train the classifier on frozen features, with a feature augmenter."""
    from ltstg.recipe import method_settings
    from ltstg.stages import steps

    options = _options(ctx)
    flags = {
        "retrain.classifier": classifier,
        "retrain.init": init,
        "retrain.augment.name": augmenter,
        "retrain.augment.lam": lam,
        "retrain.augment.t": t,
        "retrain.augment.mu": mu,
        "retrain.augment.std": std,
        "retrain.augment.p": p,
        "retrain.tau": tau,
        "retrain.sampling": sampling,
        "retrain.epochs": epochs,
        "retrain.lr": lr,
        "retrain.batch_size": batch_size,
    }
    loaded = _recipe(options, recipe, {})
    if method is not None:
        base = method_settings(loaded, method).model_dump(mode="json")
        loaded = _recipe(options, recipe, {"retrain": base})
    settings = _recipe_from(loaded, flags)
    with RichProgress(not options.json) as report:
        run = _context(options, report, force)
        parent = pick(run, features, "features")
        stg_artifact = None
        if settings.retrain.augment.name == "stg":
            stg_artifact = pick(run, stg, "stg", parent=parent.id)
        result = steps.retrain_step(run, settings, settings.retrain, parent, stg_artifact, name=name)
    show_results(options, [result], "retrain")


def _recipe_from(recipe: Any, overrides: dict[str, Any]):
    """Apply flag overrides on top of an already loaded recipe, validating once more."""
    from ltstg.recipe import merge_overrides, validate

    return validate(merge_overrides(recipe.model_dump(mode="json"), overrides), "flags")


# -- eval --------------------------------------------------------------------------------------------
@app.command("eval")
@guarded
def eval_command(
    ctx: typer.Context,
    classifiers: Annotated[Optional[list[str]], typer.Argument(help="Classifier artifacts (default newest).")] = None,
    compare: Annotated[
        Optional[list[str]], typer.Option("--compare", help="Classifiers to compare side by side (repeatable).")
    ] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the comparison as a Markdown table.")] = False,
    plot: Annotated[
        Optional[Path], typer.Option(help="Draw per-class accuracy against training count (PNG), one line per classifier.")
    ] = None,
    plot_norms: Annotated[Optional[Path], typer.Option(help="Draw each classifier's per-class weight norms (PNG).")] = None,
    plot_reliability: Annotated[
        Optional[Path], typer.Option(help="Draw a reliability diagram per classifier (PNG).")
    ] = None,
    recipe: RecipeOption = None,
    name: NameOption = None,
    force: ForceOption = False,
) -> None:
    """Stage 4: top-1, many/medium/few, ECE and NLL on the test split; --compare for a table of methods."""
    from ltstg.stages import steps
    from ltstg.stages.evaluate import compare_rows, markdown_table

    options = _options(ctx)
    settings = _recipe(options, recipe, {})
    refs = list(classifiers or []) + list(compare or [])
    with RichProgress(not options.json) as report:
        run = _context(options, report, force)
        ids = [run.store.resolve(ref, "classifier") for ref in refs] or [run.store.resolve(None, "classifier")]
        results, chosen = [], []
        for artifact_id in ids:
            classifier = run.store.get(artifact_id, "classifier")
            features = run.store.get(classifier.parents[0], "features")
            results.append(steps.eval_step(run, settings, classifier, features, name=name if len(ids) == 1 else None))
            chosen.append(classifier)
    rows = compare_rows([r.artifact for r in results], chosen)
    names = run.store.names()
    for row, artifact_id in zip(rows, ids):  # a named classifier keeps its name in the table
        if names.get(artifact_id):
            row["method"] = f"{row['method']} ({names[artifact_id][0]})"
    if plot or plot_norms or plot_reliability:
        _eval_pictures(options, run.store, ids, [row["method"] for row in rows], plot, plot_norms, plot_reliability,
                       settings.eval.ece_bins)
    if markdown:
        sys.stdout.write(markdown_table(rows) + "\n")
        return
    if len(results) == 1 and not compare:
        if rows[0]["not_converged"]:
            _note(options, f"warning: classifier {ids[0][:12]} did not converge (its notes say how): "
                           "its scores are no result")
        show_results(options, results, "eval")
        return
    emit(options, {"rows": rows}, comparison_table(rows, "comparison"))


def _eval_pictures(options: Options, store: Any, ids: list[str], labels: list[str], per_class: Optional[Path],
                   norms: Optional[Path], reliability: Optional[Path], bins: int) -> None:
    """The compared classifiers as pictures; they must share one features artifact (one x axis)."""
    from ltstg.inspect import figures

    classifiers = [(label, store.get(i, "classifier")) for label, i in zip(labels, ids)]
    parents = {c.parents[0] for _, c in classifiers}
    if len(parents) > 1:
        raise LtstgError("the pictures compare classifiers of one features artifact; these come from several.")
    features = store.get(parents.pop(), "features")
    for path, draw in ((per_class, figures.per_class_figure), (norms, figures.weight_norms_figure)):
        if path is not None:
            _note(options, f"wrote {draw(classifiers, features, path)}")
    if reliability is not None:
        _note(options, f"wrote {figures.reliability_figure(classifiers, features, reliability, bins=bins)}")


def _write_run_report(options: Options, store: Any, rows: list[dict[str, Any]], results: list[Any], title: str,
                      out: Path, command: str) -> None:
    """The HTML report of a run: its first seed's artifacts in the pictures, every seed in the table."""
    from ltstg.inspect.html_report import RunReport, write_report

    first = {}
    for result in results:
        first.setdefault(result.artifact.kind, result.artifact)
    classifiers = [(row["method"], store.get(store.get(row["reports"][0], "report").parents[0], "classifier"))
                   for row in rows]
    stg = first.get("stg")
    kl, omitted = _kl_of_rarest(options, stg, first["features"]) if stg is not None else (None, [])
    report = RunReport(title, first["dataset"], first["features"], rows, classifiers, backbone=first.get("backbone"),
                       stg=stg, kl=kl, omitted=omitted, commands={"methods": command} if command else {})
    _note(options, f"wrote {write_report(report, out)}")


def _kl_of_rarest(options: Options, stg: Any, features: Any) -> tuple[Any, list[str]]:
    """The KL report of the rarest tail class, or None and the reason, said on stderr and kept in the report."""
    from ltstg.inspect.kl import kl_report

    try:
        report = kl_report(stg, features)
    except LtstgError as error:  # e.g. the rarest class has a single image
        reason = f"the KL section is left out: {error}"
        _note(options, reason)
        return None, [reason]
    for line in report.notes:
        _note(options, f"KL section: {line}")
    return report, []


def parse_sweeps(items: list[str]) -> dict[str, list[Any]]:
    """`a.b=v1,v2` items as field -> values (YAML scalars, as --set reads them)."""
    import yaml

    sweeps: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise LtstgError(f"--sweep {item!r}: expected FIELD=V1,V2,..., e.g. --sweep stg.memory=0,600,1200.")
        if key.strip() in sweeps:
            raise LtstgError(f"--sweep {key.strip()} is given twice; list all its values in one --sweep.")
        try:
            sweeps[key.strip()] = [yaml.safe_load(value) for value in values.split(",")]
        except yaml.YAMLError:
            raise LtstgError(f"--sweep {item!r}: a value is not a YAML scalar.") from None
    return sweeps


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """`a.b=value` pairs; values are read as YAML scalars, so numbers and booleans keep their type."""
    import yaml

    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise LtstgError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set stg.memory=600.")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise LtstgError(f"--set {item!r}: the value is not valid YAML.") from None
    return overrides


def comparison_table(rows: list[dict[str, Any]], title: str, swept: Optional[list[str]] = None) -> Table:
    """Methods as rows; swept fields, then all / many / medium / few / ECE as columns (percent), ± std over seeds."""
    from ltstg.stages.evaluate import method_cell

    swept = swept or []
    table = Table(title=title, title_justify="left")
    table.add_column("method", no_wrap=True)
    for field in swept:
        table.add_column(field, justify="right")
    columns = [("all", "all"), ("many", "many"), ("medium", "medium"), ("few", "few"), ("ece", "ECE"), ("nll", "NLL")]
    for _, label in columns:
        table.add_column(label, justify="right")
    for row in rows:
        cells = []
        for key, _ in columns:
            value = row.get(key)
            if value is None:
                cells.append("–")
                continue
            scale = 1 if key == "nll" else 100
            text = f"{value * scale:.2f}" if key == "nll" else f"{value * scale:.1f}"
            if f"{key}_std" in row:
                text += f" ± {row[f'{key}_std'] * scale:.1f}"
            cells.append(text)
        table.add_row(method_cell(row), *(_fmt(row["swept"][field]) for field in swept), *cells)
    return table


def wide_rich_table(rows: list[dict[str, Any]], title: str, field: str, swept: list[str]) -> Table:
    """The sweep pivoted on `field`: one top-1 column (percent, ± std over seeds) per value."""
    from ltstg.stages.evaluate import wide_table

    labels, columns, body = wide_table(rows, field, swept)
    table = Table(title=title, title_justify="left")
    for label in labels:
        table.add_column(label, no_wrap=True)
    for column in columns:
        table.add_column(column, justify="right")
    for cells in body:
        table.add_row(*cells)
    return table


# -- run -------------------------------------------------------------------------------------------
@app.command("run")
@guarded
def run_command(
    ctx: typer.Context,
    recipes: Annotated[
        list[Path], typer.Argument(help="YAML recipe(s) (see recipes/); several run in turn into one table.")
    ],
    seeds: Annotated[Optional[list[int]], typer.Option("--seeds", help="Seeds to run (repeatable).")] = None,
    until: Annotated[str, typer.Option(help="Last stage: dataset | pretrain | fit-stg | retrain | eval.")] = "eval",
    methods: Annotated[Optional[list[str]], typer.Option("--methods", help="Only these recipe methods.")] = None,
    vary_from: Annotated[
        str, typer.Option(help="First stage the seeds vary: pretrain | fit-stg | retrain; earlier ones use the recipe seed.")
    ] = "pretrain",
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the final table as Markdown.")] = False,
    assignments: Annotated[
        Optional[list[str]], typer.Option("--set", help="Override a recipe field: --set stg.memory=600 (repeatable).")
    ] = None,
    sweeps: Annotated[
        Optional[list[str]],
        typer.Option("--sweep", help="Run every value of a field: --sweep stg.memory=0,600,1200 (repeatable: a grid)."),
    ] = None,
    columns: Annotated[
        Optional[str],
        typer.Option("--columns", help="Pivot the table: one top-1 column per value of a swept field, or per recipe "
                                       "with `recipe` (Table 1: one recipe per imbalance, --columns recipe)."),
    ] = None,
    report_path: Annotated[
        Optional[Path], typer.Option("--report", help="Also write a one-file HTML report of the run.")
    ] = None,
    force: ForceOption = False,
) -> None:
    """Whole recipes: make-dataset → pretrain → fit-stg → retrain (each method) → eval, then one table."""
    from ltstg.stages.evaluate import markdown_table, markdown_wide_table, require_swept
    from ltstg.stages.pipeline import recipe_labels, run_sweep

    options = _options(ctx)
    overrides = parse_assignments(assignments or [])
    if options.seed is not None:
        overrides["seed"] = options.seed
    settings = [_recipe(options, path, overrides) for path in recipes]
    grid = parse_sweeps(sweeps or [])
    swept = (["recipe"] if len(recipes) > 1 else []) + list(grid)
    if columns is not None:
        require_swept(columns, swept)  # before hours of training, not after
        if until != "eval":
            raise LtstgError(f"--columns needs a run up to eval (it pivots the test top-1); this one stops at {until}.")
    if report_path is not None and (swept or until != "eval"):
        raise LtstgError("--report needs one recipe run up to eval without --sweep (one methods table).")
    started = time.perf_counter()
    with RichProgress(not options.json) as report:
        run = _context(options, report, force)
        rows, results = run_sweep(run, list(recipes), overrides, grid, seeds=seeds or None, until=until,
                                  methods=methods, vary_from=vary_from)
    elapsed = time.perf_counter() - started
    name = " ".join(map(str, recipes))
    recipe_seeds = " ".join(map(str, sorted({s.seed for s in settings})))
    subset_seeds = " ".join(map(str, sorted({s.dataset.subset_seed for s in settings})))
    varied = (
        f"seeds {' '.join(map(str, seeds or [recipe_seeds]))} vary {vary_from} onwards "
        f"(earlier stages: seed {recipe_seeds}; data set: subset seed {subset_seeds})"
    )
    if report_path is not None:
        import shlex

        flags = [name, *(f"--seeds {seed}" for seed in seeds or []), f"--vary-from {vary_from}",
                 *(f"--set {shlex.quote(item)}" for item in assignments or []),
                 *(f"--methods {shlex.quote(method)}" for method in methods or [])]
        command = ("ltstg " + (f"--seed {options.seed} " if options.seed is not None else "")) + "run " + " ".join(flags)
        _write_run_report(options, run.store, rows, results, f"{name} · {varied}", report_path, command)
    title = f"{name} · {varied} · {elapsed:.0f} s"
    if markdown:
        body = markdown_wide_table(rows, columns, swept) if columns else markdown_table(rows, swept)
        sys.stdout.write(f"{title}\n\n" + body + "\n")
        return
    payload = {
        "recipes": [str(path) for path in recipes],
        "seeds": seeds or sorted({s.seed for s in settings}),
        "vary_from": vary_from,
        "subset_seeds": sorted({s.dataset.subset_seed for s in settings}),
        "swept": {**({"recipe": recipe_labels(list(recipes))} if len(recipes) > 1 else {}),
                  **{field: list(values) for field, values in grid.items()}},
        "columns": columns,
        "rows": rows,
        "artifacts": [artifact_summary(r) for r in results],
        "wall_clock": elapsed,
    }
    if not rows:
        show_results(options, results, f"run {name} (until {until})")
        return
    table = wide_rich_table(rows, title, columns, swept) if columns else comparison_table(rows, title, swept)
    emit(options, payload, table)


@app.command("report")
@guarded
def report_command(
    ctx: typer.Context,
    classifiers: Annotated[
        Optional[list[str]], typer.Argument(help="Classifier artifacts (default: every classifier of the newest features).")
    ] = None,
    out: Annotated[Path, typer.Option(help="HTML file to write.")] = Path("report.html"),
    tsne: Annotated[bool, typer.Option(help="Include the t-SNE figure (a few seconds per 2000 points).")] = True,
    recipe: RecipeOption = None,
) -> None:
    """One self-contained HTML file: data set, curves, methods table (± std over seeds) and every picture."""
    from ltstg.inspect.html_report import RunReport, write_report
    from ltstg.stages import steps
    from ltstg.stages.evaluate import converged
    from ltstg.stages.pipeline import MethodRun, aggregate
    from ltstg.store import SHORT

    options = _options(ctx)
    settings = _recipe(options, recipe, {})
    with RichProgress(not options.json) as progress:
        run = _context(options, progress)
        store = run.store
        if classifiers:
            picked = [pick(run, ref, "classifier") for ref in classifiers]
        else:
            features_id = store.resolve(None, "features")
            picked = [store.get(i.id, "classifier") for i in store.list("classifier") if i.parents[:1] == [features_id]]
            if not picked:
                raise LtstgError(f"no classifier of features {features_id[:SHORT]} in {store.root}; run retrain first.")
        parents = {c.parents[0] for c in picked}
        if len(parents) > 1:
            raise LtstgError("a report shows classifiers of one features artifact; these come from several.")
        features = store.get(parents.pop(), "features")
        backbone = store.get(features.parents[0], "backbone")
        dataset = store.get(features.parents[1], "dataset")
        labels = _group_labels(picked)
        runs = [MethodRun(int(c.settings.get("seed", 0)), labels[c.id],
                          steps.eval_step(run, settings, c, features).artifact, converged(c)) for c in picked]
        stg_ids = {c.parents[1] for c in picked if len(c.parents) > 1}
        stg = store.get(sorted(stg_ids)[0], "stg") if stg_ids else None
    rows = aggregate(runs)
    shown = []
    for row in rows:
        report_artifact = store.get(row["reports"][0], "report")
        shown.append((row["method"], store.get(report_artifact.parents[0], "classifier")))
    kl, omitted = _kl_of_rarest(options, stg, features) if stg is not None else (None, [])
    report = RunReport(f"ltstg report · features {features.id[:SHORT]}", dataset, features, rows, shown,
                       backbone=backbone, stg=stg, kl=kl, omitted=omitted, with_tsne=tsne,
                       commands={"methods": "ltstg report " + " ".join(c.id[:SHORT] for c in picked)})
    _note(options, f"wrote {write_report(report, out)}")
    emit(options, {"out": str(out), "rows": rows}, comparison_table(rows, f"report {out}"))


def _group_labels(classifiers: list[Any]) -> dict[str, str]:
    """A table label per classifier: its method, plus the settings that tell apart methods of one name;
    classifiers that differ only in the seed share a label, so the table averages them."""
    import json as json_module

    def defining(c: Any) -> dict[str, Any]:
        flat = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for key, item in value.items():
                    walk(f"{prefix}{key}.", item)
            else:
                flat[prefix[:-1]] = value

        walk("", {k: v for k, v in c.settings.items() if k != "seed"})
        return flat

    by_method: dict[str, list[Any]] = {}
    for c in classifiers:
        by_method.setdefault(c.info.get("method", "?"), []).append(c)
    labels = {}
    for method, group in by_method.items():
        settings = [defining(c) for c in group]
        keys = sorted({k for s in settings for k in s})
        differing = [k for k in keys if len({json_module.dumps(s.get(k)) for s in settings}) > 1]
        for c, s in zip(group, settings):
            extra = ", ".join(f"{k.split('.')[-1]} {s.get(k)}" for k in differing)
            labels[c.id] = f"{method} ({extra})" if extra else method
    return labels


# -- inspect: the store --------------------------------------------------------------------------
@inspect_app.command("artifacts")
@guarded
def inspect_artifacts(
    ctx: typer.Context,
    kind: Annotated[Optional[str], typer.Option(help="Only this kind.")] = None,
) -> None:
    """List every artifact: id, kind, name, created, parents, size and key metric."""
    from ltstg.store import SHORT, Store

    options = _options(ctx)
    store = Store(options.store)
    store.require()
    names = store.names()
    for odd in store.odd_refs():
        stderr.print(f"[dim]skipped {odd}: not a name file (names are files in refs/)[/dim]", highlight=False)
    infos = store.list(kind)
    table = Table(title=f"artifacts in {store.root}", title_justify="left")
    for column in ("id", "kind", "name", "created", "parents", "size", "key metric"):
        table.add_column(column, no_wrap=column in ("id", "kind", "size"))
    rows = []
    for info in infos:
        key = info.meta.get("key_metric")
        metric = f"{key} {_fmt(info.metrics[key])}" if key in info.metrics else ""
        if info.problem:
            metric = f"[red]{info.problem}[/red]"
        table.add_row(
            info.id[:SHORT],
            info.kind,
            ",".join(names.get(info.id, [])),
            info.created.replace("T", " ")[:19],
            " ".join(p[:8] for p in info.parents),
            _size(info.size),
            metric,
        )
        rows.append(
            {
                "id": info.id,
                "kind": info.kind,
                "names": names.get(info.id, []),
                "created": info.created,
                "parents": info.parents,
                "size": info.size,
                "metrics": info.metrics,
                "problem": info.problem,
            }
        )
    emit(options, {"artifacts": rows}, table)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@inspect_app.command("lineage")
@guarded
def inspect_lineage(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="Artifact id prefix or name.")],
) -> None:
    """Show the tree of ancestors of an artifact."""
    from ltstg.store import SHORT, Store

    options = _options(ctx)
    store = Store(options.store)
    artifact_id = _resolve_any(store, ref)
    tree_data = store.lineage(artifact_id)

    def label(node: dict[str, Any]) -> str:
        info = node["info"]
        if info.problem:
            return f"{info.id[:SHORT]} [red]{info.problem}[/red]"
        return f"[bold]{info.kind}[/bold] {info.id[:SHORT]}  {info.created.replace('T', ' ')[:19]}"

    def build(node: dict[str, Any], tree: Tree) -> None:
        for parent in node["parents"]:
            build(parent, tree.add(label(parent)))

    def as_json(node: dict[str, Any]) -> dict[str, Any]:
        info = node["info"]
        return {"id": info.id, "kind": info.kind, "parents": [as_json(p) for p in node["parents"]]}

    tree = Tree(label(tree_data))
    build(tree_data, tree)
    emit(options, as_json(tree_data), tree)


def _resolve_any(store, ref: str) -> str:
    """Resolve a name or id prefix whatever its kind."""
    from ltstg.store import SHORT

    named = store.root / "refs" / ref
    if named.is_file():
        return named.read_text().strip()
    matches = [i for i in store.ids() if i.startswith(ref.lower())]
    if not matches:
        raise LtstgError(f"no artifact or name {ref!r} in {store.root}; see `ltstg inspect artifacts`.")
    if len(matches) > 1:
        raise LtstgError(f"id prefix {ref!r} is ambiguous: {', '.join(m[:SHORT] for m in matches[:8])}.")
    return matches[0]


@inspect_app.command("verify")
@guarded
def inspect_verify(ctx: typer.Context) -> None:
    """Re-check the content digest of every artifact; exit 2 if any is corrupt."""
    from ltstg.store import SHORT, Store

    options = _options(ctx)
    store = Store(options.store)
    store.require()
    results = store.verify()
    stale = store.stale_files()
    table = Table(title=f"verify {store.root}", title_justify="left")
    for column in ("id", "kind", "status"):
        table.add_column(column, no_wrap=column != "status")
    for info, problem in results:
        table.add_row(info.id[:SHORT], info.kind, "[green]ok[/green]" if problem is None else f"[red]{problem}[/red]")
    for path in stale:
        table.add_row(path.name[:SHORT], "temp", f"[yellow]left by a killed writer: {path} (removed on the next write)[/yellow]")
    bad = [(info, problem) for info, problem in results if problem]
    emit(
        options,
        {
            "checked": len(results),
            "corrupt": [{"id": i.id, "problem": p} for i, p in bad],
            "stale_temp_files": [str(p) for p in stale],
        },
        table,
    )
    if bad:
        raise LtstgError(f"{len(bad)} of {len(results)} artifacts failed verification.")


@inspect_app.command("dataset")
@guarded
def inspect_dataset(
    ctx: typer.Context,
    ref: Annotated[Optional[str], typer.Argument(help="Dataset artifact (id prefix or name; default newest).")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write the class-count curve to this PNG.")] = None,
) -> None:
    """Classes of a data set: train count, shot group and a bar, plus the class-count curve."""
    from ltstg.store import SHORT, Store

    options = _options(ctx)
    store = Store(options.store)
    dataset = store.get(store.resolve(ref, "dataset"), "dataset")
    names, groups = dataset.info["class_names"], dataset.info["groups"]
    counts = dataset["class_counts"].tolist()
    test_counts = torch_bincount(dataset["test_labels"], len(names))
    table = Table(title=f"dataset {dataset.id[:SHORT]}: {dataset.info['source']}, {dataset.info['protocol']}", title_justify="left")
    for column in ("class", "name", "train", "test", "group", ""):
        table.add_column(column, justify="right" if column in ("class", "train", "test") else "left")
    widest = max(counts) or 1
    colour = {"many": "blue", "medium": "yellow", "few": "red"}
    for index, (name, count, group) in enumerate(zip(names, counts, groups)):
        bar = "█" * max(1, round(24 * count / widest))
        table.add_row(str(index), name, str(count), str(test_counts[index]), group, f"[{colour[group]}]{bar}[/]")
    if plot is not None:
        from ltstg.inspect.plots import plot_class_counts

        plot_class_counts(counts, groups, plot, title=f"{dataset.info['source']} ({dataset.info['protocol']})")
        _note(options, f"wrote {plot}")
    payload = {
        "id": dataset.id,
        "source": dataset.info["source"],
        "protocol": dataset.info["protocol"],
        "classes": [
            {"index": i, "name": n, "train": c, "test": test_counts[i], "group": g}
            for i, (n, c, g) in enumerate(zip(names, counts, groups))
        ],
        "skipped": dataset.info.get("skipped_count", 0),
    }
    emit(options, payload, table)


@inspect_app.command("confusion")
@guarded
def inspect_confusion(
    ctx: typer.Context,
    classifier: Annotated[Optional[str], typer.Argument(help="Classifier artifact (default newest).")] = None,
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("confusion.png"),
) -> None:
    """Row-normalised test confusion matrix of one classifier, classes from the largest training class down."""
    from ltstg.api import load
    from ltstg.inspect.figures import confusion_figure
    from ltstg.store import SHORT, Store

    options = _options(ctx)
    store = Store(options.store)
    artifact = load(store, "classifier", classifier)
    features = store.get(artifact.parents[0], "features")
    label = artifact.info.get("method", artifact.id[:SHORT])
    _note(options, f"wrote {confusion_figure(label, artifact, features, out)}")
    emit(options, {"classifier": artifact.id, "out": str(out)}, None)


@inspect_app.command("curves")
@guarded
def inspect_curves(
    ctx: typer.Context,
    backbone: Annotated[Optional[str], typer.Argument(help="Backbone artifact (default newest).")] = None,
    stg: Annotated[Optional[str], typer.Option(help="Also the loss curve of this STG artifact.")] = None,
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("curves.png"),
) -> None:
    """Stage-1 loss and test top-1 per epoch (and the STG's loss), from what the artifacts store."""
    from ltstg.api import load
    from ltstg.inspect.figures import curves_figure
    from ltstg.store import Store

    options = _options(ctx)
    store = Store(options.store)
    artifact = load(store, "backbone", backbone)
    stg_artifact = load(store, "stg", stg) if stg is not None else None
    _note(options, f"wrote {curves_figure(artifact, stg_artifact, out)}")
    emit(options, {"backbone": artifact.id, "out": str(out)}, None)


@inspect_app.command("kl-divergence")
@guarded
def inspect_kl_divergence(
    ctx: typer.Context,
    stg: Annotated[Optional[str], typer.Option(help="STG artifact (default newest).")] = None,
    features: Annotated[Optional[str], typer.Option(help="Features artifact (default: the STG's parent).")] = None,
    class_: Annotated[Optional[str], typer.Option("--class", help="Tail class by name or index (default: the rarest).")] = None,
    samples: Annotated[int, typer.Option(min=1, help="Training samples of the class to compare.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the sample choice.")] = 0,
    csv: Annotated[Optional[Path], typer.Option("--csv", help="Also write the matrix as CSV.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Also draw the matrix as a heat map (PNG).")] = None,
    force: ForceOption = False,
) -> None:
    """Pairwise KL of the STG's per-sample Gaussians for samples of one tail class (paper Table 5)."""
    from ltstg.inspect.kl import class_names, kl_csv, kl_report, kl_rows, resolve_class
    from ltstg.stages import run_stage

    options = _options(ctx)
    with RichProgress(not options.json) as report:
        run = _context(options, report, force)
        stg_artifact = pick(run, stg, "stg")
        features_artifact = pick(run, features or stg_artifact.parents[0], "features")
        if stg_artifact.parents[:1] != [features_artifact.id]:
            raise LtstgError(
                f"STG {stg_artifact.id[:12]} was fitted on other features than {features_artifact.id[:12]}; "
                "leave out --features to use its own."
            )
        class_index = resolve_class(class_, class_names(features_artifact)) if class_ is not None else None
        result = run_stage(
            run,
            "kl-report",
            {"class_index": class_index, "samples": samples},
            [stg_artifact, features_artifact],
            lambda generator, checkpoint: kl_report(
                stg_artifact, features_artifact, class_index=class_index, samples=samples, seed=seed, device=run.device
            ),
            seed=seed,
        )
    artifact = result.artifact
    rows = kl_rows(artifact)
    if csv is not None:
        kl_csv(artifact, csv)
        _note(options, f"wrote {csv}")
    if plot is not None:
        from ltstg.inspect.figures import kl_figure

        _note(options, f"wrote {kl_figure(artifact, plot)}")
    info, metrics = artifact.info, artifact.metrics
    title = (
        f"KL(N_i ‖ N_j) for {len(rows)} samples of class {info['class_index']} ({info['class_name']}, "
        f"{info['class_count']} train images) · report {artifact.id[:12]}"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("sample", justify="right")
    table.add_column("train index", justify="right")
    for j in range(len(rows)):
        table.add_column(f"→{j + 1}", justify="right")
    table.add_column("borrowed head")
    table.add_column("cosine", justify="right")
    for row in rows:
        cells = [f"{row[f'kl_to_{j + 1}']:.2f}" for j in range(len(rows))]
        head = f"{row['borrowed_head_name']} ({row['borrowed_head']})"
        table.add_row(str(row["sample"]), str(row["train_index"]), *cells, head, f"{row['cosine']:.3f}")
    table.caption = (
        f"mean off-diagonal KL {_fmt(metrics.get('mean_kl'))} · {_fmt(metrics.get('distinct_heads'))} distinct "
        f"head classes borrowed, the most common by {_fmt(metrics.get('largest_share'))} samples"
    )
    emit(options, {"id": artifact.id, "class": info["class_index"], "class_name": info["class_name"], "rows": rows, "metrics": metrics}, table)


@inspect_app.command("tsne")
@guarded
def inspect_tsne(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="PNG file to write.")],
    features: Annotated[Optional[str], typer.Option(help="Features artifact (default newest).")] = None,
    stg: Annotated[Optional[str], typer.Option(help="STG artifact whose augmentations to overlay.")] = None,
    no_stg: Annotated[bool, typer.Option("--no-stg", help="Do not overlay STG augmentations.")] = False,
    classifier: Annotated[
        Optional[list[str]], typer.Option("--classifier", help="Add a decision-region panel (repeatable).")
    ] = None,
    max_points: Annotated[int, typer.Option(help="Cap on embedded training features.")] = 2000,
    lam: Annotated[float, typer.Option(help="λ of the overlaid STG augmentations.")] = 1.5,
    seed: Annotated[int, typer.Option()] = 0,
    width: Annotated[int, typer.Option(help="Picture width in pixels.")] = 1200,
    height: Annotated[int, typer.Option(help="Picture height in pixels.")] = 900,
) -> None:
    """2-D t-SNE of features with STG-augmented tail features (Figure 3) and decision regions (Figure 4)."""
    from ltstg.inspect.tsne import tsne_figure
    from ltstg.store import Store

    options = _options(ctx)
    store = Store(options.store)
    features_artifact = store.get(store.resolve(features, "features"), "features")
    stg_artifact = None
    if not no_stg and stg is not None:
        stg_artifact = store.get(store.resolve(stg, "stg"), "stg")
        if stg_artifact.parents[:1] != [features_artifact.id]:
            raise LtstgError(f"STG {stg_artifact.id[:12]} was fitted on other features than {features_artifact.id[:12]}.")
    elif not no_stg:  # the newest STG fitted on these features, if any
        fitted = [i for i in store.list("stg") if i.problem is None and i.parents[:1] == [features_artifact.id]]
        stg_artifact = store.get(fitted[-1].id, "stg") if fitted else None
    classifiers = [store.get(store.resolve(ref, "classifier"), "classifier") for ref in classifier or []]
    summary = tsne_figure(
        features_artifact, out, stg=stg_artifact, classifiers=classifiers, max_points=max_points, lam=lam,
        seed=seed, size=(width, height),
    )
    emit(options, {k: str(v) if isinstance(v, Path) else v for k, v in summary.items()}, result_table("t-SNE", summary))


def torch_bincount(labels: Any, size: int) -> list[int]:
    import torch

    return torch.bincount(labels, minlength=size).tolist()


def _note(options: Options, message: str) -> None:
    stderr.print(f"[dim]{message}[/dim]", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
