"""Every multi-process test, many times in a row, while other processes keep every core busy (issue 32).

A rank that aborts at exit, or a collective that times out, shows up one run in a few on a loaded machine and
never on an idle one; this is the check that finds it before a user does:

    python benchmarks/ranks_stress.py               # 20 rounds, one busy process per core
    python benchmarks/ranks_stress.py --rounds 3 --only tests/test_ranks.py

Prints one line per round and, at the end, how many rounds each test passed; exits 1 unless every test
passed every round. The log of each failed round is kept under --logs.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MULTI_PROCESS_TESTS = [
    "tests/test_ranks.py",  # two gloo ranks: decisions, refusals, errors, teardown
    "tests/test_stages_pretrain.py::test_run_under_torchrun_trains_stage1_on_both_ranks_and_the_rest_once",
    "tests/test_stages_pretrain.py::test_the_prepared_gpu_check_runs_on_the_cpu",  # torchrun pretrain (DDP)
    "tests/test_cli_torchrun.py",  # refusal, error and Ctrl-C under torchrun: every rank's line and exit code
    "tests/test_spread.py",  # stages 2-4 spread over 2 and 3 gloo ranks, and under torchrun after a DDP stage 1
]


def _busy() -> None:
    while True:
        pass


def _outcomes(report: Path) -> dict[str, bool]:
    """Test id -> passed, from pytest's JUnit XML."""
    outcomes = {}
    for case in ElementTree.parse(report).iter("testcase"):
        failed = any(child.tag in ("failure", "error") for child in case)
        skipped = any(child.tag == "skipped" for child in case)
        if not skipped:
            outcomes[f"{case.get('classname')}::{case.get('name')}"] = not failed
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--load", type=int, default=os.cpu_count() or 1, help="busy processes beside the tests")
    parser.add_argument("--only", nargs="+", default=MULTI_PROCESS_TESTS, help="pytest node ids")
    parser.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()) / "ltstg-ranks-stress")
    args = parser.parse_args()
    args.logs.mkdir(parents=True, exist_ok=True)

    load = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(args.load)]
    for process in load:
        process.start()
    passes: Counter[str] = Counter()
    seen: set[str] = set()
    try:
        for round_ in range(1, args.rounds + 1):
            report = args.logs / f"round-{round_}.xml"
            started = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *args.only],
                cwd=ROOT, capture_output=True, text=True,
            )
            outcomes = _outcomes(report) if report.exists() else {}
            if done.returncode == 5 or not outcomes:
                print(f"no test ran: {' '.join(args.only)}", file=sys.stderr)
                return 1
            seen.update(outcomes)
            passes.update(name for name, passed in outcomes.items() if passed)
            failed = sorted(name for name, passed in outcomes.items() if not passed)
            if failed:
                (args.logs / f"round-{round_}.log").write_text(done.stdout + done.stderr)
            print(f"round {round_}/{args.rounds}: {len(outcomes) - len(failed)}/{len(outcomes)} passed in "
                  f"{time.monotonic() - started:.0f} s" + (f"; failed {', '.join(failed)} "
                  f"(log: {args.logs / f'round-{round_}.log'})" if failed else ""), flush=True)
    finally:
        for process in load:
            process.terminate()
    print(f"\n{args.rounds} rounds, {args.load} busy process(es) beside them:")
    for name in sorted(seen):
        print(f"  {passes[name]:>3}/{args.rounds}  {name}")
    return 0 if all(passes[name] == args.rounds for name in seen) else 1


if __name__ == "__main__":
    sys.exit(main())
