"""The `ltstg` command line: parse flags, load the recipe, call a stage, render the result.

Only this module knows about the terminal: rich tables on stdout (or JSON with --json), progress
bars and notes on stderr, and exit code 2 with one red line per problem for user errors.
"""
from __future__ import annotations

import functools
import json
import os
import sys
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
stderr = Console(stderr=True)


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

    return wrapper


class RichReport:
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

    def __enter__(self) -> "RichReport":
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def __call__(self, task: str, done: int, total: int, **metrics: float) -> None:
        shown = "  ".join(f"{k} {_fmt(v)}" for k, v in metrics.items())
        if task not in self.tasks:
            self.tasks[task] = self.progress.add_task(task, total=total, metrics=shown)
        self.progress.update(self.tasks[task], completed=done, total=total, metrics=shown)

    def note(self, message: str) -> None:
        self.progress.console.print(f"[dim]{message}[/dim]", highlight=False)


def _fmt(value: Any) -> str:
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


def _context(options: Options, report: RichReport, force: bool = False):
    import torch

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
        report=report if main_rank else silent_report,
        note=report.note if main_rank else (lambda message: None),
        is_main=main_rank,
        run_options={"device": str(device), "world_size": world_size, "argv": sys.argv[1:]},
    )


def silent_report(task: str, done: int, total: int, **metrics: float) -> None:
    return None


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
        raise LtstgError("--device cuda was asked for, but torch sees no CUDA device; use --device cpu.")
    return torch.device(name)


def emit(options: Options, payload: dict[str, Any], table: Table | Tree | None) -> None:
    """The result: JSON for scripts, or a rich table for people. Nothing else goes to stdout."""
    if options.json:
        sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    elif table is not None:
        stdout.print(table)


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
        table.add_column(column)
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
    with RichReport(not options.json) as report:
        result = steps.dataset_step(_context(options, report, force), settings, name=name)
    show_results(options, [result], "make-dataset")


def not_yet(command: str, issue: int) -> None:
    raise LtstgError(f"`ltstg {command}` is not available in this version yet (tracked in issue {issue}).")


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
    with RichReport(not options.json and _torchrun_env()[0] == 0) as report:
        run = _context(options, report, force)
        data = run.store.get(run.store.resolve(dataset, "dataset"), "dataset")
        backbone = steps.pretrain_step(run, settings, data, name=name)
        if not run.is_main:
            return
        features = steps.features_step(run, settings, backbone.artifact, data, name=f"{name}-features" if name else None)
    show_results(options, [backbone, features], "pretrain")


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
    names = store.names()
    infos = store.list(kind)
    table = Table(title=f"artifacts in {store.root}", title_justify="left")
    for column in ("id", "kind", "name", "created", "parents", "size", "key metric"):
        table.add_column(column)
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
    results = store.verify()
    table = Table(title=f"verify {store.root}", title_justify="left")
    for column in ("id", "kind", "status"):
        table.add_column(column)
    for info, problem in results:
        table.add_row(info.id[:SHORT], info.kind, "[green]ok[/green]" if problem is None else f"[red]{problem}[/red]")
    bad = [(info, problem) for info, problem in results if problem]
    emit(
        options,
        {"checked": len(results), "corrupt": [{"id": i.id, "problem": p} for i, p in bad]},
        table,
    )
    if bad:
        raise LtstgError(f"{len(bad)} of {len(results)} artifacts failed verification.")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
