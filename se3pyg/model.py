"""The SE(3)-Transformer: attention blocks, equivariant norms, a final TFN convolution."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, Literal

import torch
from torch import Tensor, nn

from se3pyg.basis import Basis
from se3pyg.fiber import Fiber, degree_to_dim
from se3pyg.nn import AttentionBlockSE3, ConvSE3, GraphPooling, LinearSE3, NormSE3
from se3pyg.nn.attention import value_divisor
from se3pyg.nn.conv import LAYOUTS, Aggregation, Layout
from se3pyg.options import ModelOptions

Pooling = Literal["max", "avg"]
FinalLayer = Literal["conv", "lin", "att"]
EdgeLength = Literal["lin", "arcsin", "log", "zero"]
FINAL_LAYERS: tuple[str, ...] = ("conv", "lin", "att")
EDGE_LENGTHS: tuple[str, ...] = ("lin", "arcsin", "log", "zero")


def edge_length_feature(rel_pos: Tensor, populate_edge: EdgeLength) -> Tensor:
    r"""The invariant of an edge's length $r = \lVert r_{ij} \rVert$ appended to its degree-0 features,
    ``[E, 1, 1]``: $r$ (``"lin"``, NVIDIA's), $\operatorname{asinh}(\max(r, 4) - 4) / 3$
    (``"arcsin"``, RoseTTAFold's), $\log(1 + r)$ (``"log"``) or 0 (``"zero"``)."""
    r = rel_pos.norm(dim=-1, keepdim=True).unsqueeze(-1)
    if populate_edge == "lin":
        return r
    if populate_edge == "arcsin":
        return torch.asinh(r.clamp(min=4.0) - 4.0) / 3.0
    if populate_edge == "log":
        return torch.log(1 + r)
    return torch.zeros_like(r)


def _fiber(value: Fiber | Mapping[int, int] | None) -> Fiber:
    return value if isinstance(value, Fiber) else Fiber(value or {})


def _graph_tensors(graph: Any) -> tuple[Tensor, Tensor, Tensor | None, bool]:
    """``(edge_index, relative positions, batch, edge pairs)`` of a PyG ``Data``/``Batch`` or an
    ``(edge_index, pos)`` pair; edge pairs only where ``graph.edge_pairs is True``
    (`se3pyg.data.pairs`)."""
    if isinstance(graph, tuple | list):
        edge_index, pos = graph
        batch = None
        rel_pos = None
        edge_pairs = False
    else:
        edge_index = getattr(graph, "edge_index", None)
        pos = getattr(graph, "pos", None)
        rel_pos = getattr(graph, "rel_pos", None)
        batch = getattr(graph, "batch", None)
        edge_pairs = getattr(graph, "edge_pairs", None) is True
    if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index: expected a [2, E] integer tensor, got {_describe(edge_index)}")
    if edge_index.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"edge_index: expected an integer tensor, got {edge_index.dtype}")
    if rel_pos is None:
        if not isinstance(pos, Tensor):
            raise ValueError("pos: the graph has no node positions (pos [N, 3]) and no rel_pos [E, 3]")
        if pos.dim() != 2 or pos.shape[1] != 3:
            raise ValueError(f"pos: expected [N, 3], got {list(pos.shape)}")
        try:
            rel_pos = pos[edge_index[1]] - pos[edge_index[0]]
        except IndexError:  # raised on CPU; on CUDA an out-of-range index is a device-side assert
            raise ValueError(f"edge_index: node ids must lie in [0, {pos.shape[0]})") from None
    elif rel_pos.shape != (edge_index.shape[1], 3):
        raise ValueError(f"rel_pos: expected [{edge_index.shape[1]}, 3], got {list(rel_pos.shape)}")
    return edge_index, rel_pos, batch, edge_pairs


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


def _check_arguments(
    num_layers: int, fiber_hidden: Fiber, channels_div: Any, pooling: Any, return_type: Any, **choices: Any
) -> None:
    """``ValueError`` naming the first `SE3Transformer` argument that cannot make a model."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    allowed_of = dict(layout=LAYOUTS, final_layout=LAYOUTS, final_layer=FINAL_LAYERS, populate_edge=EDGE_LENGTHS)
    for name, value in choices.items():
        if value not in allowed_of[name]:
            raise ValueError(f"{name} must be one of {allowed_of[name]}, got {value!r}")
    if pooling is not None and return_type is None:
        raise ValueError("return_type must be given when pooling")
    if any(c % value_divisor(channels_div, d) for d, c in fiber_hidden.items()):
        raise ValueError(f"channels_div={channels_div} must divide the hidden channels {fiber_hidden.channels}")


class SE3Transformer(nn.Module):
    r"""NVIDIA's ``SE3Transformer`` on PyG graphs.

    ``num_layers`` attention blocks (each followed by an equivariant norm when
    ``norm``), then a TFN convolution with self-interaction to ``fiber_out``
    (or, with ``final_layer``, a linear map or a one-head attention block):

    $$
    h^{(t+1)} = \mathrm{Norm}\big(\mathrm{Attention}(h^{(t)})\big), \qquad
    y = \mathrm{Conv}(h^{(T)}) \;[\text{pooled per graph}]
    $$

    ``forward(graph, node_feats, edge_feats, basis)`` takes NVIDIA's feature
    dicts (``{"d": [N, C, 2d + 1]}``) with a PyG ``Data``/``Batch``
    (``edge_index``, ``pos`` or ``rel_pos``, ``batch``) or an
    ``(edge_index, pos)`` pair in place of the DGL graph. Edge direction: row 0
    source, row 1 destination, relative position ``pos[dst] - pos[src]``.
    Returns the output feature dict, the degree-``return_type`` features
    ``[N, C, 2d + 1]``, or with ``pooling`` those features pooled per graph.

    Args:
        num_layers: attention blocks.
        fiber_in: node fiber of the input.
        fiber_hidden: node fiber of the hidden blocks.
        fiber_out: node fiber of the output.
        num_heads: attention heads (they split the channels of every degree).
        channels_div: keys and values have the hidden channels divided by this (an int, or a divisor per degree).
        fiber_edge: edge features (degree 0 gets the edge length appended, as ``populate_edge`` says).
        return_type: return only the features of this degree.
        pooling: ``"max"`` or ``"avg"`` over each graph's nodes (needs ``return_type``).
        norm: equivariant norm after each attention block.
        use_layer_norm: LayerNorm inside the radial networks.
        layout: ``"full"``, ``"partial"`` or ``"pairwise"``: how radial networks are shared, and so the
            parameters (NVIDIA's fuse levels).
        low_memory: recompute convolution kernels in the backward pass (activation checkpointing).
        kernel: how convolution kernels compute, separate from ``layout``
            ([`se3pyg.nn.conv.KERNELS`][se3pyg.nn.conv.KERNELS];
            ``"auto"`` picks per device type, [`se3pyg.nn.conv.auto_kernel()`][se3pyg.nn.conv.auto_kernel]); every
            kernel computes the
            same function.
        final_layer: ``"conv"`` (a TFN convolution with self-interaction), ``"lin"`` (a
            [`LinearSE3`][se3pyg.nn.linear.LinearSE3]: no message passing) or ``"att"`` (a one-head attention block
            whose
            degree-0 values are divided by ``channels_div``).
        populate_edge: the edge-length feature appended to the degree-0 edge features
            (`edge_length_feature()`).
        final_aggr: ``"add"`` or ``"mean"``: how the final convolution gathers its messages (RoseTTAFold's
            ``sum_over_edge=False`` is ``"mean"``).
        final_layout: the final convolution's layout when it differs from ``layout`` (NVIDIA's 2021 code, which
            RoseTTAFold-All-Atom and RFdiffusion vendor, builds it fully fused whatever its flags).
        basis_gradients: whether gradients flow from the bases into the relative positions (NVIDIA's
            ``compute_gradients``; the edge length's gradient flows either way).
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
        kernel: str = "auto",
        final_layer: FinalLayer = "conv",
        populate_edge: EdgeLength = "lin",
        final_aggr: Aggregation = "add",
        final_layout: Layout | None = None,
        basis_gradients: bool = True,
    ) -> None:
        super().__init__()
        fiber_in, fiber_hidden, fiber_out = _fiber(fiber_in), _fiber(fiber_hidden), _fiber(fiber_out)
        fiber_edge = _fiber(fiber_edge)
        choices = {"layout": layout, "final_layout": final_layout or layout, "final_layer": final_layer}
        _check_arguments(
            num_layers, fiber_hidden, channels_div, pooling, return_type, populate_edge=populate_edge, **choices
        )
        self.fiber_in, self.fiber_hidden, self.fiber_out = fiber_in, fiber_hidden, fiber_out
        self.fiber_edge = fiber_edge
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.channels_div = channels_div
        self.return_type = return_type
        self.pooling = pooling
        self.layout = layout
        self.low_memory = low_memory
        self.final_layer = final_layer
        self.populate_edge = populate_edge
        self.basis_gradients = basis_gradients
        self.max_degree = max(fiber_in.max_degree, fiber_hidden.max_degree, fiber_out.max_degree)

        modules: list[nn.Module] = []
        options = dict(num_heads=num_heads, channels_div=channels_div, use_layer_norm=use_layer_norm, layout=layout)
        options.update(max_degree=self.max_degree, low_memory=low_memory, kernel=kernel)
        for k in range(num_layers):
            modules.append(AttentionBlockSE3(fiber_hidden if k else fiber_in, fiber_hidden, fiber_edge, **options))
            modules += [NormSE3(fiber_hidden)] if norm else []
        modules.append(self._final_module(fiber_hidden, use_layer_norm, final_layout or layout, kernel, final_aggr))
        self.graph_modules = nn.ModuleList(modules)
        if pooling is not None:
            self.pooling_module = GraphPooling(pooling, feat_type=return_type)

    def _final_module(
        self, fiber: Fiber, use_layer_norm: bool, layout: Layout, kernel: str, aggr: Aggregation
    ) -> nn.Module:
        """The last layer, from the last hidden fiber to ``fiber_out`` (``final_layer``)."""
        common = dict(use_layer_norm=use_layer_norm, max_degree=self.max_degree, layout=layout, kernel=kernel)
        if self.final_layer == "lin":
            return LinearSE3(fiber, self.fiber_out)
        if self.final_layer == "att":
            divisors = {d: value_divisor(self.channels_div, 0) if d == 0 else 1 for d in self.fiber_out.degrees}
            return AttentionBlockSE3(
                fiber,
                self.fiber_out,
                self.fiber_edge,
                num_heads=1,
                channels_div=divisors,
                **common,
                low_memory=self.low_memory,
            )
        return ConvSE3(fiber, self.fiber_out, self.fiber_edge, self_interaction=True, aggr=aggr, **common)

    def forward(
        self,
        graph: Any,
        node_feats: Mapping[str, Tensor],
        edge_feats: Mapping[str, Tensor] | None = None,
        basis: Basis | Tensor | None = None,
    ) -> Tensor | dict[str, Tensor]:
        """The transformer's output features for a graph.

        Args:
            graph: a PyG ``Data``/``Batch`` with ``edge_index`` and ``pos`` (or ``rel_pos`` per edge), and ``batch``
                for pooling; or an ``(edge_index, pos)`` pair.
            node_feats: input features by degree, ``{"0": [N, C_0, 1], "1": [N, C_1, 3], ...}`` as ``fiber_in``.
            edge_feats: edge features by degree, as ``fiber_edge`` (``{"0": [E, C, 1]}``).
            basis: the bases of the graph's edges (`Basis`, or its fused tensor); ``None``: computed from
                ``rel_pos``.

        Returns:
            With ``pooling``: ``[B, C]`` per graph; with ``return_type`` d: ``[N, C_d, 2d + 1]``; else every
            degree of ``fiber_out`` as a dict.

        Raises:
            ValueError: a feature or graph tensor of the wrong shape, named.
        """
        edge_index, rel_pos, batch, edge_pairs = _graph_tensors(graph)
        num_nodes = next(iter(node_feats.values())).shape[0] if node_feats else 0
        _check_features("node_feats", node_feats, self.fiber_in, num_nodes, exact=False)
        edge_feats = dict(edge_feats or {})
        _check_features("edge_feats", edge_feats, self.fiber_edge, edge_index.shape[1], exact=True)

        if basis is None:
            basis = Basis.from_relative_pos(rel_pos if self.basis_gradients else rel_pos.detach(), self.max_degree)
        elif isinstance(basis, Tensor):
            basis = Basis(basis, self.max_degree)
        length = edge_length_feature(rel_pos, self.populate_edge)
        edge_feats["0"] = torch.cat([edge_feats["0"], length], dim=1) if "0" in edge_feats else length

        # Features run stacked ([N, D, C], see Fiber.stack) wherever their fiber has equal channels per degree.
        feats = self.fiber_in.stack(node_feats) if self.fiber_in.is_uniform else dict(node_feats)
        for module in self.graph_modules:
            if isinstance(feats, dict) and module is not self.graph_modules[0] and self.fiber_hidden.is_uniform:
                feats = self.fiber_hidden.stack(feats)
            if isinstance(module, LinearSE3):
                feats = module(feats)
            else:
                feats = module(feats, edge_feats, edge_index, basis, edge_pairs=edge_pairs)
        if isinstance(feats, Tensor):
            feats = self.fiber_out.unstack(feats)

        if self.pooling is not None:
            if batch is None:
                return self.pooling_module(feats, edge_index.new_zeros(num_nodes), num_graphs=1)
            # A PyG Batch knows its graph count on the host: counting it on the device would sync.
            return self.pooling_module(feats, batch, num_graphs=getattr(graph, "num_graphs", None))
        if self.return_type is not None:
            return feats[str(self.return_type)]
        return feats

    def reset_parameters(self) -> None:
        for module in self.graph_modules:
            module.reset_parameters()


class SE3TransformerPooled(nn.Module):
    r"""Graph-level regression: ``SE3Transformer`` -> pooled degree-0 features -> MLP.

    $$
    \hat y_g = \mathrm{MLP}\big(\operatorname{pool}_{i \in g} h^0_i\big)
    $$

    ``forward(batch)`` takes a PyG ``Batch`` with ``x`` [N, C_in], ``pos``
    [N, 3], ``edge_index`` [2, E], ``edge_attr`` [E, C_edge] and ``batch`` [N];
    precomputed spherical harmonics may come as ``batch.sh`` (see
    `se3pyg.basis`). Returns ``[B]`` (``[B, output_dim]`` when
    ``output_dim > 1``).

    Args:
        fiber_in: node input fiber, degree 0 only (default ``{0: 6}``, QM9's node features).
        fiber_out: transformer output fiber, degree 0 only (default ``{0: num_degrees * num_channels}``).
        fiber_edge: edge input fiber, degree 0 only (default ``{0: 4}``, QM9's bond types).
        output_dim: targets predicted per graph.
        **options: the fields of `ModelOptions` (``num_layers``, ``num_degrees``, ...).
    """

    def __init__(
        self,
        fiber_in: Fiber | Mapping[int, int] | None = None,
        fiber_out: Fiber | Mapping[int, int] | None = None,
        fiber_edge: Fiber | Mapping[int, int] | None = None,
        output_dim: int = 1,
        **options: Any,
    ) -> None:
        super().__init__()
        self.options = opts = ModelOptions(**options)
        fiber_in = _fiber(fiber_in if fiber_in is not None else {0: 6})
        fiber_edge = _fiber(fiber_edge if fiber_edge is not None else {0: 4})
        fiber_out = _fiber(fiber_out if fiber_out is not None else {0: opts.num_degrees * opts.num_channels})
        if fiber_in.degrees != [0] or fiber_out.degrees != [0] or fiber_edge.degrees not in ([0], []):
            raise ValueError("SE3TransformerPooled takes degree-0 node, edge and output fibers")
        if opts.pooling not in ("max", "avg"):
            raise ValueError(f"pooling must be 'max' or 'avg', got {opts.pooling!r}")
        #: Everything `from_config()` needs to build the same model (stored in checkpoints).
        self.config: dict[str, Any] = dict(
            fiber_in=fiber_in.to_dict(),
            fiber_out=fiber_out.to_dict(),
            fiber_edge=fiber_edge.to_dict(),
            output_dim=output_dim,
            **asdict(opts),
        )
        self.transformer = SE3Transformer(
            num_layers=opts.num_layers,
            fiber_in=fiber_in,
            fiber_hidden=Fiber.create(opts.num_degrees, opts.num_channels),
            fiber_out=fiber_out,
            fiber_edge=fiber_edge,
            num_heads=opts.num_heads,
            channels_div=opts.channels_div,
            return_type=0,
            pooling=opts.pooling,
            norm=opts.norm,
            use_layer_norm=opts.use_layer_norm,
            layout=opts.layout,
            low_memory=opts.low_memory,
            kernel=opts.kernel,
        )
        n_features = fiber_out.num_features
        self.mlp = nn.Sequential(nn.Linear(n_features, n_features), nn.ReLU(), nn.Linear(n_features, output_dim))

    def reset_parameters(self) -> None:
        self.transformer.reset_parameters()
        for layer in (self.mlp[0], self.mlp[2]):
            layer.reset_parameters()

    def pool(self, batch: Any, basis: Basis | Tensor | None = None) -> Tensor:
        """The pooled transformer output ``[B, C_out]``, the MLP's input.

        Args:
            batch: a PyG ``Batch`` of molecules: ``x`` ``[N, node_features]``, ``edge_attr`` ``[E, edge_features]``,
                ``pos``, ``edge_index``, ``batch`` (and ``sh``, precomputed harmonics, when the data holds them).
            basis: the edges' bases, when already computed.
        """
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
        return self.transformer(batch, node_feats, edge_feats, basis)

    def head(self, pooled: Tensor) -> Tensor:
        """The MLP on pooled features, in full precision whatever autocast says (it is small).

        Args:
            pooled: `pool`'s output ``[B, C_out]``.
        """
        weight = self.mlp[0].weight
        with torch.autocast(weight.device.type, enabled=False):
            return self.mlp(pooled.to(weight.dtype)).squeeze(-1)

    def forward(self, batch: Any, basis: Basis | Tensor | None = None) -> Tensor:
        """One prediction a molecule, ``[B]`` (standardized, as the model is trained).

        Args:
            batch: a PyG ``Batch`` of molecules (see `pool`).
            basis: the edges' bases, when already computed.
        """
        return self.head(self.pool(batch, basis))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SE3TransformerPooled:
        """The model described by `config` (untrained: load a state dict into it)."""
        return cls(**config)
