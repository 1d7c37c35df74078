"""Inference: a checkpoint (se3pyg's or NVIDIA's) on QM9 splits or on the user's molecules."""

from __future__ import annotations

import contextlib
import csv
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from se3pyg.compat.nvidia import load_nvidia
from se3pyg.data import TargetStats, get_task, qm9_splits
from se3pyg.data.tasks import Task
from se3pyg.engine.checkpoint import CheckpointError, is_se3pyg_checkpoint, load_checkpoint, read_torch_file
from se3pyg.engine.distributed import DistInfo
from se3pyg.engine.evaluate import mean_absolute_error
from se3pyg.model import SE3TransformerPooled


@dataclass
class LoadedModel:
    model: SE3TransformerPooled
    task: Task
    mean: float | None
    std: float | None
    source: str  # "se3pyg" or "nvidia"
    config: dict | None = None


def load_model(
    path: str | os.PathLike,
    task: str | None = None,
    target_mean: float | None = None,
    target_std: float | None = None,
    num_heads: int = 8,
    channels_div: int = 2,
) -> LoadedModel:
    """The model of an se3pyg checkpoint, or of an NVIDIA one (heads and ``channels_div`` as given)."""
    p = Path(path)
    payload = read_torch_file(p)
    if is_se3pyg_checkpoint(payload):
        ckpt = load_checkpoint(p, payload)
        model = SE3TransformerPooled.from_config(ckpt["model_config"])
        model.load_state_dict(ckpt["state_dict"])
        if task is not None and task != ckpt["task"]:
            raise CheckpointError(f"{p}: trained for task {ckpt['task']!r}, not {task!r}")
        return LoadedModel(
            model.eval(), get_task(ckpt["task"]), ckpt["target_mean"], ckpt["target_std"], "se3pyg", ckpt["config"]
        )
    try:
        model = load_nvidia(payload, num_heads=num_heads, channels_div=channels_div)
    except ValueError as exc:
        raise CheckpointError(f"{p}: not an se3pyg or NVIDIA SE(3)-Transformer checkpoint ({exc})") from None
    if not isinstance(model, SE3TransformerPooled):
        raise CheckpointError(f"{p}: an NVIDIA SE3Transformer without the pooled regression head")
    return LoadedModel(model, get_task(task or "homo"), target_mean, target_std, "nvidia")


def _autocast(amp: bool, device: torch.device) -> contextlib.AbstractContextManager:
    if not amp:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def predict_molecules(
    loaded: LoadedModel, molecules: list[Data], batch_size: int, device: torch.device, amp: bool = False
) -> torch.Tensor:
    """Predictions in the task's unit, one per molecule, in order."""
    if loaded.mean is None or loaded.std is None:
        raise CheckpointError(
            "an NVIDIA checkpoint holds no target statistics: pass --target-mean and --target-std "
            f"(the mean and std of {loaded.task.name} over the training split, in {loaded.task.unit})"
        )
    model = loaded.model.to(device).eval()
    out = []
    for batch in DataLoader(molecules, batch_size=batch_size, shuffle=False):
        batch = batch.to(device)
        with _autocast(amp, device):
            out.append(model(batch).float().cpu())
    return torch.cat(out) * loaded.std + loaded.mean


def evaluate_split(
    loaded: LoadedModel,
    data_dir: str | os.PathLike,
    limit: int | None,
    split: str,
    batch_size: int,
    device: torch.device,
    amp: bool = False,
) -> tuple[float, int]:
    """``(MAE in the task's unit, molecules)`` on NVIDIA's ``test`` or ``val`` split of the first ``limit`` molecules.

    Targets are standardized with the train split's statistics, as in training.
    """
    if split not in ("test", "val"):
        raise ValueError(f"--split must be test or val, got {split!r}")
    stats = TargetStats(loaded.mean, loaded.std) if loaded.source == "se3pyg" else None
    splits = qm9_splits(data_dir, loaded.task, limit, stats=stats)
    dataset = splits.test if split == "test" else splits.val
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    model = loaded.model.to(device)
    mae = mean_absolute_error(model, loader, DistInfo(device=device), splits.stats.std, lambda: _autocast(amp, device))
    return mae, len(dataset)


def write_predictions_csv(path: str | os.PathLike, names: list[str], task: Task, values: torch.Tensor) -> None:
    """``molecule,task,prediction,unit``, one row a molecule, written atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["molecule", "task", "prediction", "unit"])
            for name, value in zip(names, values.tolist(), strict=True):
                writer.writerow([name, task.name, f"{value:.6f}", task.unit])
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
