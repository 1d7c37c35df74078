"""Batches padded to a few static shapes (what a replayed CUDA graph needs).

A batch of ``B`` molecules with ``N`` atoms and ``E`` directed bonds becomes
one of ``B + 1`` graphs, ``N'`` atoms and ``E'`` bonds: the extra graph holds
the ``N' - N`` padding atoms, 1 Å apart on a line, with zero features, and the
``E' - E`` padding bonds, in reverse pairs ``k -> k + 1``, ``k + 1 -> k`` over the padding atoms
(cyclically), so that a batch in reverse pairs stays so (`se3pyg.data.pairs`).
No real atom sends to or receives from a padding atom, and every layer works
per atom or per bond, so the first ``B`` outputs (and their gradients) are
those of the unpadded batch.
"""

from __future__ import annotations

import se3pyg.thirdparty  # noqa: F401  (first: third-party imports without their deprecation warnings)

# isort: split
import torch
from torch_geometric.data import Batch

#: Fields a padded batch carries; the molecules' QM9 indices (``idx``) and fields that are not tensors (e.g. the
#: names of the user's molecules) are left out, any other tensor (e.g. precomputed harmonics) is refused.
PADDED_FIELDS = ("x", "pos", "edge_index", "edge_attr", "batch", "ptr", "y")


def padded_size(count: int, extra: int = 0) -> int:
    r"""``count + extra`` rounded up to a multiple of $q = \max(64, 2^{\lfloor \log_2 n \rfloor - 5})$.

    It adds fewer than ``max(64, n / 32)`` rows, and the batches of one batch size fall into a handful of sizes.
    (Rounding to 1/16 instead made an H100's replayed published-recipe steps 1.0-1.4% slower, from the padding.)
    """
    n = count + extra
    quantum = max(64, 1 << max(0, n.bit_length() - 6))
    return -(-n // quantum) * quantum


def static_shape(batch: Batch) -> tuple[int, int, int]:
    """``(graphs, atoms, bonds)`` of ``batch`` once padded: one more graph, at least two padding atoms."""
    return batch.num_graphs + 1, padded_size(batch.num_nodes, 2), padded_size(batch.edge_index.shape[1])


def fits(batch: Batch, shape: tuple[int, int, int]) -> bool:
    """Whether ``batch`` pads to ``shape`` with fewer than ``max(128, n / 16)`` padding atoms and bonds (twice
    `padded_size()`'s bound: a batch may take a larger shape already captured instead of its own)."""
    graphs, nodes, edges = shape
    n, e = batch.num_nodes, batch.edge_index.shape[1]
    return graphs == batch.num_graphs + 1 and 2 <= nodes - n < max(128, n / 16) and 0 <= edges - e < max(128, e / 16)


def pad_batch(batch: Batch, num_nodes: int, num_edges: int) -> Batch:
    """``batch`` with a padding graph that brings it to ``num_nodes`` atoms and ``num_edges`` bonds."""
    dropped = {*PADDED_FIELDS, "idx", "edge_pairs"}
    extra = sorted(k for k, value in batch if k not in dropped and isinstance(value, torch.Tensor))
    if extra:
        raise ValueError(f"padding keeps only {', '.join(PADDED_FIELDS)}; the batch also has {', '.join(extra)}")
    n, e, graphs = batch.num_nodes, batch.edge_index.shape[1], batch.num_graphs
    pad_nodes, pad_edges = num_nodes - n, num_edges - e
    if pad_nodes < 2 or pad_edges < 0:
        raise ValueError(
            f"cannot pad {n} atoms, {e} bonds to {num_nodes} atoms (2 padding atoms at least), {num_edges}"
        )
    device, index = batch.x.device, batch.edge_index
    line = torch.arange(pad_nodes, device=device, dtype=batch.pos.dtype)
    bond = torch.arange(pad_edges, device=device, dtype=index.dtype)
    first, second = (bond // 2) % pad_nodes, (bond // 2 + 1) % pad_nodes  # bonds 2k and 2k + 1 reverse each other
    forward = bond % 2 == 0
    padding_bonds = torch.stack([torch.where(forward, first, second), torch.where(forward, second, first)]) + n
    padded = Batch(
        x=torch.cat([batch.x, batch.x.new_zeros(pad_nodes, batch.x.shape[1])]),
        pos=torch.cat([batch.pos, torch.stack([line, torch.zeros_like(line), torch.zeros_like(line)], 1)]),
        edge_index=torch.cat([index, padding_bonds], 1),
        batch=torch.cat([batch.batch, batch.batch.new_full((pad_nodes,), graphs)]),
        ptr=torch.cat([batch.ptr, batch.ptr.new_full((1,), num_nodes)]),
    )
    if getattr(batch, "y", None) is not None:  # targets: none when predicting the user's molecules
        padded.y = torch.cat([batch.y, batch.y.new_zeros(1, *batch.y.shape[1:])])
    if getattr(batch, "edge_attr", None) is not None:
        padded.edge_attr = torch.cat([batch.edge_attr, batch.edge_attr.new_zeros(pad_edges, batch.edge_attr.shape[1])])
    padded._num_graphs = graphs + 1
    padded.edge_pairs = getattr(batch, "edge_pairs", None) is True and pad_edges % 2 == 0
    return padded
