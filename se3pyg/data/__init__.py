"""QM9 through PyG, offline, with NVIDIA's tasks and splits.

The names below are imported on first use, so that the command line checks options such as ``--task``
([`se3pyg.data.tasks`][se3pyg.data.tasks]) without importing torch and PyG. The modules that import PyG import
[`se3pyg.thirdparty`][se3pyg.thirdparty] first (third-party imports without their deprecation warnings).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from se3pyg.data.batches import FlatLoader
    from se3pyg.data.custom import DatasetSpec
    from se3pyg.data.errors import DataError
    from se3pyg.data.module import Loader, QM9Splits, dataset_splits, make_loader, qm9_splits, set_epoch
    from se3pyg.data.pairs import pair_edges
    from se3pyg.data.qm9 import NUM_MOLECULES, load_qm9, prepare_qm9
    from se3pyg.data.splits import split_indices, split_sizes
    from se3pyg.data.tasks import TASKS, Task, get_task
    from se3pyg.data.transforms import TargetStats, TrainingView

_HOMES = {  # each name -> the module that defines it
    "FlatLoader": "batches",
    "DatasetSpec": "custom",
    "DataError": "errors",
    "Loader": "module",
    "QM9Splits": "module",
    "dataset_splits": "module",
    "make_loader": "module",
    "qm9_splits": "module",
    "set_epoch": "module",
    "pair_edges": "pairs",
    "NUM_MOLECULES": "qm9",
    "load_qm9": "qm9",
    "prepare_qm9": "qm9",
    "split_indices": "splits",
    "split_sizes": "splits",
    "TASKS": "tasks",
    "Task": "tasks",
    "get_task": "tasks",
    "TargetStats": "transforms",
    "TrainingView": "transforms",
}

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


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'se3pyg.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"se3pyg.data.{_HOMES[name]}"), name)


def __dir__() -> list[str]:
    return sorted(__all__)
