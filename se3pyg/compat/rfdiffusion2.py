"""RFdiffusion2's SE(3) module and graph builders without DGL.

RFdiffusion2 carries its own ``rf2aa`` package, whose SE(3)-Transformer is RoseTTAFold2's (NVIDIA's current code
with ``final_layer``, ``populate_edge`` and ``sum_over_edge``) with ``compute_gradients`` added:
`SE3Transformer` is [`se3pyg.compat.rf2.SE3Transformer`][se3pyg.compat.rf2.SE3Transformer]. Its builders
(``rf2aa/util_module.py``) are
RoseTTAFold-All-Atom's but for `make_topk_graph()`'s default ``eps=1e-4``. The builders of its
``rf_diffusion`` package are RFdiffusion's ([`se3pyg.compat.rfdiffusion`][se3pyg.compat.rfdiffusion]).
"""

from __future__ import annotations

import se3pyg.thirdparty  # noqa: F401  (first: third-party imports without their deprecation warnings)

# isort: split
from torch import Tensor
from torch_geometric.data import Data

from se3pyg.compat import rf2aa
from se3pyg.compat.rf2 import SE3Transformer
from se3pyg.compat.rf2aa import make_full_graph
from se3pyg.fiber import Fiber

__all__ = ["Fiber", "SE3Transformer", "make_full_graph", "make_topk_graph"]


def make_topk_graph(
    xyz: Tensor,
    pair: Tensor,
    idx: Tensor,
    top_k: int = 128,
    nlocal: int = 33,
    topk_incl_local: bool = True,
    eps: float = 1e-4,
) -> tuple[Data, Tensor]:
    """[`se3pyg.compat.rf2aa.make_topk_graph()`][se3pyg.compat.rf2aa.make_topk_graph] with RFdiffusion2's default
    ``eps``.

    Args:
        xyz: coordinates ``[B, L, 3]`` (the tools pass the CA atoms).
        pair: pair features ``[B, L, L, E_pair]``.
        idx: residue indices ``[B, L]``.
        top_k: nearest residues kept per residue.
        nlocal: sequence separation below which residues are always joined.
        topk_incl_local: whether the local residues take places in the ``top_k``.
        eps: weight of the sequence separation in the distance (breaks ties).

    Returns:
        ``(G, edge_feats)`` with ``rel_pos`` detached
        ([`se3pyg.compat.graphs.residue_graph()`][se3pyg.compat.graphs.residue_graph]).
    """
    return rf2aa.make_topk_graph(xyz, pair, idx, top_k, nlocal, topk_incl_local, eps)
