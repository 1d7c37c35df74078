"""RFdiffusion's SE(3) module and graph builders without DGL.

RFdiffusion vendors NVIDIA's 2021 SE(3)-Transformer (``env/SE3Transformer``): `SE3Transformer` takes its
arguments, NVIDIA's, and chooses the layout by the 2021 rule
([`se3pyg.compat.nvidia.nvidia_2021_layout()`][se3pyg.compat.nvidia.nvidia_2021_layout]).
`make_full_graph()` and `make_topk_graph()` are its ``util_module.py``'s, with their signatures and return
values (RFantibody's ``rfdiffusion`` package and RFdiffusion2's ``rf_diffusion`` have the same two).
RoseTTAFold2's and RoseTTAFold-All-Atom's builders differ: [`se3pyg.compat.rf2`][se3pyg.compat.rf2],
[`se3pyg.compat.rf2aa`][se3pyg.compat.rf2aa].

Each returns ``(G, edge_feats)``: ``G`` a PyG ``Data`` with ``edge_index`` (row 0 source, row 1 destination, nodes
numbered ``b * L + i``), ``rel_pos`` (the destination's coordinates minus the source's, detached: no gradient
flows through the basis, as in RFdiffusion) and ``num_nodes`` ``B * L``, which
[`se3pyg.compat.nvidia.SE3Transformer`][se3pyg.compat.nvidia.SE3Transformer] takes in place of the DGL graph;
``edge_feats`` the pair features of
the edges, ``[E, E_pair, 1]``.
"""

from __future__ import annotations

import se3pyg.thirdparty  # noqa: F401  (first: third-party imports without their deprecation warnings)

# isort: split
from collections.abc import Mapping

import torch
from torch import Tensor
from torch_geometric.data import Data

from se3pyg.compat import nvidia
from se3pyg.compat.graphs import check_residue_inputs, residue_graph, sequence_separation
from se3pyg.fiber import Fiber
from se3pyg.model import Pooling
from se3pyg.nn.conv import Layout

__all__ = ["Fiber", "SE3Transformer", "make_full_graph", "make_topk_graph"]


class SE3Transformer(nvidia.SE3Transformer):
    """RFdiffusion's ``SE3Transformer(num_layers, fiber_in, fiber_hidden, fiber_out, num_heads, channels_div,
    fiber_edge, return_type, pooling, norm, use_layer_norm, tensor_cores, low_memory)``, called as
    [`se3pyg.compat.nvidia.SE3Transformer`][se3pyg.compat.nvidia.SE3Transformer] is. Any other argument is refused with
    a ``TypeError``.

    Args:
        num_layers: attention blocks.
        fiber_in: node fiber of the input.
        fiber_hidden: node fiber of the attention blocks.
        fiber_out: node fiber of the output.
        num_heads: attention heads.
        channels_div: keys and values have the hidden channels divided by it.
        fiber_edge: edge features (``None``: none).
        return_type: return only the features of this degree.
        pooling: ``"max"`` or ``"avg"`` over each graph's nodes.
        norm: an equivariant norm after each attention block.
        use_layer_norm: LayerNorm inside the radial networks.
        tensor_cores: the fully fused layout, unless ``low_memory``.
        low_memory: the partially fused layout.
    """

    def __init__(
        self,
        num_layers: int,
        fiber_in: Fiber | Mapping[int, int],
        fiber_hidden: Fiber | Mapping[int, int],
        fiber_out: Fiber | Mapping[int, int],
        num_heads: int,
        channels_div: int,
        fiber_edge: Fiber | Mapping[int, int] | None = None,
        return_type: int | None = None,
        pooling: Pooling | None = None,
        norm: bool = True,
        use_layer_norm: bool = True,
        tensor_cores: bool = False,
        low_memory: bool = False,
    ) -> None:
        super().__init__(
            num_layers,
            fiber_in,
            fiber_hidden,
            fiber_out,
            num_heads,
            channels_div,
            fiber_edge,
            return_type,
            pooling,
            norm,
            use_layer_norm,
            tensor_cores,
            low_memory,
        )

    @staticmethod
    def layouts(tensor_cores: bool, low_memory: bool) -> tuple[Layout, Layout | None, bool]:
        """The 2021 rule ([`se3pyg.compat.nvidia.nvidia_2021_layout()`][se3pyg.compat.nvidia.nvidia_2021_layout]), no
        recomputation.

        Args:
            tensor_cores: the copy's ``tensor_cores`` flag.
            low_memory: its ``low_memory`` flag.
        """
        return nvidia.nvidia_2021_layout(tensor_cores, low_memory), "full", False


def make_full_graph(xyz: Tensor, pair: Tensor, idx: Tensor, top_k: int = 64, kmin: int = 9) -> tuple[Data, Tensor]:
    """Every ordered pair of residues whose residue indices differ.

    Args:
        xyz: coordinates ``[B, L, 3]`` (RFdiffusion passes the CA atoms).
        pair: pair features ``[B, L, L, E_pair]``.
        idx: residue indices ``[B, L]``.
        top_k: unused, as in RFdiffusion.
        kmin: unused, as in RFdiffusion.
    """
    check_residue_inputs(xyz, pair, idx)
    b, i, j = torch.where((idx[:, None, :] - idx[:, :, None]).abs() > 0)
    return residue_graph(xyz, pair, b, i, j)


def make_topk_graph(
    xyz: Tensor, pair: Tensor, idx: Tensor, top_k: int = 64, kmin: int = 32, eps: float = 1e-6
) -> tuple[Data, Tensor]:
    r"""The ``top_k`` nearest residues of each residue and every residue within ``kmin`` of it in sequence.

    Distances are $D_{ij} = \lVert x_i - x_j \rVert + 999.9 \, [i = j] + \epsilon \, s_{ij}$ with the
    sequence separation $s_{ij} = |idx_j - idx_i| + 999.9 \, [i = j]$ (ties broken by it); an edge
    $i \to j$ is kept when $j$ is among the ``top_k`` smallest $D_{i\cdot}$ or
    $s_{ij} <$ ``kmin``. With ``L <= top_k`` every pair is kept, self-loops (``rel_pos`` 0) included.

    Args:
        xyz: coordinates ``[B, L, 3]`` (RFdiffusion passes the CA atoms).
        pair: pair features ``[B, L, L, E_pair]``.
        idx: residue indices ``[B, L]``.
    """
    check_residue_inputs(xyz, pair, idx, top_k)
    batch, length = xyz.shape[:2]
    separation = sequence_separation(idx, 999.9)
    distance = torch.cdist(xyz, xyz) + torch.eye(length, device=xyz.device)[None] * 999.9 + separation * eps
    nearest = distance.topk(min(top_k, length), largest=False).indices
    chosen = torch.zeros(batch, length, length, device=xyz.device).scatter_(2, nearest, 1.0)
    b, i, j = torch.where((chosen > 0) | (separation < kmin))
    return residue_graph(xyz, pair, b, i, j)
