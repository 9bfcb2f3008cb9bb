"""How a rank hears torchrun's stop (ltstg.launcher), in this process: SIGTERM sent to itself."""
import os
import signal
import threading

import pytest

from ltstg import launcher


@pytest.fixture
def listening(monkeypatch):
    previous = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(launcher, "_leaving", False)
    monkeypatch.setattr(launcher, "_listening", False)
    launcher.listen()
    yield
    signal.signal(signal.SIGTERM, previous)


def _sigterm_in(seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, os.kill, args=(os.getpid(), signal.SIGTERM))
    timer.start()
    return timer


def test_a_rank_at_work_is_stopped_where_it_is(listening):
    with pytest.raises(launcher.Stopped):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10**7):  # the handler runs between two bytecodes
            pass


def test_a_rank_on_its_way_out_keeps_its_own_exit(listening):
    launcher.leaving()
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(10**5):
        pass  # nothing raised: the signal is ignored


def test_a_rank_on_its_way_out_ignores_the_signal_rather_than_handling_it(listening):
    """Python restores the default action of the signals it handles when the interpreter shuts down: a SIGTERM
    then (torchrun's stop, while the process group ends) killed a rank that had printed its line (-15, not 2)."""
    launcher.leaving()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN


def test_an_error_that_torchrun_follows_with_its_stop_is_another_ranks_echo(listening):
    _sigterm_in(0.2)
    assert launcher.stopped_soon(grace=30)


def test_an_error_torchrun_does_not_follow_is_this_ranks_own(listening):
    assert not launcher.stopped_soon(grace=0.2)


def test_outside_torchrun_nothing_waits(monkeypatch):
    monkeypatch.setattr(launcher, "_listening", False)
    assert not launcher.stopped_soon(grace=60)  # returns at once: a single process has no other rank
