"""Precomputed spherical harmonics for every bond of an in-memory dataset.

NVIDIA's ``--precompute_bases`` keeps each bond's full bases (1,092 floats a
bond for degrees 0..3, about 21 GB for QM9). se3pyg keeps only the spherical
harmonics, $(2L+1)^2$ values a bond (49 for degrees 0..3: about 1 GB for
QM9 in float32), in one tensor inside the dataset's collated storage, which
DataLoader workers share copy-on-write. The Clebsch-Gordan contraction runs
on the model's device ([`se3pyg.basis.Basis`][se3pyg.basis.Basis]).
"""

from __future__ import annotations

import se3pyg.thirdparty  # noqa: F401  (first: third-party imports without their deprecation warnings)

# isort: split
import torch
from torch_geometric.data import InMemoryDataset

from se3pyg.basis import spherical_harmonics


def attach_spherical_harmonics(dataset: InMemoryDataset, max_degree: int, chunk: int = 1 << 20) -> int:
    """Adds ``sh`` [E, (2 max_degree + 1)^2] to every molecule of ``dataset``; returns its size in bytes."""
    store = dataset._data
    edge_index, pos = store.edge_index, store.pos
    edge_slices = dataset.slices["edge_index"]
    node_slices = dataset.slices["pos"]
    # Collated edge_index holds per-molecule node ids: offset them to index the collated positions.
    counts = edge_slices[1:] - edge_slices[:-1]
    offsets = torch.repeat_interleave(node_slices[:-1], counts)
    parts = []
    with torch.no_grad():
        for start in range(0, edge_index.shape[1], chunk):
            src = edge_index[0, start : start + chunk] + offsets[start : start + chunk]
            dst = edge_index[1, start : start + chunk] + offsets[start : start + chunk]
            parts.append(spherical_harmonics(pos[dst] - pos[src], max_degree))
    store.sh = torch.cat(parts)
    dataset.slices["sh"] = edge_slices
    dataset._data_list = None
    return store.sh.numel() * store.sh.element_size()
