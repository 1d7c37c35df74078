"""Files: atomic writes, locks, paths a command may not write over, and PyTorch files read without running code."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import socket
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from se3pyg.processes import pid_alive


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names it."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def spreadsheet_text(cell: str) -> str:
    """A text cell of a CSV written for people: one that starts as a formula would in a spreadsheet (``=``, ``+``,
    ``-``, ``@``, a tab or a carriage return, e.g. from a file name) gets a leading ``'``, so it stays text."""
    return f"'{cell}" if cell.startswith(("=", "+", "-", "@", "\t", "\r")) else cell


#: What SQLite writes beside a database it changes: a temporary store's companions are temporaries too.
SQLITE_COMPANIONS = ("-journal", "-wal", "-shm")


def _remove_dead_temporaries(target: Path) -> None:
    """Temporary files of writes to ``target`` whose process died mid-write: ``.NAME.tmp-PID``, and SQLite's
    companions of a store made there (``.NAME.tmp-PID-journal``)."""
    prefix = f".{target.name}.tmp-"
    for tmp in target.parent.glob(f"{prefix}*"):
        rest = tmp.name.removeprefix(prefix)
        pid = next((rest.removesuffix(s) for s in SQLITE_COMPANIONS if rest.endswith(s)), rest)
        if pid.isdigit() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on failure removed.

    Readers see the old file or the whole new one, never a part; a replaced file keeps its permission bits, and a
    link keeps pointing at the file written.
    Temporary files that killed writers left beside ``path`` are removed first.
    """
    target = _resolved(path)  # through links: a link given is kept, its target replaced
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temporaries(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with contextlib.suppress(FileNotFoundError):  # a replaced file keeps its permissions (a chmod 600 one too)
            os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
        os.replace(tmp, target)
    finally:
        for leftover in (tmp, *(tmp.with_name(tmp.name + s) for s in SQLITE_COMPANIONS)):
            leftover.unlink(missing_ok=True)


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
    """``torch.load(path, weights_only=True)`` on CPU, or `CheckpointError` naming the file."""
    import torch  # here: this module serves the command line, which starts without torch

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such file")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # every unreadable file gets one line
        raise CheckpointError(f"{p}: not a readable PyTorch checkpoint ({type(exc).__name__})") from None


def _take_lock(lock: Path) -> int | None:
    """A descriptor of ``lock`` holding its exclusive ``flock``, ``None`` when another process holds it. The kernel
    drops the lock when its holder dies, so no lock is ever stale; a lock file removed or replaced between the
    open and the lock is opened again."""
    import fcntl

    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            current = os.stat(lock).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            return fd
        os.close(fd)  # its holder released and removed it meanwhile


#: How long a command waits for another that holds what it needs (a QM9 build, a dataset's cache, a new tracking
#: store) before it gives up: ``$SE3PYG_LOCK_WAIT`` seconds, else 30 minutes (all of QM9 builds in 8-13 here).
LOCK_WAIT_S = 30 * 60


def lock_wait_s() -> float:
    """`LOCK_WAIT_S`, or ``$SE3PYG_LOCK_WAIT`` seconds when set (a number of at least 0)."""
    text = os.environ.get("SE3PYG_LOCK_WAIT", "").strip()
    if not text:
        return LOCK_WAIT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise ValueError(f"$SE3PYG_LOCK_WAIT {text!r}: not a number of seconds (0 or more)")
    return value


def _holder(lock: Path) -> str:
    """Who holds ``lock``, as its file records it: ``process PID on HOST``."""
    try:
        held = lock.read_text().split()
    except OSError:
        held = []
    return f"process {held[0]} on {held[1]}" if len(held) == 2 else "another process"


def _awaited(lock: Path, described: str, waiting: str) -> int:
    """Wait for ``lock`` (`lock_wait_s()` at most), saying once, through the ``se3pyg.io`` logger, what is
    awaited; a stop signal ends the wait. The lock's descriptor, or ``ValueError`` naming the holder."""
    import logging
    import time

    from se3pyg.processes import pause

    limit = lock_wait_s()
    deadline = time.monotonic() + limit
    said = False
    while (fd := _take_lock(lock)) is None:
        if time.monotonic() >= deadline:
            raise ValueError(
                f"{described}: {_holder(lock)} still {waiting} after {limit:.0f} s; gave up "
                "(if it is stopped, end it; $SE3PYG_LOCK_WAIT sets the wait)"
            )
        if not said:
            logging.getLogger("se3pyg.io").warning(
                "%s: waiting for %s, which %s (for %.0f s at most)", described, _holder(lock), waiting, limit
            )
            said = True
        pause(0.2)
    return fd


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's content; a file unchanged since it was last hashed here (same inode, size and
    modification time) is not read again, so the checks that each hash a dataset's files read them once.

    Args:
        path: the file (links followed).
    """
    st = os.stat(path)
    return _sha256_of(os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _sha256_of(path: str, inode: int, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def best_path(path: str | os.PathLike) -> Path:
    """Where the best-validation checkpoint goes beside ``path``: ``model.pt`` -> ``model.best.pt``."""
    p = Path(path)
    return p.with_name(f"{p.stem}.best{p.suffix or '.pt'}")


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of `exclusive_use()` beside ``path``: ``.NAME.lock``."""
    p = Path(path)
    return p.with_name(f".{p.name}.lock")


def cache_dir(source: str | os.PathLike) -> Path:
    """``SOURCE.se3pyg``: the processed cache of a ``--dataset``, beside its file or folder."""
    path = Path(source).resolve()
    return path.with_name(path.name + ".se3pyg")


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(path))


def _same_file(a: Path, b: Path) -> bool:
    """Whether two resolved paths name one file (hard links too)."""
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


PathsOf = Iterable[tuple[str, "str | os.PathLike"]]
"""``(option, path)`` pairs: what a command reads or writes, named as its error messages name them."""


@contextlib.contextmanager
def exclusive_use(path: str | os.PathLike, option: str, waiting: str | None = None) -> Iterator[None]:
    """Hold ``path`` for this process: an ``flock`` on ``.NAME.lock`` beside it (links resolved), which records
    the holder's pid and host. A holder that dies (even by SIGKILL) releases the lock with its process.

    Args:
        path: the file held.
        option: how messages name it (``--output``, ``the cache of --dataset X``).
        waiting: ``None`` to refuse at once when another process holds it (naming the holder); else what the
            holder is doing, in words (``builds QM9 there``), to wait for it as `lock_wait_s()` says.

    Raises:
        ValueError: the lock cannot be written, is held (``waiting`` ``None``), or was held too long.
    """
    target = Path(path)
    lock = lock_path(_resolved(target))
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = _take_lock(lock) if waiting is None else _awaited(lock, f"{option} {target}", waiting)
    except OSError as exc:
        raise ValueError(f"{option} {target}: cannot write its lock {lock} ({exc.strerror})") from None
    if fd is None:
        raise ValueError(f"{option} {target}: in use by {_holder(lock)}")
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}".encode())
        yield
    finally:
        lock.unlink(missing_ok=True)  # before the release: a waiter that gets the old file opens the path again
        os.close(fd)


@contextlib.contextmanager
def exclusive_writes(paths: PathsOf) -> Iterator[None]:
    """`exclusive_use()` of every ``(option, path)`` a command replaces, companions included (a checkpoint
    and its best one): two commands never write one file, whichever of its names each was given."""
    with contextlib.ExitStack() as held:
        for option, path in paths:
            held.enter_context(exclusive_use(path, option))
        yield


def refuse_overwrites(reads: PathsOf, writes: PathsOf) -> None:
    """``ValueError`` when a command would write over what it reads or writes elsewhere.

    ``reads`` and ``writes`` are ``(option, path)`` pairs; links are resolved. A path written must be a regular
    file or not exist yet (a device, a FIFO or a folder is never replaced), may not be a file read, lie inside a
    folder read (the files found in an input folder, a data folder, the tracking store's artifacts), or be written
    by another option as well.
    """
    read = [(option, Path(path), _resolved(path)) for option, path in reads]
    written: list[tuple[str, Path, Path]] = []
    for option, path in writes:
        target = _resolved(path)
        if target.is_dir():
            raise ValueError(f"{option} {path}: is a directory")
        if target.exists() and not target.is_file():
            raise ValueError(
                f"{option} {path}: not a regular file (a device, FIFO or socket); se3pyg replaces only regular files"
            )
        for other, given, resolved in read:
            if _same_file(target, resolved):
                raise ValueError(f"{option} {path}: is {other} {given}, which this command reads; not overwritten")
            if resolved.is_dir() and target.is_relative_to(resolved):
                raise ValueError(f"{option} {path}: lies inside {other} {given}, which this command reads")
        for other, given, resolved in written:
            if _same_file(target, resolved):
                raise ValueError(f"{option} {path}: {other} {given} is written there too")
        written.append((option, Path(path), target))
