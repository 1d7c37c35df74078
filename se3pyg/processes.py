"""Processes se3pyg starts or meets: whether one is alive, workers that end with their parent, the one scratch
folder of a command's processes, and stop signals (noted by their handler, acted on where work can stop)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
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
        This process's scratch folder (also ``$TMPDIR`` and `tempfile.gettempdir()` from now on).
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
    signal), so that no worker outlives an interrupted build or run; and leave the terminal's stop signals (which
    reach every process of its group) to the parent, which decides when its workers end."""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    parent = os.getppid()
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if not pid_alive(parent) or os.getppid() != parent:  # the parent died before the call
        os._exit(1)


#: The watchdog of `guard_process_group()`: ``python -c _GUARD GROUP PARENT``.
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


#: The signals that stop a command: Ctrl-C, ``kill``'s default, a closed terminal, Ctrl-\\.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class Interrupted(KeyboardInterrupt):
    """A stop signal, raised by `raise_if_stopped()` where work can stop, so that every stage's cleanup runs
    (``finally`` blocks, context managers: locks released, scratch removed, a run marked KILLED); ``signum``
    names the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


#: The stop signals received while `stop_signals_noted()` is in force, in order.
_RECEIVED: list[int] = []
#: How many `stops_deferred()` blocks are open: while one is, `raise_if_stopped()` raises nothing.
_DEFERRED = [0]


def _note(signum: int, _frame: object) -> None:
    _RECEIVED.append(signum)


@contextlib.contextmanager
def stop_signals_noted() -> Iterator[None]:
    """While in force, a stop signal (`STOP_SIGNALS`) is only noted: its handler raises nothing, so that no
    library swallows the stop (an exception raised in a weakref callback or in SQLAlchemy is lost) and nothing in
    the middle of a write is cut. Work checks for one where it can stop (`raise_if_stopped()` between batches,
    molecules, epochs, waits). A second signal is noted as the first was: no traceback, whatever arrives.

    In the main thread only (elsewhere, and when already in force, it changes nothing); the previous handlers and
    an empty record come back on leaving.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is _note:
        yield
        return
    previous = {sig: signal.signal(sig, _note) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _RECEIVED.clear()


def stop_signal() -> int | None:
    """The first stop signal noted (`stop_signals_noted()`), ``None`` while there is none."""
    return _RECEIVED[0] if _RECEIVED else None


def raise_if_stopped() -> None:
    """`Interrupted` for the first stop signal noted, outside `stops_deferred()` blocks; called where
    work can stop, and before work is declared done."""
    if _RECEIVED and not _DEFERRED[0]:
        raise Interrupted(_RECEIVED[0])


def stop_handled() -> None:
    """Forget the stop signals noted: for a caller that has acted on them in full (a server it stopped)."""
    _RECEIVED.clear()


@contextlib.contextmanager
def stops_deferred() -> Iterator[None]:
    """A block that a stop signal must not cut (an epoch's validation and its checkpoint): inside it
    `raise_if_stopped()` raises nothing, and the stop is acted on at the next check after it."""
    _DEFERRED[0] += 1
    try:
        yield
    finally:
        _DEFERRED[0] -= 1


def pause(seconds: float) -> None:
    """Sleep ``seconds``, ended early by a stop signal (`raise_if_stopped()` every tenth of a second)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        raise_if_stopped()
        time.sleep(min(left, 0.1))
    raise_if_stopped()
