"""Self-describing checkpoints, written atomically, read with ``weights_only=True``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

FORMAT = "se3pyg-checkpoint"
VERSION = 1


class CheckpointError(Exception):
    """A checkpoint file that cannot be used; the message names it."""


def best_path(path: str | os.PathLike) -> Path:
    """Where the best-validation checkpoint goes beside ``path``: ``model.pt`` -> ``model.best.pt``."""
    p = Path(path)
    return p.with_name(f"{p.stem}.best{p.suffix or '.pt'}")


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` through a temporary file and an atomic rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        torch.save({"format": FORMAT, "version": VERSION, **payload}, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def read_torch_file(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, or :class:`CheckpointError` naming the file."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint file")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # every unreadable file gets one line
        raise CheckpointError(f"{p}: not a readable PyTorch checkpoint ({type(exc).__name__})") from None


def is_se3pyg_checkpoint(payload: Any) -> bool:
    return isinstance(payload, dict) and payload.get("format") == FORMAT


def load_checkpoint(path: str | os.PathLike, payload: Any = None) -> dict[str, Any]:
    """An se3pyg checkpoint (read from ``path`` unless ``payload`` is given), or :class:`CheckpointError`."""
    p = Path(path)
    if payload is None:
        payload = read_torch_file(p)
    if not is_se3pyg_checkpoint(payload):
        raise CheckpointError(f"{p}: not an se3pyg checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{p}: checkpoint version {payload.get('version')} is not supported")
    return payload
