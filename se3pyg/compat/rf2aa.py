"""RoseTTAFold-All-Atom's SE(3) module and graph builders without DGL.

RoseTTAFold-All-Atom (``rf2aa``) vendors NVIDIA's 2021 SE(3)-Transformer with additions: a final linear or
attention layer (``final_layer``), the edge length fed as $\\operatorname{asinh}(\\max(r, 4) - 4) / 3$
(``populate_edge``), averaged final messages (``sum_over_edge``) and value channels divided per degree. The same
copy serves RFdiffusion-All-Atom (which imports ``rf2aa``) and RFantibody (``include/SE3Transformer``). Its flags
choose the layout by the 2021 rule
([`se3pyg.compat.nvidia.nvidia_2021_layout()`][se3pyg.compat.nvidia.nvidia_2021_layout]), which differs from NVIDIA's
current one where ``low_memory`` is set, and its final convolution is built fully fused whatever the flags.

`SE3Transformer` is defined in this module, so the tools' check ``'rf2aa' in inspect.getfile(SE3Transformer)``
holds as it is. `make_full_graph()` and `make_topk_graph()` are ``rf2aa/util_module.py``'s.
"""

from __future__ import annotations

import se3pyg.thirdparty  # noqa: F401  (first: third-party imports without their deprecation warnings)

# isort: split
from collections.abc import Mapping

import torch
from torch import Tensor
from torch_geometric.data import Data

from se3pyg.compat import nvidia, rf2
from se3pyg.compat.graphs import check_residue_inputs, residue_graph, sequence_separation
from se3pyg.fiber import Fiber
from se3pyg.model import EdgeLength, FinalLayer, Pooling
from se3pyg.nn.conv import Layout

__all__ = ["Fiber", "SE3Transformer", "make_full_graph", "make_topk_graph"]


class SE3Transformer(rf2.SE3Transformer):
    """RoseTTAFold-All-Atom's ``SE3Transformer(num_layers, fiber_in, fiber_hidden, fiber_out, num_heads,
    channels_div, fiber_edge, return_type, pooling, final_layer, norm, use_layer_norm, tensor_cores, low_memory,
    populate_edge, sum_over_edge)``, called as
    [`se3pyg.compat.nvidia.SE3Transformer`][se3pyg.compat.nvidia.SE3Transformer] is.

    The arguments are RoseTTAFold2's ([`se3pyg.compat.rf2.SE3Transformer`][se3pyg.compat.rf2.SE3Transformer], without
    ``compute_gradients``:
    the 2021 code never takes gradients through the bases); the flags choose the layout by
    [`se3pyg.compat.nvidia.nvidia_2021_layout()`][se3pyg.compat.nvidia.nvidia_2021_layout]. As in the copy, an inference
    under autocast computes the
    convolutions of graphs over `FLOAT32_INFERENCE_ABOVE` (4,096) edges in float32, and the attention's
    queries and logits are float32 always (se3pyg's own rule).
    Any other argument is refused with a ``TypeError``.
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
            final_layer,
            norm,
            use_layer_norm,
            tensor_cores,
            low_memory,
            populate_edge,
            sum_over_edge,
        )

    FLOAT32_INFERENCE_ABOVE = 4096

    @staticmethod
    def layouts(tensor_cores: bool, low_memory: bool) -> tuple[Layout, Layout | None, bool]:
        """The 2021 rule ([`se3pyg.compat.nvidia.nvidia_2021_layout()`][se3pyg.compat.nvidia.nvidia_2021_layout]), no
        recomputation.

        Args:
            tensor_cores: the copy's ``tensor_cores`` flag.
            low_memory: its ``low_memory`` flag.
        """
        return nvidia.nvidia_2021_layout(tensor_cores, low_memory), "full", False


def make_full_graph(xyz: Tensor, pair: Tensor, idx: Tensor) -> tuple[Data, Tensor]:
    """Every ordered pair of residues whose residue indices differ; ``rel_pos`` keeps its gradient (the only
    builder of the family that does).

    Args:
        xyz: coordinates ``[B, L, 3]`` (the tools pass the CA atoms).
        pair: pair features ``[B, L, L, E_pair]``.
        idx: residue indices ``[B, L]``.

    Returns:
        ``(G, edge_feats)`` ([`se3pyg.compat.graphs.residue_graph()`][se3pyg.compat.graphs.residue_graph]).
    """
    check_residue_inputs(xyz, pair, idx)
    b, i, j = torch.where((idx[:, None, :] - idx[:, :, None]).abs() > 0)
    return residue_graph(xyz, pair, b, i, j, detach=False)


def make_topk_graph(
    xyz: Tensor,
    pair: Tensor,
    idx: Tensor,
    top_k: int = 128,
    nlocal: int = 33,
    topk_incl_local: bool = True,
    eps: float = 1e-6,
) -> tuple[Data, Tensor]:
    r"""The ``top_k`` nearest residues of each residue and every residue within ``nlocal`` of it in sequence.

    With $s_{ij} = |idx_j - idx_i| + 9999.9\,[i = j]$ and
    $D_{ij} = \lVert x_i - x_j \rVert + 9999.9\,[i = j] + \epsilon s_{ij}$, an edge $i \to j$ is kept
    when $j$ is among the $\min(k, L - 1)$ smallest $D_{i\cdot}$ or $s_{ij} <$ ``nlocal``;
    with ``topk_incl_local`` the local residues count within the ``top_k`` (their $D$ set to 0). No
    self-loops. RFdiffusion2's copy defaults to ``eps=1e-4``.

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
    check_residue_inputs(xyz, pair, idx, top_k)
    batch, length = xyz.shape[:2]
    separation = sequence_separation(idx, 9999.9)
    distance = torch.cdist(xyz, xyz) + torch.eye(length, device=xyz.device)[None] * 9999.9 + separation * eps
    if topk_incl_local:
        distance = distance.masked_fill(separation < nlocal, 0.0)
    nearest = distance.topk(min(top_k, length - 1), largest=False).indices
    chosen = torch.zeros(batch, length, length, device=xyz.device).scatter_(2, nearest, 1.0)
    b, i, j = torch.where((chosen > 0) | (separation < nlocal))
    return residue_graph(xyz, pair, b, i, j)
