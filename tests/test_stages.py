import multiprocessing
import time

import pytest
import torch

from ltstg.errors import LtstgError
from ltstg.recipe import StgSettings
from ltstg.stages import Checkpoint, Context, Output, run_stage, stage_id
from ltstg.store import Store


def constant_stage(value: float, log=None):
    def call(generator, checkpoint):
        if log is not None:
            log.append(1)
        noise = torch.rand(3, generator=generator)
        return Output("stg", {"w": torch.full((2,), value), "noise": noise}, {"value": value}, key_metric="value")

    return call


def test_compute_then_reuse_then_force(tmp_path):
    ctx = Context(store=Store(tmp_path))
    log = []
    first = run_stage(ctx, "stg", StgSettings(), [], constant_stage(1.0, log), seed=0)
    second = run_stage(ctx, "stg", StgSettings(), [], constant_stage(1.0, log), seed=0)
    assert not first.reused and second.reused and len(log) == 1
    assert first.artifact.id == second.artifact.id
    assert torch.equal(first.artifact["noise"], second.artifact["noise"])  # seeded generator
    forced = run_stage(Context(store=Store(tmp_path), force=True), "stg", StgSettings(), [], constant_stage(1.0, log), seed=0)
    assert not forced.reused and len(log) == 2 and forced.artifact.id == first.artifact.id
    meta = first.artifact.meta
    assert meta["settings"]["memory"] == "auto" and meta["settings"]["seed"] == 0 and meta["metrics"] == {"value": 1.0}
    assert meta["version"] and meta["created"] and meta["wall_clock"] >= 0


def test_a_reused_artifact_says_its_notes_and_an_older_version_again(tmp_path, monkeypatch):
    from ltstg import stages

    def noted(generator, checkpoint):
        return Output("stg", {"w": torch.zeros(2)}, {}, notes=["skipped 3 unreadable image file(s)"])

    said = []
    ctx = Context(store=Store(tmp_path), note=said.append)
    made = run_stage(ctx, "stg", StgSettings(), [], noted, seed=0).artifact
    assert said == [f"stg {made.id[:12]}: skipped 3 unreadable image file(s)"]  # which artifact: a run makes many
    said.clear()
    run_stage(ctx, "stg", StgSettings(), [], noted, seed=0)  # reused in the invocation that made it: said already
    assert not any("was made with a note" in line for line in said)
    ctx = Context(store=ctx.store, note=said.append)  # a later invocation
    again = run_stage(ctx, "stg", StgSettings(), [], noted, seed=0)
    assert again.reused and any("was made with a note: skipped 3 unreadable image file(s)" in line for line in said)
    assert not any("made by ltstg" in line for line in said)
    said.clear()
    run_stage(ctx, "stg", StgSettings(), [], noted, seed=0)
    assert not any("was made with a note" in line for line in said)  # said once per invocation
    monkeypatch.setattr(stages, "__version__", "9.9.9")
    said.clear()
    run_stage(Context(store=ctx.store, note=said.append), "stg", StgSettings(), [], noted, seed=0)
    assert any(f"was made by ltstg {again.artifact.meta['version']}, this is 9.9.9" in line for line in said)


def test_a_checkpoint_from_another_device_type_is_refused_not_misloaded(tmp_path):
    store = Store(tmp_path)
    Checkpoint(store, "d" * 64, device=torch.device("meta")).save({"epoch": 3})
    with pytest.raises(LtstgError, match="written on meta, this run is on cpu: rerun with --device meta"):
        Checkpoint(store, "d" * 64).load()
    assert store.checkpoint_path("d" * 64).is_file()  # kept for the device that can resume it
    Checkpoint(store, "e" * 64).save({"epoch": 3})
    assert Checkpoint(store, "e" * 64).load()["epoch"] == 3


def test_seed_settings_and_parents_change_the_id(tmp_path):
    store = Store(tmp_path)
    ctx = Context(store=store)
    base = run_stage(ctx, "stg", StgSettings(), [], constant_stage(1.0), seed=0).artifact
    assert stage_id("stg", StgSettings(), 1, []) != base.id
    assert stage_id("stg", StgSettings(memory=600), 0, []) != base.id
    assert stage_id("stg", StgSettings(), 0, [base]) != base.id


def test_failing_stage_writes_nothing(tmp_path):
    store = Store(tmp_path)

    def broken(generator, checkpoint):
        raise LtstgError("bad input")

    with pytest.raises(LtstgError):
        run_stage(Context(store=store), "stg", StgSettings(), [], broken, seed=0)
    assert [p for p in tmp_path.rglob("*") if not p.is_dir()] == []  # not even a lock file


def test_name_is_recorded(tmp_path):
    store = Store(tmp_path)
    result = run_stage(Context(store=store), "stg", StgSettings(), [], constant_stage(2.0), seed=0, name="mine")
    assert store.resolve("mine", "stg") == result.artifact.id


def _slow_worker(root, queue):
    def call(generator, checkpoint):
        time.sleep(1.5)
        return Output("stg", {"w": torch.ones(2)})

    result = run_stage(Context(store=Store(root)), "stg", StgSettings(), [], call, seed=0)
    queue.put(result.reused)


def test_two_processes_computing_the_same_artifact_end_with_one(tmp_path):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_slow_worker, args=(str(tmp_path), queue)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    reused = sorted(queue.get(timeout=5) for _ in workers)
    assert reused == [False, True]  # one computed under the lock, the other waited and reused it
    store = Store(tmp_path)
    assert len(store.ids()) == 1
    assert [problem for _, problem in store.verify()] == [None]
