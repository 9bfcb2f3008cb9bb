"""How a rank under torchrun hears that torchrun stops it.

When one rank fails, torchrun ends the others with SIGTERM. A rank still at work stops with one line and exit
code 143 (a `Stopped` the CLI turns into that line, so `finally` blocks still clean up), instead of dying
mid-write. A rank already on its way out with its own line and code (every rank stops on a shared refusal at
nearly the same time) keeps that code instead of being recorded as killed.
"""
from __future__ import annotations

import signal
import time
from types import FrameType
from typing import Optional

STOPPED_EXIT_CODE = 128 + signal.SIGTERM  # the shell's code for a process ended by SIGTERM
# torchrun looks at its ranks every 0.1 s and stops the others once one has exited; a rank that failed prints its
# traceback first (a second or two on a busy machine)
GRACE_SECONDS = 10.0
_listening = False
_leaving = False


class Stopped(BaseException):
    """torchrun stopped this rank (another one failed first). A BaseException, like KeyboardInterrupt, so that
    no `except Exception` takes it for an error of the stage."""


def _on_sigterm(signum: int, frame: Optional[FrameType]) -> None:
    if not _leaving:
        raise Stopped


def listen() -> None:
    """Under torchrun: SIGTERM raises `Stopped` where the rank is, until it is leaving."""
    global _leaving, _listening
    _leaving, _listening = False, True
    signal.signal(signal.SIGTERM, _on_sigterm)


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
    if _listening:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
