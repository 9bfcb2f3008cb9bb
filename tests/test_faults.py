"""The fault matrix: every fault a user can hit gets one clear line and exit 2, and no wrong result is stored.

One test per row of the matrix (issue 13). Files are built in a temp folder; the data are tiny.
"""
import json
import os
import re
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ltstg.cli import app
from ltstg.errors import LtstgError
from ltstg.recipe import RetrainSettings, load_recipe
from ltstg.stages import Context
from ltstg.stages import steps
from ltstg.stages.pipeline import run_recipe
from ltstg.store import Store

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(store, *args):
    return runner.invoke(app, ["--store", str(store), *args])


def one_error_line(result, *expected):
    """Exit 2, no traceback, one red error line with no blank line before it, saying it all."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert errors, result.stderr
    assert errors[0] == 0 or lines[errors[0] - 1].strip(), result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr


def write_image(path, value=(200, 30, 30), mode="RGB", size=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), value).save(path)


def image_folder(root, train_counts, test_count=2):
    """train/<class>/*.png and test/<class>/*.png with one colour per class."""
    for c, count in enumerate(train_counts):
        for i in range(count):
            write_image(root / "train" / f"class{c}" / f"{i}.png", (40 * c, 100, 50))
        for i in range(test_count):
            write_image(root / "test" / f"class{c}" / f"{i}.png", (40 * c, 100, 50))
    return root


# -- 1, 2, 3, 12, 13: data ---------------------------------------------------------------------------------------


def test_01_unreadable_files_are_noted_counted_and_strict_counts_the_same(tmp_path):
    root = image_folder(tmp_path / "images", [6, 6])
    good = (root / "train/class0/0.png").read_bytes()
    (root / "train/class0/truncated.png").write_bytes(good[: len(good) // 2])
    (root / "train/class1/text.jpg").write_text("not an image")
    (root / "train/class1/empty.png").write_bytes(b"")
    store = tmp_path / "store"
    made = invoke(store, "make-dataset", "imagefolder", "--root", str(root), "--imb", "1", "--name", "ds")
    assert made.exit_code == 0, made.output
    assert "skipped 3 unreadable image file(s)" in made.stderr and "(empty file)" in made.stderr
    assert "train/class0/truncated.png" in made.stderr
    dataset = Store(store).get(Store(store).resolve("ds", "dataset"))
    assert dataset.info["skipped_count"] == 3 and dataset.metrics["skipped"] == 3
    assert any("skipped 3" in note for note in dataset.meta["notes"])
    strict = invoke(tmp_path / "strict", "make-dataset", "imagefolder", "--root", str(root), "--imb", "1", "--strict")
    one_error_line(strict, "3 unreadable image file(s)")
    assert not (tmp_path / "strict" / "objects").exists() or not any((tmp_path / "strict" / "objects").iterdir())


def test_02_a_class_left_without_images_is_an_error(tmp_path):
    root = image_folder(tmp_path / "images", [4, 4, 4])
    for path in (root / "train/class2").iterdir():
        path.write_text("broken")
    result = invoke(tmp_path / "store", "make-dataset", "imagefolder", "--root", str(root), "--imb", "1")
    one_error_line(result, "class2 (train)", "no readable image left")


@pytest.mark.parametrize(
    ("mode", "stored", "expected"),
    [("I;16", 30000, round(30000 / 257)), ("I", 30000, round(30000 / 257)), ("F", 0.5, 128)],
)
def test_03_high_bit_depth_images_are_scaled_to_8_bits(tmp_path, mode, stored, expected):
    from ltstg.data.imagefolder import decode_images

    path = tmp_path / ("grey.png" if mode == "I;16" else "grey.tif")  # PNG stores 16 bits; TIFF also 32
    Image.fromarray(np.full((8, 8), stored, dtype={"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode])).save(path)
    images, keep, skipped = decode_images(str(tmp_path), [path.name], 8)
    assert keep.all() and skipped == []
    assert images.unique().tolist() == [expected]  # not 255: PIL's own convert clips to white


def test_12_a_single_class_is_refused_at_make_dataset(tmp_path):
    root = image_folder(tmp_path / "images", [5])
    result = invoke(tmp_path / "store", "make-dataset", "imagefolder", "--root", str(root), "--imb", "1")
    one_error_line(result, "needs at least 2")


def test_13_capped_classes_are_noted_and_size_order_keeps_a_folders_shape(tmp_path):
    root = image_folder(tmp_path / "images", [4, 30, 12])  # uneven: largest is class 1
    store = tmp_path / "store"
    made = invoke(store, "make-dataset", "imagefolder", "--root", str(root), "--imb", "10", "--name", "label")
    assert made.exit_code == 0, made.output
    assert "hold fewer images than the profile asks" in made.stderr and "achieved imbalance is" in made.stderr
    by_size = invoke(store, "make-dataset", "imagefolder", "--root", str(root), "--imb", "10",
                     "--recipe", str(_recipe(tmp_path, "dataset:\n  profile_order: size\n")), "--name", "size")
    assert by_size.exit_code == 0, by_size.output
    counts = Store(store).get(Store(store).resolve("size", "dataset"))["class_counts"].tolist()
    # 30 · 10^-(r/2) by size: 30, 9, 3; the largest class, with no unused image, lends a tenth to validation
    assert counts == [3, 27, 9] and "fewer images" not in by_size.stderr
    assert "validation: 1 class(es) lacked" in by_size.stderr and "30 → 27" in by_size.stderr


def _recipe(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# -- 4, 9: damaged artifacts -------------------------------------------------------------------------------------


def test_04_a_damaged_newest_artifact_is_never_skipped_silently(tiny_recipe_path, tmp_path):
    store = tmp_path / "store"
    assert invoke(store, "make-dataset", "--recipe", str(tiny_recipe_path)).exit_code == 0
    newer = invoke(store, "make-dataset", "--recipe", str(tiny_recipe_path), "--imb", "2")
    assert newer.exit_code == 0
    newest = Store(store).list("dataset")[-1]
    newest.path.write_bytes(newest.path.read_bytes()[:5])  # truncated: its header (and kind) are gone
    result = invoke(store, "pretrain", "--recipe", str(tiny_recipe_path), "--epochs", "1")
    one_error_line(result, newest.id[:12], "corrupt")
    assert Store(store).list("backbone") == []


@pytest.mark.parametrize("damage", ["empty", "four bytes", "header length"])
def test_09_a_damaged_file_is_called_corrupt_by_name_and_prefix(tiny_recipe_path, tmp_path, damage):
    store = tmp_path / "store"
    assert invoke(store, "make-dataset", "--recipe", str(tiny_recipe_path), "--name", "ds1").exit_code == 0
    info = Store(store).list("dataset")[0]
    data = info.path.read_bytes()
    info.path.write_bytes({"empty": b"", "four bytes": data[:4], "header length": struct.pack("<Q", 2**40) + data[8:]}[damage])
    for ref in ("ds1", info.id[:10]):
        result = invoke(store, "inspect", "dataset", ref)
        one_error_line(result, f"artifact {info.id[:12]} is corrupt")


def test_09_a_damaged_file_beside_a_sound_one_with_the_same_prefix_is_not_skipped(tiny_recipe_path, tmp_path):
    store = tmp_path / "store"
    assert invoke(store, "make-dataset", "--recipe", str(tiny_recipe_path)).exit_code == 0
    sound = Store(store).list("dataset")[0]
    twin = sound.path.with_name(sound.id[:6] + "0" * 58 + ".safetensors")
    twin.write_bytes(b"\x00" * 4)
    one_error_line(invoke(store, "inspect", "dataset", sound.id[:6]), "is corrupt")


def test_09_a_folder_named_like_an_artifact_is_reported_not_raised(tiny_recipe_path, tmp_path):
    store = tmp_path / "store"
    assert invoke(store, "make-dataset", "--recipe", str(tiny_recipe_path)).exit_code == 0
    (store / "objects" / ("f" * 64 + ".safetensors")).mkdir()
    one_error_line(invoke(store, "inspect", "dataset"), "ffffffff")


# -- 5, 14: checkpoints ------------------------------------------------------------------------------------------


class Killed(Exception):
    pass


def _features_and_settings(tiny_run):
    return tiny_run["features"], RetrainSettings(epochs=3, batch_size=16, lr=1e-2)


def _retrain(ctx, recipe, features, settings):
    return steps.retrain_step(ctx, recipe, settings, features, None)


def test_05_a_damaged_checkpoint_is_reported_and_discarded(tiny_run, tmp_path):
    features, settings = _features_and_settings(tiny_run)
    recipe = tiny_run["recipe"]
    clean = _retrain(Context(store=Store(tmp_path / "clean")), recipe, features, settings).artifact

    def kill_after_epoch_2(task, done, total, **metrics):
        if metrics.get("epoch") == 2:
            raise Killed

    store = Store(tmp_path / "store")
    with pytest.raises(Killed):
        _retrain(Context(store=store, progress=kill_after_epoch_2), recipe, features, settings)
    (checkpoint,) = (store.root / "checkpoints").iterdir()
    data = bytearray(checkpoint.read_bytes())
    data[-20] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    notes = []
    again = _retrain(Context(store=store, note=notes.append), recipe, features, settings).artifact
    assert any("damaged" in n and "starting over" in n for n in notes), notes
    assert any("damaged" in n for n in again.meta["notes"])
    assert again.id == clean.id and torch.equal(again["weight"], clean["weight"])


def test_14_resume_is_said_and_wall_clock_covers_every_attempt(tiny_run, tmp_path):
    features, settings = _features_and_settings(tiny_run)
    store = Store(tmp_path / "store")
    pending = []

    def kill_after_epoch_2(task, done, total, **metrics):
        if metrics.get("epoch") == 2:
            pending.append(store.load_checkpoint(next((store.root / "checkpoints").iterdir()).stem))
            raise Killed

    with pytest.raises(Killed):
        _retrain(Context(store=store, progress=kill_after_epoch_2), tiny_run["recipe"], features, settings)
    earlier = pending[0]["_seconds"]
    notes = []
    started = time.perf_counter()
    artifact = _retrain(Context(store=store, note=notes.append), tiny_run["recipe"], features, settings).artifact
    this_attempt = time.perf_counter() - started
    assert any("resuming from the checkpoint: epoch 3 of 3 is next" in n for n in notes), notes
    # both attempts, less what the runner spends around the stage itself
    assert earlier > 0 and artifact.meta["wall_clock"] >= earlier + this_attempt - 0.5


# -- 6, 7, 8, 10, 11: inputs and the store -----------------------------------------------------------------------


def test_06_a_bad_name_fails_before_any_work(tiny_recipe_path, tmp_path):
    store = tmp_path / "store"
    result = invoke(store, "make-dataset", "--recipe", str(tiny_recipe_path), "--name", "bad/name")
    one_error_line(result, "invalid name 'bad/name'")
    assert not (store / "objects").exists() or not any((store / "objects").iterdir())


def test_06_a_junk_weights_file_fails_before_training(tiny_recipe_path, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(256))
    store = tmp_path / "store"
    assert invoke(store, "make-dataset", "--recipe", str(tiny_recipe_path)).exit_code == 0
    result = invoke(store, "pretrain", "--recipe", str(tiny_recipe_path), "--init-weights", str(junk))
    one_error_line(result, "junk.pt could not be read")
    assert "pretrain" not in result.stderr.split("error:")[0]  # no epoch ran before the error
    assert Store(store).list("backbone") == []


def test_07_store_path_that_is_a_file_and_lock_folder_that_is_a_file(tiny_recipe_path, tmp_path):
    not_a_folder = tmp_path / "store-file"
    not_a_folder.write_text("x")
    one_error_line(invoke(not_a_folder, "make-dataset", "--recipe", str(tiny_recipe_path)), "is a file, not a folder")
    store = tmp_path / "store"
    store.mkdir()
    (store / "locks").write_text("x")
    one_error_line(invoke(store, "make-dataset", "--recipe", str(tiny_recipe_path)), str(store / "locks"))
    assert not (store / "objects").exists() or not any((store / "objects").iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_07_read_only_store(tiny_recipe_path, tmp_path):
    store = tmp_path / "store"
    (store / "objects").mkdir(parents=True)
    store.chmod(0o555)
    (store / "objects").chmod(0o555)
    try:
        one_error_line(invoke(store, "make-dataset", "--recipe", str(tiny_recipe_path)), "Permission denied")
    finally:
        (store / "objects").chmod(0o755)
        store.chmod(0o755)


def test_07_file_size_limit_is_one_line_and_leaves_no_temp_file(tiny_recipe_path, tmp_path):
    store = tmp_path / "store"
    script = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
        from ltstg.cli import main
        sys.argv = ["ltstg", "--store", {str(store)!r}, "make-dataset", "--recipe", {str(tiny_recipe_path)!r}]
        main()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "File too large" in done.stderr
    assert "files are limited to 20000 bytes here (ulimit -f)" in done.stderr  # said before the work
    assert done.stderr.index("ulimit -f") < done.stderr.index("File too large")
    assert [p for p in store.rglob("*") if p.is_file()] == []


def test_08_locks_live_in_the_store_and_are_removed(tmp_path):
    store = Store(tmp_path / "store")
    with store.lock("a" * 64):
        lock = tmp_path / "store" / "locks" / f"{'a' * 64}.lock"
        assert lock.is_file()
        assert oct(lock.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # others may lock it too
    assert not lock.exists()


def test_08_a_waiter_on_a_removed_lock_file_does_not_share_the_lock_with_a_newcomer(tmp_path):
    """A holds the lock; B waits on A's file; A removes it and releases; newcomer C creates a new file.
    Without the inode re-check B and C would both hold 'the' lock."""
    store = Store(tmp_path / "store")
    holding, overlaps = [], []
    b_waiting, a_release = threading.Event(), threading.Event()

    def hold(name, on_wait=None, before_release=None):
        with store.lock("b" * 64, on_wait=on_wait):
            holding.append(name)
            overlaps.append(len(holding))
            if before_release is not None:
                before_release.wait(5)
            time.sleep(0.2)
            holding.remove(name)

    a = threading.Thread(target=hold, args=("A", None, a_release))
    a.start()
    while not holding:
        time.sleep(0.01)
    b = threading.Thread(target=hold, args=("B", b_waiting.set))
    b.start()
    assert b_waiting.wait(5)
    a_release.set()
    a.join()
    c = threading.Thread(target=hold, args=("C",))
    c.start()
    b.join()
    c.join()
    assert overlaps == [1, 1, 1]


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_10_non_utf8_recipe_is_one_line(tmp_path):
    recipe = tmp_path / "latin1.yaml"
    recipe.write_bytes("stg:\n  memory: 600 # mémoire\n".encode("latin-1"))
    one_error_line(invoke(tmp_path / "store", "make-dataset", "--recipe", str(recipe)), "not UTF-8")


def test_11_temp_files_of_dead_writers_are_listed_then_removed(tiny_recipe_path, tmp_path):
    import socket

    store = tmp_path / "store"
    assert invoke(store, "make-dataset", "--recipe", str(tiny_recipe_path)).exit_code == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = store / "objects" / f".tmp-{socket.gethostname()}-{dead.pid}-{'d' * 64}.safetensors"
    leftover.write_bytes(b"half an artifact")
    verify = invoke(store, "--json", "inspect", "verify")
    assert verify.exit_code == 0 and str(leftover) in verify.stdout
    assert invoke(store, "make-dataset", "--recipe", str(tiny_recipe_path), "--imb", "3").exit_code == 0
    assert not leftover.exists()


# -- 15: the small ones ------------------------------------------------------------------------------------------


def test_15_verify_without_a_store(tmp_path):
    one_error_line(invoke(tmp_path / "nowhere", "inspect", "verify"), "no store at")


def test_15_a_folder_in_refs_is_skipped_and_mentioned(tiny_recipe_path, tmp_path):
    store = tmp_path / "store"
    assert invoke(store, "make-dataset", "--recipe", str(tiny_recipe_path), "--name", "ds").exit_code == 0
    (store / "refs" / "folder").mkdir()
    listed = invoke(store, "inspect", "artifacts")
    assert listed.exit_code == 0 and "skipped" in listed.stderr and "ds" in listed.stdout


def test_15_method_errors_come_with_the_others(tmp_path):
    recipe = _recipe(tmp_path, "stg:\n  memroy: 1\nmethods:\n  A: {classifier: nope}\n")
    result = invoke(tmp_path / "store", "make-dataset", "--recipe", str(recipe))
    one_error_line(result, "stg.memroy", "methods.A.classifier")


def test_15_split_list_problems_come_together(tmp_path):
    from ltstg.data.split_list import read_split_lists

    lists = tmp_path / "lists"
    lists.mkdir()
    for split in ("train", "val", "test"):
        (lists / f"ImageNet_LT_{split}.txt").write_text("a/1.jpg 0\nbroken\nb/2.jpg x\nc/3.jpg 5000\nd/4.jpg --5\n")
    with pytest.raises(LtstgError) as error:
        read_split_lists("imagenet-lt", str(tmp_path), str(lists), check_files=False, expected=None)
    lines = str(error.value).splitlines()
    assert [line.split(":")[0] for line in lines] == [f"ImageNet_LT_train.txt line {n}" for n in (2, 3, 4, 5)]
    assert "'--5' is not an integer" in lines[3]


def test_15_a_moved_name_is_said(tiny_recipe_path, tmp_path):
    store = tmp_path / "store"
    assert invoke(store, "make-dataset", "--recipe", str(tiny_recipe_path), "--name", "ds").exit_code == 0
    moved = invoke(store, "make-dataset", "--recipe", str(tiny_recipe_path), "--imb", "2", "--name", "ds")
    assert moved.exit_code == 0 and "name 'ds' moved from" in moved.stderr


def test_15_the_device_as_given(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    one_error_line(invoke(tmp_path / "store", "--device", "cuda:7", "make-dataset"), "--device cuda:7")


def test_interrupt_exits_130_and_commits_nothing(tiny_recipe_path, tmp_path, monkeypatch):
    from ltstg.stages import pretrain as pretrain_module

    store = tmp_path / "store"
    assert invoke(store, "make-dataset", "--recipe", str(tiny_recipe_path)).exit_code == 0

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrain_module, "pretrain", interrupted)
    result = invoke(store, "pretrain", "--recipe", str(tiny_recipe_path))
    assert result.exit_code == 130 and "interrupted" in result.stderr and "Traceback" not in result.output
    assert Store(store).list("backbone") == []


def test_a_sigterm_stops_a_command_with_its_line_and_143_and_the_rerun_resumes(tmp_path):
    """What a batch system sends at a job's time limit (Slurm, Kubernetes), or `kill`: one line and 143 instead of
    a silent death, nothing half-written in the store, and the same command continues from the last checkpoint."""
    from tests.conftest import TINY

    (tmp_path / "long.yaml").write_text(TINY.replace("  epochs: 2\n", "  epochs: 500\n", 1))  # stage 1 runs on
    command = [sys.executable, "-m", "ltstg", "--store", str(tmp_path / "store"), "run", "long.yaml", "--until",
               "pretrain"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    checkpoints = tmp_path / "store" / "checkpoints"
    deadline = time.monotonic() + 120
    while not list(checkpoints.glob("*.pt")):  # epoch 1 is kept
        assert time.monotonic() < deadline and started.poll() is None
        time.sleep(0.2)
    os.killpg(started.pid, signal.SIGTERM)
    _, stderr = started.communicate(timeout=120)
    assert started.returncode == 143, stderr[-3000:]
    assert "stopped: SIGTERM" in stderr and "a rerun resumes from its last checkpoint" in stderr
    assert "Traceback" not in stderr
    store = Store(tmp_path / "store")
    assert store.list("backbone") == [] and not list((tmp_path / "store").rglob(".tmp-*"))
    once_more = [*command[:5], "--time-limit", "0", *command[5:]]  # stops after the epoch it resumes with
    again = subprocess.run(once_more, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 3 and "resuming from the checkpoint" in again.stderr, again.stderr[-3000:]


def test_a_command_run_in_process_leaves_the_callers_sigterm_handler(tiny_recipe_path, tmp_path):
    """The CLI takes SIGTERM for the time of a command only: a process that runs commands in turn (a test, a
    notebook) keeps its own handler, after a command that succeeded and after one that failed."""
    before = signal.getsignal(signal.SIGTERM)
    assert invoke(tmp_path / "store", "make-dataset", "--recipe", str(tiny_recipe_path)).exit_code == 0
    assert signal.getsignal(signal.SIGTERM) is before
    assert invoke(tmp_path / "store", "make-dataset", "--recipe", str(tmp_path / "absent.yaml")).exit_code == 2
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_error_raised_while_an_interrupt_unwinds_is_the_interrupt(tiny_recipe_path, tmp_path, monkeypatch):
    """Ctrl-C in the middle of torch.save: its zip writer fails in __exit__ ("unexpected pos"), and that
    RuntimeError replaces the KeyboardInterrupt (seen under torchrun, one run in twenty)."""
    from ltstg.stages import pretrain as pretrain_module

    store = tmp_path / "store"
    assert invoke(store, "make-dataset", "--recipe", str(tiny_recipe_path)).exit_code == 0

    def interrupted_mid_write(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1348672 vs 1348560")

    monkeypatch.setattr(pretrain_module, "pretrain", interrupted_mid_write)
    result = invoke(store, "pretrain", "--recipe", str(tiny_recipe_path))
    assert result.exit_code == 130 and "interrupted" in result.stderr and "Traceback" not in result.output


def test_pipeline_resume_message_through_run(tiny_recipe_path, tmp_path):
    """The run command says it resumes, too (same runner)."""
    recipe = load_recipe(tiny_recipe_path)

    def killer(task, done, total, **metrics):
        if task == "pretrain" and metrics.get("epoch", 0) >= 2:  # epoch 1 is checkpointed
            raise Killed

    store = Store(tmp_path / "store")
    with pytest.raises(Killed):
        run_recipe(Context(store=store, progress=killer), recipe, seeds=[0], until="pretrain")
    notes = []
    run_recipe(Context(store=store, note=notes.append), recipe, seeds=[0], until="pretrain")
    assert any(n.startswith("backbone ") and n.endswith(": resuming from the checkpoint: epoch 2 of 2 is next")
               for n in notes), notes


# -- issue 20: the run / sweep surface checks everything before the first epoch ----------------------------------

def nothing_written(store):
    return not (store / "objects").exists() or not any((store / "objects").iterdir())


def test_r20_02_sweeping_the_seed_is_refused_with_a_pointer_to_seeds(tiny_recipe_path, tmp_path):
    result = invoke(tmp_path / "s", "run", str(tiny_recipe_path), "--sweep", "seed=1,2", "--seeds", "0")
    one_error_line(result, "--sweep seed", "--seeds 0 --seeds 1")
    assert nothing_written(tmp_path / "s")


def test_r20_05_an_empty_sweep_value_names_the_sweep(tiny_recipe_path, tmp_path):
    result = invoke(tmp_path / "s", "run", str(tiny_recipe_path), "--sweep", "stg.memory=,16")
    one_error_line(result, "--sweep stg.memory=,16: a value is empty")
    assert nothing_written(tmp_path / "s")


@pytest.mark.parametrize("method,expected", [
    ("{classifier: lws, init: fresh}", "init 'fresh' does not apply"),
    ("{augment: {name: noise, std: 0}}", "with std 0 changes no sample"),
    ("{classifier: tau-norm, augment: {name: dropout, p: 0.2}}", "is not trained, so augment 'dropout'"),
])
def test_r20_06_a_method_invalid_only_in_combination_fails_before_stage_1(tiny_recipe_path, tmp_path, method, expected):
    tiny_recipe_path.write_text(tiny_recipe_path.read_text() + f"methods:\n  cRT: {{classifier: crt}}\n  odd: {method}\n")
    result = invoke(tmp_path / "s", "run", str(tiny_recipe_path))
    one_error_line(result, "methods.odd: ", expected)
    assert nothing_written(tmp_path / "s")


def test_r20_07_a_bad_seed_is_refused_before_the_first_seed_runs(tiny_recipe_path, tmp_path):
    result = invoke(tmp_path / "s", "run", str(tiny_recipe_path), "--seeds", "0", "--seeds", "1", "--seeds", "-1")
    one_error_line(result, "seed -1", "greater than or equal to 0")
    assert nothing_written(tmp_path / "s")


def test_r20_12_a_sweep_over_a_misspelt_method_says_the_near_match(tiny_recipe_path, tmp_path):
    tiny_recipe_path.write_text(tiny_recipe_path.read_text() + "methods:\n  cRT: {classifier: crt}\n")
    result = invoke(tmp_path / "s", "run", str(tiny_recipe_path), "--sweep", "methods.cRt.lr=0.1,0.2")
    one_error_line(result, "the recipe has no method 'cRt'", "did you mean 'cRT'?")
    assert nothing_written(tmp_path / "s")


@pytest.mark.parametrize("args,expected", [
    (["--seeds", "0", "--seeds", "0"], "--seeds 0 is given more than once"),
    (["--sweep", "stg.memory=16,16"], "--sweep stg.memory lists 16 more than once"),
])
def test_r20_13_a_seed_or_value_given_twice_is_refused(tiny_recipe_path, tmp_path, args, expected):
    result = invoke(tmp_path / "s", "run", str(tiny_recipe_path), *args)
    one_error_line(result, expected)
    assert nothing_written(tmp_path / "s")


def test_r20_04_a_count_rule_that_falls_back_says_so_and_records_what_was_done(tiny_run, tmp_path):
    said = []
    ctx = Context(store=Store(tmp_path / "s"), note=said.append)
    recipe = tiny_run["recipe"].model_copy(update={"stg": tiny_run["recipe"].stg.model_copy(
        update={"head_rule": "count", "head_min_count": 100000})})
    stg = steps.fit_stg_step(ctx, recipe, tiny_run["features"]).artifact
    assert "fell back to the larger half of the classes" in stg.info["split"]
    assert stg.info["head_classes"] == [0, 1]  # the larger half of 4 classes, largest first: classes 0 and 1
    assert any("fell back to the larger half" in line for line in stg.meta["notes"])
    assert any("fell back to the larger half" in line for line in said)


@pytest.mark.parametrize("args,expected", [
    (["eval", "--plot-reliability", "a.xyz"], "--plot-reliability a.xyz: give a file name ending in .png"),
    (["eval", "--plot", "noext"], "--plot noext: give a file name ending in .png"),
    (["eval", "--plot", "{folder}"], "is a folder; give a file name"),
    (["report", "--out", "{folder}"], "is a folder; give a file name, e.g."),
    (["report", "--out", "r.htm"], "--out r.htm: give a file name ending in .html"),
    (["inspect", "tsne", "--out", "tsne"], "--out tsne: give a file name ending in .png"),
    (["inspect", "confusion", "--out", "conf"], "--out conf: give a file name ending in .png"),
    (["inspect", "kl-divergence", "--plot", "{file}/kl.png"], "is a file, so no folder can be made there"),
])
def test_r20_08_10_every_output_path_is_checked_before_any_work(tmp_path, args, expected):
    folder = tmp_path / "pics"
    folder.mkdir()
    (tmp_path / "plain").write_text("a file")
    args = [a.format(folder=folder, file=tmp_path / "plain") for a in args]
    result = invoke(tmp_path / "s", *args)
    one_error_line(result, expected)
    assert not (tmp_path / "s").exists()  # refused before the store was even opened


def test_r20_08_a_missing_output_folder_is_made_and_the_path_said_is_the_path_written(tmp_path):
    from ltstg.inspect.plots import plot_class_counts
    from ltstg.terminal import PICTURES, output_file

    out = tmp_path / "no" / "dir" / "counts.png"
    assert output_file(out, PICTURES, "--plot") == out
    assert plot_class_counts([5, 3, 1], ["many", "medium", "few"], out, title="t") == out and out.is_file()


def test_r20_09_a_failed_write_outside_the_store_keeps_the_good_file(tmp_path, monkeypatch):
    import errno

    from ltstg.inspect.plots import plot_class_counts

    out = tmp_path / "counts.png"
    out.write_bytes(b"the good picture")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(LtstgError, match="cannot write .*counts.png \\(No space left on device\\)"):
        plot_class_counts([5, 3, 1], ["many", "medium", "few"], out, title="t")
    assert out.read_bytes() == b"the good picture"
    assert [p.name for p in tmp_path.iterdir()] == ["counts.png"]  # no temporary file left behind


@pytest.mark.parametrize("text,expected", [
    ("stg:\n  memory: 600\n  memory: 1200\n", "line 3: key 'memory' is given twice"),
    ("pretrain: {feature_views: true}\n", "pretrain: feature_views: a number is needed here, not true"),
    ("pretrain: {feature_views: 100000000}\n", "pretrain.feature_views: Input should be less than or equal to 16"),
])
def test_r20_14_small_recipe_slips_are_refused(tmp_path, text, expected):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    one_error_line(invoke(tmp_path / "s", "run", str(path)), expected)
    assert nothing_written(tmp_path / "s")


def test_r20_14_augmenter_settings_without_an_augmenter_name_the_field_and_the_fix(tiny_recipe_path, tmp_path):
    result = invoke(tmp_path / "s", "run", str(tiny_recipe_path), "--set", "retrain.augment.mu=relative")
    one_error_line(result, "retrain.augment: augmenter settings without an augmenter name", "--augmenter")


def test_r20_14_json_and_markdown_together_are_refused(tiny_recipe_path, tmp_path):
    result = invoke(tmp_path / "s", "--json", "run", str(tiny_recipe_path), "--markdown")
    one_error_line(result, "--json and --markdown both ask for the result on stdout")
    assert result.stdout == "" and nothing_written(tmp_path / "s")


def test_r20_14_pictures_over_two_features_artifacts_write_nothing(tiny_run, tmp_path):
    from ltstg.recipe import RetrainSettings

    store = tiny_run["ctx"].store
    first = steps.retrain_step(tiny_run["ctx"], tiny_run["recipe"], RetrainSettings(classifier="none"),
                               tiny_run["features"], None).artifact
    other_recipe = tiny_run["recipe"].model_copy(update={"pretrain": tiny_run["recipe"].pretrain.model_copy(
        update={"feature_views": 1})})
    other_features = steps.features_step(tiny_run["ctx"], other_recipe, tiny_run["backbone"], tiny_run["dataset"]).artifact
    second = steps.retrain_step(tiny_run["ctx"], tiny_run["recipe"], RetrainSettings(classifier="none"),
                                other_features, None).artifact
    reports_before = len(store.list("report"))
    result = invoke(store.root, "eval", "--compare", first.id, "--compare", second.id, "--plot", str(tmp_path / "p.png"))
    one_error_line(result, "one features artifact")
    assert len(store.list("report")) == reports_before and not (tmp_path / "p.png").exists()


def test_r20_01_report_rows_never_average_classifiers_of_different_ancestors(tiny_recipe_path, tmp_path):
    from tests.conftest import TINY_METHODS

    tiny_recipe_path.write_text(tiny_recipe_path.read_text() + TINY_METHODS)
    store = tmp_path / "s"
    ran = invoke(store, "--json", "run", str(tiny_recipe_path), "--methods", "cRT+STG", "--sweep", "stg.lr=0.001,0.1")
    assert ran.exit_code == 0, ran.output
    by_sweep = {row["swept"]["stg.lr"]: row["all"] for row in json.loads(ran.stdout)["rows"]}
    result = invoke(store, "--json", "report", "--no-tsne", "--out", str(tmp_path / "r.html"))
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert sorted(row["method"] for row in rows) == ["cRT+STG (↑stg.lr 0.001)", "cRT+STG (↑stg.lr 0.1)"]
    assert all(row["seeds"] == [0] for row in rows)
    assert {row["method"]: row["all"] for row in rows} == {f"cRT+STG (↑stg.lr {lr})": top1 for lr, top1 in by_sweep.items()}
    assert "the report's STG sections show stg" in result.stderr


# -- issue 34: finite or nothing ---------------------------------------------------------------------------


def _scaled_features(tiny_run, scale, poison=False):
    """The tiny run's features times `scale` (one NaN row with `poison`), as a features artifact of its own."""
    from ltstg.store import Artifact

    features = tiny_run["features"]
    tensors = dict(features.tensors)
    for name in ("train_features", "val_features", "test_features"):
        tensors[name] = features[name].float() * scale
    if poison:
        tensors["train_features"][0] = float("nan")
    if "train_views" in tensors:
        tensors["train_views"] = features["train_views"].float() * scale
    fake_id = ("f" * 8) + features.id[8:]
    return Artifact(fake_id, features.meta, tensors)


def _kinds(store):
    return sorted(info.kind for info in Store(store).list(None))


def test_34_02_an_stg_whose_float16_targets_overflow_is_never_committed(tiny_run, tiny_recipe_path, tmp_path):
    recipe = load_recipe(tiny_recipe_path, {"stg.target_storage": "float16"})
    ctx = Context(store=Store(tmp_path / "s"))
    with pytest.raises(LtstgError, match="diverged|not committed") as stopped:
        steps.fit_stg_step(ctx, recipe, _scaled_features(tiny_run, 1e5))  # squared shifts of 1e5 pass 65504
    assert "float16" in str(stopped.value) or "non-finite" in str(stopped.value)
    assert _kinds(tmp_path / "s") == []  # nothing committed
    steps.fit_stg_step(ctx, load_recipe(tiny_recipe_path), _scaled_features(tiny_run, 1.0))  # the same, finite: kept
    assert _kinds(tmp_path / "s") == ["stg"]


def test_34_03_a_classifier_whose_training_diverges_is_never_committed(tiny_run, tiny_recipe_path, tmp_path):
    """SGD at an absurd lr overflows the weights: the loss is NaN in the first epoch, and retrain stops there
    instead of committing a NaN classifier that would score as "always class 0" and pass as converged."""
    ctx = Context(store=Store(tmp_path / "s"))
    recipe = load_recipe(tiny_recipe_path, {"retrain.optimizer": "sgd", "retrain.lr": 1e36})
    with pytest.raises(LtstgError, match="retrain: the training loss of epoch 1 is nan: it diverged"):
        steps.retrain_step(ctx, recipe, recipe.retrain, tiny_run["features"], None)
    assert _kinds(tmp_path / "s") == []


def test_34_03_a_non_finite_output_is_never_committed_whatever_its_stage(tiny_run, tmp_path):
    """The last guard, before the store: any non-finite weight or training score stops the stage in one line."""
    from ltstg.stages import Output, run_stage

    ctx = Context(store=Store(tmp_path / "s"))
    weight = torch.ones(4, 64)
    weight[1, 2] = float("inf")
    with pytest.raises(LtstgError, match="classifier .*: not committed, the training diverged: weight holds 1 non-finite"):
        run_stage(ctx, "classifier", {"probe": 1}, [tiny_run["features"]],
                  lambda generator, checkpoint: Output("classifier", {"weight": weight}, {"train_loss": 0.1}), seed=0)
    with pytest.raises(LtstgError, match="its train_loss is nan"):
        run_stage(ctx, "classifier", {"probe": 2}, [tiny_run["features"]],
                  lambda generator, checkpoint: Output("classifier", {"weight": torch.ones(4, 64)},
                                                       {"train_loss": float("nan")}), seed=0)
    assert _kinds(tmp_path / "s") == []


def test_34_05_inf_is_refused_like_nan_in_every_setting(tiny_recipe_path, tmp_path):
    for flags in (["--augmenter", "noise", "--std", "inf"], ["--lr", "nan"], ["--augmenter", "stg", "--lam", "-inf"]):
        result = invoke(tmp_path / "s", "retrain", "--recipe", str(tiny_recipe_path), *flags)
        one_error_line(result, "finite")
    tiny_recipe_path.write_text(tiny_recipe_path.read_text()
                                + "methods:\n  cRT+STG: {augment: {name: stg}, select: {augment.lam: [.inf, 1.5]}}\n")
    one_error_line(invoke(tmp_path / "s", "run", str(tiny_recipe_path)), "augment.lam", "finite")
    assert not (tmp_path / "s" / "objects").exists() or _kinds(tmp_path / "s") == []


def test_34_05_a_candidate_with_a_non_finite_score_is_never_chosen():
    from ltstg.stages.pipeline import SELECTED_BY, select
    from ltstg.store import Artifact

    def classifier(index, score):
        return Artifact(f"{index:064d}", {"kind": "classifier", "metrics": {SELECTED_BY: score}}, {})

    candidates = [({"lr": lr}, None) for lr in (0.1, 0.01, 0.001)]
    values, chosen, tried = select("cRT", candidates, [classifier(0, float("nan")), classifier(1, 0.5), classifier(2, 0.7)])
    assert values == {"lr": 0.001} and [record["chosen"] for record in tried] == [False, False, True]
    with pytest.raises(LtstgError, match="no candidate has a finite validation score"):
        select("cRT", candidates[:2], [classifier(0, float("nan")), classifier(1, float("inf"))])


def test_34_05_a_candidate_that_diverges_is_said_recorded_and_not_chosen(tiny_recipe_path, tmp_path):
    tiny_recipe_path.write_text(tiny_recipe_path.read_text()
                                + "methods:\n  cRT (SGD): {optimizer: sgd, select: {lr: [1.0e+36, 0.01]}}\n")
    result = invoke(tmp_path / "s", "--json", "run", str(tiny_recipe_path))
    assert result.exit_code == 0, result.output
    assert "candidate lr=1e+36 diverged, so it is not chosen" in result.stderr
    (row,) = json.loads(result.stdout)["rows"]
    assert row["chosen"] == [{"lr": 0.01}]
    diverged, kept = row["candidates"][0]
    assert diverged["diverged"] and diverged["classifier"] is None and diverged["val_mean_class"] is None  # JSON: null
    assert kept["chosen"] and "diverged" not in kept
    alone = tiny_recipe_path.read_text().replace("select: {lr: [1.0e+36, 0.01]}", "lr: 1.0e+36")
    tiny_recipe_path.write_text(alone)
    one_error_line(invoke(tmp_path / "s", "run", str(tiny_recipe_path)), "diverged")  # its only candidate: an error


def test_34_13_candidates_that_validate_to_the_same_settings_are_refused(tiny_recipe_path, tmp_path):
    for grid in ("{lr: [1, 1.0]}", "{lr: [0.01, '0.01']}"):
        tiny_recipe_path.write_text(tiny_recipe_path.read_text().split("methods:")[0]
                                    + f"methods:\n  cRT: {{classifier: crt, select: {grid}}}\n")
        one_error_line(invoke(tmp_path / "s", "run", str(tiny_recipe_path)), "methods.cRT.select: candidates",
                       "the same settings once validated")
    assert not (tmp_path / "s").exists() or _kinds(tmp_path / "s") == []


def test_34_14_a_field_is_either_swept_or_selected(tiny_recipe_path, tmp_path):
    tiny_recipe_path.write_text(tiny_recipe_path.read_text()
                                + "methods:\n  cRT+noise: {augment: {name: noise}, select: {augment.std: [0.1, 0.5]}}\n")
    result = invoke(tmp_path / "s", "run", str(tiny_recipe_path), "--sweep", "methods.cRT+noise.augment.std=0.1,3.0")
    one_error_line(result, "selects augment.std on the validation split", "sweep it or select it, not both")
    assert not (tmp_path / "s").exists() or _kinds(tmp_path / "s") == []


def test_34_14_a_retrain_field_a_method_selects_is_not_swept_either(tiny_recipe_path, tmp_path):
    tiny_recipe_path.write_text(tiny_recipe_path.read_text() + "methods:\n  cRT: {classifier: crt, select: {lr: [0.001, 0.01]}}\n")
    result = invoke(tmp_path / "s", "run", str(tiny_recipe_path), "--sweep", "retrain.lr=0.001,0.1")
    one_error_line(result, "method 'cRT' selects lr on the validation split", "not both")


def test_34_06_07_a_val_folder_without_images_of_every_class_is_refused_at_make_dataset(tmp_path):
    root = image_folder(tmp_path / "images", [6, 4, 3])
    (root / "val").mkdir()
    one_error_line(invoke(tmp_path / "s", "make-dataset", "imagefolder", "--root", str(root)),
                   "val holds no images", "remove val/")
    write_image(root / "val" / "class0" / "0.png")
    write_image(root / "val" / "class2" / "0.png")
    one_error_line(invoke(tmp_path / "s", "make-dataset", "imagefolder", "--root", str(root)),
                   "has no images of 1 of 3 classes (class1)")
    assert not (tmp_path / "s" / "objects").exists() or _kinds(tmp_path / "s") == []
    write_image(root / "val" / "class1" / "0.png")
    assert invoke(tmp_path / "s", "make-dataset", "imagefolder", "--root", str(root), "--imb", "2").exit_code == 0


def test_34_15_the_hint_for_a_corrupt_artifact_works_for_the_command_that_met_it(tiny_recipe_path, tmp_path):
    """`report` and `inspect` have no --force: the hint names what works for them (delete, rerun what made it)."""
    store = tmp_path / "store"
    assert invoke(store, "run", str(tiny_recipe_path)).exit_code == 0
    classifier = Store(store).list("classifier")[0]
    data = bytearray(classifier.path.read_bytes())
    data[-1] ^= 0xFF  # a flipped byte in the tensors: the digest no longer matches
    classifier.path.write_bytes(bytes(data))
    for args in (("report", "--out", str(tmp_path / "r.html"), "--no-tsne"), ("inspect", "confusion", classifier.id[:12])):
        result = invoke(store, *args)
        one_error_line(result, "is corrupt", "delete its file (`ltstg inspect verify` lists it) and rerun what made it")
    verify = invoke(store, "inspect", "verify")
    assert classifier.id[:12] in verify.output  # the listing the hint points to


def test_34_01_a_checkpoint_that_does_not_fit_is_one_line_naming_its_size(tiny_recipe_path, tmp_path):
    """torch.save's zip writer hides the OSError behind its own RuntimeError ("unexpected pos"); the store
    finds it and says it in one line with the space the checkpoint needs, and leaves no partial file."""
    store = tmp_path / "store"
    assert invoke(store, "make-dataset", "--recipe", str(tiny_recipe_path)).exit_code == 0  # a few kB
    script = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_FSIZE, (300000, 300000))  # the checkpoint holds ~2 MB of weights and momenta
        from ltstg.cli import main
        sys.argv = ["ltstg", "--store", {str(store)!r}, "pretrain", "--recipe", {str(tiny_recipe_path)!r}]
        main()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "unexpected pos" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "File too large" in errors[0] and "checkpoints" in errors[0], done.stderr
    assert re.search(r"needs about [\d.]+ MB", errors[0]), errors[0]
    assert not (store / "checkpoints").exists() or list((store / "checkpoints").iterdir()) == []
    assert _kinds(store) == ["dataset"]


def test_34_04_a_memory_larger_than_the_machine_is_refused_when_the_recipe_is_loaded(tiny_run, tiny_recipe_path,
                                                                                     tmp_path):
    from ltstg.recipe import machine_memory_bytes

    result = invoke(tmp_path / "s", "fit-stg", "--recipe", str(tiny_recipe_path), "--memory", "100000000000")
    one_error_line(result, "stg.memory", "100000000000 entries need at least 2000.0 GB",
                   f"this machine has {machine_memory_bytes() / 1e9:.1f} GB")
    assert not (tmp_path / "s").exists()  # before any stage
    # past the machine only with the features' width (64 here): fit-stg says so before it allocates
    entries = machine_memory_bytes() // (4 * 64 + 16) + 1
    recipe = load_recipe(tiny_recipe_path, {"stg.memory": entries})
    with pytest.raises(LtstgError, match=rf"stg.memory {entries} needs [\d.]+ GB for its entries \(64 features each\)"):
        steps.fit_stg_step(Context(store=Store(tmp_path / "s")), recipe, tiny_run["features"])
    assert _kinds(tmp_path / "s") == []


@pytest.mark.parametrize("workers", [0, 1])
def test_34_08_a_data_set_kept_as_paths_opens_every_file_before_epoch_1(tmp_path, monkeypatch, workers):
    """Paths mode skips and counts what images mode skips (a corrupt file, one past PIL's pixel limit) at
    make-dataset; a file that breaks after it is one line from the loader, from a worker process too."""
    from PIL import Image as PILImage

    root = image_folder(tmp_path / "images", [6, 6], test_count=3)
    (root / "train" / "class0" / "0.png").write_bytes(b"not an image")
    write_image(root / "train" / "class1" / "big.png", size=12)  # 144 pixels: a bomb once the limit is 50
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 50)  # PIL refuses more than twice the limit
    make = ["make-dataset", "imagefolder", "--root", str(root), "--storage", "paths", "--imb", "1", "--size", "8"]
    one_error_line(invoke(tmp_path / "s", *make, "--strict"), "2 unreadable image file(s)", "class0/0.png",
                   "class1/big.png")
    made = invoke(tmp_path / "s", "--json", *make)
    assert made.exit_code == 0, made.output
    assert "skipped 2 unreadable image file(s)" in made.stderr
    dataset = Store(tmp_path / "s").get(json.loads(made.stdout)["id"])
    labels = dataset["train_labels"].tolist() + dataset["val_labels"].tolist()
    assert dataset.info["skipped_count"] == 2 and (labels.count(0), labels.count(1)) == (5, 6)  # of 6 and 7 files
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 89478485)
    (root / "test" / "class1" / "2.png").unlink()  # gone after make-dataset
    result = invoke(tmp_path / "s", "pretrain", "--model", "resnet20_cifar", "--epochs", "1", "--batch-size", "4",
                    "--workers", str(workers), "--warmup-epochs", "0", "--milestones", "1")
    one_error_line(result, "cannot read image", "class1/2.png", "rerun make-dataset to skip it")
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1
    assert "worker" not in result.stderr and "No such file or directory" in result.stderr


def test_34_10_a_folder_the_walk_cannot_read_is_an_error_not_fewer_images(tmp_path, monkeypatch):
    """Root reads any folder, so the refusal is the OS's, simulated: os.walk used to skip it without a word."""
    root = image_folder(tmp_path / "images", [6, 4])
    nested = root / "train" / "class0" / "more"
    write_image(nested / "0.png")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == str(nested):
            raise PermissionError(13, "Permission denied", str(nested))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    one_error_line(invoke(tmp_path / "s", "make-dataset", "imagefolder", "--root", str(root)),
                   "cannot read 1 folder(s) under", "class0/more: Permission denied", "fix their permissions")
    monkeypatch.setattr(os, "scandir", real_scandir)
    (root / "train" / "class1" / "gone.png").symlink_to(root / "nowhere.png")  # a broken link: skipped and counted
    made = invoke(tmp_path / "s", "make-dataset", "imagefolder", "--root", str(root), "--imb", "1")
    assert made.exit_code == 0 and "skipped 1 unreadable image file(s): train/class1/gone.png" in made.stderr


def test_34_a_checkpoints_path_that_is_a_file_is_refused_before_the_first_epoch(tiny_recipe_path, tmp_path):
    store = tmp_path / "store"
    assert invoke(store, "make-dataset", "--recipe", str(tiny_recipe_path)).exit_code == 0
    (store / "checkpoints").rmdir()  # made empty by make-dataset's check
    (store / "checkpoints").write_text("not a folder")
    result = invoke(store, "pretrain", "--recipe", str(tiny_recipe_path))
    one_error_line(result, "checkpoints")
    assert "pretrain" not in result.stderr.replace("pretrain.", "")  # no epoch ran: no progress line
    assert _kinds(store) == ["dataset"]


def test_34_a_batchnorm_shift_larger_than_a_paths_data_set_is_refused_before_stage_1(tmp_path):
    root = image_folder(tmp_path / "images", [12, 6, 4], test_count=3)
    recipe = tmp_path / "bn.yaml"
    recipe.write_text(
        f"dataset: {{source: imagefolder, root: {root}, imbalance: 1, size: 16, val_per_class: 1, storage: paths}}\n"
        "pretrain: {model: resnet20_cifar, epochs: 1, batch_size: 4, warmup_epochs: 0, milestones: [1]}\n"
        "retrain: {epochs: 1, batch_size: 64}\n"
        "methods:\n  Kang: {classifier: crt, bn_shift: true, sampling: class_aware}\n"
    )
    one_error_line(invoke(tmp_path / "s", "run", str(recipe)), "method 'Kang' shifts BatchNorm statistics on "
                   "batches of 64, more than the 19 training images", "lower its batch_size")
    assert _kinds(tmp_path / "s") == ["dataset"]  # no backbone trained for nothing
