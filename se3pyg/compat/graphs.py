"""The residue graph the RoseTTAFold family builds with DGL, as a PyG ``Data``: shared by the per-tool builders."""

from __future__ import annotations

import se3pyg.thirdparty  # noqa: F401  (first: third-party imports without their deprecation warnings)

# isort: split
import torch
from torch import Tensor
from torch_geometric.data import Data

__all__ = ["residue_graph", "sequence_separation"]


def residue_graph(
    xyz: Tensor, pair: Tensor, b: Tensor, i: Tensor, j: Tensor, detach: bool = True
) -> tuple[Data, Tensor]:
    """The graph of the edges ``(b, i) -> (b, j)`` and their pair features, as the tools' builders return it.

    Args:
        xyz: coordinates ``[B, L, 3]``.
        pair: pair features ``[B, L, L, E_pair]``.
        b: the edges' batch entries ``[E]``.
        i: the edges' source residues ``[E]``.
        j: the edges' destination residues ``[E]``.
        detach: ``rel_pos`` carries no gradient (every builder but RoseTTAFold-All-Atom's full graph).

    Returns:
        ``(G, edge_feats)``: ``G`` with ``edge_index`` (row 0 the source ``b * L + i``, row 1 the destination),
        ``rel_pos`` (``xyz[b, j] - xyz[b, i]``) and ``num_nodes`` ``B * L``; ``edge_feats`` ``[E, E_pair, 1]``.
    """
    length = xyz.shape[1]
    edge_index = torch.stack([b * length + i, b * length + j])
    rel_pos = xyz[b, j] - xyz[b, i]
    if detach:
        rel_pos = rel_pos.detach()
    return Data(edge_index=edge_index, rel_pos=rel_pos, num_nodes=xyz.shape[0] * length), pair[b, i, j][..., None]


def sequence_separation(idx: Tensor, self_distance: float) -> Tensor:
    """``|idx_j - idx_i|`` for every pair of residues ``[B, L, L]``, with ``self_distance`` added on the diagonal.

    Args:
        idx: residue indices ``[B, L]``.
        self_distance: what a residue's separation from itself becomes (the tools use 999.9 or 9999.9).
    """
    length = idx.shape[1]
    eye = torch.eye(length, device=idx.device)[None] * self_distance
    return (idx[:, None, :] - idx[:, :, None]).abs() + eye
