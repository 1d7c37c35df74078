"""QM9 through PyG, offline, with NVIDIA's tasks and splits."""

import se3pyg.thirdparty  # noqa: F401  (first: third-party imports without their deprecation warnings)
from se3pyg.data.batches import FlatLoader
from se3pyg.data.custom import DatasetSpec
from se3pyg.data.errors import DataError
from se3pyg.data.module import Loader, QM9Splits, dataset_splits, make_loader, qm9_splits, set_epoch
from se3pyg.data.pairs import pair_edges
from se3pyg.data.qm9 import NUM_MOLECULES, load_qm9, prepare_qm9
from se3pyg.data.splits import split_indices, split_sizes
from se3pyg.data.tasks import TASKS, Task, get_task
from se3pyg.data.transforms import TargetStats, TrainingView

__all__ = [
    "NUM_MOLECULES",
    "TASKS",
    "DataError",
    "DatasetSpec",
    "FlatLoader",
    "Loader",
    "QM9Splits",
    "TargetStats",
    "Task",
    "TrainingView",
    "dataset_splits",
    "get_task",
    "load_qm9",
    "make_loader",
    "pair_edges",
    "prepare_qm9",
    "qm9_splits",
    "set_epoch",
    "split_indices",
    "split_sizes",
]
