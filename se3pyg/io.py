"""Files: atomic writes, and PyTorch files read without running code."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names it."""


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on failure removed.

    Readers see the old file or the whole new one, never a part.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def check_writable(path: str | os.PathLike, option: str) -> None:
    """``ValueError`` naming ``option`` when ``path`` cannot be written (a directory, a parent that cannot be
    created or written): checked before the work whose result it will hold."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{option} {p}: is a directory")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{option} {p}: cannot create {p.parent} ({exc.strerror})") from None
    if not os.access(p.parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise ValueError(f"{option} {p}: not writable")


def read_torch_file(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, or :class:`CheckpointError` naming the file."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such file")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # every unreadable file gets one line
        raise CheckpointError(f"{p}: not a readable PyTorch checkpoint ({type(exc).__name__})") from None
