"""The molecules a run reads: QM9 with NVIDIA's splits, or the user's ``--dataset``; built once a node (by
its local rank 0, or by the launcher before it spawns ranks), then read by every rank."""

from __future__ import annotations

from se3pyg.data import QM9Splits, TargetStats, dataset_splits, get_task, prepare_qm9, qm9_splits
from se3pyg.data.custom import BuiltDataset, build_dataset
from se3pyg.data.qm9 import Progress
from se3pyg.engine import distributed
from se3pyg.engine.config import RunOptions
from se3pyg.engine.distributed import DistInfo


def prepare_data(options: RunOptions, progress: Progress | None = None) -> BuiltDataset | None:
    """Build what is missing: ``--dataset``'s cache (the built dataset is returned) or the QM9 folder.

    Args:
        options: the run's data options.
        progress: told of the build's stages.
    """
    if options.dataset:
        return build_dataset(options.dataset_spec())
    prepare_qm9(options.data_dir, options.limit, progress=progress)
    return None


def load_splits(
    options: RunOptions,
    info: DistInfo,
    qm9_task: str | None,
    stats: TargetStats | None = None,
    progress: Progress | None = None,
) -> QM9Splits:
    """This rank's splits, after local rank 0 has built what was missing: ``--dataset``'s, or QM9's for
    ``qm9_task`` (a task name, read only for QM9); with precomputed harmonics under ``precompute_bases``,
    standardized with ``stats`` when given.

    Args:
        options: the run's data and model options.
        info: this rank's place in the run.
        qm9_task: the QM9 task (unused with a ``--dataset``).
        stats: the target statistics to standardize with (a resume's).
        progress: told of the build's stages.
    """
    built = prepare_data(options, progress) if info.local_rank == 0 else None
    distributed.barrier(info)
    degree = options.num_degrees - 1 if options.precompute_bases else None  # the model's highest degree
    if options.dataset:
        return dataset_splits(options.dataset_spec(), precompute_degree=degree, stats=stats, built=built)
    return qm9_splits(options.data_dir, get_task(qm9_task), options.limit, precompute_degree=degree, stats=stats)
