"""QM9 for training: splits, the training view, loaders (DDP-aware)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler
from torch_geometric.loader import DataLoader

from se3pyg.data.bases import attach_spherical_harmonics
from se3pyg.data.batches import FlatLoader, flat_loadable, storage_bytes
from se3pyg.data.qm9 import Progress, load_qm9
from se3pyg.data.splits import split_indices
from se3pyg.data.tasks import Task
from se3pyg.data.transforms import TargetStats, TrainingView, task_targets


@dataclass
class QM9Splits:
    """Train, validation and test views of QM9 for one task, and the train split's target statistics."""

    train: Dataset
    val: Dataset
    test: Dataset
    stats: TargetStats
    sh_bytes: int = 0


def qm9_splits(
    data_dir: str | os.PathLike,
    task: Task,
    limit: int | None = None,
    seed: int = 0,
    precompute_degree: int | None = None,
    progress: Progress | None = None,
    stats: TargetStats | None = None,
) -> QM9Splits:
    """NVIDIA's split (seed 0) of the first ``limit`` molecules, standardized with the train split's mean/std.

    ``stats`` standardizes with given statistics instead (a checkpoint's, for evaluation).
    """
    dataset = load_qm9(data_dir, limit, progress=progress)
    sh_bytes = 0
    if precompute_degree is not None:
        if dataset._indices is not None:  # a --limit view: compact it so only its bonds get harmonics
            dataset = dataset.copy()
        sh_bytes = attach_spherical_harmonics(dataset, precompute_degree)
    train_idx, val_idx, test_idx = split_indices(len(dataset), seed)
    if stats is None:
        stats = TargetStats.of(task_targets(dataset, task)[torch.tensor(train_idx)])
    view = TrainingView(task, stats)
    parts = []
    for idx in (train_idx, val_idx, test_idx):
        part = dataset.index_select(idx)
        part.transform = view
        parts.append(part)
    return QM9Splits(*parts, stats=stats, sh_bytes=sh_bytes)


#: What :func:`make_loader` returns: both iterate PyG ``Batch`` objects and have a length.
Loader = FlatLoader | DataLoader


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
    device: torch.device | str = "cpu",
) -> Loader:
    """Batches of ``dataset`` for one rank: a :class:`FlatLoader` on ``device`` for a QM9 split (its storage
    held there when it fits in half the free memory, else on the host), a PyG ``DataLoader`` for other
    datasets or with worker processes; under DDP each rank reads its share.
    """
    if num_workers == 0 and flat_loadable(dataset):
        device = torch.device(device)
        if device.type == "cuda" and storage_bytes(dataset) > torch.cuda.mem_get_info(device)[0] / 2:
            device = torch.device("cpu")
        return FlatLoader(dataset, batch_size, shuffle, drop_last, rank, world_size, seed, device)
    sampler = None
    if world_size > 1:
        sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
    )


def set_epoch(loader: Loader, epoch: int) -> None:
    """Give ``loader`` the order of ``epoch`` (reshuffles a DDP share; a single process reshuffles by itself)."""
    if isinstance(loader, FlatLoader):
        loader.set_epoch(epoch)
    elif isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
