"""RoseTTAFold2's SE(3) module and graph builders without DGL.

RoseTTAFold2 vendors NVIDIA's current SE(3)-Transformer with ``final_layer``, ``populate_edge`` and
``sum_over_edge`` added, ``final_layer`` placed after ``pooling`` in the positional order; its flags follow
NVIDIA's current rule ([`se3pyg.compat.nvidia.nvidia_layout()`][se3pyg.compat.nvidia.nvidia_layout]). RFdiffusion2
vendors the same code with
``compute_gradients`` added. `make_full_graph()` and `make_topk_graph()` are ``network/util_module.py``'s
(RFantibody's ``rf2`` package has the same two).
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
from se3pyg.compat.rfdiffusion import make_full_graph
from se3pyg.fiber import Fiber
from se3pyg.model import EdgeLength, FinalLayer, Pooling

__all__ = ["Fiber", "SE3Transformer", "make_full_graph", "make_topk_graph"]


class SE3Transformer(nvidia.SE3Transformer):
    """RoseTTAFold2's ``SE3Transformer(num_layers, fiber_in, fiber_hidden, fiber_out, num_heads, channels_div,
    fiber_edge, return_type, pooling, final_layer, norm, use_layer_norm, tensor_cores, low_memory, populate_edge,
    sum_over_edge)`` (RFdiffusion2's adds ``compute_gradients``), called as
    [`se3pyg.compat.nvidia.SE3Transformer`][se3pyg.compat.nvidia.SE3Transformer] is. Any other argument is refused with
    a ``TypeError``. As in the
    copy, an inference under autocast computes the convolutions of graphs over `FLOAT32_INFERENCE_ABOVE`
    (65,536) edges in float32.

    Args:
        num_layers: attention blocks.
        fiber_in: node fiber of the input.
        fiber_hidden: node fiber of the attention blocks.
        fiber_out: node fiber of the output.
        num_heads: attention heads.
        channels_div: keys and values have the hidden channels divided by it (an int, or one per degree).
        fiber_edge: edge features (``None``: none).
        return_type: return only the features of this degree.
        pooling: ``"max"`` or ``"avg"`` over each graph's nodes.
        final_layer: ``"conv"``, ``"lin"`` or ``"att"`` ([`se3pyg.model.SE3Transformer`][se3pyg.model.SE3Transformer]).
        norm: an equivariant norm after each attention block.
        use_layer_norm: LayerNorm inside the radial networks.
        tensor_cores: the fully fused layout
            ([`se3pyg.compat.nvidia.nvidia_layout()`][se3pyg.compat.nvidia.nvidia_layout]).
        low_memory: the pairwise layout, recomputed in the backward pass.
        populate_edge: ``"lin"``, ``"arcsin"``, ``"log"`` or ``"zero"``
            (`se3pyg.model.edge_length_feature()`).
        sum_over_edge: ``False``: the final convolution averages its messages instead of summing them.
        compute_gradients: gradients through the bases into ``rel_pos`` (RFdiffusion2's argument).
    """

    def __init__(
        self,
        num_layers: int,
        fiber_in: Fiber | Mapping[int, int],
        fiber_hidden: Fiber | Mapping[int, int],
        fiber_out: Fiber | Mapping[int, int],
        num_heads: int,
        channels_div: int | Mapping[int, int] | Mapping[str, int],
        fiber_edge: Fiber | Mapping[int, int] | None = None,
        return_type: int | None = None,
        pooling: Pooling | None = None,
        final_layer: FinalLayer = "conv",
        norm: bool = True,
        use_layer_norm: bool = True,
        tensor_cores: bool = False,
        low_memory: bool = False,
        populate_edge: EdgeLength = "lin",
        sum_over_edge: bool = True,
        compute_gradients: bool = False,
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
            final_layer=final_layer,
            populate_edge=populate_edge,
            sum_over_edge=sum_over_edge,
            compute_gradients=compute_gradients,
        )

    FLOAT32_INFERENCE_ABOVE = 65536


def make_topk_graph(
    xyz: Tensor, pair: Tensor, idx: Tensor, top_k: int = 128, kmin: int = 32, eps: float = 1e-6
) -> tuple[Data, Tensor]:
    r"""The ``top_k`` nearest residues of each residue (all of them for ``top_k <= 0``) and every residue within
    ``kmin`` of it in sequence.

    With $s_{ij} = |idx_j - idx_i| + 999.9\,[i = j]$ and
    $D_{ij} = \lVert x_i - x_j \rVert + 999.9\,[i = j] + \epsilon s_{ij}$, an edge $i \to j$ is kept
    when $j$ is among the $\min(k, L - 1)$ smallest $D_{i\cdot}$ or $s_{ij} <$ ``kmin``.
    No self-loops (RFdiffusion's builder,
    [`se3pyg.compat.rfdiffusion.make_topk_graph()`][se3pyg.compat.rfdiffusion.make_topk_graph], keeps them).

    Args:
        xyz: coordinates ``[B, L, 3]`` (RoseTTAFold2 passes the CA atoms).
        pair: pair features ``[B, L, L, E_pair]``.
        idx: residue indices ``[B, L]``.
        top_k: nearest residues kept per residue; ``<= 0``: all.
        kmin: sequence separation below which residues are always joined.
        eps: weight of the sequence separation in the distance (breaks ties).

    Returns:
        ``(G, edge_feats)`` with ``rel_pos`` detached
        ([`se3pyg.compat.graphs.residue_graph()`][se3pyg.compat.graphs.residue_graph]).
    """
    check_residue_inputs(xyz, pair, idx)  # any top_k: <= 0 is every pair
    batch, length = pair.shape[:2]
    k = length - 1 if top_k <= 0 else min(top_k, length - 1)
    separation = sequence_separation(idx, 999.9)
    distance = torch.cdist(xyz, xyz) + torch.eye(length, device=xyz.device)[None] * 999.9 + separation * eps
    nearest = distance.topk(k, largest=False).indices
    chosen = torch.zeros(batch, length, length, device=xyz.device).scatter_(2, nearest, 1.0)
    b, i, j = torch.where((chosen > 0) | (separation < kmin))
    return residue_graph(xyz, pair, b, i, j)
