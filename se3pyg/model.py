"""The SE(3)-Transformer: attention blocks, equivariant norms, a final TFN convolution."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from se3pyg.basis import Basis
from se3pyg.fiber import Fiber, degree_to_dim
from se3pyg.nn import AttentionBlockSE3, ConvSE3, GraphPooling, NormSE3
from se3pyg.nn.conv import LAYOUTS, Layout

Pooling = Literal["max", "avg"]


def _fiber(value: Fiber | Mapping[int, int] | None) -> Fiber:
    return value if isinstance(value, Fiber) else Fiber(value or {})


def _graph_tensors(graph: Any) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(edge_index, relative positions, batch)`` of a PyG ``Data``/``Batch`` or an ``(edge_index, pos)`` pair."""
    if isinstance(graph, tuple | list):
        edge_index, pos = graph
        batch = None
        rel_pos = None
    else:
        edge_index = getattr(graph, "edge_index", None)
        pos = getattr(graph, "pos", None)
        rel_pos = getattr(graph, "rel_pos", None)
        batch = getattr(graph, "batch", None)
    if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index: expected a [2, E] integer tensor, got {_describe(edge_index)}")
    if edge_index.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"edge_index: expected an integer tensor, got {edge_index.dtype}")
    if rel_pos is None:
        if not isinstance(pos, Tensor):
            raise ValueError("pos: the graph has no node positions (pos [N, 3]) and no rel_pos [E, 3]")
        if pos.dim() != 2 or pos.shape[1] != 3:
            raise ValueError(f"pos: expected [N, 3], got {list(pos.shape)}")
        _check_edge_index(edge_index, pos.shape[0])
        rel_pos = pos[edge_index[1]] - pos[edge_index[0]]
    elif rel_pos.shape != (edge_index.shape[1], 3):
        raise ValueError(f"rel_pos: expected [{edge_index.shape[1]}, 3], got {list(rel_pos.shape)}")
    return edge_index, rel_pos, batch


def _check_edge_index(edge_index: Tensor, num_nodes: int) -> None:
    if edge_index.numel():
        low, high = int(edge_index.min()), int(edge_index.max())
        if low < 0 or high >= num_nodes:
            raise ValueError(f"edge_index: node ids must lie in [0, {num_nodes}), got {low}..{high}")


def _describe(value: Any) -> str:
    return f"shape {list(value.shape)}" if isinstance(value, Tensor) else type(value).__name__


def _check_features(name: str, feats: Mapping[str, Tensor], fiber: Fiber, count: int, exact: bool) -> None:
    for d, c in fiber.items():
        feat = feats.get(str(d))
        expected = [count, c, degree_to_dim(d)]
        if feat is None:
            raise ValueError(f"{name}: missing degree-{d} features (expected {expected})")
        if list(feat.shape) != expected:
            raise ValueError(f"{name}: degree-{d} features must be {expected}, got {list(feat.shape)}")
    if exact:
        extra = sorted(set(feats) - {str(d) for d in fiber})
        if extra:
            raise ValueError(f"{name}: degrees {extra} are not in the fiber {fiber}")


class SE3Transformer(nn.Module):
    """NVIDIA's ``SE3Transformer`` on PyG graphs.

    ``forward(graph, node_feats, edge_feats, basis)`` takes the same feature
    dicts as NVIDIA's (``{"d": [N, C, 2d + 1]}``) with a PyG ``Data``/``Batch``
    (``edge_index``, ``pos`` or ``rel_pos``, ``batch``) or an
    ``(edge_index, pos)`` pair in place of the DGL graph. Edge direction: row 0
    source, row 1 destination, relative position ``pos[dst] - pos[src]``.

    ``layout`` ("full", "partial", "pairwise") fixes how radial networks are
    shared, and so the parameters; ``low_memory`` recomputes convolution
    kernels in the backward pass (activation checkpointing).
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
        layout: Layout = "full",
        low_memory: bool = False,
    ) -> None:
        super().__init__()
        fiber_in, fiber_hidden, fiber_out = _fiber(fiber_in), _fiber(fiber_hidden), _fiber(fiber_out)
        fiber_edge = _fiber(fiber_edge)
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if pooling is not None and return_type is None:
            raise ValueError("return_type must be given when pooling")
        if any(c % channels_div for c in fiber_hidden.channels):
            raise ValueError(f"channels_div={channels_div} must divide the hidden channels {fiber_hidden.channels}")
        self.fiber_in, self.fiber_hidden, self.fiber_out, self.fiber_edge = (
            fiber_in,
            fiber_hidden,
            fiber_out,
            fiber_edge,
        )
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.channels_div = channels_div
        self.return_type = return_type
        self.pooling = pooling
        self.layout = layout
        self.low_memory = low_memory
        self.max_degree = max(fiber_in.max_degree, fiber_hidden.max_degree, fiber_out.max_degree)

        modules: list[nn.Module] = []
        fiber = fiber_in
        for _ in range(num_layers):
            modules.append(
                AttentionBlockSE3(
                    fiber,
                    fiber_hidden,
                    fiber_edge,
                    num_heads=num_heads,
                    channels_div=channels_div,
                    use_layer_norm=use_layer_norm,
                    max_degree=self.max_degree,
                    layout=layout,
                    low_memory=low_memory,
                )
            )
            if norm:
                modules.append(NormSE3(fiber_hidden))
            fiber = fiber_hidden
        # As NVIDIA's: the last convolution is always built with the fullest fusing its fibers allow.
        modules.append(
            ConvSE3(
                fiber,
                fiber_out,
                fiber_edge,
                self_interaction=True,
                use_layer_norm=use_layer_norm,
                max_degree=self.max_degree,
            )
        )
        self.graph_modules = nn.ModuleList(modules)
        if pooling is not None:
            self.pooling_module = GraphPooling(pooling, feat_type=return_type)

    def forward(
        self,
        graph: Any,
        node_feats: Mapping[str, Tensor],
        edge_feats: Mapping[str, Tensor] | None = None,
        basis: Basis | Tensor | None = None,
    ) -> Tensor | dict[str, Tensor]:
        edge_index, rel_pos, batch = _graph_tensors(graph)
        num_nodes = next(iter(node_feats.values())).shape[0] if node_feats else 0
        _check_features("node_feats", node_feats, self.fiber_in, num_nodes, exact=False)
        edge_feats = dict(edge_feats or {})
        _check_features("edge_feats", edge_feats, self.fiber_edge, edge_index.shape[1], exact=True)
        _check_edge_index(edge_index, num_nodes)

        if basis is None:
            basis = Basis.from_relative_pos(rel_pos, self.max_degree)
        elif isinstance(basis, Tensor):
            basis = Basis(basis, self.max_degree)
        dist = rel_pos.norm(dim=-1, keepdim=True).unsqueeze(-1)
        edge_feats["0"] = torch.cat([edge_feats["0"], dist], dim=1) if "0" in edge_feats else dist

        feats = dict(node_feats)
        for module in self.graph_modules:
            feats = module(feats, edge_feats, edge_index, basis)

        if self.pooling is not None:
            if batch is None:
                batch = edge_index.new_zeros(num_nodes)
            return self.pooling_module(feats, batch)
        if self.return_type is not None:
            return feats[str(self.return_type)]
        return feats


class SE3TransformerPooled(nn.Module):
    """Graph-level regression: ``SE3Transformer`` -> pooled degree-0 features -> MLP.

    Defaults are NVIDIA's published QM9 recipe. ``forward(batch)`` takes a PyG
    ``Batch`` with ``x`` [N, C_in], ``pos`` [N, 3], ``edge_index``,
    ``edge_attr`` [E, C_edge] and ``batch``; precomputed spherical harmonics
    may come as ``batch.sh`` (see :mod:`se3pyg.basis`). Returns ``[B]`` (or
    ``[B, output_dim]`` when ``output_dim > 1``).
    """

    def __init__(
        self,
        fiber_in: Fiber | Mapping[int, int] | None = None,
        fiber_out: Fiber | Mapping[int, int] | None = None,
        fiber_edge: Fiber | Mapping[int, int] | None = None,
        num_degrees: int = 4,
        num_channels: int = 32,
        output_dim: int = 1,
        num_layers: int = 7,
        num_heads: int = 8,
        channels_div: int = 2,
        pooling: Pooling = "max",
        norm: bool = True,
        use_layer_norm: bool = True,
        layout: Layout = "full",
        low_memory: bool = False,
    ) -> None:
        super().__init__()
        fiber_in = _fiber(fiber_in if fiber_in is not None else {0: 6})
        fiber_edge = _fiber(fiber_edge if fiber_edge is not None else {0: 4})
        fiber_out = _fiber(fiber_out if fiber_out is not None else {0: num_degrees * num_channels})
        if fiber_in.degrees != [0] or fiber_out.degrees != [0] or fiber_edge.degrees not in ([0], []):
            raise ValueError("SE3TransformerPooled takes degree-0 node, edge and output fibers")
        if pooling not in ("max", "avg"):
            raise ValueError(f"pooling must be 'max' or 'avg', got {pooling!r}")
        self.config: dict[str, Any] = dict(
            fiber_in=fiber_in.to_dict(),
            fiber_out=fiber_out.to_dict(),
            fiber_edge=fiber_edge.to_dict(),
            num_degrees=num_degrees,
            num_channels=num_channels,
            output_dim=output_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            channels_div=channels_div,
            pooling=pooling,
            norm=norm,
            use_layer_norm=use_layer_norm,
            layout=layout,
            low_memory=low_memory,
        )
        self.transformer = SE3Transformer(
            num_layers=num_layers,
            fiber_in=fiber_in,
            fiber_hidden=Fiber.create(num_degrees, num_channels),
            fiber_out=fiber_out,
            fiber_edge=fiber_edge,
            num_heads=num_heads,
            channels_div=channels_div,
            return_type=0,
            pooling=pooling,
            norm=norm,
            use_layer_norm=use_layer_norm,
            layout=layout,
            low_memory=low_memory,
        )
        n_features = fiber_out.num_features
        self.mlp = nn.Sequential(nn.Linear(n_features, n_features), nn.ReLU(), nn.Linear(n_features, output_dim))

    def forward(self, batch: Any, basis: Basis | Tensor | None = None) -> Tensor:
        x = getattr(batch, "x", None)
        if not isinstance(x, Tensor) or x.dim() != 2:
            raise ValueError(f"x: expected node features [N, {self.transformer.fiber_in[0]}], got {_describe(x)}")
        node_feats = {"0": x.unsqueeze(-1)}
        edge_feats = {}
        if self.transformer.fiber_edge[0]:
            edge_attr = getattr(batch, "edge_attr", None)
            if not isinstance(edge_attr, Tensor) or edge_attr.dim() != 2:
                expected = self.transformer.fiber_edge[0]
                raise ValueError(f"edge_attr: expected edge features [E, {expected}], got {_describe(edge_attr)}")
            edge_feats["0"] = edge_attr.unsqueeze(-1)
        if basis is None:
            basis = getattr(batch, "sh", None)
        pooled = self.transformer(batch, node_feats, edge_feats, basis)
        weight = self.mlp[0].weight
        with torch.autocast(weight.device.type, enabled=False):  # the small head stays in full precision
            return self.mlp(pooled.to(weight.dtype)).squeeze(-1)

    def pooled_features(self, batch: Any, basis: Basis | Tensor | None = None) -> Tensor:
        """The pooled transformer output ``[B, C_out]``, before the MLP."""
        captured: list[Tensor] = []
        handle = self.mlp.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            self(batch, basis)
        finally:
            handle.remove()
        return captured[0]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SE3TransformerPooled:
        return cls(**config)
