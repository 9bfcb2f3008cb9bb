"""Under torchrun the first rank decides and the others hear it (issue 23, row 5): two gloo processes on
the CPU, each with a store of its own where a test needs a node-local one."""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ltstg import ranks
from ltstg.errors import LtstgError
from ltstg.stages import Checkpoint, Context, Output, run_stage, stage_id
from ltstg.store import Store

SETTINGS = {"what": "a test stage"}


def _entry(rank, init_file, test, args):
    wait = datetime.timedelta(seconds=45)  # a rank left waiting fails the test instead of hanging CI
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2, timeout=wait)
    ranks.join(wait)
    try:
        test(rank, *args)
    finally:
        ranks.end()


def on_two_ranks(tmp_path, test, *args, join=True):
    spawned = mp.spawn(_entry, args=(str(tmp_path / "rendezvous"), test, args), nprocs=2, join=False)
    if join:
        while not spawned.join():
            pass
    return spawned


def _counting_call(out, rank, value=1.0, collective=False):
    def call(generator, checkpoint):
        (out / f"computed-{rank}").write_text("yes")
        if collective:  # what DDP does first: a collective every rank must reach
            dist.all_reduce(torch.ones(1))
        return Output("report", {"x": torch.tensor([value])})
    return call


def _one_stage(rank, root, out, every_rank, local):
    store = Store(root / (f"rank{rank}" if local else "shared"))
    ctx = Context(store=store, is_main=rank == 0)
    try:
        result = run_stage(ctx, "report", SETTINGS, [], _counting_call(out, rank), seed=0, every_rank=every_rank)
    except LtstgError as error:
        (out / f"error-{rank}").write_text(str(error))
        return
    (out / f"result-{rank}").write_text(json.dumps({"x": result.artifact["x"].tolist(), "reused": result.reused}))


@pytest.mark.parametrize("every_rank", [False, True])
def test_a_stage_is_decided_by_the_first_rank_and_computed_as_the_stage_asks(tmp_path, every_rank):
    on_two_ranks(tmp_path, _one_stage, tmp_path, tmp_path, every_rank, False)
    computed = sorted(p.name for p in tmp_path.glob("computed-*"))
    assert computed == (["computed-0", "computed-1"] if every_rank else ["computed-0"])
    assert [json.loads((tmp_path / f"result-{r}").read_text())["x"] for r in (0, 1)] == [[1.0], [1.0]]
    assert len(Store(tmp_path / "shared").list("report")) == 1


def test_a_store_the_other_ranks_do_not_see_stops_every_rank_with_one_line(tmp_path):
    on_two_ranks(tmp_path, _one_stage, tmp_path, tmp_path, False, True)
    errors = [(tmp_path / f"error-{r}").read_text() for r in (0, 1)]
    assert errors[0] == errors[1] and "rank(s) 1 do not see" in errors[0] and "--store" in errors[0]


def _waiting_stage(rank, root, out):
    ctx = Context(store=Store(root), is_main=rank == 0, note=lambda line: "waiting" in line and (out / "waiting").write_text(line))
    result = run_stage(ctx, "report", SETTINGS, [], _counting_call(out, rank, collective=True), seed=0, every_rank=True)
    (out / f"result-{rank}").write_text(json.dumps({"x": result.artifact["x"].tolist(), "reused": result.reused}))


def test_while_the_first_rank_waits_for_another_runs_lock_the_others_wait_too(tmp_path):
    """Another run holds the lock and then commits the artifact: both ranks reuse it. The other rank must not
    start computing on its own meanwhile (it would wait in the stage's first collective, then time out)."""
    store = Store(tmp_path / "store")
    pending = stage_id("report", SETTINGS, 0, [])
    with store.lock(pending):
        spawned = on_two_ranks(tmp_path, _waiting_stage, tmp_path / "store", tmp_path, join=False)
        started = time.monotonic()
        while not (tmp_path / "waiting").exists():  # the first rank says it waits for the lock
            assert time.monotonic() - started < 60
            time.sleep(0.1)
        time.sleep(1)  # the other rank, had it not waited too, would be computing by now
        store.put(pending, {"x": torch.tensor([7.0])}, {"kind": "report", "settings": SETTINGS, "parents": []})
    while not spawned.join():
        pass
    assert not list(tmp_path.glob("computed-*"))
    assert [json.loads((tmp_path / f"result-{r}").read_text()) for r in (0, 1)] == [{"x": [7.0], "reused": True}] * 2


def _resume(rank, root, out):
    store = Store(root / f"rank{rank}")  # only the first rank's node has the checkpoint
    checkpoint = Checkpoint(store, "c" * 64, writable=rank == 0, shared=True)
    state = checkpoint.load(of=5)
    (out / f"state-{rank}").write_text(json.dumps(None if state is None else {"epoch": state["epoch"],
                                                                               "w": state["w"].tolist()}))


def test_every_rank_resumes_from_the_checkpoint_the_first_rank_read(tmp_path):
    Store(tmp_path / "rank0").save_checkpoint("c" * 64, {"epoch": 2, "w": torch.arange(3.0), "_device": "cpu"})
    on_two_ranks(tmp_path, _resume, tmp_path, tmp_path)
    states = [json.loads((tmp_path / f"state-{r}").read_text()) for r in (0, 1)]
    assert states == [{"epoch": 2, "w": [0.0, 1.0, 2.0]}] * 2


def _refused_resume(rank, root, out):
    checkpoint = Checkpoint(Store(root), "c" * 64, writable=rank == 0, shared=True)
    try:
        checkpoint.load(of=5)
    except LtstgError as error:
        (out / f"error-{rank}").write_text(str(error))


def test_a_checkpoint_the_first_rank_refuses_stops_every_rank_with_its_line(tmp_path):
    Store(tmp_path / "store").save_checkpoint("c" * 64, {"epoch": 2, "_device": "cuda"})
    on_two_ranks(tmp_path, _refused_resume, tmp_path / "store", tmp_path)
    errors = [(tmp_path / f"error-{r}").read_text() for r in (0, 1)]
    assert errors[0] == errors[1] and "--device cuda" in errors[0]


def _failing_stage(rank, root, out):
    def broken(generator, checkpoint):
        raise RuntimeError("out of memory, say")

    ctx = Context(store=Store(root), is_main=rank == 0)
    try:
        run_stage(ctx, "report", SETTINGS, [], broken, seed=0)
    except Exception as error:
        (out / f"error-{rank}").write_text(f"{type(error).__name__}: {error}")


def test_a_first_rank_that_fails_on_a_stage_of_its_own_tells_the_others(tmp_path):
    """The others wait to read what the first rank computes alone; a bug there (not only a user error) reaches them
    as one line instead of a hang or a transport error, and the first rank keeps its own traceback."""
    on_two_ranks(tmp_path, _failing_stage, tmp_path / "store", tmp_path)
    assert (tmp_path / "error-0").read_text() == "RuntimeError: out of memory, say"
    assert (tmp_path / "error-1").read_text() == "LtstgError: the first rank stopped on RuntimeError: out of memory, say"


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _ending(rank, init_file, out):
    before = _threads()
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=45))
    ranks.join(datetime.timedelta(seconds=45))
    with contextlib.suppress(LtstgError):
        ranks.all_see(rank == 0, "a test artifact")  # a collective on each group: both have worker threads busy
    ranks.leave()
    (out / f"threads-{rank}").write_text(json.dumps([before, _threads()]))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_a_rank_that_leaves_has_no_process_group_thread_left(tmp_path):
    """Why a rank aborted at exit (issue 32): gloo's worker threads outlived `destroy_process_group` while the
    decision group was still held, and one of them let go of a collective's tensors as the interpreter shut
    down. After `ranks.leave()` every thread the groups started is joined."""
    mp.spawn(_ending, args=(str(tmp_path / "rendezvous"), tmp_path), nprocs=2)
    for rank in (0, 1):
        before, after = json.loads((tmp_path / f"threads-{rank}").read_text())
        assert after == before, f"rank {rank}: {after - before} thread(s) of the process groups still run"
