"""Gather what an HTML report shows from the store: a finished run's artifacts, or every classifier of one
features artifact; the CLI and the Python API hand the result to `inspect.html_report.write_report`."""
from __future__ import annotations

import json
from typing import Any

from ltstg.errors import LtstgError
from ltstg.inspect.html_report import RunReport
from ltstg.recipe import Recipe, flatten
from ltstg.stages import Context, Result, steps
from ltstg.stages.evaluate import converged
from ltstg.stages.pipeline import SELECTED_BY, MethodRun, aggregate
from ltstg.store import SHORT, Artifact, Store


def run_report(ctx: Context, rows: list[dict[str, Any]], results: list[Result], title: str, command: str) -> RunReport:
    """The report of `ltstg run`: its first seed's artifacts in the pictures, every seed in the table."""
    first: dict[str, Artifact] = {}
    for result in results:
        first.setdefault(result.artifact.kind, result.artifact)
    classifiers = [(row["method"], _classifier_of(ctx, row["reports"][0])) for row in rows]
    stg = first.get("stg")
    kl, omitted = kl_of_rarest(ctx, stg, first["features"]) if stg is not None else (None, [])
    return RunReport(title, first["dataset"], first["features"], rows, classifiers, backbone=first.get("backbone"),
                     stg=stg, kl=kl, omitted=omitted, commands={"methods": command} if command else {},
                     score_key=SELECTED_BY)


def store_report(
    ctx: Context, recipe: Recipe, classifier_refs: list[str], *, with_tsne: bool = True
) -> tuple[RunReport, list[dict[str, Any]]]:
    """The report of `ltstg report`: the named classifiers (default: every classifier of the newest features),
    each evaluated, classifiers that differ only in their seed averaged into one row."""
    store = ctx.store
    if classifier_refs:
        picked = [store.find(ref, "classifier") for ref in classifier_refs]
    else:
        features_id = store.resolve(None, "features")
        picked = [store.get(info.id, "classifier") for info in store.children(features_id, "classifier")]
        if not picked:
            raise LtstgError(f"no classifier of features {features_id[:SHORT]} in {store.root}; run retrain first.")
    parents = {c.parents[0] for c in picked}
    if len(parents) > 1:
        raise LtstgError("a report shows classifiers of one features artifact; these come from several.")
    features = store.get(parents.pop(), "features")
    labels = group_labels(store, picked)
    runs = [MethodRun(int(c.settings.get("seed", 0)), labels[c.id],
                      steps.eval_step(ctx, recipe, c, features).artifact, converged(c)) for c in picked]
    stg_ids = sorted({c.parents[1] for c in picked if len(c.parents) > 1})
    stg = store.get(stg_ids[0], "stg") if stg_ids else None
    if len(stg_ids) > 1:
        ctx.note(f"the report's STG sections show stg {stg_ids[0][:SHORT]}, the first of the {len(stg_ids)} STGs "
                 "these classifiers borrowed from")
    rows = aggregate(runs)
    shown = [(row["method"], _classifier_of(ctx, row["reports"][0])) for row in rows]
    kl, omitted = kl_of_rarest(ctx, stg, features) if stg is not None else (None, [])
    report = RunReport(f"ltstg report · features {features.id[:SHORT]}", store.get(features.parents[1], "dataset"),
                       features, rows, shown, backbone=store.get(features.parents[0], "backbone"), stg=stg, kl=kl,
                       omitted=omitted, with_tsne=with_tsne,
                       commands={"methods": "ltstg report " + " ".join(c.id[:SHORT] for c in picked)})
    return report, rows


ANCESTOR = "↑"  # marks an ancestor's setting in a label: ↑stg.lr


def _unseeded(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.get("settings", {}).items() if k != "seed"}


def _ancestor_settings(store: Store, parents: list[str]) -> dict[str, Any]:
    """Every ancestor's settings but its seed, as `↑kind.field`, read from the headers."""
    out: dict[str, Any] = {}
    for parent in parents:
        info = store.info(parent) if store.exists(parent) else None
        if info is None or info.problem is not None:
            out[f"{ANCESTOR}{parent[:SHORT]}"] = "missing"
            continue
        out.update(flatten(_unseeded(info.meta), f"{ANCESTOR}{info.kind}."))
        out.update(_ancestor_settings(store, info.parents))
    return out


def _classifier_of(ctx: Context, report_id: str) -> Artifact:
    return ctx.store.get(ctx.store.get(report_id, "report").parents[0], "classifier")


def kl_of_rarest(ctx: Context, stg: Artifact, features: Artifact) -> tuple[Any, list[str]]:
    """The KL report of the rarest tail class, or None and the reason, said and kept in the report."""
    from ltstg.inspect.kl import kl_report

    try:
        report = kl_report(stg, features)
    except LtstgError as error:  # e.g. the rarest class has a single image
        reason = f"the KL section is left out: {error}"
        ctx.note(reason)
        return None, [reason]
    for line in report.notes:
        ctx.note(f"KL section: {line}")
    return report, []


def group_labels(store: Store, classifiers: list[Artifact]) -> dict[str, str]:
    """A table label per classifier: its method, plus the settings that tell apart methods of one name, its
    ancestors' included (`stg.lr 0.1`); classifiers that differ only in their seeds share a label, so the table
    averages them, and never classifiers trained on different settings."""
    by_method: dict[str, list[Artifact]] = {}
    for c in classifiers:
        by_method.setdefault(c.info.get("method", "?"), []).append(c)
    labels = {}
    for method, group in by_method.items():
        settings = [{**flatten(_unseeded(c.meta)), **_ancestor_settings(store, c.parents)} for c in group]
        keys = sorted({k for s in settings for k in s})
        differing = [k for k in keys if len({json.dumps(s.get(k)) for s in settings}) > 1]
        for c, s in zip(group, settings):
            extra = ", ".join(f"{k if k.startswith(ANCESTOR) else k.split('.')[-1]} {s.get(k)}" for k in differing)
            labels[c.id] = f"{method} ({extra})" if extra else method
    return labels
