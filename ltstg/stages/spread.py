"""Under torchrun, `ltstg run`'s stages 2–4 on every rank: after the shared stage 1, each rank computes its share
of the run's independent units (features, STGs of each seed, every method's candidate classifiers; then, once
all candidates are in the store, each method's choice on validation with its eval report), balanced by their
expected cost; the first rank then runs the run as one process would, reusing all of it, and prints the table.

Each unit goes through the same steps as in a single process, so it gets the same content id and is written
to the shared store exactly as that process would write it; a unit another rank already committed is reused
(the store's lock makes a rank that needs a unit in progress elsewhere wait for it). The units' notes are said
once, by the first rank's pass (a reused artifact says its notes again). A rank that fails exits with its line,
and torchrun stops the others.
"""
from __future__ import annotations

import dataclasses
import heapq
import json
from dataclasses import dataclass
from typing import Any, Callable

from ltstg import ranks
from ltstg.methods import uses_stg
from ltstg.recipe import Recipe
from ltstg.stages import Context, Result, steps

# phases: a unit's inputs come from an earlier phase, so a rank seldom waits for another's STG; the choices wait
# until every rank's candidates are in the store
FEATURES, STG, CLASSIFIER, CLASSIFIER_ON_STG, CHOICE = range(5)
STG_COST_PER_EPOCH = 4.0  # an STG epoch (two MLPs, the ground truth over the memory) against a linear head's
AUGMENTED_COST = 1.5  # a classifier epoch with a feature augmenter (the STG's forward pass) against a plain one


@dataclass(frozen=True)
class Unit:
    phase: int
    cost: float  # expected, in linear-head epochs
    key: str  # what defines it, so a unit planned twice (two sweep combinations sharing it) is computed once
    make: Callable[[Context], Any]


def plan(planned: list[tuple[Any, Recipe]], seeds: list[int] | None, until: str, methods: list[str] | None,
         vary_from: str) -> list[Unit]:
    """Every unit of stages 2–4 the run will need, in the order one process would meet them: the seeds' features
    and STGs, every candidate classifier, and each method's choice on validation (with the steps past a grid's
    edge it asks for) and its eval report."""
    from ltstg.stages.pipeline import SEEDED, STAGES, SeedInputs, check_run, choose_and_evaluate, with_seed
    from ltstg.recipe import method_extends

    last = STAGES.index(until)
    units: dict[str, Unit] = {}
    for _, recipe in planned:
        chosen = check_run(recipe, until, methods, vary_from)
        first_varied = SEEDED.index(vary_from)
        for seed in seeds or [recipe.seed]:
            seeded = with_seed(recipe, seed)
            at = {stage: seeded if SEEDED.index(stage) >= first_varied else recipe for stage in SEEDED}

            held: dict[str, SeedInputs] = {}

            def inputs(ctx: Context, seeded: Recipe = seeded, at: dict[str, Recipe] = at,
                       held: dict[str, SeedInputs] = held) -> SeedInputs:
                """The seed's features, their variants and STGs, read once per rank (`held`), as one process
                holds them through a seed."""
                if "made" not in held:
                    dataset = steps.dataset_step(ctx, seeded).artifact
                    backbone = steps.pretrain_step(ctx, at["pretrain"], dataset).artifact
                    features = steps.features_step(ctx, at["pretrain"], backbone, dataset).artifact
                    held["made"] = SeedInputs(ctx, at["pretrain"], at["fit-stg"], _kept, {None: features}, {})
                return held["made"]

            where = _key(at["pretrain"].pretrain, at["pretrain"].dataset, at["pretrain"].seed)
            if last >= 1:
                _add(units, Unit(FEATURES, 1.0, f"features {where}", inputs))
            candidates = [settings for group in chosen.values() for _, settings in group] if last >= 3 else []
            stg_recipe = at["fit-stg"]
            if last == 2 or any(uses_stg(s.augment) and not s.bn_shift for s in candidates):
                _add(units, Unit(STG, stg_recipe.stg.epochs * STG_COST_PER_EPOCH,
                                 f"stg {where} {_key(stg_recipe.stg, stg_recipe.seed)}",
                                 lambda ctx, inputs=inputs, at=at: steps.fit_stg_step(
                                     ctx, at["fit-stg"], inputs(ctx).variants[None])))
            for settings in candidates:
                cost = settings.epochs * (AUGMENTED_COST if settings.augment.name != "none" else 1.0)
                _add(units, Unit(CLASSIFIER_ON_STG if uses_stg(settings.augment) else CLASSIFIER, cost,
                                 f"classifier {where} {_key(stg_recipe.stg, stg_recipe.seed, settings, at['retrain'].seed)}",
                                 lambda ctx, inputs=inputs, at=at, settings=settings: inputs(ctx).classifier(
                                     at["retrain"], settings)))
            for method, group in chosen.items() if last >= 3 else ():
                extends = method in recipe.methods and method_extends(recipe, method)
                _add(units, Unit(CHOICE, 1.0 + (max(s.epochs for _, s in group) if extends else 0.0),
                                 f"choice {_key(recipe, at['retrain'].seed, method)}",
                                 lambda ctx, inputs=inputs, at=at, recipe=recipe, seed=seed, method=method,
                                 group=group: choose_and_evaluate(ctx, recipe, at["retrain"], seed, method, group,
                                                                  inputs(ctx), evaluate=last >= 4)))
    return list(units.values())


def _kept(result: Result) -> Result:
    """SeedInputs' `step` here: a unit's results are in the store, where the first rank's pass finds them."""
    return result


def _key(*parts: Any) -> str:
    return json.dumps([p.model_dump(mode="json") if hasattr(p, "model_dump") else p for p in parts], sort_keys=True)


def _add(units: dict[str, Unit], unit: Unit) -> None:
    units.setdefault(unit.key, unit)


def share(units: list[Unit], rank: int, world_size: int) -> list[Unit]:
    """This rank's units: costliest first, each to the rank with the least expected work so far (longest
    processing time first), then done phase by phase. Every rank computes the same split."""
    load = [(0.0, r) for r in range(world_size)]  # (work so far, rank)
    mine = []
    for position, unit in sorted(enumerate(units), key=lambda item: -item[1].cost):  # stable: plan order breaks ties
        work, owner = heapq.heappop(load)
        heapq.heappush(load, (work + unit.cost, owner))
        if owner == rank:
            mine.append((unit.phase, position, unit))
    return [unit for _, _, unit in sorted(mine, key=lambda item: item[:2])]


def spread(ctx: Context, planned: list[tuple[Any, Recipe]], seeds: list[int] | None, until: str,
           methods: list[str] | None, vary_from: str) -> set[str]:
    """This rank's share of the run's units, computed alone (the choices after every rank's candidates); returns
    the ids every rank made, so that --force does not make them again on the first rank."""
    rank, world_size = ranks.world()
    alone = dataclasses.replace(ctx, alone=True, is_main=True, fresh=set(), note=lambda message: None,
                                logged=ctx.logged if rank == 0 else (lambda result: None))
    units = plan(planned, seeds, until, methods, vary_from)
    trained = share([u for u in units if u.phase < CHOICE], rank, world_size)
    chosen = share([u for u in units if u.phase == CHOICE], rank, world_size)
    for done, unit in enumerate(trained + chosen, start=1):
        if done == len(trained) + 1:
            ranks.gather(None)  # every rank's candidates are in the store: each choice sees them all
        unit.make(alone)
        ctx.progress(f"rank {rank}'s share of stages 2-4", done, len(trained) + len(chosen))
    if not chosen:
        ranks.gather(None)  # the others' choices wait for this rank's candidates
    return set().union(*ranks.gather(alone.fresh))
