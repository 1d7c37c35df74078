"""Training data: splits of QM9 or of a user's dataset, the training view, loaders (DDP-aware)."""

from __future__ import annotations

import se3pyg.thirdparty  # noqa: F401  (first: third-party imports without their deprecation warnings)

# isort: split
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler
from torch_geometric.data import Batch, InMemoryDataset
from torch_geometric.loader import DataLoader

from se3pyg.data.bases import attach_spherical_harmonics
from se3pyg.data.batches import FlatLoader, flat_loadable, storage_bytes
from se3pyg.data.custom import BuiltDataset, DatasetSpec, build_dataset, split_positions
from se3pyg.data.errors import DataError
from se3pyg.data.molecules import ELEMENTS
from se3pyg.data.pairs import pair_edges
from se3pyg.data.qm9 import Progress, load_qm9
from se3pyg.data.splits import split_indices
from se3pyg.data.tasks import Task
from se3pyg.data.transforms import TargetStats, TrainingView, task_targets


@dataclass
class QM9Splits:
    """Train, validation and test views of QM9 (or of a user's dataset) for one task, the train split's target
    statistics and the elements the node features one-hot encode."""

    train: Dataset
    val: Dataset
    test: Dataset
    stats: TargetStats
    sh_bytes: int = 0
    task: Task | None = None
    elements: tuple[str, ...] = ELEMENTS
    skipped: int = 0
    skip_reasons: list[str] = field(default_factory=list)
    names: list[str] | None = None  # a dataset's molecule names by index (QM9's: gdb_<index + 1>)

    def molecule_name(self, index: int) -> str:
        """The name of the molecule with index ``index`` (the ``idx`` of its batches).

        Args:
            index: a molecule's index in its dataset.
        """
        return self.names[index] if self.names is not None else f"gdb_{index + 1}"


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

    Args:
        data_dir: the QM9 folder (built when missing).
        task: the target to learn (`get_task`).
        limit: the first ``limit`` molecules only (``None``: all).
        seed: the split's seed (NVIDIA's: 0).
        precompute_degree: keep every bond's spherical harmonics up to this degree (``None``: computed each step).
        progress: told of the build's stages.
        stats: the target statistics to standardize with (a resumed run's), instead of the train split's.
    """
    dataset = load_qm9(data_dir, limit, progress=progress)
    sh_bytes = 0
    if precompute_degree is not None:
        if dataset._indices is not None:  # a --limit view: compact it so only its bonds get harmonics
            dataset = dataset.copy()
        sh_bytes = attach_spherical_harmonics(dataset, precompute_degree)
    indices = split_indices(len(dataset), seed)
    if stats is None:
        stats = TargetStats.of(task_targets(dataset, task)[torch.tensor(indices[0])])
    return QM9Splits(*_views(dataset, indices, TrainingView(task, stats)), stats=stats, sh_bytes=sh_bytes, task=task)


def dataset_splits(
    spec: DatasetSpec,
    precompute_degree: int | None = None,
    stats: TargetStats | None = None,
    built: BuiltDataset | None = None,
) -> QM9Splits:
    """The splits of a user's dataset (`se3pyg.data.custom`; ``built`` when it is at hand, else
    built or
    read from its cache), standardized with the train split's mean and std (or ``stats``); node features
    one-hot over the elements the dataset holds.

    Args:
        spec: the dataset and its options (`DatasetSpec`).
        precompute_degree: keep every bond's spherical harmonics up to this degree (``None``: computed each step).
        stats: the target statistics to standardize with, instead of the train split's.
        built: the dataset already built from ``spec``.
    """
    built = built if built is not None else build_dataset(spec)
    dataset = built.dataset
    sh_bytes = attach_spherical_harmonics(dataset, precompute_degree) if precompute_degree is not None else 0
    indices = split_positions(built, spec)
    if any(not part for part in indices):
        sizes = ", ".join(f"{name} {len(part)}" for name, part in zip(("train", "val", "test"), indices, strict=True))
        raise DataError(f"--dataset {spec.source}: every split needs molecules ({sizes})")
    if stats is None:
        stats = TargetStats.of(dataset._data.y[torch.tensor(indices[0]), 0])
    view = TrainingView(spec.task, stats, node_features=len(built.elements) + 1)
    return QM9Splits(
        *_views(dataset, indices, view),
        stats=stats,
        sh_bytes=sh_bytes,
        task=spec.task,
        elements=built.elements,
        skipped=built.skipped,
        skip_reasons=built.reasons,
        names=list(dataset._data.name),
    )


def _views(dataset: InMemoryDataset, indices: tuple[list[int], ...], view: TrainingView) -> list[InMemoryDataset]:
    parts = []
    for idx in indices:
        part = dataset.index_select(idx)
        part.transform = view
        parts.append(part)
    return parts


#: What `make_loader()` returns: both iterate PyG ``Batch`` objects and have a length.
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
    """Batches of ``dataset`` for one rank: a `FlatLoader` on ``device`` for a QM9 split (its storage
    held there when it fits in half the free memory, else on the host), a PyG ``DataLoader`` for other
    datasets or with worker processes (its batches' edges put in reverse pairs where they can be,
    `se3pyg.data.pairs`); under DDP each rank reads its share.

    Args:
        dataset: a split (a ``Subset`` of a QM9 build) or a list of molecules.
        batch_size: molecules per batch and rank.
        shuffle: draw a new order each epoch (`set_epoch`).
        num_workers: DataLoader worker processes (PyG's loader only).
        rank: this process's rank, whose share it reads.
        world_size: the ranks sharing the dataset.
        seed: the shuffle's seed.
        drop_last: leave out the last, smaller batch.
        pin_memory: pinned host memory for faster copies to a GPU (PyG's loader only).
        device: where the batches are built.
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
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
    )
    loader.collate_fn = PairingCollater(loader.collate_fn)
    return loader


class PairingCollater:
    """PyG's collation, then [`pair_edges()`][se3pyg.data.pairs.pair_edges]: batches whose bonds pair up are flagged."""

    def __init__(self, collate: Callable[[list], Batch]) -> None:
        self.collate = collate

    def __call__(self, molecules: list) -> Batch:
        return pair_edges(self.collate(molecules))


def set_epoch(loader: Loader, epoch: int) -> None:
    """Give ``loader`` the order of ``epoch`` (reshuffles a DDP share; a single process reshuffles by itself).

    Args:
        loader: a loader of `make_loader`.
        epoch: the epoch about to run.
    """
    if isinstance(loader, FlatLoader):
        loader.set_epoch(epoch)
    elif isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
