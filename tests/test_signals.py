"""Stop signals: noted by their handler, never raised from it, acted on where work checks; waits for a lock say
what they await, end on a stop, and give up after the stated time."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from se3pyg.data.qm9 import MANIFEST, prepare_qm9
from se3pyg.io import exclusive_use, lock_wait_s
from se3pyg.processes import (
    STOP_SIGNALS,
    Interrupted,
    pause,
    raise_if_stopped,
    stop_signal,
    stop_signals_noted,
    stops_deferred,
)


def _signalled(*signals: int) -> None:
    for sig in signals:
        os.kill(os.getpid(), sig)
    time.sleep(0.05)  # the handler runs at the next instruction of the main thread


def test_a_stop_signal_is_noted_never_raised_and_acted_on_where_work_checks() -> None:
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    with stop_signals_noted():
        _signalled(signal.SIGHUP, signal.SIGQUIT, signal.SIGINT, signal.SIGTERM)  # nothing raised by any of them
        assert stop_signal() == signal.SIGHUP  # the first one counts
        with stops_deferred():
            raise_if_stopped()  # a block that must not be cut
        with pytest.raises(Interrupted) as stopped:
            raise_if_stopped()
        assert stopped.value.signum == signal.SIGHUP and isinstance(stopped.value, KeyboardInterrupt)
    assert {sig: signal.getsignal(sig) for sig in STOP_SIGNALS} == before and stop_signal() is None


def test_a_stop_ends_a_pause_at_once() -> None:
    with stop_signals_noted():
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
        start = time.monotonic()
        with pytest.raises(Interrupted):
            pause(30)
    assert time.monotonic() - start < 5


def test_a_held_qm9_build_is_awaited_with_a_line_and_given_up_after_the_stated_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Another process building QM9 in the folder (here: this process's own lock, taken on another descriptor),
    stopped or too slow: the waiter says whom it waits for, and gives up with a line naming it."""
    root = tmp_path / "qm9"
    root.mkdir()
    monkeypatch.setenv("SE3PYG_LOCK_WAIT", "1")
    holder = f"process {os.getpid()} on {socket.gethostname()}"
    with (
        exclusive_use(root / MANIFEST, "--data-dir"),
        caplog.at_level(logging.WARNING, logger="se3pyg.io"),
        pytest.raises(ValueError) as refused,
    ):
        prepare_qm9(root, limit=100)
    assert str(refused.value) == (
        f"--data-dir {root / MANIFEST}: {holder} still builds QM9 there after 1 s; gave up "
        "(if it is stopped, end it; $SE3PYG_LOCK_WAIT sets the wait)"
    )
    assert caplog.messages == [f"--data-dir {root / MANIFEST}: waiting for {holder}, which builds QM9 there "
                               "(for 1 s at most)"]  # fmt: skip


def test_a_stop_ends_a_wait_for_a_lock(tmp_path: Path) -> None:
    with stop_signals_noted(), exclusive_use(tmp_path / "x", "x"):
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
        with pytest.raises(Interrupted), exclusive_use(tmp_path / "x", "y", waiting="works"):
            pass


@pytest.mark.parametrize("value", ["soon", "-1", "inf", "nan"])
def test_a_lock_wait_that_is_not_a_number_of_seconds_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("SE3PYG_LOCK_WAIT", value)
    with pytest.raises(ValueError, match=r"^\$SE3PYG_LOCK_WAIT .*: not a number of seconds \(0 or more\)$"):
        lock_wait_s()
