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
from ltstg.stages.pipeline import SEEDED, SELECTED_BY, MethodRun, aggregate
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
    """The report of `ltstg report`: the named classifiers (default: every classifier of the newest features and
    of their BatchNorm-shifted variants, which Kang's and MiSLAS's rows train on), each evaluated on the features
    it trained on; classifiers that differ only in their seeds, varied the same way, averaged into one row."""
    store = ctx.store
    if classifier_refs:
        picked = [store.find(ref, "classifier") for ref in classifier_refs]
        families = {_plain_features(store, store.get(c.parents[0], "features")).id for c in picked}
        if len(families) > 1:
            raise LtstgError("a report shows classifiers of one features artifact (and its BatchNorm-shifted "
                             "variants); these come from several.")
        features = store.get(families.pop(), "features")
    else:
        features = _plain_features(store, store.get(store.resolve(None, "features"), "features"))
        family = [features.id] + [v.id for v in _shifted_variants(store, features)]
        picked = [store.get(info.id, "classifier") for member in family for info in store.children(member, "classifier")]
        if not picked:
            raise LtstgError(f"no classifier of features {features.id[:SHORT]} in {store.root}; run retrain first.")
    trained_on = {c.id: store.get(c.parents[0], "features") for c in picked}
    runs = [MethodRun(int(c.settings.get("seed", 0)), label,
                      steps.eval_step(ctx, recipe, c, trained_on[c.id]).artifact, converged(c))
            for c, label in row_members(store, picked)]
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


def _unshifted(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k != "bn_shift_batch"}


def _plain_features(store: Store, features: Artifact) -> Artifact:
    """The features a BatchNorm-shifted variant was made beside (same backbone, data set and settings), or the
    features themselves when they are plain."""
    if "bn_shift_batch" not in features.settings:
        return features
    for info in store.children(features.parents[0], "features"):
        if info.parents == features.parents and "bn_shift_batch" not in info.meta.get("settings", {}) and \
                _unshifted(info.meta.get("settings", {})) == _unshifted(features.settings):
            return store.get(info.id, "features")
    raise LtstgError(f"features {features.id[:SHORT]} are BatchNorm-shifted and their plain features are not in "
                     f"{store.root}; rerun the run that made them.")


def _shifted_variants(store: Store, features: Artifact) -> list[Any]:
    return [info for info in store.children(features.parents[0], "features")
            if info.parents == features.parents and "bn_shift_batch" in info.meta.get("settings", {})
            and _unshifted(info.meta["settings"]) == features.settings]


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


def row_members(store: Store, classifiers: list[Artifact]) -> list[tuple[Artifact, str]]:
    """(classifier, row label) pairs: a row averages classifiers that differ only in their seeds, and in those
    the same way. A label tells apart methods of one name by the settings that differ, its ancestors' included
    (`↑stg.lr 0.1`). Seeds that vary from different stages (`--vary-from retrain` beside `--vary-from fit-stg`
    in one store) make separate rows, `(seeds from retrain)` and `(seeds from fit-stg)`; the classifier both
    share (every stage at the first seed) counts in each, and no row counts a seed twice."""
    by_method: dict[str, list[Artifact]] = {}
    for c in classifiers:
        by_method.setdefault(c.info.get("method", "?"), []).append(c)
    members = []
    for method, group in by_method.items():
        settings = [{**flatten(_unseeded(c.meta)), **_ancestor_settings(store, c.parents)} for c in group]
        keys = sorted({k for s in settings for k in s})
        differing = [k for k in keys if len({json.dumps(s.get(k)) for s in settings}) > 1]
        alike: dict[str, list[Artifact]] = {}
        for c, s in zip(group, settings):
            extra = ", ".join(f"{k if k.startswith(ANCESTOR) else k.split('.')[-1]} {s.get(k)}" for k in differing)
            alike.setdefault(f"{method} ({extra})" if extra else method, []).append(c)
        for label, same in alike.items():
            members += _seed_rows(store, label, same)
    return members


_VARIED_BY = {"backbone": 0, "features": 0, "stg": 1}  # an ancestor's place in SEEDED: pretrain, fit-stg (retrain: 2)


def _seed_rows(store: Store, label: str, group: list[Artifact]) -> list[tuple[Artifact, str]]:
    """Split classifiers of one label by how their seeds were varied. A classifier fits the vary point v when
    every ancestor made at or after v has its own seed; the others' seeds join the key. Each classifier opens
    the row of its earliest fitting key; a row whose every member also sits in another row is dropped (the run
    whose stages all had seed 0 fits every vary point)."""
    fits: dict[str, list[tuple[int, tuple]]] = {}
    for c in group:
        own, seeds = int(c.settings.get("seed", 0)), _ancestor_seeds(store, c.parents)
        fits[c.id] = [(v, tuple(sorted((k, s) for k, s in seeds.items() if _VARIED_BY[k] < v)))
                      for v in range(len(SEEDED))
                      if all(s == own for k, s in seeds.items() if _VARIED_BY[k] >= v)]
    rows = {min(fits[c.id]) for c in group}
    held = {key: [c for c in group if key in fits[c.id]] for key in rows}
    kept = [key for key in sorted(rows)
            if any(not any(c in held[other] for other in rows if other != key) for c in held[key])]
    kept = kept or [min(rows)]
    if len(kept) == 1:
        return [(c, label) for c in held[kept[0]]]
    points = [v for v, _ in kept]

    def named(key: tuple[int, tuple]) -> str:
        v, fixed = key
        seeds = f", ↑seeds {', '.join(f'{k} {s}' for k, s in fixed)}" if points.count(v) > 1 else ""
        return f"{label} (seeds from {SEEDED[v]}{seeds})"

    return [(c, named(key)) for key in kept for c in held[key]]


def _ancestor_seeds(store: Store, parents: list[str]) -> dict[str, int]:
    """Each seeded ancestor's seed by kind (backbone, features, stg), read from the headers."""
    seeds: dict[str, int] = {}
    for parent in parents:
        info = store.info(parent) if store.exists(parent) else None
        if info is None or info.problem is not None:
            continue
        if info.kind in _VARIED_BY:
            seeds.setdefault(info.kind, int(info.meta.get("settings", {}).get("seed", 0)))
        for kind, seed in _ancestor_seeds(store, info.parents).items():
            seeds.setdefault(kind, seed)
    return seeds
