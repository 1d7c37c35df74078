"""Processes se3pyg starts or meets: whether one is alive, and workers that end with their parent."""

from __future__ import annotations

import os
import signal
import sys


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def end_with_parent() -> None:
    """In a worker process: be killed when the process that started it dies, even by SIGKILL (Linux's parent-death
    signal), so that no worker outlives an interrupted build or run."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    parent = os.getppid()
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if not pid_alive(parent) or os.getppid() != parent:  # the parent died before the call
        os._exit(1)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised where the process stands, so that every stage's cleanup runs (``finally`` blocks,
    context managers: locks released, scratch removed, a run marked KILLED); ``signum`` names the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def raise_on_stop_signals() -> None:
    """From now on SIGTERM, like SIGINT, raises :class:`Interrupted` in the main thread (Python's default for
    SIGTERM ends the process at once: no cleanup runs)."""

    def interrupt(signum: int, _frame: object) -> None:
        raise Interrupted(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupt)
