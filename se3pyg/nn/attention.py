"""Equivariant graph self-attention as a PyG ``MessagePassing`` layer."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import softmax

from se3pyg.basis import Basis
from se3pyg.fiber import Fiber
from se3pyg.nn.conv import ConvSE3, Layout
from se3pyg.nn.linear import LinearSE3


def _to_heads(features: dict[str, Tensor], fiber: Fiber, num_heads: int) -> Tensor:
    """``{"d": [M, C_d, 2d+1]}`` -> ``[M, H, sum_d C_d (2d+1) / H]``; head h holds channels h*C_d/H ..."""
    return torch.cat(
        [features[str(d)].reshape(-1, num_heads, c * (2 * d + 1) // num_heads) for d, c in fiber.items()], -1
    )


class AttentionSE3(MessagePassing):
    r"""Multi-head attention over each node's incoming edges.

    .. math::

        \alpha_{ij}^h = \operatorname{softmax}_{j \to i}
            \frac{\langle q_i^h, k_{ij}^h \rangle}{\sqrt{n_k}}, \qquad
        y_i^h = \sum_{j \to i} \alpha_{ij}^h v_{ij}^h

    with keys and values per edge, queries per node, :math:`n_k` the key
    fiber's number of features, and heads splitting the channels of every
    degree. Logits and softmax run in at least float32 under autocast.

    Args:
        num_heads: heads; each divides every key and value channel count.
        key_fiber, value_fiber: fibers of keys (and queries) and of values.

    Shapes:
        ``forward(value {"d": [E, C_d, 2d+1]}, key {"d": [E, ...]}, query {"d": [N, ...]}, edge_index [2, E])``
        -> ``{"d": [N, C_d, 2d+1]}`` with the value fiber.
    """

    __repr__ = nn.Module.__repr__  # one style for every layer: torch's, with extra_repr

    def __init__(self, num_heads: int, key_fiber: Fiber, value_fiber: Fiber) -> None:
        super().__init__(aggr="add", flow="source_to_target", node_dim=0)
        for name, fiber in (("key", key_fiber), ("value", value_fiber)):
            if any(c % num_heads for c in fiber.channels):
                raise ValueError(f"num_heads={num_heads} must divide every {name} channel count {fiber.channels}")
        self.num_heads = num_heads
        self.key_fiber = key_fiber
        self.value_fiber = value_fiber

    def forward(
        self,
        value: dict[str, Tensor],
        key: dict[str, Tensor],
        query: dict[str, Tensor],
        edge_index: Tensor,
    ) -> dict[str, Tensor]:
        num_nodes = next(iter(query.values())).shape[0]
        k = _to_heads(key, self.key_fiber, self.num_heads)
        q = _to_heads(query, self.key_fiber, self.num_heads)
        v = _to_heads(value, self.value_fiber, self.num_heads)
        out = self.propagate(edge_index, q=q, k=k, v=v, size=(num_nodes, num_nodes))
        sizes = [c * (2 * d + 1) // self.num_heads for d, c in self.value_fiber.items()]
        parts = out.split(sizes, dim=-1)
        return {
            str(d): p.reshape(num_nodes, c, 2 * d + 1)
            for (d, c), p in zip(self.value_fiber.items(), parts, strict=True)
        }

    def message(
        self, q_i: Tensor, k: Tensor, v: Tensor, index: Tensor, ptr: Tensor | None, size_i: int | None
    ) -> Tensor:
        # Logits and softmax in at least float32, whatever autocast gave the keys and queries.
        dtype = torch.promote_types(v.dtype, torch.float32)
        logits = (q_i.to(dtype) * k.to(dtype)).sum(-1) / math.sqrt(self.key_fiber.num_features)
        alpha = softmax(logits, index, ptr, size_i)
        return v.to(dtype) * alpha.unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, key={self.key_fiber}, value={self.value_fiber}"


class AttentionBlockSE3(nn.Module):
    """Attention with keys and values from a TFN convolution, a skip connection and a projection.

    Values have ``fiber_out``'s degrees with channels divided by ``channels_div``;
    keys and queries the value degrees present in ``fiber_in``. The output is
    ``project(cat(attention, input))`` per degree.

    Args:
        fiber_in, fiber_out: node fibers in and out.
        fiber_edge: edge fiber of the key/value convolution.
        num_heads, channels_div: attention heads; value channels are ``fiber_out``'s divided by ``channels_div``.
        use_layer_norm, max_degree, layout, low_memory, kernel: as in :class:`~se3pyg.nn.conv.ConvSE3`.

    Shapes:
        ``forward(node_feats {"d": [N, C_d, 2d+1]}, edge_feats, edge_index [2, E], basis)`` -> ``fiber_out`` features.
    """

    def __init__(
        self,
        fiber_in: Fiber,
        fiber_out: Fiber,
        fiber_edge: Fiber | None = None,
        num_heads: int = 4,
        channels_div: int = 2,
        use_layer_norm: bool = False,
        max_degree: int = 4,
        layout: Layout = "full",
        low_memory: bool = False,
        kernel: str = "auto",
    ) -> None:
        super().__init__()
        fiber_edge = fiber_edge if fiber_edge is not None else Fiber()
        self.fiber_in = fiber_in
        value_fiber = Fiber({d: c // channels_div for d, c in fiber_out.items()})
        key_fiber = Fiber({d: c for d, c in value_fiber.items() if d in fiber_in})
        self.to_key_value = ConvSE3(
            fiber_in,
            Fiber({d: c + key_fiber[d] for d, c in value_fiber.items()}),
            fiber_edge,
            pool=False,
            use_layer_norm=use_layer_norm,
            max_degree=max_degree,
            layout=layout,
            low_memory=low_memory,
            kernel=kernel,
        )
        self.to_query = LinearSE3(fiber_in, key_fiber)
        self.attention = AttentionSE3(num_heads, key_fiber, value_fiber)
        self.project = LinearSE3(Fiber({d: c + fiber_in[d] for d, c in value_fiber.items()}), fiber_out)

    def reset_parameters(self) -> None:
        for module in (self.to_key_value, self.to_query, self.project):
            module.reset_parameters()

    def forward(
        self,
        node_feats: dict[str, Tensor],
        edge_feats: dict[str, Tensor],
        edge_index: Tensor,
        basis: Basis,
    ) -> dict[str, Tensor]:
        key_value = self.to_key_value(node_feats, edge_feats, edge_index, basis)
        key, value = {}, {}
        for k, feat in key_value.items():
            if int(k) in self.fiber_in:
                value[k], key[k] = feat.chunk(2, dim=-2)
            else:
                value[k] = feat
        query = self.to_query(node_feats)
        z = self.attention(value, key, query, edge_index)
        z = {k: torch.cat([v, node_feats[k]], dim=1) if k in node_feats else v for k, v in z.items()}
        return self.project(z)
