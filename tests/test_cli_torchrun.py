"""Under torchrun every rank ends with its one line and its documented exit code (issue 32): a refusal all ranks
share (2 on each), a bug on one rank (its traceback and 1; the others stopped by torchrun, 143), Ctrl-C (130).
Two CPU ranks, real torchrun, the tiny recipe."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ltstg.store import Store
from tests.conftest import TINY

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
STOPPED = "stopped: torchrun ended this rank because another rank stopped first"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}


def _exit_codes(stderr: str) -> dict[int, int]:
    """rank -> exit code, from the failure summary torchrun prints."""
    found = re.findall(r"rank\s*:\s*(\d+) \(local_rank.*\n\s*exitcode\s*:\s*(-?\d+)", stderr)
    return {int(rank): int(code) for rank, code in found}


def test_a_refusal_every_rank_shares_ends_each_with_its_line_and_2(tmp_path):
    done = subprocess.run([*TORCHRUN, "-m", "ltstg", "--store", str(tmp_path / "store"), "--device", "cpu",
                           "pretrain", "--dataset", "nope"], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=300)
    line = f"error: no artifact or name 'nope' in {tmp_path / 'store'}"
    assert done.stderr.count(line) == 2, done.stderr[-3000:]
    assert _exit_codes(done.stderr) == {0: 2, 1: 2}, done.stderr[-3000:]  # not killed by torchrun on the way out
    assert "[rank0]" not in done.stderr and "[rank1]" not in done.stderr  # no rank's traceback


BROKEN = """
    import os
    import {module} as stage
    from ltstg.errors import LtstgError

    real = stage.{function}

    def broken(*args, **kwargs):
        if os.environ["RANK"] == "{rank}":
            raise {error}
        return real(*args, **kwargs)

    stage.{function} = broken
    from ltstg.cli import main
    main()
"""


@pytest.mark.parametrize("broken_rank", [0, 1])
def test_a_bug_on_one_rank_keeps_its_traceback_and_the_others_stop_with_one_line(tmp_path, broken_rank):
    """The healthy rank's collective loses its peer ("Connection closed by peer"): that is the broken rank's echo,
    so it waits for torchrun's stop and says so in one line instead of a second traceback."""
    (tmp_path / "tiny.yaml").write_text(TINY)
    script = tmp_path / "broken.py"
    script.write_text(textwrap.dedent(BROKEN.format(module="ltstg.stages.pretrain", function="train_one_epoch",
                                                    rank=broken_rank, error='RuntimeError("out of memory, say")')))
    done = subprocess.run([*TORCHRUN, str(script), "--store", str(tmp_path / "store"), "--device", "cpu", "run",
                           "tiny.yaml", "--until", "pretrain"], cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=300)
    healthy = 1 - broken_rank
    assert _exit_codes(done.stderr) == {broken_rank: 1, healthy: 143}, done.stderr[-4000:]
    assert done.stderr.count(STOPPED) == 1 and "RuntimeError: out of memory, say" in done.stderr
    assert "Connection closed" not in done.stderr and "Error in sys.excepthook" not in done.stderr
    assert Store(tmp_path / "store").list("backbone") == []


def test_ctrl_c_under_torchrun_interrupts_every_rank_with_its_line(tmp_path):
    (tmp_path / "long.yaml").write_text(TINY.replace("  epochs: 2\n", "  epochs: 500\n", 1))  # stage 1 runs on
    started = subprocess.Popen([*TORCHRUN, "-m", "ltstg", "--store", str(tmp_path / "store"), "--device", "cpu",
                                "run", "long.yaml", "--until", "pretrain"], cwd=tmp_path, env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    store = Store(tmp_path / "store")
    deadline = time.monotonic() + 120
    while not store.list("dataset"):  # stage 1 has begun once the data set is committed
        assert time.monotonic() < deadline and started.poll() is None
        time.sleep(0.2)
    time.sleep(3)
    os.killpg(started.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends: every process of the group
    _, stderr = started.communicate(timeout=120)
    assert stderr.count("interrupted: the stage in progress was not committed") == 2, stderr[-4000:]
    assert "[rank0]" not in stderr and "[rank1]" not in stderr  # no rank's traceback
    assert store.list("backbone") == []


def test_a_rank_that_stops_on_its_share_of_stages_2_to_4_stops_every_rank(tmp_path):
    """Issue 36: stages 2-3 spread over the ranks; the rank whose unit fails says its line and exits 2, and the
    first rank, waiting for the others' share, is stopped by torchrun with its one line instead of hanging."""
    (tmp_path / "tiny.yaml").write_text(TINY + "methods:\n  cRT+STG: {classifier: crt, augment: {name: stg}}\n")
    script = tmp_path / "refusing.py"
    script.write_text(textwrap.dedent(BROKEN.format(module="ltstg.stages.fit_stg", function="fit_stg", rank=1,
                                                    error='LtstgError("the features of this seed are wrong, say")')))
    done = subprocess.run([*TORCHRUN, str(script), "--store", str(tmp_path / "store"), "--device", "cpu", "run",
                           "tiny.yaml", "--seeds", "0", "--seeds", "1", "--vary-from", "fit-stg"], cwd=tmp_path,
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert _exit_codes(done.stderr) == {1: 2, 0: 143}, done.stderr[-4000:]
    assert done.returncode != 0 and "error: the features of this seed are wrong, say" in done.stderr
    assert "[rank0]" not in done.stderr and "[rank1]" not in done.stderr  # no rank's traceback
    assert Store(tmp_path / "store").list("report") == []
