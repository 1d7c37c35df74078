"""Self-describing checkpoints, written atomically, read with ``weights_only=True``."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from se3pyg.io import CheckpointError, atomic_write, best_path, first_line, read_torch_file
from se3pyg.model import SE3TransformerPooled
from se3pyg.options import MODEL_SIZE_LIMITS

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
    when the write fails: `CheckpointError` naming it, e.g. on a full disk).

    Args:
        path: the checkpoint file (links followed: their target is replaced).
        payload: what it holds (`TrainState.to_checkpoint` and what a run records).

    Raises:
        CheckpointError: it could not be written; the previous file is kept.
    """
    try:
        with atomic_write(path) as tmp:
            torch.save({"format": FORMAT, "version": VERSION, **payload}, tmp)
    except (OSError, RuntimeError) as exc:  # torch.save reports a failed write as a RuntimeError
        raise CheckpointError(f"{path}: cannot be written, the previous file is kept ({first_line(exc)})") from None


def is_se3pyg_checkpoint(payload: Any) -> bool:
    """Whether a loaded file is an se3pyg checkpoint (its ``format`` entry), not NVIDIA's or another.

    Args:
        payload: what ``torch.load`` read.
    """
    return isinstance(payload, dict) and payload.get("format") == FORMAT


def load_checkpoint(path: str | os.PathLike, payload: Any = None) -> dict[str, Any]:
    """An se3pyg checkpoint (read from ``path`` unless ``payload`` is given), or `CheckpointError`.

    Args:
        path: the file, named in errors.
        payload: its content, when already read.

    Raises:
        CheckpointError: unreadable, or not se3pyg's.
    """
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
    "model_config": dict,
    "state_dict": dict,
    "task": str,
    "config": dict,
    "epoch": int,
    "target_mean": float,
    "target_std": float,
}
#: Entries a checkpoint may hold, with their types (a resume needs the first three).
OPTIONAL = {
    "optimizer": dict,
    "scheduler": dict,
    "scaler": dict,
    "best_val_mae": float,
    "elements": list,
    "unit": str,
    "run_id": str,
    "dataset_sha256": str,
}
MAX_FIBER_CHANNELS = 1 << 16  # channels a degree of a fiber_in, fiber_out or fiber_edge


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _entry_error(key: str, value: Any, kind: type) -> str | None:
    """What is wrong with ``value`` as checkpoint entry ``key`` of type ``kind``, or ``None``."""
    if value is None:
        return f"{key} is missing (expected {kind.__name__})"
    if not (_number(value) if kind is float else isinstance(value, kind) and not isinstance(value, bool)):
        return f"{key} is of type {type(value).__name__} (expected {kind.__name__})"
    return None


def _model_config_error(config: dict[str, Any]) -> str | None:
    """What in a checkpoint's ``model_config`` no model may be built from: a size that is not a positive integer
    within `MODEL_SIZE_LIMITS`, a fiber that is not degree -> channels within `MAX_FIBER_CHANNELS`."""
    for key, limit in MODEL_SIZE_LIMITS.items():
        value = config.get(key)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= limit):
            return f"model_config.{key} is {value!r} (expected an integer from 1 to {limit})"
    for key in ("fiber_in", "fiber_out", "fiber_edge"):
        fiber = config.get(key, {})
        if not isinstance(fiber, dict) or not all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= MAX_FIBER_CHANNELS for c in fiber.values()
        ):
            return f"model_config.{key} is {str(fiber)[:80]} (expected degree -> at most {MAX_FIBER_CHANNELS} channels)"
    return None


def check_trained(checkpoint: dict[str, Any], name: str, resuming: bool = False) -> dict[str, Any]:
    """``checkpoint`` when it follows se3pyg's checkpoint schema, else `CheckpointError` naming ``name`` and
    the first entry that does not.

    Every `TRAINED` entry with its type, each `OPTIONAL` one present with its type (and, to resume,
    ``optimizer``, ``scheduler`` and ``scaler``); ``epoch`` >= 0; finite target statistics, a standard deviation
    above 0; ``best_val_mae`` >= 0; ``elements`` distinct element symbols; model sizes within
    `MODEL_SIZE_LIMITS`.

    Args:
        checkpoint: a loaded checkpoint (`load_checkpoint`).
        name: how errors name it (its path or URI).
        resuming: also require what a resume restores.

    Raises:
        CheckpointError: the first entry that does not follow the schema.
    """
    required = {**TRAINED, **({k: OPTIONAL[k] for k in ("optimizer", "scheduler", "scaler")} if resuming else {})}
    errors = [_entry_error(key, checkpoint.get(key), kind) for key, kind in required.items()]
    errors += [_entry_error(k, checkpoint[k], kind) for k, kind in OPTIONAL.items() if checkpoint.get(k) is not None]
    errors.append(_model_config_error(checkpoint["model_config"]) if not any(errors) else None)
    error = next((e for e in errors if e), None)
    if error is not None:
        raise CheckpointError(f"{name}: not a usable checkpoint: {error}")
    mean, std = checkpoint["target_mean"], checkpoint["target_std"]
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise CheckpointError(f"{name}: its target statistics (mean {mean}, std {std}) cannot standardize")
    if checkpoint["epoch"] < 0 or checkpoint.get("best_val_mae", 0) < 0:
        raise CheckpointError(f"{name}: epoch {checkpoint['epoch']} or best_val_mae below 0")
    elements = checkpoint.get("elements", ["H"])
    if not elements or len(set(elements)) != len(elements) or not all(isinstance(e, str) and e for e in elements):
        raise CheckpointError(f"{name}: elements {str(elements)[:80]} are not distinct element symbols")
    return checkpoint


def model_from_checkpoint(checkpoint: dict[str, Any], name: str = "checkpoint") -> SE3TransformerPooled:
    """The trained model of an se3pyg checkpoint, on CPU, in training mode; `CheckpointError` naming
    ``name`` when its ``model_config`` and weights do not make a model.

    Args:
        checkpoint: a checked checkpoint (`check_trained`).
        name: how errors name it.
    """
    try:
        model = SE3TransformerPooled.from_config(checkpoint["model_config"])
        model.load_state_dict(checkpoint["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{name}: its model_config and weights do not match ({first_line(exc)[:200]})") from None
    return model
