"""How a command hears that it is stopped from outside: SIGTERM.

When one rank fails, torchrun ends the others with SIGTERM; a batch system (Slurm at a job's time limit,
Kubernetes) or `kill` sends it to a single process too. A command still at work stops with one line and exit
code 143 (a `Stopped` the CLI turns into that line, so `finally` blocks still clean up), instead of dying
mid-write without a word. A rank already on its way out with its own line and code (every rank stops on a shared
refusal at nearly the same time) keeps that code instead of being recorded as killed.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from types import FrameType
from typing import Iterator, Optional

STOPPED_EXIT_CODE = 128 + signal.SIGTERM  # the shell's code for a process ended by SIGTERM
# torchrun looks at its ranks every 0.1 s and stops the others once one has exited; a rank that failed prints its
# traceback first (a second or two on a busy machine)
GRACE_SECONDS = 10.0
_handling = False  # SIGTERM raises Stopped (the CLI, in the main thread)
_listening = False  # ... and this process is a torchrun rank
_leaving = False


class Stopped(BaseException):
    """A SIGTERM stopped this process (under torchrun: another rank failed first). A BaseException, like
    KeyboardInterrupt, so that no `except Exception` takes it for an error of the stage."""


def _on_sigterm(signum: int, frame: Optional[FrameType]) -> None:
    if not _leaving:
        raise Stopped


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """A CLI command: SIGTERM raises `Stopped` where the command is, until it is leaving; the handler it found is
    put back after it (a process that runs commands in turn, such as a test, keeps its own). The main thread
    only: Python runs signal handlers there."""
    global _leaving, _handling
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    _leaving, _handling = False, True
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        if not _listening:  # a torchrun rank keeps SIGTERM ignored on its way out (see `leaving`)
            _handling = False
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)  # None: set outside Python


def listen() -> None:
    """Under torchrun: SIGTERM raises `Stopped` where the rank is, until it is leaving."""
    global _leaving, _listening, _handling
    _leaving, _listening, _handling = False, True, True
    signal.signal(signal.SIGTERM, _on_sigterm)


def under_torchrun() -> bool:
    return _listening


def stopped_soon(grace: float = GRACE_SECONDS) -> bool:
    """After an error this rank did not expect, under torchrun: whether torchrun stops it within `grace` seconds.
    It does when another rank failed first, and then this error is that rank's echo (a collective whose peer
    went away: gloo's "Connection closed by peer"), not a bug of this rank's own, which keeps its traceback."""
    if not _listening or _leaving:
        return False
    try:
        time.sleep(grace)
    except Stopped:
        return True
    return False


def leaving() -> None:
    """This rank has said its last line and exits with its own code: a SIGTERM from now on changes nothing.

    Ignored, not just handled: Python puts back the default action for its handled signals when the interpreter
    shuts down, and a SIGTERM that came then (ending the process group is slow on a busy machine) killed the
    rank on its way out (-15) instead of letting it exit with its own code."""
    global _leaving
    _leaving = True
    if _handling and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
