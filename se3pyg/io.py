"""Files: atomic writes, and PyTorch files read without running code."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from se3pyg.processes import pid_alive


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names it."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _remove_dead_temporaries(target: Path) -> None:
    """Temporary files of writes to ``target`` whose process died mid-write (``.NAME.tmp-PID``)."""
    for tmp in target.parent.glob(f".{target.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[1]
        if pid.isdigit() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on failure removed.

    Readers see the old file or the whole new one, never a part. Temporary files that killed writers left
    beside ``path`` are removed first.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temporaries(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def check_file(path: str | os.PathLike, option: str) -> None:
    """``ValueError`` naming ``option`` when ``path`` is not a file to read."""
    if Path(path).is_dir():
        raise ValueError(f"{option} {path}: is a folder, not a file")
    if not Path(path).is_file():
        raise ValueError(f"{option} {path}: no such file")


def check_writable(path: str | os.PathLike, option: str) -> None:
    """``ValueError`` naming ``option`` when ``path`` cannot be written (a directory, a parent that cannot be
    created or written in): checked before the work whose result it will hold."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{option} {p}: is a directory")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{option} {p}: cannot create {p.parent} ({exc.strerror})") from None
    if p.exists() and not os.access(p, os.W_OK):
        raise ValueError(f"{option} {p}: not writable")
    # A file made and removed, named as atomic_write's temporaries (so a killed probe's is cleared by the next
    # write): permission bits say nothing for root, read-only mounts or /proc.
    probe = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_WRONLY))
    except OSError as exc:
        raise ValueError(f"{option} {p}: cannot write in {p.parent} ({exc.strerror})") from None
    probe.unlink()


def read_torch_file(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, or :class:`CheckpointError` naming the file."""
    import torch  # here: this module serves the command line, which starts without torch

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such file")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # every unreadable file gets one line
        raise CheckpointError(f"{p}: not a readable PyTorch checkpoint ({type(exc).__name__})") from None


@contextlib.contextmanager
def exclusive_use(path: str | os.PathLike, option: str) -> Iterator[None]:
    """Hold ``path`` for this process (a lock file ``.NAME.lock`` beside it with the pid and host), so that
    a second run writing the same file is refused; a lock whose process is gone is stale and taken over."""
    target = Path(path)
    lock = target.with_name(f".{target.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            held = lock.read_text().split()
            if len(held) == 2 and held[0].isdigit() and (held[1] != host or pid_alive(int(held[0]))):
                raise ValueError(f"{option} {target}: in use by process {held[0]} on {held[1]}") from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        except OSError as exc:
            raise ValueError(f"{option} {target}: cannot write its lock {lock} ({exc.strerror})") from None
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{os.getpid()} {host}")
        break
    else:
        raise ValueError(f"{option} {target}: its lock {lock} could not be taken")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
