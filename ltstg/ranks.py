"""Under torchrun: which rank decides, and how the others hear it.

Whether an artifact is reused, computed or resumed is decided once, by the first rank under the store's
lock, and sent to the others; so is the checkpoint it resumes from. The messages go over a gloo group of
their own with a long timeout: a rank waiting while the first one waits for another run's lock, or builds a
large data set, must not run into the collective timeout of the training group (NCCL's is minutes).
"""
from __future__ import annotations

import contextlib
import datetime
import gc
from typing import Any, Callable, TypeVar

import torch.distributed as dist

from ltstg import launcher
from ltstg.errors import LtstgError

PATIENCE = datetime.timedelta(days=7)  # how long a rank waits to hear from the first one
_control: tuple[Any, Any] | None = None  # (the world group it belongs to, the gloo group for decisions)
T = TypeVar("T")


def world() -> tuple[int, int]:
    """(rank, world size) under torchrun, (0, 1) otherwise."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def distributed() -> bool:
    return world()[1] > 1


def join(patience: datetime.timedelta = PATIENCE) -> None:
    """Make the decision group, right after the process group: made later, at the first decision, a rank that
    failed before it would leave the others waiting `patience` inside its creation."""
    global _control
    if distributed() and (_control is None or _control[0] is not dist.group.WORLD):  # a new process group since
        _control = (dist.group.WORLD, dist.new_group(backend="gloo", timeout=patience))


def _control_group() -> Any:
    join()
    assert _control is not None
    return _control[1]


def share(value: Any) -> Any:
    """The first rank's `value`, on every rank (the others pass anything). An LtstgError the first rank
    shares is raised on every rank (and in a single process), so all of them stop with the same line
    instead of waiting on it."""
    if distributed():
        box = [value if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(box, src=0, group=_control_group())
        value = box[0]
    if isinstance(value, LtstgError):
        raise value
    return value


def first_rank(compute: Callable[[], T]) -> T:
    """`compute()` run by the first rank alone, its result on every rank; an LtstgError it raises is raised on
    every rank."""
    if not distributed():
        return compute()
    if dist.get_rank() != 0:
        return share(None)
    try:
        value: Any = compute()
    except LtstgError as error:
        value = error
    return share(value)


def tell_others(error: BaseException) -> None:
    """Send the ranks waiting to hear from the first one the error it stopped on, as their one line (the first
    rank raises its own, with its traceback where it is a bug)."""
    launcher.leaving()  # this rank goes down on its own error: torchrun's stop, once the others have left, is moot
    told = error if isinstance(error, LtstgError) else LtstgError(
        f"the first rank stopped on {type(error).__name__}: {error}")
    with contextlib.suppress(LtstgError):
        share(told)


def gather(value: T) -> list[T]:
    """Every rank's `value`, in rank order (a single process: `[value]`); over the decision group, whose patience
    covers ranks that reach it hours apart."""
    if not distributed():
        return [value]
    answers: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(answers, value, group=_control_group())
    return answers


def all_see(seen: bool, what: str) -> None:
    """Every rank has `what` in its store, or every rank stops with one line naming those that don't."""
    if not distributed():
        return
    missing = [rank for rank, answer in enumerate(gather(seen)) if not answer]
    if missing:
        raise LtstgError(
            f"rank(s) {', '.join(map(str, missing))} do not see {what} that rank 0 has: under torchrun every "
            "process needs the same store; put --store on a file system all nodes share."
        )


def leave() -> None:
    """All ranks end the process group together (NCCL's teardown waits on every rank); what follows runs on
    the first rank alone, as a single process."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    end()


def end() -> None:
    """End the process group on this rank and let go of it and of the decision group, so that their worker
    threads are joined now. `destroy_process_group` alone leaves them running while this module still holds the
    groups; a gloo thread that lets go of a finished collective's tensors while the interpreter shuts down
    cannot take the GIL, and the rank aborts (`terminate called without an active exception`)."""
    global _control
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _control = None
    gc.collect()  # a group caught in a reference cycle would otherwise wait for the interpreter's last collection
