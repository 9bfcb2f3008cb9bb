"""Where a run computes: the device, the torchrun process group, and the run options recorded with each artifact.

The CLI and the Python API both build their stage context here, so `ltstg.run(..., device="cuda")` and
`ltstg --device cuda run ...` set up the same way.
"""
from __future__ import annotations

import atexit
import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from ltstg import launcher, ranks
from ltstg.errors import LtstgError
from ltstg.progress import Progress, silent
from ltstg.stages import Context, Result
from ltstg.store import Store

DEVICES = "auto, cpu, cuda or cuda:N"


def torchrun_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the variables torchrun sets; (0, 1, 0) otherwise."""
    try:
        return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise LtstgError("RANK / WORLD_SIZE / LOCAL_RANK must be integers (they are set by torchrun).") from None


def is_main_process() -> bool:
    return torchrun_env()[0] == 0


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when torch sees one; a CUDA device that is not there is one clear error, not a deep failure."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise LtstgError(f"device {name!r} is not a device; use {DEVICES}.")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LtstgError(f"--device {name} was asked for, but torch sees no CUDA device; use --device cpu.")
    if name.startswith("cuda:"):
        index = name.split(":", 1)[1]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise LtstgError(
                f"--device {name} does not exist: torch sees {torch.cuda.device_count()} CUDA device(s) (cuda:0 …)."
            )
    return torch.device(name)


def make_context(
    store: str | Path | Store,
    device: str = "auto",
    *,
    force: bool = False,
    progress: Progress = silent,
    note: Callable[[str], None] = lambda message: None,
    logged: Callable[[Result], None] = lambda result: None,
    time_limit: float | None = None,
) -> Context:
    """The stage context of one invocation: device (joined to torchrun's process group when there is one),
    store, and how to talk; only the main rank reports progress and notes. `time_limit` (seconds from now):
    a stage still training then stops at its next epoch checkpoint (`TimeLimitReached`)."""
    rank, world_size, local_rank = torchrun_env()
    resolved = resolve_device(device)
    if world_size > 1 and resolved.type == "cuda":
        count = torch.cuda.device_count()
        if local_rank >= count:  # cuda:LOCAL_RANK would fail deep inside NCCL
            raise LtstgError(
                f"LOCAL_RANK {local_rank} has no GPU: torch sees {count} CUDA device(s) on this node; start at most "
                f"{count} process(es) per node (torchrun --nproc-per-node {count})."
            )
        resolved = torch.device("cuda", local_rank)
    if resolved.type == "cuda" and resolved.index is not None:  # --device cuda:1 too, so bare .cuda() calls land there
        torch.cuda.set_device(resolved)
    if world_size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
        atexit.register(ranks.end)  # NCCL warns, and may hang at exit, without it; gloo may abort
        launcher.listen()
        ranks.join()
    if resolved.type == "cuda":
        torch.backends.cudnn.benchmark = True
    main = rank == 0
    return Context(
        store=store if isinstance(store, Store) else Store(store),
        device=resolved,
        force=force,
        progress=progress if main else silent,
        note=note if main else (lambda message: None),
        is_main=main,
        logged=logged,
        deadline=None if time_limit is None else time.perf_counter() + time_limit,
        # CPU numbers depend on the intra-op thread count (reductions split differently), so it is recorded
        run_options={"device": str(resolved), "world_size": world_size, "threads": torch.get_num_threads(),
                     "argv": sys.argv[1:]},
    )
