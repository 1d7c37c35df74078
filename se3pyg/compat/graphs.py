"""The residue graph the RoseTTAFold family builds with DGL, as a PyG ``Data``: shared by the per-tool builders."""

from __future__ import annotations

import se3pyg.thirdparty  # noqa: F401  (first: third-party imports without their deprecation warnings)

# isort: split
import torch
from torch import Tensor
from torch_geometric.data import Data

__all__ = ["check_residue_inputs", "residue_graph", "sequence_separation"]


def check_residue_inputs(xyz: Tensor, pair: Tensor, idx: Tensor, top_k: int | None = None) -> None:
    """`ValueError` naming the argument whose shape does not fit the others, and what was expected.

    Args:
        xyz: coordinates, expected ``[B, L, 3]``.
        pair: pair features, expected ``[B, L, L, E_pair]``.
        idx: residue indices, expected ``[B, L]``.
        top_k: a builder's nearest-neighbour count, expected ``>= 1`` where given.

    Raises:
        ValueError: a shape or ``top_k`` that the builders cannot take.
    """
    if xyz.dim() != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"xyz: expected [B, L, 3] (one atom a residue, e.g. CA), got {list(xyz.shape)}")
    batch, length = xyz.shape[:2]
    if pair.dim() != 4 or tuple(pair.shape[:3]) != (batch, length, length):
        raise ValueError(
            f"pair: expected [B, L, L, E_pair] = [{batch}, {length}, {length}, E_pair] from xyz, got {list(pair.shape)}"
        )
    if tuple(idx.shape) != (batch, length):
        raise ValueError(f"idx: expected [B, L] = [{batch}, {length}] from xyz, got {list(idx.shape)}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k: expected >= 1 (every pair: make_full_graph), got {top_k}")


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
