"""The training view of a molecule: NVIDIA's inputs and one standardized target."""

from __future__ import annotations

import se3pyg.thirdparty  # noqa: F401  (first: third-party imports without their deprecation warnings)

# isort: split
import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from se3pyg.data.tasks import Task

NODE_FEATURES = 6  # one-hot H, C, N, O, F and the atomic number
EDGE_FEATURES = 4  # one-hot single, double, triple, aromatic


class TargetStats:
    """Mean and standard deviation of a target over the training split.

    Args:
        mean: the mean of the target over the training split.
        std: its standard deviation (above 0).
    """

    def __init__(self, mean: float, std: float) -> None:
        if not std > 0:
            raise ValueError(f"target std must be > 0, got {std}")
        self.mean, self.std = float(mean), float(std)

    @classmethod
    def of(cls, targets: Tensor) -> TargetStats:
        return cls(targets.mean().item(), targets.std().item())


class TrainingView(BaseTransform):
    r"""``x[:, :node_features]`` (QM9's first 6), ``edge_attr[:, :4]``, ``pos``, ``edge_index`` and
    $y = (y_{task} - \mu) / \sigma$ (shape ``[1]``).

    Precomputed spherical harmonics (``sh``, see `se3pyg.data.bases`) and the molecule's index in
    QM9
    (``idx``, which names predictions) are kept.

    Args:
        task: the target kept as ``y``.
        stats: the mean and standard deviation ``y`` is standardized with.
        node_features: the columns of ``x`` kept (QM9's 6; a ``--dataset``'s one-hot elements and atomic number).
    """

    def __init__(self, task: Task, stats: TargetStats, node_features: int = NODE_FEATURES) -> None:
        self.task = task
        self.stats = stats
        self.node_features = node_features

    def forward(self, data: Data) -> Data:
        """The training view of one molecule.

        Args:
            data: a molecule of a QM9 build or of a ``--dataset``.
        """
        out = Data(
            x=data.x[:, : self.node_features],
            pos=data.pos,
            edge_index=data.edge_index,
            edge_attr=data.edge_attr[:, :EDGE_FEATURES],
        )
        if data.y is not None:
            out.y = (data.y[:, self.task.column] - self.stats.mean) / self.stats.std
        if "sh" in data:
            out.sh = data.sh
        if "idx" in data:
            out.idx = data.idx
        return out

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(task={self.task.name}, mean={self.stats.mean:.6g}, std={self.stats.std:.6g})"


def task_targets(dataset: object, task: Task) -> Tensor:
    """The raw ``task`` column of every molecule of an in-memory QM9 (or subset of one)."""
    y = dataset.y if hasattr(dataset, "y") else torch.cat([d.y for d in dataset])
    return y[:, task.column]
