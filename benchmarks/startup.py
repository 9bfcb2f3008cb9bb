"""How fast the CLI answers what needs no training: `--help`, a command's `--help`, a bad flag and a bad recipe
field, each in a fresh process, next to `python -c "import torch"` (goal: each under 1 s here; torch's import
alone takes longer, so none of them may import it).

Usage: python benchmarks/startup.py [--rounds R]

Each command runs R times, interleaved with the others; the median wall time is printed, and the ratio to
torch's import. A line ends in MISSED where the 1 s goal is; a shared machine's timings are not the code's fault,
so nothing fails.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

GOAL_SECONDS = 1.0
COMMANDS = {
    "import torch": [sys.executable, "-c", "import torch"],
    "ltstg --help": [sys.executable, "-m", "ltstg", "--help"],
    "ltstg run --help": [sys.executable, "-m", "ltstg", "run", "--help"],
    "ltstg pretrain --bogus (bad flag)": [sys.executable, "-m", "ltstg", "pretrain", "--bogus"],
    "ltstg pretrain --epochs -3 (bad field)": [sys.executable, "-m", "ltstg", "pretrain", "--epochs", "-3"],
    "ltstg run --set stg.lr=-1 (bad field)": [sys.executable, "-m", "ltstg", "run", "recipes/synthetic-lt.yaml",
                                               "--set", "stg.lr=-1"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.rounds):
        for name, command in COMMANDS.items():
            started = time.perf_counter()
            subprocess.run(command, capture_output=True, check=False)
            times[name].append(time.perf_counter() - started)
    torch_import = statistics.median(times["import torch"])
    for name, measured in times.items():
        median = statistics.median(measured)
        verdict = "" if name == "import torch" else ("  (goal < 1 s: met)" if median < GOAL_SECONDS else "  MISSED")
        print(f"{name:42s} {median:5.2f} s  {median / torch_import:4.2f}x torch's import{verdict}")


if __name__ == "__main__":
    main()
