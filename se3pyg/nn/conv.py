r"""TFN convolution as a PyG ``MessagePassing`` layer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.utils.checkpoint
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import degree as node_degree

from se3pyg.basis import Basis, num_frequencies
from se3pyg.fiber import Fiber, component_rows
from se3pyg.nn.edge_weights_contraction import edge_weights_contract
from se3pyg.nn.linear import stacked_linear
from se3pyg.nn.radial import RadialProfile
from se3pyg.nn.radial_contraction import contract_reference, radial_contract

Layout = Literal["full", "partial", "pairwise"]
LAYOUTS: tuple[str, ...] = ("full", "partial", "pairwise")
Aggregation = Literal["add", "mean"]

#: How a kernel group computes: ``"edge_weights"`` forms each edge's radial weights and contracts them with
#: the basis product; ``"reassociated"`` applies the radial network's last layer after the basis product,
#: as one large GEMM over edges (more FLOPs, far fewer bytes); ``"fused"`` contracts that GEMM's output with the
#: hidden layer tile by tile, never writing it (Triton on CUDA;
#: `se3pyg.nn.radial_contraction`);
#: ``"fused_edge_weights"`` forms the radial weights tile by tile and contracts them at once, never writing them
#: (``"edge_weights"``' products, Triton on CUDA;
#: `se3pyg.nn.edge_weights_contraction`). ``"auto"`` picks per
#: device type.
KERNELS: tuple[str, ...] = ("auto", "edge_weights", "reassociated", "fused", "fused_edge_weights")


def auto_kernel(device_type: str) -> str:
    """The kernel ``"auto"`` runs on ``device_type``: ``"reassociated"`` on GPUs, ``"edge_weights"`` elsewhere.

    On CPU the per-edge weights fit the caches and the reassociated GEMM's extra FLOPs (2.11 against 0.32 TFLOP a
    published-recipe training step at batch 240) cost more than the bytes they save. On an H100 the reassociated
    kernel's graphed training step took 21.5 ms against 27.4 ms (AMP, batch 240, edges not yet in pairs). The fused
    kernels write half its bytes (``"fused_edge_weights"`` with a fifth of its FLOPs) but have no GPU timing yet.

    Args:
        device_type: ``"cuda"``, ``"cpu"``, ...
    """
    return "reassociated" if device_type == "cuda" else "edge_weights"


def _contiguous(x: Tensor, dtype: torch.dtype | None) -> Tensor:
    """``x`` contiguous, and in ``dtype`` if given: one copy either way."""
    return x.contiguous() if dtype is None else x.to(dtype, memory_format=torch.contiguous_format)


class KernelGroup(nn.Module):
    r"""One radial network and the fused basis block it weighs.

    For input features $x \in \mathbb{R}^{E \times D_{in} \times C_{in}}$,
    basis $B_{e l f k}$ (input component ``l``, frequency ``f``, output component ``k``; stored
    ``[E, D_out, F, D_in]``) and
    radial weights $R \in \mathbb{R}^{E \times C_{out} \times C_{in} F}$:

    $$
    y_{e k o} = \sum_{i f} R_{e o (i f)} \sum_l x_{e l i} B_{e l f k}.
    $$

    The frequencies run over output degrees first, so the sum is taken one
    output degree at a time with that degree's basis block only (the fused
    basis is zero elsewhere): about 3x fewer multiplications than the dense
    contraction for degrees 0..3. Both products read contiguous operands:
    $T_{e k (f i)} = \sum_l B_{e l f k} x_{e l i}$ (``[E, D_d, F_d C_in]``,
    the basis stored output-major) times the radial weights as the radial
    network writes them with its rows reordered to ``(f, i, o)``
    (``[E, F_d C_in, C_out]``), so no gradient needs a copy. On CPU
    without autograd, edges go in chunks of at most 32 MB of radial weights,
    which bounds inference memory at any batch size (the published recipe
    holds 180 KB of them an edge) and runs as fast as one chunk; under
    autograd every chunk's weights are kept for the backward pass anyway,
    and one chunk is faster (fewer, larger weight-gradient products: 1.2x on
    a published-recipe training step).

    With edges in reverse pairs (`se3pyg.data.pairs`), $R$ depends on the bond alone and
    is formed once per pair: the products above take the pair's two edges as ``2 D_d`` rows of one
    matrix.

    The ``"reassociated"`` kernel never forms $R$: with
    $R_{e o (i f)} = \sum_m W_{(o i f) m} h_{e m}$ (``h`` the radial
    network's last hidden layer),

    $$
    y_{e k o} = \sum_m h_{e m} G_{e k (o m)}, \qquad
    G_{e k (o m)} = \sum_{f i} T_{e k (f i)} W_{(o i f) m},
    $$

    where $G$ is one GEMM over all edges and output components. Per
    edge it holds ``D_out * C_out * mid`` values instead of ``R``'s
    ``C_out * C_in * F`` (36% for degrees 0..3 at 32 channels), for about
    4x the multiplications of the radial part. The ``"fused"`` kernel computes the same
    products in operators that form $G$ (and its gradient) tile by tile and contract
    them at once (`se3pyg.nn.radial_contraction`), writing only $y$. The
    ``"fused_edge_weights"`` kernel
    computes the ``"edge_weights"`` products in operators that form $R$ (and $dR$) tile by tile and
    contract them at once (`se3pyg.nn.edge_weights_contraction`): the fewest
    FLOPs, and neither written.

    Args:
        degrees_in: the input degrees fused.
        degrees_out: the output degrees fused.
        channels_in: channels of every input degree.
        channels_out: channels of every output degree.
        edge_dim: invariant edge features of the radial network.
        use_layer_norm: LayerNorm inside the radial network.
        uses_basis: ``False`` for NVIDIA's pairwise 0 -> 0 kernel, a plain radial weight.

    Shapes:
        ``forward(features [E, D_in, C_in], edge_scalars [E, edge_dim], basis)`` -> ``[E, D_out, C_out]``
        (stacked, components before channels), ``D = sum_d (2d + 1)`` over the fused degrees; with
        ``edge_pairs``, ``edge_scalars [E / 2, edge_dim]``, a row a pair.
    """

    #: Radial weights per CPU chunk (floats): 32 MB. Smaller chunks ran slower (8 MB: 1.21-1.28x the step time of
    #: one chunk, published-recipe inference at batch 64); larger ones only hold more memory.
    CPU_CHUNK_FLOATS = 1 << 23

    #: Edges above which inference under autocast computes this kernel in float32 (``None``: never; the RoseTTAFold
    #: family's copies do so, [`se3pyg.compat.rf2aa`][se3pyg.compat.rf2aa], [`se3pyg.compat.rf2`][se3pyg.compat.rf2]).
    float32_inference_above: int | None = None

    def __init__(
        self,
        degrees_in: list[int],
        degrees_out: list[int],
        channels_in: int,
        channels_out: int,
        edge_dim: int,
        use_layer_norm: bool,
        uses_basis: bool = True,
    ) -> None:
        super().__init__()
        self.uses_basis = uses_basis
        self.degrees_in = list(degrees_in)
        self.degrees_out = list(degrees_out)
        self.channels_in = channels_in
        self.channels_out = channels_out
        self.freq_blocks = [sum(num_frequencies(i, o) for i in degrees_in) for o in degrees_out]
        num_freq = sum(self.freq_blocks)
        self.radial_func = RadialProfile(num_freq, channels_in, channels_out, edge_dim, use_layer_norm=use_layer_norm)

    def _weights_by_frequency(self, dtype: torch.dtype | None = None) -> tuple[Tensor, ...]:
        """The radial network's last weight per output degree ``d``, as ``[F_d, C_in, C_out, H]`` blocks.

        NVIDIA's rows ``(o, i, f)`` reordered to ``(f, i, o)``, one copy for all output degrees (in ``dtype``, if
        given): each block is contiguous, so the radial weights it gives (``[E, F_d C_in, C_out]``) and its
        reassociated products read it without copies.
        """
        return _contiguous(self._last_weight_by_pair().permute(2, 1, 0, 3), dtype).split(self.freq_blocks)

    def _last_weight_by_pair(self) -> Tensor:
        """The radial network's last weight as NVIDIA lays out its rows, ``[C_out, C_in, F, H]`` (a view)."""
        return self.radial_func.last.weight.view(self.channels_out, self.channels_in, sum(self.freq_blocks), -1)

    def _radial_maps(self, hidden_major: bool, dtype: torch.dtype | None = None) -> list[Tensor]:
        """Per output degree ``d``, the map from the hidden layer to the radial weights: ``[H, F_d C_in C_out]``.

        Columns ``(f, i, o)``. ``hidden_major``: one copy with ``H`` as rows, so the forward product and both of its
        gradients (``h^T dR``, ``dR W``) read their operands without transposes: 1.04-1.11x a training step on CPU
        (alternated steps, published recipe and small configuration). Otherwise a transposed view of
        `_weights_by_frequency()`, which inference reads faster (the copy costs more than it saves there).
        In ``dtype``, if given, by the same copy.
        """
        if not hidden_major:
            return [w.reshape(-1, w.shape[-1]).T for w in self._weights_by_frequency(dtype)]
        by_pair = self._last_weight_by_pair()
        columns = [f * self.channels_in * self.channels_out for f in self.freq_blocks]
        hidden_rows = _contiguous(by_pair.permute(3, 2, 1, 0), dtype).view(by_pair.shape[-1], -1)
        return list(hidden_rows.split(columns, dim=1))

    def reset_parameters(self) -> None:
        self.radial_func.reset_parameters()

    def forward(
        self,
        features: Tensor,
        edge_scalars: Tensor,
        basis: Basis | None,
        kernel: str = "edge_weights",
        edge_pairs: bool = False,
    ) -> Tensor:
        """``[E, D_out, C_out]``; with ``edge_pairs`` (edge ``2u + 1`` the reverse of edge ``2u``, see
        `se3pyg.data.pairs`), ``edge_scalars`` holds one row per pair and both edges share its
        weights.

        Args:
            features: the source nodes' features on the edges, ``[E, D_in, C_in]``.
            edge_scalars: the radial network's input a row an edge (a pair, with ``edge_pairs``).
            basis: the edges' bases (``None`` where the group needs none).
            kernel: how to compute (`KERNELS`).
            edge_pairs: edges in reverse pairs.
        """
        device = features.device.type
        limit = self.float32_inference_above
        if limit is not None and not self.training and features.shape[0] > limit and torch.is_autocast_enabled(device):
            with torch.autocast(device, enabled=False):
                return self.forward(features.float(), edge_scalars.float(), basis, kernel, edge_pairs)
        if features.shape[0] == 0:  # no edges, no messages (tied to the weights: their gradient is 0, not None)
            dim_out = sum(2 * d + 1 for d in self.degrees_out)
            return features.new_zeros(0, dim_out, self.channels_out) + 0 * self.radial_func.last.weight.sum()
        hidden = self.radial_func.hidden(edge_scalars)
        per_unit = 2 if edge_pairs else 1  # edges per row of radial weights
        if basis is None:  # NVIDIA's pairwise 0 -> 0 kernel
            weights = (hidden @ self.radial_func.last.weight.T).view(-1, self.channels_out, self.channels_in)
            x = features.reshape(hidden.shape[0], per_unit * features.shape[1], self.channels_in)
            return (x @ weights.transpose(1, 2)).view(features.shape[0], -1, self.channels_out)
        # Under autocast, the last weight is cast once (with its reordering copy) instead of once per output degree,
        # as autocast would cast it (float64 never); features and hidden layer stay cast per product, so their
        # gradients still add up in float32.
        weight = self.radial_func.last.weight
        casts = torch.is_autocast_enabled(device) and weight.dtype != torch.float64
        dtype = torch.get_autocast_dtype(device) if casts else None
        if kernel == "edge_weights":
            return self._edge_weights(features, hidden, basis, per_unit, dtype)
        if kernel == "fused_edge_weights":  # R = h W formed in the operators, from the hidden-major maps
            maps = self._radial_maps(hidden_major=True, dtype=dtype)  # [H, F_d C_in C_out]
            return self._by_output_degree(features, hidden, basis, per_unit, maps, edge_weights_contract)
        weights = [w.flatten(2).flatten(0, 1) for w in self._weights_by_frequency(dtype)]  # [F_d C_in, C_out H]
        contract = radial_contract if kernel == "fused" else contract_reference
        return self._by_output_degree(features, hidden, basis, per_unit, weights, contract)

    def _by_output_degree(
        self,
        features: Tensor,
        hidden: Tensor,
        basis: Basis,
        per_unit: int,
        weights: list[Tensor],
        contract: Callable[[Tensor, Tensor, Tensor, int], Tensor],
    ) -> Tensor:
        """``[E, D_out, C_out]``: per output degree ``d``, ``T = B x`` as ``[E D_d, F_d C_in]`` (rows ``(e, k)``)
        contracted with degree ``d``'s weight and ``hidden`` by ``contract(T, weight, hidden, per_unit D_d)``.

        The reassociated kernels contract through ``G`` (class docstring; ``contract`` from
        `se3pyg.nn.radial_contraction`), ``"fused_edge_weights"`` through ``R``
        (`se3pyg.nn.edge_weights_contraction`); neither writes per-edge radial
        weights. The ``per_unit`` edges
        of a row of ``hidden`` are consecutive, so their output components are one run of rows.
        """
        num_edges, c_in = features.shape[0], self.channels_in
        parts = []
        for d, weight, freq in zip(self.degrees_out, weights, self.freq_blocks, strict=True):
            block = basis.fused(self.degrees_in, [d])  # [E, D_d, F_d, D_in]
            dim = block.shape[1]
            t = torch.bmm(block.reshape(num_edges, dim * freq, -1), features)  # [E, D_d F_d, C_in]
            y = contract(t.view(num_edges * dim, freq * c_in), weight, hidden, per_unit * dim)
            parts.append(y.view(num_edges, dim, -1))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def _edge_weights(
        self, features: Tensor, hidden: Tensor, basis: Basis, per_unit: int, dtype: torch.dtype | None
    ) -> Tensor:
        """``[E, D_out, C_out]`` through per-edge radial weights, in edge chunks of at most 32 MB of them on CPU.

        Per output degree, ``T = B x`` (``[E, D_d, F_d C_in]``, the same product as the reassociated kernel's)
        times the radial weights ``[U, F_d C_in, C_out]`` of the ``U`` rows of ``hidden``, each shared by
        ``per_unit`` consecutive edges (``T`` viewed ``[U, per_unit D_d, F_d C_in]``): both products read
        contiguous operands. No gradient needs a copy, but for pairs the output gradient's degree blocks, which
        the pairs' layout reads as one run. CPU chunks hold whole rows of ``hidden``.
        """
        blocks = [basis.fused(self.degrees_in, [d]) for d in self.degrees_out]
        under_autograd = torch.is_grad_enabled() and hidden.requires_grad
        maps = self._radial_maps(hidden_major=under_autograd, dtype=dtype)  # [H, F_d C_in C_out]
        num_units = hidden.shape[0]
        chunk = num_units
        if features.device.type == "cpu" and not under_autograd:
            chunk = max(1, self.CPU_CHUNK_FLOATS // (self.channels_out * self.channels_in * sum(self.freq_blocks)))
        outputs = []
        for start in range(0, num_units, chunk):
            stop = min(start + chunk, num_units)
            units, edges = stop - start, slice(start * per_unit, stop * per_unit)
            x, h, count = features[edges], hidden[start:stop], (stop - start) * per_unit
            parts = []
            for radial_map, block, freq in zip(maps, blocks, self.freq_blocks, strict=True):
                dim = block.shape[1]
                t = torch.bmm(block[edges].reshape(count, dim * freq, -1), x)  # [e, D_d F_d, C_in]
                radial = (h @ radial_map).view(units, freq * self.channels_in, self.channels_out)
                y = torch.bmm(t.view(units, per_unit * dim, freq * self.channels_in), radial)
                parts.append(y.view(count, dim, self.channels_out))
            outputs.append(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]

    def extra_repr(self) -> str:
        return f"degrees {self.degrees_in} -> {self.degrees_out}, channels {self.channels_in} -> {self.channels_out}"


class ConvSE3(MessagePassing):
    r"""SE(3)-equivariant graph convolution (Tensor Field Network).

    $$
    y^k_i = \sum_{j \to i} \sum_l W^{lk}(r_{ij}) x^l_j
    \;[+\; \deg(i)\, W^k_{\text{self}} x^k_i]
    $$

    (with ``aggr="mean"`` the sum over incoming edges becomes their mean, and $\deg(i)$ becomes 1 for a node
    with incoming edges: RoseTTAFold's ``sum_over_edge=False``; a node without any gets 0)

    with $W^{lk}(r) = \sum_J \phi^{lk}_J(\lVert r \rVert, e) B^{lk}_J(\hat r)$.
    Degree > 0 edge features are concatenated to the source features of
    their degree. With ``pool=False`` the per-edge messages are returned
    (through `edge_updater()`). The self-interaction term is added per
    edge before the sum, as in NVIDIA's implementation.

    ``layout`` fixes the parameters: ``"full"`` one radial network for the
    whole convolution (when all input and output degrees ``0..max_degree``
    are present with equal channels), ``"partial"`` one per output (or input)
    degree, ``"pairwise"`` one per degree pair; each falls back to the next
    when its conditions do not hold, as NVIDIA's fuse levels.

    Args:
        fiber_in: node input fiber.
        fiber_out: node output fiber.
        fiber_edge: edge fiber.
        pool: sum messages into the destination nodes (else return them per edge).
        aggr: ``"add"`` (the sum over incoming edges) or ``"mean"`` (their mean) when pooling.
        use_layer_norm: LayerNorm inside the radial networks.
        self_interaction: add $W^k_{\text{self}} x^k_i$ (per incoming edge).
        max_degree: the largest degree of the bases.
        layout: ``"full"``, ``"partial"`` or ``"pairwise"`` (the parameters).
        low_memory: recompute the kernels in the backward pass.
        kernel: how the kernels compute (`KERNELS`; ``"auto"``: `auto_kernel()` of the input's device).

    Shapes:
        ``forward(node_feats {"d": [N, C_d, 2d+1]}, edge_feats {"d": [E, C_d, 2d+1]}, edge_index [2, E], basis)``
        -> ``{"d": [N, C'_d, 2d+1]}`` (``pool=True``) or ``{"d": [E, C'_d, 2d+1]}``; stacked node features
        ``[N, D, C]`` ([`stack()`][se3pyg.fiber.Fiber.stack]) -> ``[N or E, D', C']`` when ``fiber_out`` is uniform.
        Inputs with equal channels per degree (and no edge features of degree > 0) run stacked either way.
    """

    __repr__ = nn.Module.__repr__  # one style for every layer: torch's, with extra_repr

    def __init__(
        self,
        fiber_in: Fiber,
        fiber_out: Fiber,
        fiber_edge: Fiber,
        pool: bool = True,
        use_layer_norm: bool = False,
        self_interaction: bool = False,
        max_degree: int = 4,
        layout: Layout = "full",
        low_memory: bool = False,
        kernel: str = "auto",
        aggr: Aggregation = "add",
    ) -> None:
        if aggr not in ("add", "mean"):
            raise ValueError(f"aggr must be 'add' or 'mean', got {aggr!r}")
        super().__init__(aggr=aggr, flow="source_to_target", node_dim=0)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        self.kernel = kernel
        self.fiber_in = fiber_in
        self.fiber_out = fiber_out
        self.fiber_edge = fiber_edge
        self.pool = pool
        self.self_interaction = self_interaction
        self.low_memory = low_memory

        self.channels_in = {d: c + fiber_edge[d] * (d > 0) for d, c in fiber_in.items()}
        self.groups: list[KernelGroup] = self._kernel_groups(
            fiber_in, fiber_out, fiber_edge, max_degree, layout, use_layer_norm
        )

        #: Whether node features run stacked (``[N, D, C]``): equal input channels, no edge features of degree > 0.
        self.stacked_in = fiber_in.is_uniform and not any(d > 0 for d in fiber_edge.degrees)
        #: Each group's input degrees -> their run of stacked input components (a group reads every input degree or
        #: one, a run either way).
        self._input_runs = (
            {tuple(g.degrees_in): fiber_in.component_run(g.degrees_in) for g in self.groups} if self.stacked_in else {}
        )
        self._self_run = None  # the stacked input components of a stacked self-interaction
        if self_interaction:
            if self.stacked_in and fiber_out.is_uniform and all(d in fiber_in for d in fiber_out.degrees):
                self._self_run = fiber_in.component_run(fiber_out.degrees)
            self.to_kernel_self = nn.ParameterDict(
                {str(d): nn.Parameter(torch.empty(c, fiber_in[d])) for d, c in fiber_out.items() if d in fiber_in}
            )
        self.reset_parameters()

    def _kernel_groups(
        self,
        fiber_in: Fiber,
        fiber_out: Fiber,
        fiber_edge: Fiber,
        max_degree: int,
        layout: Layout,
        use_layer_norm: bool,
    ) -> list[KernelGroup]:
        """The radial kernels, fused as ``layout`` allows (``self.fuse``): one group for every degree pair
        (``full``), one per output or input degree (``out``, ``in``), or one per pair (``pairwise``)."""
        common = dict(edge_dim=fiber_edge[0] + 1, use_layer_norm=use_layer_norm)
        all_degrees = list(range(max_degree + 1))
        unique_in = len(set(self.channels_in.values())) == 1
        unique_out = len(set(fiber_out.channels)) == 1
        full_in = unique_in and fiber_in.degrees == all_degrees
        full_out = unique_out and fiber_out.degrees == all_degrees
        c_in = next(iter(self.channels_in.values()))
        c_out = fiber_out.channels[0]

        groups: list[KernelGroup] = []
        if layout == "full" and full_in and full_out:
            self.fuse = "full"
            self.conv = KernelGroup(all_degrees, all_degrees, c_in, c_out, **common)
            groups.append(self.conv)
        elif layout in ("full", "partial") and full_in:
            self.fuse = "out"
            self.conv_out = nn.ModuleDict(
                {str(d): KernelGroup(all_degrees, [d], c_in, c, **common) for d, c in fiber_out.items()}
            )
            groups += list(self.conv_out.values())
        elif layout in ("full", "partial") and full_out:
            self.fuse = "in"
            self.conv_in = nn.ModuleDict(
                {str(d): KernelGroup([d], all_degrees, c, c_out, **common) for d, c in self.channels_in.items()}
            )
            groups += list(self.conv_in.values())
        else:
            self.fuse = "pairwise"
            self.conv = nn.ModuleDict(
                {
                    # NVIDIA's pairwise 0 -> 0 kernel has no basis: a factor 1, not Y_0 = 1/sqrt(4 pi).
                    f"{di},{do}": KernelGroup([di], [do], ci, co, **common, uses_basis=(di, do) != (0, 0))
                    for di, ci in self.channels_in.items()
                    for do, co in fiber_out.items()
                }
            )
            groups += list(self.conv.values())
        return groups

    def reset_parameters(self) -> None:
        for group in self.groups:
            group.reset_parameters()
        if self.self_interaction:
            with torch.no_grad():
                for weight in self.to_kernel_self.values():
                    weight.normal_().div_(weight.shape[1] ** 0.5)

    def forward(
        self,
        node_feats: dict[str, Tensor] | Tensor,
        edge_feats: dict[str, Tensor],
        edge_index: Tensor,
        basis: Basis,
        edge_pairs: bool = False,
    ) -> dict[str, Tensor] | Tensor:
        """Node features in, node features (``pool=True``) or edge features out.

        Stacked node features (``[N, D, C]``) give stacked features out when ``fiber_out`` is uniform.
        ``edge_pairs``: edge ``2u + 1`` is the reverse of edge ``2u`` with equal edge features, so the radial
        weights are formed once per pair (`se3pyg.data.pairs`).

        Args:
            node_feats: the nodes' features by degree (or stacked, ``[N, D, C]``).
            edge_feats: the edges' features by degree (``{"0": [E, C, 1]}``).
            edge_index: ``[2, E]``, sources then targets.
            basis: the edges' bases.
            edge_pairs: edges in reverse pairs, as above.
        """
        stacked = isinstance(node_feats, Tensor)
        if stacked:
            num_nodes = node_feats.shape[0]
            x = node_feats if self.stacked_in else self.fiber_in.pack(self.fiber_in.unstack(node_feats))
        else:
            num_nodes = next(iter(node_feats.values())).shape[0]
            x = self.fiber_in.stack(node_feats) if self.stacked_in else self.fiber_in.pack(node_feats)
        kwargs = dict(x=x, edge_feats=edge_feats, basis=basis, edge_pairs=edge_pairs, size=(num_nodes, num_nodes))
        out = self.propagate(edge_index, **kwargs) if self.pool else self.edge_updater(edge_index, **kwargs)
        if self.self_interaction:
            out = self._add_self_interaction(out, x, edge_index, num_nodes)
        if not isinstance(out, Tensor):
            return self.fiber_out.stack(out) if stacked and self.fiber_out.is_uniform else out
        if self.fiber_out.is_uniform:
            return out if stacked else self.fiber_out.unstack(out)
        return self.fiber_out.unpack(out)

    def _add_self_interaction(
        self, out: Tensor, x: Tensor, edge_index: Tensor, num_nodes: int
    ) -> Tensor | dict[str, Tensor]:
        r"""$W^k_{\text{self}} x^k_i$ added once per incoming edge of node ``i`` (once if it has any, when the
        messages are averaged)."""
        count = node_degree(edge_index[1], num_nodes, dtype=x.dtype) if self.pool else None
        if count is not None and self.aggr == "mean":
            count = count.clamp(max=1)
        if self._self_run is not None:  # stacked in and out
            weights = [self.to_kernel_self[str(d)] for d in self.fiber_out.degrees]
            term = stacked_linear(component_rows(x, self._self_run), weights, self.fiber_out.degrees)
            return out + (count[:, None, None] * term if self.pool else term[edge_index[1]])
        inputs = self.fiber_in.unstack(x) if self.stacked_in else self.fiber_in.unpack(x)
        out = self.fiber_out.unstack(out) if self.fiber_out.is_uniform else self.fiber_out.unpack(out)
        for key, weight in self.to_kernel_self.items():
            term = weight @ inputs[key]
            out[key] = out[key] + (count[:, None, None] * term if self.pool else term[edge_index[1]])
        return out

    def message(self, x_j: Tensor, edge_feats: dict[str, Tensor], basis: Basis, edge_pairs: bool) -> Tensor:
        return self.edge_update(x_j, edge_feats, basis, edge_pairs)

    def edge_update(self, x_j: Tensor, edge_feats: dict[str, Tensor], basis: Basis, edge_pairs: bool) -> Tensor:
        """Per-edge kernel outputs: stacked ``[E, D_out, C_out]`` for a uniform ``fiber_out``, else packed
        ``[E, fiber_out.num_features]``."""
        edge_scalars = edge_feats["0"].squeeze(-1)
        if edge_pairs:  # one row of radial network inputs per pair of edges
            edge_scalars = edge_scalars[0::2]
        kernel = auto_kernel(x_j.device.type) if self.kernel == "auto" else self.kernel
        inputs = self._group_inputs(x_j, edge_feats)
        sums: dict[tuple[int, ...], Tensor] = {}  # per output degrees of the groups
        for group in self.groups:
            group_basis = basis if group.uses_basis else None
            args = (inputs[tuple(group.degrees_in)], edge_scalars, group_basis, kernel, edge_pairs)
            if self.low_memory and torch.is_grad_enabled():
                y = torch.utils.checkpoint.checkpoint(group, *args, use_reentrant=False)
            else:
                y = group(*args)
            key = tuple(group.degrees_out)
            sums[key] = sums[key] + y if key in sums else y
        if len(sums) == 1:  # one group or groups over every output degree: stacked already
            return next(iter(sums.values()))
        parts = [sums[(d,)] for d in self.fiber_out.degrees]
        if self.fiber_out.is_uniform:
            return torch.cat(parts, dim=1)
        return torch.cat([p.transpose(1, 2).flatten(1) for p in parts], dim=-1)

    def _group_inputs(self, x_j: Tensor, edge_feats: dict[str, Tensor]) -> dict[tuple[int, ...], Tensor]:
        """Each group's input degrees -> their stacked source features ``[E, D_in, C_in]``."""
        if self.stacked_in:
            return {k: component_rows(x_j, run) for k, run in self._input_runs.items()}
        keys = {tuple(group.degrees_in) for group in self.groups}
        inputs = self.fiber_in.unpack(x_j)
        for d in self.fiber_in.degrees:
            if d > 0 and str(d) in edge_feats:
                inputs[str(d)] = torch.cat([inputs[str(d)], edge_feats[str(d)]], dim=1)
        return {
            k: torch.cat([inputs[str(d)].transpose(1, 2) for d in k], dim=1)
            if len(k) > 1
            else inputs[str(k[0])].transpose(1, 2)
            for k in keys
        }

    def extra_repr(self) -> str:
        aggr = "" if self.aggr == "add" else f", aggr={self.aggr}"
        return f"{self.fiber_in} -> {self.fiber_out}, fuse={self.fuse}, pool={self.pool}{aggr}, kernel={self.kernel}"
