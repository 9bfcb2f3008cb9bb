"""The one runner every stage goes through, whether called alone or by `ltstg run`.

It computes the artifact id, reuses an existing artifact or takes the lock, calls the stage with a
seeded generator and a checkpoint handle, and commits the result to the store.
"""
from __future__ import annotations

import datetime
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from pydantic import BaseModel

from ltstg import ranks
from ltstg.errors import LtstgError, TimeLimitReached
from ltstg.recipe import id_settings
from ltstg.progress import Progress, silent
from ltstg.store import (  # noqa: F401 (Output and require_kind are re-exported)
    SHORT, Artifact, DamagedCheckpoint, Output, Store, artifact_id, file_size_limit, require_kind,
)
from ltstg.version import __version__


class Checkpoint:
    """Resumable state of one in-flight artifact, kept in the store until the artifact commits.

    Under torchrun the first rank reads it and sends it to the others (`shared`), so all resume from the
    state it read; only the first rank writes it. A resume and a damaged
    checkpoint (discarded: the stage starts over) are said at once and kept in `notes`; the time
    earlier attempts spent travels in the state, so the artifact's wall-clock covers all of them.
    """

    def __init__(
        self,
        store: Store,
        pending_id: str,
        writable: bool = True,
        note: Callable[[str], None] = lambda message: None,
        device: torch.device = torch.device("cpu"),
        shared: bool = False,
        deadline: float | None = None,
        label: str = "",
    ) -> None:
        self.store = store
        self.deadline = deadline  # time.perf_counter() past which the stage stops at its next epoch checkpoint
        self.label = label
        self.pending_id = pending_id
        self.writable = writable
        self.note = note
        self.device = device
        self.shared = shared
        self.notes: list[str] = []
        self.earlier_seconds = 0.0
        self.started = time.perf_counter()

    def _say(self, message: str) -> None:
        self.notes.append(message)
        self.note(message)

    def load(self, of: int | None = None) -> dict[str, Any] | None:
        """The saved state (None: start from scratch); `of` is the stage's epoch count, for the message."""
        if not self.shared:
            return self._read(of)
        if not self.writable:
            return ranks.share(None)
        try:
            state = self._read(of)
        except Exception as error:
            ranks.tell_others(error)  # the others stop with its line
            raise
        return ranks.share(state)

    def _read(self, of: int | None) -> dict[str, Any] | None:
        try:
            state = self.store.load_checkpoint(self.pending_id)
        except DamagedCheckpoint as error:
            self._say(f"{error}; discarded it, starting over")
            if self.writable:
                self.store.clear_checkpoint(self.pending_id)
            return None
        if state is None:
            return None
        saved_on = state.pop("_device", self.device.type)
        if saved_on != self.device.type:  # generator states and device placement don't carry across device types
            raise LtstgError(
                f"the checkpoint of {self.pending_id[:SHORT]} was written on {saved_on}, this run is on "
                f"{self.device.type}: rerun with --device {saved_on} to resume it, or --force to start over here."
            )
        self.earlier_seconds = float(state.pop("_seconds", 0.0))
        if state.pop("_legacy", False):
            self._say("the checkpoint was written by an older ltstg without a digest: resuming from it unverified")
        if "epoch" in state:
            total = f" of {of}" if of is not None else ""
            self._say(f"resuming from the checkpoint: epoch {int(state['epoch']) + 2}{total} is next")
        else:
            self._say("resuming from the checkpoint")
        return state

    def save(self, state: dict[str, Any]) -> None:
        if self.writable:
            seconds = self.earlier_seconds + time.perf_counter() - self.started
            self.store.save_checkpoint(self.pending_id, {**state, "_seconds": seconds, "_device": self.device.type})

    def stop_at_deadline(self, epoch: int) -> None:
        """Past `--time-limit`, stop now that the checkpoint of `epoch` is written. Under torchrun the first
        rank's clock decides for all, so every rank stops after the same epoch."""
        if self.deadline is None:
            return
        past = time.perf_counter() >= self.deadline
        if self.shared:
            past = ranks.share(past if self.writable else None)
        if past:
            raise TimeLimitReached(
                f"{self.label}: --time-limit reached after epoch {epoch + 1}; its checkpoint keeps the progress, "
                "rerun the same command to continue."
            )


Stateful = dict[str, Any]  # name in the checkpoint -> an object with state_dict() / load_state_dict()


def resume(
    checkpoint: Checkpoint | None, stateful: Stateful, generator: torch.Generator, *, epochs: int
) -> tuple[int, dict[str, Any]]:
    """Restore every object and the generator from the last epoch checkpoint, the torchvision way.

    Returns the epoch to start at (0 without a checkpoint) and the rest of the saved state (curves, history).
    """
    state = checkpoint.load(of=epochs) if checkpoint is not None else None
    if state is None:
        return 0, {}
    for name, thing in stateful.items():
        thing.load_state_dict(state.pop(name))
    generator.set_state(state.pop("generator"))
    return int(state.pop("epoch")) + 1, state


def keep(
    checkpoint: Checkpoint | None, stateful: Stateful, generator: torch.Generator, *, epoch: int, **extra: Any
) -> None:
    """Save what `resume` needs to continue after `epoch`: every object's state, the generator and `extra`."""
    if checkpoint is None:
        return
    state = {name: thing.state_dict() for name, thing in stateful.items()}
    checkpoint.save({**state, "generator": generator.get_state(), "epoch": epoch, **extra})
    checkpoint.stop_at_deadline(epoch)


@dataclass(frozen=True)
class Context:
    """Run options of one invocation: where, on what, and how to talk. Never part of an id."""

    store: Store
    device: torch.device = torch.device("cpu")
    force: bool = False
    progress: Progress = silent
    note: Callable[[str], None] = lambda message: None
    is_main: bool = True
    run_options: dict[str, Any] = field(default_factory=dict)
    recalled: set[str] = field(default_factory=set)  # reused ids whose notes were said again in this invocation
    logged: Callable[["Result"], None] = lambda result: None  # hears every artifact made or reused (main rank)
    deadline: float | None = None  # from --time-limit: time.perf_counter() past which a stage stops at a checkpoint
    alone: bool = False  # under torchrun, this rank computes its own share of a run's units, deciding nothing with others
    fresh: set[str] = field(default_factory=set)  # ids computed in this invocation, by any rank: --force keeps them


@dataclass(frozen=True)
class Result:
    artifact: Artifact
    reused: bool


StageCall = Callable[[torch.Generator, Checkpoint], Output]


def stage_id(kind: str, settings: BaseModel | dict[str, Any], seed: int, parents: list[Artifact]) -> str:
    defining = id_settings(settings) if isinstance(settings, BaseModel) else dict(settings)
    return artifact_id(kind, {**defining, "seed": seed}, [p.id for p in parents])


def run_stage(
    ctx: Context,
    kind: str,
    settings: BaseModel | dict[str, Any],
    parents: list[Artifact],
    call: StageCall,
    *,
    seed: int,
    name: str | None = None,
    record: BaseModel | dict[str, Any] | None = None,
    every_rank: bool = False,
) -> Result:
    """Reuse the artifact if it exists, else compute it under the lock and commit it atomically.

    `settings` defines the id; `record` (default: `settings`) is what the metadata shows, for stages
    whose id needs more than their settings (a source fingerprint) or less (run options). Under torchrun
    the first rank decides; `every_rank` stages (DDP training) are then computed by all ranks together,
    the others by the first rank alone while the rest wait to read it.
    """
    pending = stage_id(kind, settings, seed, parents)
    store = ctx.store
    if name is not None:
        store.check_name(name)

    def compute() -> Result:
        return _compute(ctx, pending, kind, record or settings, parents, call, seed,
                        shared_checkpoint=every_rank and ranks.distributed())

    if ranks.distributed() and not ctx.alone:
        result = _decided_by_first_rank(ctx, pending, kind, compute, every_rank=every_rank)
    else:
        result = _reuse(ctx, pending, kind) or _compute_locked(ctx, pending, kind, compute)
    if name is not None and ctx.is_main:
        moved_from = store.set_name(name, pending)
        if moved_from is not None:
            ctx.note(f"name {name!r} moved from {moved_from[:SHORT]} to {pending[:SHORT]}")
    if ctx.is_main:
        ctx.logged(result)
    return result


def _compute_locked(ctx: Context, pending: str, kind: str, compute: Callable[[], Result],
                    decided: Callable[[bool], None] = lambda reused: None) -> Result:
    """Under the artifact's lock: reuse it if another run made it meanwhile, else compute it. `decided` hears
    which, before the work starts."""
    ctx.store.check_writable()  # before any work: a store that can't take the result fails now, not after it
    _say_file_size_limit(ctx)
    with ctx.store.lock(pending, on_wait=lambda: ctx.note(f"waiting for another run computing {kind} {pending[:SHORT]}")):
        result = _reuse(ctx, pending, kind)
        decided(result is not None)
        return result or compute()


def _decided_by_first_rank(ctx: Context, pending: str, kind: str, compute: Callable[[], Result], *,
                           every_rank: bool) -> Result:
    """The first rank reuses, or takes the lock and computes, and tells the others which before it starts;
    they compute alongside it (`every_rank`) or wait until it has written the artifact, then read it. An
    error on the first rank while the others only wait is sent to them, so all stop with its line."""
    if ctx.is_main:
        told: list[str] = []

        def decided(reused: bool) -> None:
            told.append(ranks.share("reuse" if reused else "compute"))

        try:
            result = _reuse(ctx, pending, kind)
            if result is not None:
                decided(True)
            else:
                result = _compute_locked(ctx, pending, kind, compute, decided)
        except Exception as error:
            if not told or (told == ["compute"] and not every_rank):  # the others are still waiting to hear
                ranks.tell_others(error)
            raise
        if told == ["compute"] and not every_rank:
            ranks.share("written")
        ranks.all_see(True, f"{kind} {pending[:SHORT]}")
        return result
    decision = ranks.share(None)
    result = None
    if decision == "compute" and every_rank:
        result = compute()
    elif decision == "compute":
        ranks.share(None)  # returns once the first rank has written it
    ranks.all_see(result is not None or ctx.store.exists(pending), f"{kind} {pending[:SHORT]}")
    return result or Result(ctx.store.get(pending, kind), reused=decision == "reuse")


def _say_file_size_limit(ctx: Context) -> None:
    """A `ulimit -f` can't be checked against a result not yet made, so it is said before the work."""
    limit = file_size_limit()
    if limit is not None:
        ctx.note(f"note: files are limited to {limit} bytes here (ulimit -f); an artifact larger than that "
                 "fails when it is written, after its work")


def _reuse(ctx: Context, pending: str, kind: str) -> Result | None:
    if (ctx.force and pending not in ctx.fresh) or not ctx.store.exists(pending):
        return None
    artifact = ctx.store.get(pending, kind)
    if pending not in ctx.fresh:  # made in this invocation (by another rank, or for another sweep combination)
        ctx.note(f"reused {kind} {pending[:SHORT]} (same settings and parents; --force recomputes)")
    if pending in ctx.recalled:
        return Result(artifact, reused=True)
    ctx.recalled.add(pending)
    for line in artifact.meta.get("notes", []):  # a deviation stays said, however often the result is reused
        ctx.note(f"{kind} {pending[:SHORT]} was made with a note: {line}")
    made_by = artifact.meta.get("version")
    if made_by != __version__:
        ctx.note(f"{kind} {pending[:SHORT]} was made by ltstg {made_by or 'of unknown version'}, "
                 f"this is {__version__}; --force recomputes it")
    return Result(artifact, reused=True)


def _compute(
    ctx: Context,
    pending: str,
    kind: str,
    settings: BaseModel | dict[str, Any],
    parents: list[Artifact],
    call: StageCall,
    seed: int,
    shared_checkpoint: bool = False,
) -> Result:
    if ctx.force and ctx.is_main:
        ctx.store.clear_checkpoint(pending)
    generator = torch.Generator(device=ctx.device).manual_seed(seed)
    started = time.perf_counter()
    label = f"{kind} {pending[:SHORT]}"  # names the artifact: in `ltstg run` one kind is made for many methods
    checkpoint = Checkpoint(ctx.store, pending, writable=ctx.is_main, note=lambda message: ctx.note(f"{label}: {message}"),
                            device=ctx.device, shared=shared_checkpoint, deadline=ctx.deadline, label=label)
    output = call(generator, checkpoint)
    if output.kind != kind:
        raise RuntimeError(f"stage returned a {output.kind} output for a {kind} artifact")
    from ltstg.stages.finite import Diverged, nonfinite_problems

    problems = nonfinite_problems(kind, output.tensors, output.metrics)
    if problems:  # before the store sees it: a checkpoint stays, nothing is committed
        raise Diverged(f"{kind} {pending[:SHORT]}: not committed, the training diverged: {'; '.join(problems[:3])}"
                         f"{f' (and {len(problems) - 3} more)' if len(problems) > 3 else ''}; lower the lr, or use "
                         "float32 storage where float16 overflows.")
    wall_clock = checkpoint.earlier_seconds + time.perf_counter() - started  # summed over interrupted attempts
    for line in output.notes:
        ctx.note(f"{label}: {line}")
    full = settings.model_dump(mode="json") if isinstance(settings, BaseModel) else dict(settings)
    meta = {
        "kind": kind,
        "settings": {**full, "seed": seed},
        "parents": [p.id for p in parents],
        "metrics": {k: float(v) for k, v in output.metrics.items()},
        "key_metric": output.key_metric,
        "info": output.info,
        "notes": checkpoint.notes + list(output.notes),
        "version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds"),
        "wall_clock": round(wall_clock, 3),
        "run": ctx.run_options,
    }
    ctx.recalled.add(pending)  # its notes were just said: a later reuse in this invocation stays quiet
    ctx.fresh.add(pending)  # made now: --force does not make it again in this invocation
    if ctx.is_main:
        meta = ctx.store.put(pending, output.tensors, meta)
        ctx.store.clear_checkpoint(pending)
    # handed on as held, not read back from the file just written; on the CPU and contiguous like a loaded
    # artifact's (a channels-last weight is copied; a large feature matrix already is)
    held = {name: t.detach().to("cpu").contiguous() for name, t in output.tensors.items()}
    return Result(Artifact(pending, meta, held), reused=False)
