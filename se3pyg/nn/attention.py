"""Equivariant graph self-attention as a PyG ``MessagePassing`` layer."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import scatter

from se3pyg.basis import Basis
from se3pyg.constants import cached_constant
from se3pyg.fiber import Fiber
from se3pyg.nn.conv import ConvSE3, Layout
from se3pyg.nn.linear import LinearSE3


def _to_heads(features: dict[str, Tensor] | Tensor, fiber: Fiber, num_heads: int) -> Tensor:
    """Features -> ``[M, P, W]`` with head h in channels ``h W/H .. (h+1) W/H``; head h holds channels
    ``h C_d/H .. (h+1) C_d/H`` of every degree.

    Stacked features ``[M, D, C]`` are that already; a dict of a fiber with unequal channels is copied into
    ``[M, 1, sum_d C_d (2d+1)]``.
    """
    if isinstance(features, Tensor):
        return features
    parts = [features[str(d)].reshape(-1, num_heads, c * (2 * d + 1) // num_heads) for d, c in fiber.items()]
    return torch.cat(parts, -1).flatten(1).unsqueeze(1)


@cached_constant
def head_sums(
    key_width: int, value_width: int, num_heads: int, scale: float, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """``[W_k, W_v]``: ``scale`` where a key channel and a value channel are in the same head, else 0.

    ``(q * k) @ head_sums`` gives each value channel its head's scaled logit: one product, no broadcasting over
    heads (element-wise products over a short heads axis are several times slower on CPU).
    """
    key_head = torch.arange(key_width) // (key_width // num_heads)
    value_head = torch.arange(value_width) // (value_width // num_heads)
    same_head = (key_head[:, None] == value_head[None, :]).to(torch.float64)
    return (same_head * scale).to(dtype=dtype, device=device)


def _remove_generated_source(layer: MessagePassing) -> None:
    """Remove the file of the ``propagate`` module PyG generated for ``layer``'s class in the temporary folder
    (``tempfile``, one a process, never removed): the module is loaded by then and stays cached in ``sys.modules``."""
    import os
    import sys
    import tempfile

    module = sys.modules.get(f"{type(layer).__module__}_{type(layer).__name__}_propagate")
    source = getattr(module, "__file__", None)
    if source and os.path.dirname(source) == tempfile.gettempdir() and os.path.isfile(source):
        os.remove(source)


class AttentionSE3(MessagePassing):
    r"""Multi-head attention over each node's incoming edges.

    $$
    \alpha_{ij}^h = \operatorname{softmax}_{j \to i}
    \frac{\langle q_i^h, k_{ij}^h \rangle}{\sqrt{n_k}}, \qquad
    y_i^h = \sum_{j \to i} \alpha_{ij}^h v_{ij}^h
    $$

    with keys and values per edge, queries per node, $n_k$ the key
    fiber's number of features, and heads splitting the channels of every
    degree. Logits and softmax run in at least float32 under autocast. The
    softmax's denominator divides each node's weighted sum, once per node:
    $y_i^h = \sum_j e^h_{ij} v^h_{ij} / \sum_j e^h_{ij}$ with
    $e^h_{ij} = \exp(\text{logit}^h_{ij} - \max_j \text{logit}^h_{ij})$.

    Args:
        num_heads: heads; each divides every key and value channel count.
        key_fiber: fiber of keys (and queries).
        value_fiber: fiber of values.

    Shapes:
        ``forward(value {"d": [E, C_d, 2d+1]}, key {"d": [E, ...]}, query {"d": [N, ...]}, edge_index [2, E])``
        -> ``{"d": [N, C_d, 2d+1]}`` with the value fiber; with stacked value, key and query (``[E, D_v, C_v]``,
        ``[E, D_k, C_k]``, ``[N, D_k, C_k]``) -> ``[N, D_v, C_v]``.
    """

    __repr__ = nn.Module.__repr__  # one style for every layer: torch's, with extra_repr

    def __init__(self, num_heads: int, key_fiber: Fiber, value_fiber: Fiber) -> None:
        super().__init__(aggr="add", flow="source_to_target", node_dim=0)
        _remove_generated_source(self)
        for name, fiber in (("key", key_fiber), ("value", value_fiber)):
            if any(c % num_heads for c in fiber.channels):
                raise ValueError(f"num_heads={num_heads} must divide every {name} channel count {fiber.channels}")
        self.num_heads = num_heads
        self.key_fiber = key_fiber
        self.value_fiber = value_fiber

    def forward(
        self,
        value: dict[str, Tensor] | Tensor,
        key: dict[str, Tensor] | Tensor,
        query: dict[str, Tensor] | Tensor,
        edge_index: Tensor,
    ) -> dict[str, Tensor] | Tensor:
        """Each node's attention-weighted sum of its incoming edges' values.

        Args:
            value: the edges' values by degree (or stacked, ``[E, D, C]``).
            key: the edges' keys, likewise.
            query: the nodes' queries, likewise.
            edge_index: ``[2, E]``, sources then targets.

        Returns:
            The nodes' features by degree (stacked when the inputs were).
        """
        stacked = isinstance(value, Tensor)
        uniform = self.key_fiber.is_uniform and self.value_fiber.is_uniform
        value, key, query = (
            (f.stack(x) if uniform else f.unstack(x)) if isinstance(x, Tensor) != uniform else x
            for f, x in zip(self.fibers, (value, key, query), strict=True)
        )
        num_nodes = query.shape[0] if isinstance(query, Tensor) else next(iter(query.values())).shape[0]
        k = _to_heads(key, self.key_fiber, self.num_heads)
        q = _to_heads(query, self.key_fiber, self.num_heads)
        v = _to_heads(value, self.value_fiber, self.num_heads)
        out = self.propagate(edge_index, q=q, k=k, v=v, size=(num_nodes, num_nodes))  # [N, P, W]
        if uniform:
            return out if stacked else self.value_fiber.unstack(out)
        sizes = [c * (2 * d + 1) // self.num_heads for d, c in self.value_fiber.items()]
        parts = out.view(num_nodes, self.num_heads, -1).split(sizes, dim=-1)
        result = {
            str(d): p.reshape(num_nodes, c, 2 * d + 1)
            for (d, c), p in zip(self.value_fiber.items(), parts, strict=True)
        }
        return self.value_fiber.stack(result) if stacked else result

    @property
    def fibers(self) -> tuple[Fiber, Fiber, Fiber]:
        """The fibers of the value, key and query features."""
        return self.value_fiber, self.key_fiber, self.key_fiber

    def message(self, q_i: Tensor, k: Tensor, v: Tensor, index: Tensor, size_i: int | None) -> tuple[Tensor, Tensor]:
        """Values times the softmax numerators ``exp(logit - max)``, and the numerators, per value channel."""
        # Logits and softmax in at least float32, whatever autocast gave the keys and queries.
        dtype = torch.float64 if v.dtype == torch.float64 else torch.float32
        scale = 1 / math.sqrt(self.key_fiber.num_features)
        sums = head_sums(k.shape[-1], v.shape[-1], self.num_heads, scale, dtype, k.device)
        with torch.autocast(k.device.type, enabled=False):
            logits = (q_i.to(dtype) * k.to(dtype)).sum(1) @ sums  # [E, W_v]: each channel its head's logit
        largest = scatter(logits.detach(), index, dim=0, dim_size=size_i, reduce="max")  # a shift: no gradient
        numerators = (logits - largest.index_select(0, index)).exp()
        return v.to(dtype) * numerators.unsqueeze(1), numerators

    def aggregate(self, inputs: tuple[Tensor, Tensor], index: Tensor, dim_size: int | None = None) -> Tensor:
        """Sums of weighted values over each node's incoming edges, divided by the sums of their weights."""
        weighted, numerators = inputs
        total = scatter(weighted, index, dim=0, dim_size=dim_size, reduce="sum")
        denominators = scatter(numerators, index, dim=0, dim_size=dim_size, reduce="sum") + 1e-16
        return total / denominators.unsqueeze(1)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, key={self.key_fiber}, value={self.value_fiber}"


def value_divisor(channels_div: int | Mapping[int, int] | Mapping[str, int] | None, degree: int) -> int:
    """The divisor of degree ``degree``'s value channels: ``channels_div`` itself, its entry for the degree (keyed
    by ``degree`` or ``str(degree)``), or 1 for ``None``."""
    if channels_div is None:
        return 1
    if isinstance(channels_div, Mapping):
        for key in (degree, str(degree)):
            if key in channels_div:
                return int(channels_div[key])
        raise ValueError(f"channels_div: no divisor for degree {degree} in {dict(channels_div)}")
    return int(channels_div)


class AttentionBlockSE3(nn.Module):
    """Attention with keys and values from a TFN convolution, a skip connection and a projection.

    Values have ``fiber_out``'s degrees with channels divided by ``channels_div`` (one divisor, one per degree, or
    ``None`` for none);
    keys and queries the value degrees present in ``fiber_in``. The output is
    ``project(cat(attention, input))`` per degree.

    Args:
        fiber_in: node fiber in.
        fiber_out: node fiber out.
        fiber_edge: edge fiber of the key/value convolution.
        num_heads: attention heads.
        channels_div: value channels are ``fiber_out``'s divided by it: an int, a divisor per degree (keys ``d``
            or ``"d"``, as RoseTTAFold-All-Atom passes them) or ``None`` (1).
        use_layer_norm: as in [`ConvSE3`][se3pyg.nn.conv.ConvSE3].
        max_degree: as in [`ConvSE3`][se3pyg.nn.conv.ConvSE3].
        layout: as in [`ConvSE3`][se3pyg.nn.conv.ConvSE3].
        low_memory: as in [`ConvSE3`][se3pyg.nn.conv.ConvSE3].
        kernel: as in [`ConvSE3`][se3pyg.nn.conv.ConvSE3].

    Shapes:
        ``forward(node_feats {"d": [N, C_d, 2d+1]}, edge_feats, edge_index [2, E], basis)`` -> ``fiber_out`` features;
        stacked node features ``[N, D, C]`` give stacked features when ``fiber_out`` is uniform.
    """

    def __init__(
        self,
        fiber_in: Fiber,
        fiber_out: Fiber,
        fiber_edge: Fiber | None = None,
        num_heads: int = 4,
        channels_div: int | Mapping[int, int] | Mapping[str, int] | None = 2,
        use_layer_norm: bool = False,
        max_degree: int = 4,
        layout: Layout = "full",
        low_memory: bool = False,
        kernel: str = "auto",
    ) -> None:
        super().__init__()
        fiber_edge = fiber_edge if fiber_edge is not None else Fiber()
        self.fiber_in = fiber_in
        value_fiber = Fiber({d: c // value_divisor(channels_div, d) for d, c in fiber_out.items()})
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
        node_feats: dict[str, Tensor] | Tensor,
        edge_feats: dict[str, Tensor],
        edge_index: Tensor,
        basis: Basis,
        edge_pairs: bool = False,
    ) -> dict[str, Tensor] | Tensor:
        """Keys and values by a convolution over the edges, queries by a linear map, attention, projection.

        Args:
            node_feats: the nodes' features by degree (or stacked, ``[N, D, C]``).
            edge_feats: the edges' features by degree (``{"0": [E, C, 1]}``).
            edge_index: ``[2, E]``, sources then targets.
            basis: the edges' bases.
            edge_pairs: edges in reverse pairs (`se3pyg.data.pairs`): radial weights formed once a pair.

        Returns:
            The nodes' new features by degree (stacked when the input was and ``fiber_out`` is uniform).
        """
        stacked = isinstance(node_feats, Tensor)
        value_fiber, key_fiber = self.attention.value_fiber, self.attention.key_fiber
        key_value = self.to_key_value(node_feats, edge_feats, edge_index, basis, edge_pairs)
        if isinstance(key_value, Tensor) and key_fiber.degrees == value_fiber.degrees:
            value, key = key_value.chunk(2, dim=-1)  # stacked channels: values, then keys
        else:
            if isinstance(key_value, Tensor):
                key_value = self.to_key_value.fiber_out.unstack(key_value)
            key, value = {}, {}
            for k, feat in key_value.items():
                if int(k) in key_fiber:
                    value[k], key[k] = feat.chunk(2, dim=-2)
                else:
                    value[k] = feat
        query = self.to_query(node_feats)
        z = self.attention(value, key, query, edge_index)
        if isinstance(z, Tensor) and stacked and self.fiber_in.degrees == value_fiber.degrees:
            return self.project(torch.cat([z, node_feats], dim=-1))
        z = value_fiber.unstack(z) if isinstance(z, Tensor) else z
        nodes = self.fiber_in.unstack(node_feats) if stacked else node_feats
        out = self.project({k: torch.cat([v, nodes[k]], dim=1) if k in nodes else v for k, v in z.items()})
        return self.project.fiber_out.stack(out) if stacked and self.project.fiber_out.is_uniform else out
