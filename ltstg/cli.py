"""The `ltstg` command line: parse flags, load the recipe, call a stage, render the result.

The stage commands' options are generated from the recipe's settings models (ltstg/flags.py); what the
terminal shows lives in ltstg/terminal.py, the `inspect` commands in ltstg/cli_inspect.py, and device
set-up in ltstg/runtime.py, which the Python API shares.
"""
from __future__ import annotations

import importlib.util
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from ltstg import tables
from ltstg.cli_inspect import inspect_app
from ltstg.cli_model import export_command, predict_command
from ltstg.errors import LtstgError
from ltstg.flags import overrides, section_flags, with_flags
from ltstg.methods import uses_stg
from ltstg.terminal import (
    PICTURES, Options, RichProgress, artifact_summary, emit, guarded, methods_table, note, output_file, pick,
    pick_on_every_rank, run_context, show_results, writable_folder,
)

app = typer.Typer(
    help="Long-tailed image classification with the Semantic Transformation Generator (STG) and its baselines.\n\n"
    "Results go to stdout: a table (at the terminal's width; piped or redirected, at its full width, every cell "
    "whole), Markdown with --markdown where a command has it, or JSON with --json. Progress and notes go to stderr.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=True,  # --install-completion, --show-completion (typer)
)
app.add_typer(inspect_app, name="inspect")


@app.callback()
def main_options(
    ctx: typer.Context,
    store: Annotated[Path, typer.Option(envvar="LTSTG_STORE", help="Artifact store folder.")] = Path(".artifacts"),
    json_output: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda (auto = cuda when available).")] = "auto",
    seed: Annotated[Optional[int], typer.Option(help="Override the recipe's seed.")] = None,
    log: Annotated[
        Optional[tuple[str, Path]],
        typer.Option(metavar="FORMAT DIR", help="Write each artifact's training scalars: csv DIR (<kind>-<id>.csv), or "
                     "tensorboard DIR (TensorBoard runs <kind>-<id>, the CSV beside them; ltstg[tensorboard])."),
    ] = None,
    time_limit: Annotated[
        Optional[str],
        typer.Option(metavar="DURATION", help="Stop a stage still training once this much time has passed (90m, 2h30m, "
                     "45s), at its next epoch checkpoint, with exit code 3: rerunning the same command continues."),
    ] = None,
) -> None:
    if device not in {"auto", "cpu", "cuda"} and not device.startswith("cuda:"):
        raise typer.BadParameter(f"{device!r} is not one of auto, cpu, cuda", param_hint="--device")
    if log is not None:
        if log[0] not in LOG_FORMATS:
            raise typer.BadParameter(f"{log[0]!r} is not one of {', '.join(LOG_FORMATS)}", param_hint="--log")
        if log[0] == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
            raise typer.BadParameter("tensorboard needs its package: pip install 'ltstg[tensorboard]'", param_hint="--log")
        try:
            writable_folder(log[1], f"--log {log[0]} {log[1]}")
        except LtstgError as error:
            raise typer.BadParameter(str(error), param_hint="--log") from None
    limit = None if time_limit is None else duration_seconds(time_limit)
    ctx.obj = Options(store=store, json=json_output, device=device, seed=seed, log=log, time_limit=limit)


_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[dhms])+|\d+(?:\.\d+)?")
_UNIT_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}


def duration_seconds(text: str) -> float:
    """`2h30m`, `90m`, `1.5h`, `45s` or plain seconds -> seconds."""
    if not _DURATION.fullmatch(text.strip()):
        raise typer.BadParameter(f"{text!r} is not a duration such as 90m, 2h30m, 45s", param_hint="--time-limit")
    parts = re.findall(r"(\d+(?:\.\d+)?)([dhms]?)", text.strip())
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


LOG_FORMATS = ("csv", "tensorboard")

RecipeOption = Annotated[Optional[Path], typer.Option("--recipe", "-r", help="YAML recipe (see recipes/).")]
NameOption = Annotated[Optional[str], typer.Option(help="Also store the result under this name.")]
ForceOption = Annotated[bool, typer.Option(help="Recompute even if the artifact exists.")]


def load(options: Options, path: Optional[Path], given: dict[str, Any], *, method: Optional[str] = None):
    """The recipe file, then its named method, then the flags and the global --seed: one validation. Commands
    call it before they import the stages (and torch), so a bad field is answered at once."""
    from ltstg.recipe import load_recipe

    if options.seed is not None:
        given = {**given, "seed": options.seed}
    return load_recipe(path, given, method=method)


def stage_flags(section: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add the options generated from one recipe section to a stage command."""
    return lambda command: with_flags(command, section_flags(section))


# -- the stages ------------------------------------------------------------------------------------
@app.command("make-dataset")
@guarded
@stage_flags("dataset")
def make_dataset_command(
    ctx: typer.Context,
    source: Annotated[
        Optional[str], typer.Argument(help="synthetic | cifar10 | cifar100 | imagefolder | imagenet-lt | places-lt | inat2018")
    ] = None,
    recipe: RecipeOption = None,
    name: NameOption = None,
    force: ForceOption = False,
    **flags: Any,
) -> None:
    """Build a long-tailed data set artifact (images or paths, labels, class counts and groups)."""
    options: Options = ctx.obj
    settings = load(options, recipe, {"dataset.source": source, **overrides("dataset", flags)})
    from ltstg.stages import steps

    with RichProgress(not options.json) as progress:
        result = steps.dataset_step(run_context(options, progress, force), settings, name=name)
    show_results(options, [result], "make-dataset")


@app.command("pretrain")
@guarded
@stage_flags("pretrain")
def pretrain_command(
    ctx: typer.Context,
    recipe: RecipeOption = None,
    dataset: Annotated[Optional[str], typer.Option(help="Dataset artifact (id prefix or name; default newest).")] = None,
    name: NameOption = None,
    force: ForceOption = False,
    **flags: Any,
) -> None:
    """Stage 1: train the backbone with mixup, then cache its features (two artifacts)."""
    options: Options = ctx.obj
    settings = load(options, recipe, overrides("pretrain", flags))
    from ltstg import ranks
    from ltstg.runtime import is_main_process
    from ltstg.stages import steps

    with RichProgress(not options.json and is_main_process()) as progress:
        run = run_context(options, progress, force)
        data = pick_on_every_rank(run, dataset, "dataset")
        backbone = steps.pretrain_step(run, settings, data, name=name)
        ranks.leave()  # under torchrun, stage 1 was the shared part; the features are the first rank's
        if not run.is_main:
            return
        features = steps.features_step(run, settings, backbone.artifact, data, name=f"{name}-features" if name else None)
    show_results(options, [backbone, features], "pretrain")


@app.command("fit-stg")
@guarded
@stage_flags("stg")
def fit_stg_command(
    ctx: typer.Context,
    recipe: RecipeOption = None,
    features: Annotated[Optional[str], typer.Option(help="Features artifact (id prefix or name; default newest).")] = None,
    name: NameOption = None,
    force: ForceOption = False,
    **flags: Any,
) -> None:
    """Stage 2: learn the Semantic Transformation Generator on head-class features."""
    options: Options = ctx.obj
    settings = load(options, recipe, overrides("stg", flags))
    from ltstg.stages import steps

    with RichProgress(not options.json) as progress:
        run = run_context(options, progress, force)
        result = steps.fit_stg_step(run, settings, pick(run, features, "features"), name=name)
    show_results(options, [result], "fit-stg")


@app.command("retrain")
@guarded
@stage_flags("retrain")
def retrain_command(
    ctx: typer.Context,
    recipe: RecipeOption = None,
    method: Annotated[Optional[str], typer.Option(help="A named method of the recipe's `methods`.")] = None,
    features: Annotated[Optional[str], typer.Option(help="Features artifact (default newest).")] = None,
    stg: Annotated[Optional[str], typer.Option(help="STG artifact for --augmenter stg or --scope tail (default newest).")] = None,
    name: NameOption = None,
    force: ForceOption = False,
    **flags: Any,
) -> None:
    """Stage 3: re-train the classifier on frozen features, with a feature augmenter."""
    options: Options = ctx.obj
    settings = load(options, recipe, overrides("retrain", flags), method=method)
    from ltstg.stages import steps

    with RichProgress(not options.json) as progress:
        run = run_context(options, progress, force)
        parent = pick(run, features, "features")
        # retrain.bn_shift trains on the shifted variant of the newest features; features named are taken as given
        variant = steps.features_for(run, settings, settings.retrain, parent) if features is None else None
        parent = variant.artifact if variant is not None else parent
        stg_artifact = pick(run, stg, "stg", parent=parent.id) if uses_stg(settings.retrain.augment) else None
        result = steps.retrain_step(run, settings, settings.retrain, parent, stg_artifact, name=name)
    show_results(options, [variant, result] if variant is not None else [result], "retrain")


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
    csv_path: Annotated[
        Optional[Path], typer.Option("--csv", help="Also write per-class rows (accuracy, training count, group) as CSV.")
    ] = None,
    recipe: RecipeOption = None,
    name: NameOption = None,
    force: ForceOption = False,
) -> None:
    """Stage 4: top-1, many/medium/few, ECE and NLL on the test split; --compare for a table of methods."""
    options: Options = ctx.obj
    for path, flag in ((plot, "--plot"), (plot_norms, "--plot-norms"), (plot_reliability, "--plot-reliability")):
        output_file(path, PICTURES, flag)
    output_file(csv_path, (".csv",), "--csv")
    one_output(options, markdown)
    settings = load(options, recipe, {})
    from ltstg.stages import steps  # after the recipe: a bad field is answered before torch is imported
    from ltstg.stages.evaluate import compare_rows

    refs = list(classifiers or []) + list(compare or []) or [None]
    with RichProgress(not options.json) as progress:
        run = run_context(options, progress, force)
        chosen = [run.store.find(ref, "classifier") for ref in refs]
        if plot or plot_norms or plot_reliability:
            _one_features(chosen)  # before any report is written
        results = [steps.eval_step(run, settings, classifier, run.store.get(classifier.parents[0], "features"),
                                   name=name if len(chosen) == 1 else None) for classifier in chosen]
    rows = compare_rows([r.artifact for r in results], chosen)
    names = run.store.names()
    for row, classifier in zip(rows, chosen):  # a named classifier keeps its name in the table
        if names.get(classifier.id):
            row["method"] = f"{row['method']} ({names[classifier.id][0]})"
    if plot or plot_norms or plot_reliability:
        _eval_pictures(chosen, [row["method"] for row in rows], plot, plot_norms, plot_reliability, run,
                       settings.eval.ece_bins)
    if csv_path is not None:
        from ltstg.store import atomic_write

        atomic_write(csv_path, [per_class_csv([r.artifact for r in results], [row["method"] for row in rows],
                                              run.store).encode("utf-8")])
        note(f"wrote {csv_path}")
    if markdown:
        sys.stdout.write(tables.markdown(tables.methods_cells(rows)) + "\n")
    elif len(results) == 1 and not compare:
        if rows[0]["not_converged"]:
            note(f"warning: classifier {chosen[0].id[:12]} did not converge (its notes say how): its scores are no result")
        show_results(options, results, "eval")
    else:
        emit(options, {"rows": rows}, methods_table("comparison", tables.methods_cells(rows)))


def per_class_csv(reports: list[Any], labels: list[str], store: Any) -> str:
    """One line per evaluated classifier and class: its test accuracy, the class's training count and group."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["method", "report", "class", "name", "train_count", "group", "accuracy"])
    for report, label in zip(reports, labels):
        features = store.get(report.parents[1], "features")
        counts = features["class_counts"].tolist()
        names = features.info.get("class_names") or [str(c) for c in range(len(counts))]
        groups = features.info.get("groups") or [""] * len(counts)
        for index, accuracy in enumerate(report["per_class_accuracy"].tolist()):
            writer.writerow([label, report.id, index, names[index], counts[index], groups[index], repr(accuracy)])
    return buffer.getvalue()


def _eval_pictures(classifiers: list[Any], labels: list[str], per_class: Optional[Path], norms: Optional[Path],
                   reliability: Optional[Path], run: Any, bins: int) -> None:
    """The compared classifiers as pictures; they must share one features artifact (one x axis)."""
    from ltstg.inspect import figures

    labelled = list(zip(labels, classifiers))
    features = run.store.get(_one_features(classifiers), "features")
    for path, draw in ((per_class, figures.per_class_figure), (norms, figures.weight_norms_figure)):
        if path is not None:
            note(f"wrote {draw(labelled, features, path)}")
    if reliability is not None:
        note(f"wrote {figures.reliability_figure(labelled, features, reliability, bins=bins)}")


def _one_features(classifiers: list[Any]) -> str:
    """The pictures share one x axis: the classes of one features artifact."""
    parents = {c.parents[0] for c in classifiers}
    if len(parents) > 1:
        raise LtstgError("the pictures compare classifiers of one features artifact; these come from several.")
    return parents.pop()


def one_output(options: Options, markdown: bool) -> None:
    if options.json and markdown:
        raise LtstgError("--json and --markdown both ask for the result on stdout; give one of them.")


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
    from ltstg.recipe import parse_assignments, parse_sweeps

    options: Options = ctx.obj
    given = parse_assignments(assignments or [])
    settings = [load(options, path, given) for path in recipes]
    from ltstg.stages.pipeline import run_sweep  # after the recipes: a bad field is answered before torch is imported
    grid = parse_sweeps(sweeps or [])
    swept = (["recipe"] if len(recipes) > 1 else []) + list(grid)
    _check_run_output(columns, swept, until, report_path)
    one_output(options, markdown)
    output_file(report_path, (".html",), "--report")
    started = time.perf_counter()
    with RichProgress(not options.json) as progress:
        run = run_context(options, progress, force)
        rows, results = run_sweep(run, list(recipes), {**given, **_seed(options)}, grid, seeds=seeds or None,
                                  until=until, methods=methods, vary_from=vary_from)
    if not run.is_main:  # under torchrun the other ranks shared stage 1; the first one reports
        return
    elapsed = time.perf_counter() - started
    title = _run_title(recipes, settings, seeds, vary_from)
    if report_path is not None:
        from ltstg.inspect.html_report import write_report
        from ltstg.stages.run_report import run_report

        command = _run_command_line(options, recipes, seeds, vary_from, assignments, methods)
        note(f"wrote {write_report(run_report(run, rows, results, title, command), report_path)}")
    _show_run(options, recipes, settings, grid, rows, results, until, columns, markdown,
              title=f"{title} · {elapsed:.0f} s", seeds=seeds, vary_from=vary_from, elapsed=elapsed)


def _show_run(options: Options, recipes: list[Path], settings: list[Any], grid: dict[str, list[Any]],
              rows: list[dict[str, Any]], results: list[Any], until: str, columns: Optional[str], markdown: bool, *,
              title: str, seeds: Optional[list[int]], vary_from: str, elapsed: float) -> None:
    """The run's table (Markdown, terminal or JSON), or its artifacts when it stopped before eval."""
    from ltstg.stages.pipeline import recipe_labels

    swept = (["recipe"] if len(recipes) > 1 else []) + list(grid)
    cells = tables.wide_cells(rows, columns, swept) if columns else tables.methods_cells(rows, swept)
    if markdown:
        sys.stdout.write(f"{title}\n\n" + tables.markdown(cells) + "\n")
        return
    if not rows:
        show_results(options, results, f"run {' '.join(map(str, recipes))} (until {until})")
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
    emit(options, payload, methods_table(title, cells))


def _seed(options: Options) -> dict[str, Any]:
    return {"seed": options.seed} if options.seed is not None else {}


def _check_run_output(columns: Optional[str], swept: list[str], until: str, report_path: Optional[Path]) -> None:
    """What the table and the report need, checked before hours of training, not after."""
    if columns is not None:
        tables.require_swept(columns, swept)
        if until != "eval":
            raise LtstgError(f"--columns needs a run up to eval (it pivots the test top-1); this one stops at {until}.")
    if report_path is not None and (swept or until != "eval"):
        raise LtstgError("--report needs one recipe run up to eval without --sweep (one methods table).")


def _run_title(recipes: list[Path], settings: list[Any], seeds: Optional[list[int]], vary_from: str) -> str:
    """Which recipes ran and what varied: the seeds from `vary_from` on, earlier stages on the recipe seed."""
    recipe_seeds = " ".join(map(str, sorted({s.seed for s in settings})))
    subset_seeds = " ".join(map(str, sorted({s.dataset.subset_seed for s in settings})))
    return (
        f"{' '.join(map(str, recipes))} · seeds {' '.join(map(str, seeds or [recipe_seeds]))} vary {vary_from} onwards "
        f"(earlier stages: seed {recipe_seeds}; data set: subset seed {subset_seeds})"
    )


def _run_command_line(options: Options, recipes: list[Path], seeds: Optional[list[int]], vary_from: str,
                      assignments: Optional[list[str]], methods: Optional[list[str]]) -> str:
    """The command that reruns this run, for the report."""
    flags = [" ".join(map(str, recipes)), *(f"--seeds {seed}" for seed in seeds or []), f"--vary-from {vary_from}",
             *(f"--set {shlex.quote(item)}" for item in assignments or []),
             *(f"--methods {shlex.quote(method)}" for method in methods or [])]
    return "ltstg " + (f"--seed {options.seed} " if options.seed is not None else "") + "run " + " ".join(flags)


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
    options: Options = ctx.obj
    output_file(out, (".html",), "--out")
    settings = load(options, recipe, {})
    from ltstg.inspect.html_report import write_report
    from ltstg.stages.run_report import store_report

    with RichProgress(not options.json) as progress:
        report, rows = store_report(run_context(options, progress), settings, list(classifiers or []), with_tsne=tsne)
    note(f"wrote {write_report(report, out)}")
    emit(options, {"out": str(out), "rows": rows}, methods_table(f"report {out}", tables.methods_cells(rows)))


app.command("export")(export_command)
app.command("predict")(predict_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
