"""Issue 36: under torchrun, `ltstg run`'s stages 2–4 spread over the ranks and give what one process gives."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from ltstg.cli import app
from ltstg.stages.spread import Unit, share
from ltstg.store import Store
from tests.conftest import TINY

METHODS = """
methods:
  CE: {classifier: none}
  cRT: {classifier: crt, select: {lr: [0.01, 0.03, 0.1]}}
  cRT+STG: {classifier: crt, augment: {name: stg}, select: {augment.lam: [0.5, 1.0, 1.5]}}
  cRT (shifted): {classifier: crt, bn_shift: true, sampling: class_aware}
"""
SEEDS = [0, 1]

# stages 2-4 over the stage-1 artifacts already in the store (made with `stage1_world` processes), on every rank
# torchrun starts (or in one process), as `ltstg run` does after its stage 1; the first rank writes the rows
SCRIPT = """
import dataclasses, json, sys
from ltstg import ranks
from ltstg.recipe import load_recipe
from ltstg.runtime import make_context
from ltstg.stages.pipeline import aggregate, run_recipe
from ltstg.stages.spread import spread

store, recipe_path, stage1_world, out = sys.argv[1:5]
ctx = make_context(store, "cpu")
ctx = dataclasses.replace(ctx, run_options={**ctx.run_options, "world_size": int(stage1_world)})
recipe, seeds = load_recipe(recipe_path), [0, 1]
if ranks.distributed():
    ctx.fresh.update(spread(ctx, [({}, recipe)], seeds, "eval", None, "fit-stg"))
    ranks.leave()
if ctx.is_main:
    runs, _ = run_recipe(ctx, recipe, seeds=seeds, vary_from="fit-stg", stage1_made=True)
    open(out, "w").write(json.dumps(aggregate(runs)))
"""


def _env() -> dict[str, str]:
    """One thread per process, in the single process too: the thread count changes a float's rounding."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1"}


def _stages_2_to_4(tmp_path: Path, stage1: Path, name: str, processes: int, stage1_world: int) -> tuple[list, set]:
    store = tmp_path / name
    shutil.copytree(stage1, store)
    script = tmp_path / "spread_run.py"
    script.write_text(SCRIPT)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)] \
        if processes > 1 else [sys.executable]
    out = tmp_path / f"{name}.json"
    done = subprocess.run([*launcher, str(script), str(store), str(tmp_path / "recipe.yaml"), str(stage1_world),
                           str(out)], env=_env(), capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-4000:]
    assert not list((store / "checkpoints").glob("*.pt"))
    return json.loads(out.read_text()), set(Store(store).ids())


def test_the_costliest_units_go_first_to_the_rank_with_the_least_expected_work():
    units = [Unit(2, cost, f"c{i}", None) for i, cost in enumerate([9] + [1] * 8)] + [Unit(0, 1.0, "features", None)]
    shares = [share(units, rank, 2) for rank in range(2)]
    assert sorted(u.key for s in shares for u in s) == sorted(u.key for u in units)  # each unit once
    assert [u.key for u in shares[0]] == ["c0"]  # the costly one alone: balanced by cost, not count
    assert sum(u.cost for u in shares[1]) == 9 and shares[1][0].key == "features"  # done phase by phase
    assert share(units, 1, 2) == shares[1]  # every rank computes the same split


def test_two_and_three_processes_give_the_ids_and_table_of_one(tmp_path):
    (tmp_path / "recipe.yaml").write_text(TINY + METHODS)
    stage1 = tmp_path / "stage1"
    made = CliRunner().invoke(app, ["--store", str(stage1), "run", str(tmp_path / "recipe.yaml"), "--until", "pretrain",
                                    "--seeds", "0", "--seeds", "1", "--vary-from", "fit-stg"])
    assert made.exit_code == 0, made.output
    one_rows, one_ids = _stages_2_to_4(tmp_path, stage1, "one", 1, stage1_world=1)
    assert len(one_ids - set(Store(stage1).ids())) > 20  # STGs, candidates, shifted features, reports
    for processes in (2, 3):
        rows, ids = _stages_2_to_4(tmp_path, stage1, f"p{processes}", processes, stage1_world=1)
        assert ids == one_ids
        assert rows == one_rows


def test_ltstg_run_under_torchrun_spreads_after_its_ddp_stage_1_and_matches_one_process(tmp_path):
    """The CLI's own path: a 2-process `ltstg run` (stage 1 under DDP, then stages 2-4 spread) against one process
    running stages 2-4 over that run's stage-1 artifacts."""
    (tmp_path / "recipe.yaml").write_text(TINY + METHODS)
    spread_store = tmp_path / "spread"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "ltstg", "--store", str(spread_store), "--device", "cpu", "--json", "run",
                           str(tmp_path / "recipe.yaml"), "--seeds", "0", "--seeds", "1", "--vary-from", "fit-stg"],
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "reused classifier" not in done.stderr  # made by a rank in this run: not a reuse worth a line
    rows = json.loads(done.stdout)["rows"]
    stage1 = tmp_path / "stage1"
    (stage1 / "objects").mkdir(parents=True)
    for info in Store(spread_store).list():
        if info.kind in ("dataset", "backbone"):
            shutil.copy(info.path, stage1 / "objects")
    one_rows, one_ids = _stages_2_to_4(tmp_path, stage1, "one", 1, stage1_world=2)
    assert set(Store(spread_store).ids()) == one_ids
    assert [{k: v for k, v in row.items() if k != "swept"} for row in rows] == one_rows
