"""`ltstg inspect ...`: look inside the store, the data and what the STG learned."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table
from rich.tree import Tree

from ltstg.errors import LtstgError
from ltstg.terminal import (
    PICTURES, Options, RichProgress, emit, fmt, guarded, note, output_file, pick, result_table, run_context, text_table,
)

inspect_app = typer.Typer(help="Look inside the store, the data and what the STG learned.", no_args_is_help=True)


# -- inspect: the store --------------------------------------------------------------------------
@inspect_app.command("artifacts")
@guarded
def inspect_artifacts(
    ctx: typer.Context,
    kind: Annotated[Optional[str], typer.Option(help="Only this kind.")] = None,
) -> None:
    """List every artifact: id, kind, name, created, parents, size and key metric."""
    from ltstg.store import SHORT, Store

    options: Options = ctx.obj
    store = Store(options.store)
    store.require()
    names = store.names()
    for odd in store.odd_refs():
        note(f"skipped {odd}: not a name file (names are files in refs/)")
    infos = store.list(kind)
    table = Table(title=f"artifacts in {store.root}", title_justify="left")
    for column in ("id", "kind", "name", "created", "parents", "size", "key metric"):
        table.add_column(column, no_wrap=column in ("id", "kind", "size"))
    rows = []
    for info in infos:
        key = info.meta.get("key_metric")
        metric = f"{key} {fmt(info.metrics[key])}" if key in info.metrics else ""
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

    options: Options = ctx.obj
    store = Store(options.store)
    artifact_id = store.resolve(ref, sound=False)  # a damaged or deleted ancestor is what lineage shows
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


@inspect_app.command("verify")
@guarded
def inspect_verify(ctx: typer.Context) -> None:
    """Re-check the content digest of every artifact; exit 2 if any is corrupt."""
    from ltstg.store import SHORT, Store

    options: Options = ctx.obj
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

    options: Options = ctx.obj
    output_file(plot, PICTURES, "--plot")
    store = Store(options.store)
    dataset = store.find(ref, "dataset")
    names, groups = dataset.info["class_names"], dataset.info["groups"]
    counts = dataset["class_counts"].tolist()
    test_counts = torch_bincount(dataset["test_labels"], len(names))
    val_counts = torch_bincount(dataset["val_labels"], len(names)) if "val_labels" in dataset.tensors else None
    val_origin = dataset.info.get("val_origin") or "none (made before validation splits)"
    table = Table(
        title=f"dataset {dataset.id[:SHORT]}: {dataset.info['source']}, {dataset.info['protocol']}; "
        f"validation: {val_origin}", title_justify="left",
    )
    for column in ("class", "name", "train", "val", "test", "group", ""):
        table.add_column(column, justify="right" if column in ("class", "train", "val", "test") else "left")
    widest = max(counts) or 1
    colour = {"many": "blue", "medium": "yellow", "few": "red"}
    for index, (name, count, group) in enumerate(zip(names, counts, groups)):
        bar = "█" * max(1, round(24 * count / widest))
        val = str(val_counts[index]) if val_counts is not None else "–"
        table.add_row(str(index), name, str(count), val, str(test_counts[index]), group, f"[{colour[group]}]{bar}[/]")
    if plot is not None:
        from ltstg.inspect.plots import plot_class_counts

        plot_class_counts(counts, groups, plot, title=f"{dataset.info['source']} ({dataset.info['protocol']})")
        note(f"wrote {plot}")
    payload = {
        "id": dataset.id,
        "source": dataset.info["source"],
        "protocol": dataset.info["protocol"],
        "val_origin": dataset.info.get("val_origin"),
        "classes": [
            {"index": i, "name": n, "train": c, "val": val_counts[i] if val_counts is not None else None,
             "test": test_counts[i], "group": g}
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
    from ltstg.inspect.figures import confusion_figure
    from ltstg.store import SHORT, Store

    options: Options = ctx.obj
    output_file(out, PICTURES, "--out")
    store = Store(options.store)
    artifact = store.find(classifier, "classifier")
    features = store.get(artifact.parents[0], "features")
    label = artifact.info.get("method", artifact.id[:SHORT])
    note(f"wrote {confusion_figure(label, artifact, features, out)}")
    emit(options, {"classifier": artifact.id, "out": str(out)}, None)


@inspect_app.command("curves")
@guarded
def inspect_curves(
    ctx: typer.Context,
    backbone: Annotated[Optional[str], typer.Argument(help="Backbone artifact (default newest).")] = None,
    stg: Annotated[Optional[str], typer.Option(help="Also the loss curve of this STG artifact.")] = None,
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("curves.png"),
    csv_path: Annotated[
        Optional[Path], typer.Option("--csv", help="Also write the scalars drawn (kind, id, tag, step, value) as CSV.")
    ] = None,
) -> None:
    """Stage-1 loss and test top-1 per epoch (and the STG's loss), from what the artifacts store."""
    from ltstg.inspect.figures import curves_figure
    from ltstg.inspect.scalars import scalars, to_csv
    from ltstg.store import Store, atomic_write

    options: Options = ctx.obj
    output_file(out, PICTURES, "--out")
    output_file(csv_path, (".csv",), "--csv")
    store = Store(options.store)
    artifact = store.find(backbone, "backbone")
    stg_artifact = store.find(stg, "stg") if stg is not None else None
    note(f"wrote {curves_figure(artifact, stg_artifact, out)}")
    if csv_path is not None:
        parts = [to_csv(a, scalars(a)) for a in (artifact, stg_artifact) if a is not None]
        atomic_write(csv_path, [(parts[0] + "".join(part.split("\n", 1)[1] for part in parts[1:])).encode("utf-8")])
        note(f"wrote {csv_path}")
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
    force: Annotated[bool, typer.Option(help="Recompute even if the artifact exists.")] = False,
) -> None:
    """Pairwise KL of the STG's per-sample Gaussians for samples of one tail class (paper Table 5)."""
    from ltstg.inspect.kl import class_names, kl_csv, kl_report, kl_rows, resolve_class
    from ltstg.stages import run_stage

    options: Options = ctx.obj
    output_file(csv, (".csv",), "--csv")
    output_file(plot, PICTURES, "--plot")
    with RichProgress(not options.json) as progress:
        run = run_context(options, progress, force)
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
        note(f"wrote {csv}")
    if plot is not None:
        from ltstg.inspect.figures import kl_figure

        note(f"wrote {kl_figure(artifact, plot)}")
    info, metrics = artifact.info, artifact.metrics
    title = (
        f"KL(N_i ‖ N_j) for {len(rows)} samples of class {info['class_index']} ({info['class_name']}, "
        f"{info['class_count']} train images) · report {artifact.id[:12]}"
    )
    header = ["sample", "train index", *(f"→{j + 1}" for j in range(len(rows))), "borrowed head", "cosine"]
    body = [[str(row["sample"]), str(row["train_index"]), *(f"{row[f'kl_to_{j + 1}']:.2f}" for j in range(len(rows))),
             f"{row['borrowed_head_name']} ({row['borrowed_head']})", f"{row['cosine']:.3f}"] for row in rows]
    table = text_table(title, header, body, ["right"] * (len(header) - 2) + ["left", "right"])
    table.caption = (
        f"mean off-diagonal KL {fmt(metrics.get('mean_kl'))} · {fmt(metrics.get('distinct_heads'))} distinct "
        f"head classes borrowed, the most common by {fmt(metrics.get('largest_share'))} samples"
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

    options: Options = ctx.obj
    output_file(out, (".png",), "--out")
    store = Store(options.store)
    features_artifact = store.find(features, "features")
    stg_artifact = None
    if not no_stg and stg is not None:
        stg_artifact = store.find(stg, "stg")
        if stg_artifact.parents[:1] != [features_artifact.id]:
            raise LtstgError(f"STG {stg_artifact.id[:12]} was fitted on other features than {features_artifact.id[:12]}.")
    elif not no_stg:  # the newest STG fitted on these features, if any
        fitted = store.children(features_artifact.id, "stg")
        stg_artifact = store.get(fitted[-1].id, "stg") if fitted else None
    classifiers = [store.find(ref, "classifier") for ref in classifier or []]
    summary = tsne_figure(
        features_artifact, out, stg=stg_artifact, classifiers=classifiers, max_points=max_points, lam=lam,
        seed=seed, size=(width, height),
    )
    emit(options, {k: str(v) if isinstance(v, Path) else v for k, v in summary.items()}, result_table("t-SNE", summary))


def torch_bincount(labels: Any, size: int) -> list[int]:
    import torch

    return torch.bincount(labels, minlength=size).tolist()


# -- inspect: a recipe -----------------------------------------------------------------------------
@inspect_app.command("recipe")
@guarded
def inspect_recipe(
    ctx: typer.Context,
    recipe: Annotated[Optional[Path], typer.Argument(help="YAML recipe (default: the built-in defaults).")] = None,
    assignments: Annotated[
        Optional[list[str]], typer.Option("--set", help="Override a recipe field: --set stg.memory=600 (repeatable).")
    ] = None,
) -> None:
    """The recipe as a run would use it: validated, every default filled in, --set applied (YAML; JSON with --json)."""
    import sys

    import yaml

    from ltstg.recipe import METHOD_KEYS, load_recipe, method_settings, parse_assignments

    options: Options = ctx.obj
    given = parse_assignments(list(assignments or []))
    settings = load_recipe(recipe, {**given, **({"seed": options.seed} if options.seed is not None else {})})
    effective = settings.model_dump(mode="json")
    for name, override in (effective.get("methods") or {}).items():  # each method as the stage-3 settings it runs
        kept = {key: value for key, value in override.items() if key in METHOD_KEYS}  # select, base, extend
        effective["methods"][name] = {**method_settings(settings, name).model_dump(mode="json"), **kept}
    if options.json:
        emit(options, effective, None)
    else:
        sys.stdout.write(yaml.safe_dump(effective, sort_keys=False, allow_unicode=True))
