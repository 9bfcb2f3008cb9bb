"""`ltstg run` of a many-candidate recipe on 1 process against 2 under torchrun (stages 2-4 spread over the
ranks): goal, the 2-process wall time at most 0.6x the single process's on a 2-core machine.

Usage: python benchmarks/spread_speed.py [--processes N] [--seeds S] [--device cpu|cuda]

Each store first gets its stage 1 (`--until pretrain`, untimed: under torchrun it is a DDP backbone of its own);
then the whole run is timed, so what differs is stages 2-4: one process with every core against N processes
with one thread each (torchrun's default), the first rank choosing and evaluating. Both runs' tables are
printed side by side: their ids differ only through stage 1.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL = 0.6
RECIPE = """\
seed: 0
dataset:
  source: synthetic
  imbalance: 50
  size: 16
  val_per_class: 10
  synthetic: {num_classes: 10, train_per_class: 1000, test_per_class: 20}
pretrain: {model: resnet20_cifar, epochs: 2, batch_size: 64, warmup_epochs: 1, milestones: [1], precision: fp32}
stg: {epochs: 30, batch_size: 64}
retrain: {epochs: 30, batch_size: 64}
methods:
  CE: {classifier: none}
  cRT: {classifier: crt, select: {lr: [1.0e-3, 3.0e-3, 1.0e-2, 3.0e-2]}}
  LWS: {classifier: lws, select: {lr: [1.0e-3, 3.0e-3, 1.0e-2, 3.0e-2]}}
  cRT+STG: {classifier: crt, augment: {name: stg}, select: {augment.lam: [0.5, 1.0, 1.5], lr: [3.0e-3, 1.0e-2]}}
  cRT+noise: {classifier: crt, augment: {name: noise}, select: {augment.std: [0.1, 0.3, 0.5], lr: [3.0e-3, 1.0e-2]}}
  cRT+ISDA: {classifier: crt, augment: {name: isda}, select: {augment.lam: [0.25, 0.5, 1.0], lr: [3.0e-3, 1.0e-2]}}
"""


def ltstg(store: Path, processes: int, device: str, *args: str) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)] \
        if processes > 1 else [sys.executable]
    return [*launcher, "-m", "ltstg", "--store", str(store), "--device", device, "--json", *args]


def timed_run(folder: Path, processes: int, seeds: list[str], device: str = "cpu") -> tuple[float, list[dict]]:
    store, recipe = folder / f"store-{processes}", folder / "many.yaml"
    if not recipe.exists():
        recipe.write_text(RECIPE)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    run = ["run", str(recipe), *seeds, "--vary-from", "fit-stg"]
    for command in (ltstg(store, processes, device, *run, "--until", "pretrain"), ltstg(store, processes, device, *run)):
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command[-12:])} exited with {done.returncode}:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started, json.loads(done.stdout)["rows"]


def compare(folder: Path, processes: int, seeds: int, device: str = "cpu") -> tuple[float, float, list, list]:
    """(1-process seconds, N-process seconds, their rows): stages 2-4 of the many-candidate recipe."""
    flags = [flag for seed in range(seeds) for flag in ("--seeds", str(seed))]
    one, one_rows = timed_run(folder, 1, flags, device)
    many, many_rows = timed_run(folder, processes, flags, device)
    return one, many, one_rows, many_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        one, many, one_rows, many_rows = compare(Path(temp), args.processes, args.seeds, args.device)
    candidates = sum(len(row["candidates"][0]) if "candidates" in row else 1 for row in one_rows)
    print(f"{len(one_rows)} methods, {candidates} stage-3 candidates per seed, {args.seeds} seeds, {os.cpu_count()} cores")
    print(f"1 process: {one:.1f} s;  {args.processes} processes: {many:.1f} s;  ratio {many / one:.2f} "
          f"(goal <= {GOAL}: {'met' if many / one <= GOAL else 'MISSED'})")
    for a, b in zip(one_rows, many_rows):
        print(f"  {a['method']:12s} top-1 {a['all']:.3f} (1 process)  {b['all']:.3f} ({args.processes} processes)")


if __name__ == "__main__":
    main()
