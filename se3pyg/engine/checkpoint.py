"""Self-describing checkpoints, written atomically, read with ``weights_only=True``."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from se3pyg.io import CheckpointError, atomic_write, best_path, first_line, read_torch_file
from se3pyg.model import SE3TransformerPooled

FORMAT = "se3pyg-checkpoint"
VERSION = 1

__all__ = [
    "CheckpointError",
    "best_path",
    "check_trained",
    "is_se3pyg_checkpoint",
    "load_checkpoint",
    "model_from_checkpoint",
    "save_checkpoint",
]


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` through a temporary file and an atomic rename (the previous file stays whole
    when the write fails: :class:`CheckpointError` naming it, e.g. on a full disk)."""
    try:
        with atomic_write(path) as tmp:
            torch.save({"format": FORMAT, "version": VERSION, **payload}, tmp)
    except (OSError, RuntimeError) as exc:  # torch.save reports a failed write as a RuntimeError
        raise CheckpointError(f"{path}: cannot be written, the previous file is kept ({first_line(exc)})") from None


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


#: What a checkpoint of a training run holds, for a model to be made of it and resumed: entry -> type.
TRAINED = {
    "model_config": dict, "state_dict": dict, "task": str, "config": dict, "epoch": int, "target_mean": float,
    "target_std": float,
}  # fmt: skip


def check_trained(checkpoint: dict[str, Any], name: str) -> dict[str, Any]:
    """``checkpoint`` when it holds every :data:`TRAINED` entry with its type and finite target statistics (a
    standard deviation above 0); :class:`CheckpointError` naming ``name`` and the first entry that is not."""
    for key, kind in TRAINED.items():
        value = checkpoint.get(key)
        usable = isinstance(value, (int, float)) if kind is float else isinstance(value, kind)
        if value is None or isinstance(value, bool) or not usable:
            found = "missing" if value is None else f"of type {type(value).__name__}"
            raise CheckpointError(f"{name}: incomplete checkpoint: {key} is {found} (expected {kind.__name__})")
    mean, std = checkpoint["target_mean"], checkpoint["target_std"]
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise CheckpointError(f"{name}: its target statistics (mean {mean}, std {std}) cannot standardize")
    return checkpoint


def model_from_checkpoint(checkpoint: dict[str, Any], name: str = "checkpoint") -> SE3TransformerPooled:
    """The trained model of an se3pyg checkpoint, on CPU, in training mode; :class:`CheckpointError` naming
    ``name`` when its ``model_config`` and weights do not make a model."""
    try:
        model = SE3TransformerPooled.from_config(checkpoint["model_config"])
        model.load_state_dict(checkpoint["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{name}: its model_config and weights do not match ({first_line(exc)[:200]})") from None
    return model
