r"""Edges in reverse pairs: each bond's two directions next to each other, so that they share radial weights.

A TFN kernel's radial weights $\phi(\lVert r_{ij} \rVert, e_{ij})$ depend on the bond's length and features
only, which are the same for $i \to j$ and $j \to i$ in a molecular graph. When edge ``2u + 1`` is
the reverse of edge ``2u`` with equal features, the model forms each pair's radial weights once and contracts
both directions with them in one product ([`se3pyg.nn.conv.KernelGroup`][se3pyg.nn.conv.KernelGroup]): half the radial
network's work,
half the weights written and read. The model takes that path for a graph whose ``edge_pairs`` attribute is the
Python ``True`` that `pair_edges()` sets (a flag the host reads: checking the order on a GPU would wait for
it); any other graph runs the general path, with the same result.

The order is checked where data enters: `pair_edges()` for a batch, `pair_dataset_edges()` once for a
collated dataset (QM9 and built datasets are paired when loaded; [`FlatLoader`][se3pyg.data.FlatLoader] flags the
batches of a paired one).
"""

from __future__ import annotations

import se3pyg.thirdparty  # noqa: F401  (first: third-party imports without their deprecation warnings)

# isort: split
import copy

import torch
from torch import Tensor
from torch_geometric.data import Data, InMemoryDataset

#: Fields known to hold one row per edge (where a graph has as many nodes as edges, other fields are taken to
#: be per edge only when their name says ``edge``, as PyG decides).
EDGE_KEYS = ("edge_index", "edge_attr", "sh")


def pair_order(edge_index: Tensor, edge_attr: Tensor | None = None, edge_group: Tensor | None = None) -> Tensor | None:
    """The permutation of edges that puts each edge right before its reverse, or None where there is none.

    Pairs are ordered by their nodes (``min, max``) and lead with ``min -> max``, within ``edge_group`` (e.g. the
    molecule of each edge of a collated dataset, whose node ids restart per molecule), whose order is kept.
    None when an edge has no reverse of equal features (``edge_attr``), or is a self-loop or a repeated edge.
    """
    num_edges = edge_index.shape[1]
    if num_edges % 2:
        return None
    if num_edges == 0:
        return torch.arange(0, device=edge_index.device)
    src, dst = edge_index
    span = int(edge_index.max()) + 1
    key = (torch.minimum(src, dst) * span + torch.maximum(src, dst)) * 2 + (src > dst).long()
    if edge_group is not None:
        key = key + edge_group.long() * (2 * span * span)
    order = torch.argsort(key, stable=True)
    if not in_reverse_pairs(edge_index[:, order], None if edge_attr is None else edge_attr[order]):
        return None
    if edge_group is not None and not torch.equal(edge_group[order][0::2], edge_group[order][1::2]):
        return None
    return order


def in_reverse_pairs(edge_index: Tensor, edge_attr: Tensor | None) -> bool:
    """Whether edge ``2u + 1`` reverses edge ``2u`` (no self-loops) with equal features, for every ``u``."""
    if edge_index.shape[1] % 2:
        return False
    first, second = edge_index[:, 0::2], edge_index[:, 1::2]
    if not torch.equal(first, second.flip(0)) or bool((first[0] == first[1]).any()):
        return False
    return edge_attr is None or torch.equal(edge_attr[0::2], edge_attr[1::2])


def molecules_in_reverse_pairs(edge_index: Tensor, edge_attr: Tensor | None, edge_ptr: Tensor) -> bool:
    """Whether every molecule of a collated dataset (edges ``edge_ptr[m] .. edge_ptr[m + 1]``, node ids per
    molecule) has its edges in reverse pairs: no pair straddles two molecules when every molecule starts even."""
    return not bool((edge_ptr % 2).any()) and in_reverse_pairs(edge_index, edge_attr)


def pair_edges(data: Data) -> Data:
    """``data`` (a ``Data`` or ``Batch``) with its edges in reverse pairs and ``edge_pairs = True``; unchanged
    where some edge has no reverse of equal features.

    A shallow copy with every per-edge field permuted. Flag the batch the model takes, after collating: a flag
    set per molecule is collated into a tensor, which the model does not read.

    Args:
        data: a molecule or a batch of them.
    """
    order = pair_order(data.edge_index, getattr(data, "edge_attr", None))
    if order is None:
        return data
    paired = copy.copy(data)
    for key, value in data.items():
        if isinstance(value, Tensor) and key != "edge_index" and (key in EDGE_KEYS or data.is_edge_attr(key)):
            paired[key] = value.index_select(data.__cat_dim__(key, value), order)
    paired.edge_index = data.edge_index[:, order]
    paired.edge_pairs = True
    return paired


def pair_dataset_edges(dataset: InMemoryDataset) -> bool:
    """Puts the edges of every molecule of a collated dataset in reverse pairs, in place; whether all could be.

    Left as it is (and False) when some molecule's edges cannot be paired.
    """
    store, slices = dataset._data, dataset.slices
    edge_slices = slices["edge_index"]
    group = torch.repeat_interleave(torch.arange(len(edge_slices) - 1), edge_slices.diff())
    order = pair_order(store.edge_index, getattr(store, "edge_attr", None), group)
    if order is None:
        return False
    node_slices = slices["pos"] if "pos" in slices else slices["x"]
    per_edge_or_node = torch.equal(node_slices, edge_slices)  # as many nodes as edges in every molecule
    for key, value in list(store.items()):
        if not isinstance(value, Tensor) or key not in slices or not torch.equal(slices[key], edge_slices):
            continue
        if key in EDGE_KEYS or not per_edge_or_node or key.startswith("edge"):
            store[key] = value.index_select(store.__cat_dim__(key, value), order)
    dataset._data_list = None
    return True


__all__ = [
    "EDGE_KEYS",
    "in_reverse_pairs",
    "molecules_in_reverse_pairs",
    "pair_dataset_edges",
    "pair_edges",
    "pair_order",
]
