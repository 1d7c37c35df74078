"""RoseTTAFold2NA's SE(3) module and graph builders without DGL.

RoseTTAFold2NA vendors RoseTTAFold-All-Atom's SE(3)-Transformer (`SE3Transformer` is
[`se3pyg.compat.rf2aa.SE3Transformer`][se3pyg.compat.rf2aa.SE3Transformer]; its wrapper's ``tensor_cores=True,
low_memory=True`` give the partially
fused layout by the 2021 rule) and RoseTTAFold-All-Atom's `make_topk_graph()`; its `make_full_graph()`
detaches ``rel_pos``, which RoseTTAFold-All-Atom's does not.
"""

from __future__ import annotations

import se3pyg.thirdparty  # noqa: F401  (first: third-party imports without their deprecation warnings)

# isort: split
import torch
from torch import Tensor
from torch_geometric.data import Data

from se3pyg.compat.graphs import check_residue_inputs, residue_graph
from se3pyg.compat.rf2aa import SE3Transformer, make_topk_graph
from se3pyg.fiber import Fiber

__all__ = ["Fiber", "SE3Transformer", "make_full_graph", "make_topk_graph"]


def make_full_graph(xyz: Tensor, pair: Tensor, idx: Tensor) -> tuple[Data, Tensor]:
    """Every ordered pair of residues whose residue indices differ, ``rel_pos`` detached.

    Args:
        xyz: coordinates ``[B, L, 3]`` (the CA atoms).
        pair: pair features ``[B, L, L, E_pair]``.
        idx: residue indices ``[B, L]``.

    Returns:
        ``(G, edge_feats)`` ([`se3pyg.compat.graphs.residue_graph()`][se3pyg.compat.graphs.residue_graph]).
    """
    check_residue_inputs(xyz, pair, idx)
    b, i, j = torch.where((idx[:, None, :] - idx[:, :, None]).abs() > 0)
    return residue_graph(xyz, pair, b, i, j)
