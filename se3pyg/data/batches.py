"""Batches cut out of a dataset's flat storage by index arithmetic, on the training device.

PyG's ``DataLoader`` builds every molecule as a ``Data`` object and collates
them in Python: about 4 molecules per ms on this project's CPUs, far below
what one GPU trains on. A QM9 split is a view of one collated
``InMemoryDataset``: node and edge tensors stored end to end with per-molecule
offsets (``slices``). `FlatLoader` moves those tensors to the device
once and assembles a batch of molecules ``m_1 .. m_B`` with a few gathers:

$$
\\text{nodes} = \\bigcup_b [\\,p_{m_b}, p_{m_b + 1}), \\qquad
\\text{edge\\_index} \\mathrel{+}= \\text{offset of its molecule in the batch}
$$

with the same tensors as ``Batch.from_data_list`` of the same molecules
(training view: node features ``x[:, :6]``, ``edge_attr[:, :4]``, the
standardized target, the molecules' QM9 indices, precomputed harmonics
when present; ``edge_pairs`` when the storage's edges come in reverse pairs, see
`se3pyg.data.pairs`). Batch sizes are
read from host copies of the per-molecule counts, so assembling a batch on a
GPU reads nothing back from it.
"""

from __future__ import annotations

import se3pyg.thirdparty  # noqa: F401  (first: third-party imports without their deprecation warnings)

# isort: split
import math
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch_geometric.data import Batch, InMemoryDataset

from se3pyg.data.pairs import molecules_in_reverse_pairs
from se3pyg.data.transforms import EDGE_FEATURES, TrainingView


@dataclass
class _Storage:
    """A collated dataset's model inputs on one device, and its per-molecule node and edge offsets."""

    x: Tensor
    pos: Tensor
    edge_index: Tensor
    edge_attr: Tensor
    y: Tensor
    sh: Tensor | None
    idx: Tensor | None
    node_ptr: Tensor
    edge_ptr: Tensor
    node_counts: Tensor
    edge_counts: Tensor
    host_node_counts: Tensor  # batch sizes are read from these
    host_edge_counts: Tensor
    edge_pairs: bool  # every molecule's edges in reverse pairs (se3pyg.data.pairs): so is every batch's


_STORAGE: dict[int, dict[torch.device, _Storage]] = {}  # by id of the collated data, dropped with it


def _storage(dataset: InMemoryDataset, device: torch.device) -> _Storage:
    """The dataset's flat storage on ``device``, shared by every split that views it."""
    node_features = dataset.transform.node_features
    key = id(dataset._data)
    if key not in _STORAGE:
        _STORAGE[key] = {}
        weakref.finalize(dataset._data, _STORAGE.pop, key, None)
    per_device = _STORAGE[key]
    if device not in per_device:
        data, slices = dataset._data, dataset.slices
        node_ptr, edge_ptr = slices["x"], slices["edge_index"]
        sh = data.sh.to(device) if "sh" in data else None
        edge_attr = data.edge_attr[:, :EDGE_FEATURES]
        paired = molecules_in_reverse_pairs(data.edge_index, edge_attr, edge_ptr)
        per_device[device] = _Storage(
            x=data.x[:, :node_features].to(device),
            pos=data.pos.to(device),
            edge_index=data.edge_index.to(device),
            edge_attr=edge_attr.to(device),
            y=data.y.to(device),
            sh=sh,
            idx=data.idx.to(device) if "idx" in data else None,
            node_ptr=node_ptr.to(device),
            edge_ptr=edge_ptr.to(device),
            node_counts=node_ptr.diff().to(device),
            edge_counts=edge_ptr.diff().to(device),
            host_node_counts=node_ptr.diff(),
            host_edge_counts=edge_ptr.diff(),
            edge_pairs=paired,
        )
    return per_device[device]


def _concat_ranges(starts: Tensor, counts: Tensor, total: int) -> Tensor:
    """``[s_0, .., s_0 + c_0 - 1, s_1, ..]``: the ranges ``[s_b, s_b + c_b)`` end to end (``total = sum c``)."""
    shift = starts - (torch.cumsum(counts, 0) - counts)
    return torch.arange(total, device=starts.device) + torch.repeat_interleave(shift, counts, output_size=total)


def storage_bytes(dataset: InMemoryDataset) -> int:
    """Bytes of the model inputs `FlatLoader` keeps for ``dataset``'s whole collated storage."""
    data = dataset._data
    tensors = [
        data.x[:, : dataset.transform.node_features],
        data.pos,
        data.edge_index,
        data.edge_attr[:, :EDGE_FEATURES],
        data.y,
    ]
    tensors += [data.sh] if "sh" in data else []
    return sum(t.numel() * t.element_size() for t in tensors)


def flat_loadable(dataset: object) -> bool:
    """Whether `FlatLoader` can serve ``dataset``: a view of a collated dataset with the training view."""
    return isinstance(dataset, InMemoryDataset) and isinstance(dataset.transform, TrainingView)


class FlatLoader:
    """Batches of a split of a collated dataset, assembled on ``device`` (see the module docstring).

    Order and sharding follow ``DistributedSampler`` + ``DataLoader``: a permutation seeded with
    ``seed + epoch`` when shuffling (reshuffled every epoch: `set_epoch()`, or by itself after each
    pass), cut to (``drop_last``) or padded to a multiple of ``world_size``, every ``world_size``-th
    molecule for ``rank``, then batches of ``batch_size`` (the last one dropped with ``drop_last``).

    Args:
        dataset: a split of a collated QM9 build with the training view (`flat_loadable`).
        batch_size: molecules per batch.
        shuffle: a new order each epoch.
        drop_last: leave out the molecules that do not fill a last batch (and those beyond a multiple of
            ``world_size``).
        rank: this process's rank.
        world_size: the ranks sharing the split.
        seed: the shuffle's seed.
        device: where batches are assembled (and the split's storage held, when it fits).
    """

    def __init__(
        self,
        dataset: InMemoryDataset,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if not flat_loadable(dataset):
            raise ValueError("FlatLoader serves views of a collated dataset with the TrainingView transform")
        self.device = torch.device(device)
        self.store = _storage(dataset, self.device)
        view: TrainingView = dataset.transform
        self.molecules = torch.as_tensor(dataset.indices(), dtype=torch.long)
        self.device_molecules = self.molecules.to(self.device)
        targets = self.store.y[self.device_molecules, view.task.column]
        self.targets = (targets - view.stats.mean) / view.stats.std  # by position in the split
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the order of ``epoch`` next (with ``shuffle``).

        Args:
            epoch: the epoch about to run.
        """
        self.epoch = epoch

    def _positions(self) -> Tensor:
        """This rank's positions in the split, in this epoch's order."""
        n = len(self.molecules)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            if self.drop_last:
                order = order[: n - n % self.world_size]
            else:
                padding = math.ceil(n / self.world_size) * self.world_size - n
                order = torch.cat([order, order.repeat(math.ceil(padding / max(n, 1)))[:padding]])
            order = order[self.rank :: self.world_size]
        return order

    def __len__(self) -> int:
        n = len(self.molecules)
        if self.world_size > 1:
            n = n // self.world_size if self.drop_last else math.ceil(n / self.world_size)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        positions = self._positions()
        on_device = positions.to(self.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            chosen = positions[start : start + self.batch_size]
            yield self.batch(chosen, on_device[start : start + self.batch_size])
        self.epoch += 1

    def batch(self, positions: Tensor, positions_on_device: Tensor | None = None) -> Batch:
        """The batch of the split's molecules at ``positions`` (host tensor), in that order.

        Args:
            positions: positions in the split, on the host.
            positions_on_device: the same on ``device``, when at hand.
        """
        s = self.store
        if positions_on_device is None:
            positions_on_device = positions.to(self.device)
        host_mols, mols = self.molecules[positions], self.device_molecules[positions_on_device]
        num_nodes = int(s.host_node_counts[host_mols].sum())
        num_edges = int(s.host_edge_counts[host_mols].sum())
        node_counts, edge_counts = s.node_counts[mols], s.edge_counts[mols]
        nodes = _concat_ranges(s.node_ptr[mols], node_counts, num_nodes)
        edges = _concat_ranges(s.edge_ptr[mols], edge_counts, num_edges)
        node_offsets = torch.cumsum(node_counts, 0) - node_counts
        edge_index = s.edge_index[:, edges] + torch.repeat_interleave(node_offsets, edge_counts, output_size=num_edges)
        graphs = torch.arange(len(host_mols), device=self.device)
        batch = Batch(
            x=s.x[nodes],
            pos=s.pos[nodes],
            edge_index=edge_index,
            edge_attr=s.edge_attr[edges],
            y=self.targets[positions_on_device],
            batch=torch.repeat_interleave(graphs, node_counts, output_size=num_nodes),
            ptr=torch.cat([node_offsets, node_offsets[-1:] + node_counts[-1:]]),
        )
        if s.sh is not None:
            batch.sh = s.sh[edges]
        if s.idx is not None:
            batch.idx = s.idx[mols]
        batch._num_graphs = len(host_mols)
        batch.edge_pairs = s.edge_pairs
        return batch
