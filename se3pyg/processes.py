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
