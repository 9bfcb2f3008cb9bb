"""`ltstg run`: a whole recipe, stage after stage, reusing every artifact that already exists.

Each step goes through the same runner as the single commands, so a killed run started again
skips what was committed and resumes the stage that was in flight from its checkpoint.
"""
from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ltstg import ranks
from ltstg.errors import LtstgError
from ltstg.methods import uses_stg
from ltstg.recipe import (
    Recipe,
    SELECT,
    RetrainSettings,
    extended_candidate,
    id_settings,
    load_recipe,
    method_base,
    method_candidates,
    method_extends,
    step_past,
    validate,
)
from ltstg.stages import Context, Result
from ltstg.stages import steps
from ltstg.stages.evaluate import converged
from ltstg.stages.finite import Diverged
from ltstg.stages.retrain_checks import method_problems, wanted_shift
from ltstg.store import SHORT, Artifact

STAGES = ("dataset", "pretrain", "fit-stg", "retrain", "eval")
SEEDED = ("pretrain", "fit-stg", "retrain")  # stages a seed can vary; the data set has its own subset seed
COLUMNS = {  # metric -> row column; head and tail: the STG split's classes, when the run has an STG
    "top1": "all", "mean_class": "mean_class", "head": "head", "tail": "tail",
    "many": "many", "medium": "medium", "few": "few", "ece": "ece", "nll": "nll",
    "ece_calibrated": "ece_calibrated", "nll_calibrated": "nll_calibrated",
}
SELECTED_BY = "val_mean_class"  # what selection maximises: class-balanced accuracy on the validation split

Candidates = list[tuple[dict[str, Any], RetrainSettings]]  # (selected values, settings); one with {} = no selection


@dataclass(frozen=True)
class MethodRun:
    seed: int
    method: str
    report: Artifact
    converged: bool = True  # False: the stage-3 classifier behind the report did not converge
    head_classes: tuple[int, ...] | None = None  # the run's STG split, to score its head and tail classes apart
    chosen: dict[str, Any] | None = None  # the selected fields' values this seed chose on the validation split
    candidates: tuple[dict[str, Any], ...] = ()  # every candidate: values, validation score, classifier id
    edges: dict[str, str] | None = None  # chosen field -> "lowest" | "highest" of its grid: the best may lie beyond
    base: str | None = None  # the method this one adds an augmenter to (methods.<name>.base), compared seed by seed


def methods_of(recipe: Recipe, chosen: list[str] | None) -> dict[str, Candidates]:
    """The recipe's named methods (or its one `retrain` section) with their candidates, optionally narrowed to
    `chosen`."""
    available = {name: method_candidates(recipe, name) for name in recipe.methods} or {"default": [({}, recipe.retrain)]}
    if not chosen:
        return available
    unknown = [name for name in chosen if name not in available]
    if unknown:
        raise LtstgError(f"unknown method(s) {', '.join(unknown)}; the recipe lists: {', '.join(available)}.")
    return {name: available[name] for name in chosen}


def with_seed(recipe: Recipe, seed: int) -> Recipe:
    return validate({**recipe.model_dump(mode="json"), "seed": seed}, f"seed {seed}")


def check_run(recipe: Recipe, until: str, methods: list[str] | None, vary_from: str) -> dict[str, Candidates]:
    """The stages and methods a run names exist in this recipe, and every method's settings go together
    (a combination refused only when its stage starts would fail after hours of stage 1); returns the methods."""
    if until not in STAGES:
        raise LtstgError(f"unknown stage {until!r} for --until; use one of {', '.join(STAGES)}.")
    if vary_from not in SEEDED:
        raise LtstgError(f"unknown stage {vary_from!r} for --vary-from; use one of {', '.join(SEEDED)}.")
    chosen = methods_of(recipe, methods)
    if STAGES.index(until) >= STAGES.index("retrain"):
        problems = list(dict.fromkeys(
            f"methods.{name}: {line}" for name, candidates in chosen.items() for _, settings in candidates
            for line in method_problems(settings)
        ))
        if problems:
            raise LtstgError("\n".join(problems))
    for name in chosen:
        if name in recipe.methods:
            method_extends(recipe, name)  # a bad `extend` is refused before anything runs
    check_bases(recipe, chosen)
    return chosen


def check_bases(recipe: Recipe, chosen: dict[str, Candidates]) -> None:
    """A method with a `base` runs beside it and differs from it in the augmenter alone: the same stage-3 settings,
    and where a setting is chosen on validation, the same grid for it. Otherwise the delta is not the augmenter's."""
    problems = []
    for name in chosen:
        base = method_base(recipe, name) if name in recipe.methods else None
        if base is None:
            continue
        if base not in chosen:
            problems.append(f"methods.{name}.base: {base!r} is left out of this run; add it (--methods {base!r}).")
        elif _without_augment(chosen[name]) != _without_augment(chosen[base]):
            ours, theirs = (dict(sorted(_without_augment(chosen[n]))[0][1]) for n in (name, base))
            fields = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
            detail = f"retrain.{', retrain.'.join(fields)}" if fields else "the grid it chooses from on validation"
            problems.append(f"methods.{name}.base: {base!r} trains another stage 3 ({detail} differs); a base must "
                            "differ from its method in `augment` alone, with the same `select` grid for the rest.")
    if problems:
        raise LtstgError("\n".join(problems))


def _without_augment(candidates: Candidates) -> set[tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]]:
    """Each candidate's selected values and settings with the augmenter taken out, as comparable tuples."""
    def frozen(mapping: dict[str, Any]) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((key, json.dumps(value, sort_keys=True)) for key, value in mapping.items()))

    return {
        (frozen({k: v for k, v in values.items() if not k.startswith("augment.")}),
         frozen({k: v for k, v in id_settings(settings).items() if k != "augment"}))
        for values, settings in candidates
    }


def check_seeds(recipe: Recipe, seeds: list[int]) -> None:
    """Every seed is valid and given once, before the first seed's pipeline runs."""
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        raise LtstgError(f"--seeds {repeated[0]} is given more than once; give each seed once.")
    for seed in seeds:
        with_seed(recipe, seed)


def check_swept_methods(recipe: Recipe, sweeps: dict[str, list[Any]]) -> None:
    """A sweep over `methods.X.…` varies a method the recipe has: a misspelt X would quietly add a new one; and
    not a field X selects on validation, since the selection overrides it (two rows, one report)."""
    for field in sweeps:
        parts = field.split(".")
        if parts[0] == "retrain" and len(parts) > 1:  # the section every method starts from
            inner = ".".join(parts[1:])
            selecting = [name for name, override in recipe.methods.items()
                         if isinstance(override, dict) and isinstance(override.get(SELECT), dict) and inner in override[SELECT]]
            if selecting:
                raise LtstgError(f"--sweep {field}: method {selecting[0]!r} selects {inner} on the validation split, "
                                 "which overrides a sweep; sweep it or select it, not both.")
        if parts[0] != "methods" or len(parts) < 3:
            continue
        if parts[1] in recipe.methods:
            grid = recipe.methods[parts[1]].get(SELECT) if isinstance(recipe.methods[parts[1]], dict) else None
            if isinstance(grid, dict) and ".".join(parts[2:]) in grid:
                raise LtstgError(f"--sweep {field}: method {parts[1]!r} selects {'.'.join(parts[2:])} on the "
                                 "validation split, which overrides a sweep; sweep it or select it, not both.")
            continue
        near = difflib.get_close_matches(parts[1], list(recipe.methods), n=1)
        hint = f"did you mean {near[0]!r}?" if near else f"the recipe lists: {', '.join(recipe.methods) or 'none'}."
        raise LtstgError(f"--sweep {field}: the recipe has no method {parts[1]!r}; {hint}")


def note_edges(ctx: Context, who: str, candidates: Candidates, values: dict[str, Any]) -> dict[str, str]:
    """The chosen fields at the lowest or highest of their grid, said in one line: the best may lie beyond."""
    edges = grid_edges(candidates, values)
    if edges:
        said = ", ".join(f"{field}={values[field]} ({where} of {sorted(grid_values(candidates, field))})"
                         for field, where in edges.items())
        ctx.note(f"note: {who}, chose on the edge of its grid: {said}; the best may lie beyond it (marked in the "
                 "table)")
    return edges


@dataclass
class SeedInputs:
    """What one seed's stage-3 rows train on, each made once: the plain features and a BatchNorm-shifted variant
    per batch size (`variants`), and an STG fitted on each features artifact that a row using the STG trains on
    (`stgs`, by features id): a row that shifts BatchNorm has its STG learn the shifted features it sees."""

    ctx: Context
    recipe: Recipe  # for the features steps
    stg_recipe: Recipe  # for the STG steps
    step: Callable[[Result], Result]
    variants: dict[int | None, Artifact]  # BatchNorm-shift batch size (None: plain) -> features
    stgs: dict[str, Artifact]

    def features(self, settings: RetrainSettings) -> Artifact:
        key = wanted_shift(settings)
        if key not in self.variants:  # a features step of its own, made once per seed and batch size
            made = steps.features_for(self.ctx, self.recipe, settings, self.variants[None])
            self.variants[key] = self.step(made).artifact if made is not None else self.variants[None]
        return self.variants[key]

    def stg(self, settings: RetrainSettings) -> Artifact | None:
        if not uses_stg(settings.augment):
            return None
        on = self.features(settings)
        if on.id not in self.stgs:
            self.stgs[on.id] = self.step(steps.fit_stg_step(self.ctx, self.stg_recipe, on)).artifact
        return self.stgs[on.id]

    def classifier(self, seeded: Recipe, settings: RetrainSettings) -> Artifact:
        """A stage-3 candidate on the features and STG its settings ask for; `seeded` is the seed's stage-3 recipe."""
        return self.step(steps.retrain_step(self.ctx, seeded, settings, self.features(settings),
                                            self.stg(settings))).artifact

    def head_classes(self) -> tuple[int, ...] | None:
        """The STG's head classes (the same on every variant: the split follows the class counts)."""
        return next((tuple(stg["head_classes"].tolist()) for stg in self.stgs.values()), None)


def run_recipe(
    ctx: Context,
    recipe: Recipe,
    *,
    seeds: list[int],
    until: str = "eval",
    methods: list[str] | None = None,
    vary_from: str = "pretrain",
    stage1_made: bool = False,
) -> tuple[list[MethodRun], list[Result]]:
    """Run every stage up to `until` for each seed and method; returns the eval reports and every step.
    `stage1_made`: `shared_part` made the data sets and backbones, which --force must not redo alone.

    Stages before `vary_from` run once with the recipe's own seed and are shared by every seed (Table 7:
    several seeds of stage 3 on one backbone); `vary_from` and later stages take each seed in turn.
    """
    chosen = check_run(recipe, until, methods, vary_from)
    last = STAGES.index(until)
    settings_run = [s for c in chosen.values() for _, s in c]
    # the STG of the plain features; a row that shifts BatchNorm has one fitted on its shifted features
    needs_stg = any(uses_stg(s.augment) and not s.bn_shift for s in settings_run) or until == "fit-stg"
    shifts = len({s.batch_size for s in settings_run if s.bn_shift})  # BatchNorm-shifted features
    shifted_stgs = len({s.batch_size for s in settings_run if s.bn_shift and uses_stg(s.augment)})
    per_seed = (1 + (last >= 1) * 2 + (last >= 2 and needs_stg)
                + (last >= 3) * (len(settings_run) + shifts + shifted_stgs) + (last >= 4) * len(chosen))
    note_budgets(ctx, chosen)
    total, done = per_seed * len(seeds), 0
    runs: list[MethodRun] = []
    results: list[Result] = []

    def step(result: Result) -> Result:
        nonlocal done, total
        done += 1
        total = max(total, done)  # a grid extended past an edge trains candidates no count foresaw
        results.append(result)
        ctx.progress("run", done, total)
        return result

    first_varied = SEEDED.index(vary_from)
    for seed in seeds:
        seeded = with_seed(recipe, seed)

        def at(stage: str) -> Recipe:
            return seeded if SEEDED.index(stage) >= first_varied else recipe

        early = dataclasses.replace(ctx, force=False) if stage1_made else ctx
        dataset = step(steps.dataset_step(early, seeded)).artifact
        _check_shift_batches(chosen, dataset)
        if last < 1:
            continue
        backbone = step(steps.pretrain_step(early, at("pretrain"), dataset)).artifact
        features = step(steps.features_step(ctx, at("pretrain"), backbone, dataset)).artifact
        if last < 2:
            continue
        stg = step(steps.fit_stg_step(ctx, at("fit-stg"), features)).artifact if needs_stg else None
        if last < 3:
            continue
        first = len(runs)
        made = SeedInputs(ctx, at("pretrain"), at("fit-stg"), step, {None: features}, {features.id: stg} if stg else {})
        for method, candidates in chosen.items():
            values, classifier, tried, edges, report = choose_and_evaluate(
                ctx, recipe, at("retrain"), seed, method, candidates, made, evaluate=last >= 4)
            if report is not None:
                runs.append(MethodRun(seed, method, report, converged(classifier), made.head_classes(),
                                      values if len(candidates) > 1 else None, tried,
                                      edges if len(candidates) > 1 else None,
                                      method_base(recipe, method) if method in recipe.methods else None))
        split = made.head_classes()  # the rows before the first STG of a shifted-only seed get its split too
        runs[first:] = [dataclasses.replace(run, head_classes=split) for run in runs[first:]]
    return runs, results


def choose_and_evaluate(
    ctx: Context, recipe: Recipe, seeded: Recipe, seed: int, method: str, candidates: Candidates, made: SeedInputs,
    *, evaluate: bool,
) -> tuple[dict[str, Any], Artifact, tuple[dict[str, Any], ...], dict[str, str], Artifact | None]:
    """One method of one seed: its candidates trained (or reused), the best on validation chosen (`choose`), and
    with `evaluate` its eval report on the features it trained on. `seeded` is the recipe at the seed's stage 3."""
    values, classifier, tried, edges = choose(ctx, recipe, f"{method}, seed {seed}", method, candidates,
                                              lambda settings: made.classifier(seeded, settings))
    if not evaluate:
        return values, classifier, tried, edges, None
    on = next(f for f in made.variants.values() if f.id == classifier.parents[0])  # what it trained on
    return values, classifier, tried, edges, made.step(steps.eval_step(ctx, seeded, classifier, on)).artifact


def _check_shift_batches(chosen: dict[str, Candidates], dataset: Artifact) -> None:
    """A data set that keeps paths drops the last partial batch, so a BatchNorm shift at a batch larger than its
    training set would have no batch: refused here, before stage 1, not after it."""
    if dataset.info.get("storage") != "paths":
        return
    images = int(dataset["class_counts"].sum())
    too_large = sorted({(method, settings.batch_size) for method, candidates in chosen.items()
                        for _, settings in candidates if settings.bn_shift and settings.batch_size > images})
    if too_large:
        method, batch = too_large[0]
        raise LtstgError(f"method {method!r} shifts BatchNorm statistics on batches of {batch}, more than the "
                         f"{images} training images of this data set; lower its batch_size.")


def shared_part(ctx: Context, planned: list[tuple[Any, Recipe]], seeds: list[int] | None, until: str,
                methods: list[str] | None, vary_from: str) -> bool:
    """Under torchrun, what every rank does: each recipe's and seed's stage 1 first, on all ranks together (the
    data set made by the first rank while the others wait, then the backbone under DDP), then each rank's share
    of stages 2–4 (`ltstg.stages.spread`); then the process group ends, and the first rank runs the rest alone,
    reusing all of it. Returns whether it ran (False in a single process, where it does nothing).

    All stage 1s come first so that no rank waits in a collective of the training group while another trains
    stage 3 (it would time out); the ranks meet again only in the decision group, whose patience is days."""
    if not ranks.distributed():
        return False
    for _, recipe in planned:
        for seed in seeds or [recipe.seed]:
            seeded = with_seed(recipe, seed)
            dataset = steps.dataset_step(ctx, seeded).artifact  # made by the first rank, read by the others
            if STAGES.index(until) >= STAGES.index("pretrain"):
                steps.pretrain_step(ctx, seeded if SEEDED.index(vary_from) == 0 else recipe, dataset)
    from ltstg.stages.spread import spread

    ctx.fresh.update(spread(ctx, planned, seeds, until, methods, vary_from))
    ranks.leave()
    return True


def select(
    method: str, candidates: Candidates, trained: list[Artifact | None]
) -> tuple[dict[str, Any], Artifact, tuple[dict[str, Any], ...]]:
    """The candidate with the best class-balanced validation accuracy (the first of equals), read from the
    classifiers' validation metrics alone: the test split plays no part; a candidate that diverged (None) or
    scored non-finite is never chosen. Returns its values, its classifier and every candidate's record."""
    if len(trained) == 1 and trained[0] is not None:
        return candidates[0][0], trained[0], ()
    missing = [c for c in trained if c is not None and SELECTED_BY not in c.metrics]
    if missing:
        raise LtstgError(
            f"method {method!r} selects on the validation split, but classifier {missing[0].id[:SHORT]} has no "
            "validation score (its features were made without a validation split); re-run make-dataset and pretrain."
        )
    scores = [c.metrics[SELECTED_BY] if c is not None else math.nan for c in trained]
    finite = [i for i, score in enumerate(scores) if math.isfinite(score)]  # a diverged candidate is never chosen
    if not finite:
        raise LtstgError(f"method {method!r}: no candidate has a finite validation score; every one diverged.")
    best = max(finite, key=lambda i: (scores[i], -i))
    tried = tuple({"values": values, SELECTED_BY: score, "classifier": c.id if c is not None else None,
                   "chosen": i == best, **({"diverged": True} if c is None else {})}
                  for i, ((values, _), c, score) in enumerate(zip(candidates, trained, scores)))
    chosen = trained[best]
    assert chosen is not None  # a finite score has a classifier
    return candidates[best][0], chosen, tried


def choose(
    ctx: Context, recipe: Recipe, who: str, method: str, candidates: Candidates, train: Callable[[RetrainSettings], Artifact]
) -> tuple[dict[str, Any], Artifact, tuple[dict[str, Any], ...], dict[str, str]]:
    """Train every candidate and keep the best on validation (`select`). With `extend: true`, a choice on the
    edge of its grid gets one more candidate per such field, one step past it (`step_past`: the same rule for
    every method), trained and compared with the rest; the extra ones are counted in `tried`, marked `extended`."""
    trained = train_candidates(ctx, who, candidates, train)
    values, classifier, tried = select(method, candidates, trained)
    edges = grid_edges(candidates, values)
    if edges and method in recipe.methods and method_extends(recipe, method):
        extra, said = [], []
        for field, where in edges.items():
            beyond = step_past(sorted(grid_values(candidates, field)), where)
            try:
                extra.append(extended_candidate(recipe, method, values, field, beyond))
                said.append(f"{field}={beyond}")
            except LtstgError as error:  # past a bound of the field (dropout p >= 1): the grid stays
                ctx.note(f"note: {who}: no step past {field}={values[field]} to {beyond} ({error})")
        if extra:
            ctx.note(f"note: {who}, chose on the edge of its grid, so it also tries {', '.join(said)} (extend)")
            first_extra = len(candidates)
            candidates = candidates + extra
            trained += train_candidates(ctx, who, extra, train, alone=False)
            values, classifier, tried = select(method, candidates, trained)
            tried = tuple({**record, "extended": i >= first_extra} for i, record in enumerate(tried))
    return values, classifier, tried, note_edges(ctx, who, candidates, values)


def train_candidates(ctx: Context, who: str, candidates: Candidates, train: Callable[[RetrainSettings], Artifact],
                     alone: bool | None = None) -> list[Artifact | None]:
    """Each candidate's classifier; one whose training diverged is None, said on stderr and never chosen
    (`select`), unless it is a method's only candidate, whose divergence stops the run."""
    trained: list[Artifact | None] = []
    for values, settings in candidates:
        try:
            trained.append(train(settings))
        except Diverged as error:
            if alone if alone is not None else len(candidates) == 1:
                raise
            shown = ", ".join(f"{field}={value}" for field, value in values.items())
            ctx.note(f"warning: {who}: candidate {shown} diverged, so it is not chosen ({error})")
            trained.append(None)
    return trained


def grid_values(candidates: Candidates, field: str) -> set[Any]:
    return {values[field] for values, _ in candidates if field in values}


def grid_edges(candidates: Candidates, chosen: dict[str, Any]) -> dict[str, str]:
    """The chosen fields that sit at the lowest or highest of the numbers their grid tried: there the grid does
    not hold the choice. Fields with text values (`mu: eq3`) or one value have no edge."""
    edges = {}
    for field, value in chosen.items():
        numbers = grid_values(candidates, field)
        if len(numbers) < 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
            continue
        if value == min(numbers):
            edges[field] = "lowest"
        elif value == max(numbers):
            edges[field] = "highest"
    return edges


def note_budgets(ctx: Context, chosen: dict[str, Candidates]) -> None:
    """Methods that select with different numbers of candidates are not tuned alike: said, not refused."""
    budgets = {name: len(candidates) for name, candidates in chosen.items() if len(candidates) > 1}
    if len(set(budgets.values())) > 1:
        listing = ", ".join(f"{name} {count}" for name, count in budgets.items())
        ctx.note(f"note: the methods that select on the validation split try different numbers of candidates "
                 f"({listing}); a method with more candidates had more chances")


def aggregate(runs: list[MethodRun]) -> list[dict[str, Any]]:
    """One row per method: mean and sample std over seeds of every column, in recipe order."""
    order: list[str] = []
    by_method: dict[str, list[MethodRun]] = {}
    for run in runs:
        if run.method not in by_method:
            order.append(run.method)
        by_method.setdefault(run.method, []).append(run)
    rows = []
    for method in order:
        group = by_method[method]
        row: dict[str, Any] = {
            "method": method,
            "seeds": [r.seed for r in group],
            "reports": [r.report.id for r in group],
            "id": ",".join(r.report.id[:SHORT] for r in group),
            "not_converged": sum(not r.converged for r in group),
        }
        if any(r.chosen is not None for r in group):
            row["chosen"] = [r.chosen for r in group]  # per seed, in the order of "seeds"
            row["edges"] = [r.edges or {} for r in group]  # per seed: chosen fields at the edge of their grid
            row["candidates"] = [list(r.candidates) for r in group]
        if group[0].base is not None:
            row.update(base_delta(group, by_method.get(group[0].base, [])))
        scores = [{**r.report.metrics, **split_accuracy(r)} for r in group]
        for metric, column in COLUMNS.items():
            values = [score[metric] for score in scores if metric in score]
            row[column] = mean(values) if values else None
            if len(values) > 1:
                row[f"{column}_std"] = std(values)
        rows.append(row)
    return rows


def base_delta(group: list[MethodRun], base: list[MethodRun]) -> dict[str, Any]:
    """Top-1 against the base's, seed by seed (paired: the seed's own backbone and STG in both), as its mean and
    sample std over the seeds both ran."""
    base_top1 = {r.seed: r.report.metrics["top1"] for r in base}
    deltas = [r.report.metrics["top1"] - base_top1[r.seed] for r in group if r.seed in base_top1]
    out: dict[str, Any] = {"base": group[0].base, "vs_base": mean(deltas) if deltas else None}
    if len(deltas) > 1:
        out["vs_base_std"] = std(deltas)
    return out


def split_accuracy(run: MethodRun) -> dict[str, float]:
    """Mean per-class accuracy over the STG's head and over its tail classes: where "many" covers every
    class (CIFAR-10-LT IM10), this is what shows the STG trading head accuracy for tail accuracy."""
    if run.head_classes is None or "per_class_accuracy" not in run.report.tensors:
        return {}
    accuracy = run.report["per_class_accuracy"]  # (C,), NaN: a class without test samples
    is_head = torch.zeros(accuracy.numel(), dtype=torch.bool)  # (C,)
    is_head[list(run.head_classes)] = True
    scores = {}
    for name, members in (("head", accuracy[is_head]), ("tail", accuracy[~is_head])):
        members = members[~members.isnan()]
        if members.numel():
            scores[name] = float(members.mean())
    return scores


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def std(values: list[float]) -> float:
    """Sample standard deviation (n − 1); 0 for a single seed."""
    if len(values) < 2:
        return 0.0
    centre = mean(values)
    return math.sqrt(sum((v - centre) ** 2 for v in values) / (len(values) - 1))


def sweep_grid(sweeps: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the swept fields' values, as override dicts, the first field varying slowest."""
    if any(not values for values in sweeps.values()):
        empty = [field for field, values in sweeps.items() if not values]
        raise LtstgError(f"--sweep {empty[0]} has no values; write --sweep {empty[0]}=V1,V2.")
    fields = list(sweeps)
    return [dict(zip(fields, values)) for values in itertools.product(*(sweeps[f] for f in fields))]


def recipe_labels(paths: list[str | Path]) -> list[str]:
    """Short names for a table's recipe column: each file's stem, or its path where two stems clash."""
    stems = [Path(path).stem for path in paths]
    return [stem if stems.count(stem) == 1 else str(path) for stem, path in zip(stems, paths)]


def run_sweep(
    ctx: Context,
    recipe_paths: list[str | Path | None] | str | Path | None,
    overrides: dict[str, Any],
    sweeps: dict[str, list[Any]],
    *,
    seeds: list[int] | None = None,
    until: str = "eval",
    methods: list[str] | None = None,
    vary_from: str = "pretrain",
) -> tuple[list[dict[str, Any]], list[Result]]:
    """One `run` per recipe and combination of the swept fields (Tables 6-7 are grids over several stages'
    settings; Table 1 is one recipe per imbalance, each with its own MiSLAS settings).

    Every recipe and combination is checked (its fields, the stages and the method names) before the
    first runs, and a recipe given twice is refused; artifacts shared between
    combinations (the backbone, an STG that only stage 3 sweeps past) are computed once. Rows carry
    `swept`: the combination, plus `recipe` (its label) when there are several recipes.
    """
    grid = sweep_grid(sweeps)
    if recipe_paths is None or isinstance(recipe_paths, (str, Path)):
        recipe_paths = [recipe_paths]
    seen: dict[Path | None, str | Path | None] = {}
    for path in recipe_paths:  # one recipe twice would print as one column of twice-run rows
        key = Path(path).resolve() if path is not None else None
        if key in seen:
            raise LtstgError(f"recipe {path or 'defaults'} is given twice (also as {seen[key] or 'defaults'}); "
                             "give each recipe once.")
        seen[key] = path
    labels = recipe_labels([path or "defaults" for path in recipe_paths])
    planned = []
    for path, label in zip(recipe_paths, labels):  # every problem a recipe can show without data, before any work
        check_swept_methods(load_recipe(path, overrides), sweeps)
        for combo in grid:
            recipe = load_recipe(path, {**overrides, **combo})
            check_run(recipe, until, methods, vary_from)
            check_seeds(recipe, seeds or [recipe.seed])
            planned.append(({"recipe": label, **combo} if len(recipe_paths) > 1 else combo, recipe))
    shared = shared_part(ctx, planned, seeds, until, methods, vary_from)
    if shared and not ctx.is_main:
        return [], []  # a rank other than the first: its part (stage 1, its share of stages 2-4) is done
    rows: list[dict[str, Any]] = []
    results: list[Result] = []
    for swept, recipe in planned:
        runs, done = run_recipe(
            ctx, recipe, seeds=seeds or [recipe.seed], until=until, methods=methods, vary_from=vary_from,
            stage1_made=shared,
        )
        results += done
        rows += [{**row, "swept": swept} for row in aggregate(runs)]
    return rows, results
