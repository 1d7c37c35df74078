"""Processes se3pyg starts or meets: whether one is alive, workers that end with their parent, and the one scratch
folder of a command's processes."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

#: The name of a command's scratch folder under the system's temporary folder, followed by its process id.
SCRATCH_PREFIX = "se3pyg-scratch-"


def use_own_scratch(base: str | os.PathLike | None = None) -> Path:
    """Put every temporary file of this process and of those it starts (se3pyg's, MLflow's, torch's worker queues)
    in one folder of its own, ``se3pyg-scratch-PID`` in ``base`` (the system's temporary folder by default),
    removed when the process exits. Folders of processes that are gone (killed before they could remove theirs)
    are removed first, so nothing a killed command left stays for good.

    Args:
        base: where scratch folders live.

    Returns:
        This process's scratch folder (also ``$TMPDIR`` and :func:`tempfile.gettempdir` from now on).
    """
    import atexit
    import shutil
    import tempfile

    root = Path(base if base is not None else tempfile.gettempdir())
    for folder in root.glob(f"{SCRATCH_PREFIX}*"):
        pid = folder.name.removeprefix(SCRATCH_PREFIX)
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
    own = root / f"{SCRATCH_PREFIX}{os.getpid()}"
    own.mkdir(mode=0o700, exist_ok=True)
    os.environ["TMPDIR"] = tempfile.tempdir = str(own)
    atexit.register(shutil.rmtree, own, ignore_errors=True)
    return own


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


#: The watchdog of :func:`guard_process_group`: ``python -c _GUARD GROUP PARENT``.
_GUARD = """
import ctypes, os, signal, sys, time
group, parent = int(sys.argv[1]), int(sys.argv[2])
def end(*_):
    try:
        os.killpg(group, signal.SIGTERM)
    except ProcessLookupError:
        pass
    os._exit(0)
for stop in (signal.SIGHUP, signal.SIGINT):  # a closed terminal or Ctrl-C reaches the parent, which ends
    signal.signal(stop, signal.SIG_IGN)
signal.signal(signal.SIGTERM, end)
ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: SIGTERM here when the parent dies
if os.getppid() != parent:
    end()
while True:
    time.sleep(3600)
"""


def guard_process_group(group: int) -> object | None:
    """A watchdog process that ends process group ``group`` (SIGTERM) when this process dies, even by SIGKILL or a
    closed terminal's SIGHUP, through Linux's parent-death signal; ``None`` elsewhere. Terminate it once the group
    has ended (terminating it ends the group too).

    Args:
        group: the process group to end, e.g. a server started with ``start_new_session=True`` (its pid).
    """
    if not sys.platform.startswith("linux"):
        return None
    import subprocess

    return subprocess.Popen([sys.executable, "-c", _GUARD, str(group), str(os.getpid())], stdin=subprocess.DEVNULL)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised where the process stands, so that every stage's cleanup runs (``finally`` blocks,
    context managers: locks released, scratch removed, a run marked KILLED); ``signum`` names the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


#: The stop signals :func:`raise_on_stop_signals` has received, in order.
_RECEIVED: list[int] = []


def raise_if_stopped() -> None:
    """:class:`Interrupted` again for a stop signal received earlier, whose exception something swallowed; called
    before work is declared done, so that a stop is never lost."""
    if _RECEIVED:
        raise Interrupted(_RECEIVED[0])


def raise_on_stop_signals() -> None:
    """From now on SIGTERM, like SIGINT, raises :class:`Interrupted` in the main thread (Python's default for
    SIGTERM ends the process at once: no cleanup runs)."""

    def interrupt(signum: int, _frame: object) -> None:
        _RECEIVED.append(signum)  # kept: a library may swallow the exception (a weakref callback, SQLAlchemy)
        raise Interrupted(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupt)
