"""NVIDIA's DGL SE(3)-Transformer, without DGL: its classes by their own arguments, and its checkpoints.

`SE3Transformer`, `SE3TransformerPooled` and `Fiber`
take NVIDIA's constructor arguments and calls, so that code vendoring
NVIDIA's ``se3_transformer`` package (RFdiffusion, RoseTTAFold) changes its
imports and its graph construction only: the DGL graph becomes a PyG
``Data`` with ``edge_index`` (row 0 source, row 1 destination), ``rel_pos``
[E, 3] and ``num_nodes``, or the tuple ``(edge_index, rel_pos, num_nodes)``.

se3pyg keeps NVIDIA's parameter names, so a checkpoint loads as it is
(`load_nvidia()` reads its hyperparameters off its keys and shapes).
Heads and ``channels_div`` do not show in the weights and must be given
(NVIDIA's defaults: 8 and 2); ``channels_div`` is checked against the shapes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from se3pyg import model
from se3pyg.basis import Basis
from se3pyg.fiber import Fiber
from se3pyg.io import read_torch_file
from se3pyg.model import EDGE_LENGTHS, FINAL_LAYERS, EdgeLength, FinalLayer, Pooling
from se3pyg.nn.conv import KernelGroup, Layout

__all__ = [
    "NVIDIA_SCRIPT_ARGUMENTS",
    "Fiber",
    "SE3Transformer",
    "SE3TransformerPooled",
    "load_nvidia",
    "nvidia_2021_layout",
    "nvidia_layout",
]


NVIDIA_SCRIPT_ARGUMENTS: frozenset[str] = frozenset(
    {
        "accumulate_grad_batches",
        "amp",
        "batch_size",
        "benchmark",
        "ckpt_interval",
        "data_dir",
        "dllogger_name",
        "epochs",
        "eval_interval",
        "gradient_clip",
        "learning_rate",
        "load_ckpt_path",
        "log_dir",
        "min_learning_rate",
        "momentum",
        "num_workers",
        "optimizer",
        "precompute_bases",
        "save_ckpt_path",
        "seed",
        "silent",
        "task",
        "wandb",
        "weight_decay",
    }
)
"""The keyword arguments of NVIDIA's training script (``runtime/arguments.py`` and the model's
``add_argparse_args``), which its ``SE3TransformerPooled(..., **vars(args))`` receives and ignores."""


def nvidia_layout(tensor_cores: bool = False, low_memory: bool = False) -> Layout:
    """The parameter layout NVIDIA's current flags give: its fuse level NONE (``"pairwise"``) with ``low_memory``,
    FULL with ``tensor_cores``, else PARTIAL (what NVIDIA's CPU models have). RoseTTAFold2 and RFdiffusion2 vendor
    this code; RoseTTAFold-All-Atom and RFdiffusion vendor the 2021 code, whose rule is `nvidia_2021_layout()`.

    Args:
        tensor_cores: NVIDIA's ``tensor_cores`` flag.
        low_memory: its ``low_memory`` flag.
    """
    if low_memory:
        return "pairwise"
    return "full" if tensor_cores else "partial"


def nvidia_2021_layout(tensor_cores: bool = False, low_memory: bool = False) -> Layout:
    """The parameter layout the flags give in NVIDIA's 2021 code (vendored by RFdiffusion, RoseTTAFold-All-Atom,
    RoseTTAFold2NA, RFantibody): fully fused with ``tensor_cores`` unless ``low_memory``, else partially fused.
    ``low_memory`` never means the pairwise layout, nor recomputation, there; the final convolution is built fully
    fused whatever the flags (where its fibers allow it).

    Args:
        tensor_cores: the 2021 code's ``tensor_cores`` flag.
        low_memory: its ``low_memory`` flag.
    """
    return "full" if tensor_cores and not low_memory else "partial"


def _pyg_graph(graph: Any) -> Any:
    """A PyG ``Data`` (or ``Batch``) as it is; ``(edge_index, rel_pos, num_nodes)`` as a ``Data``."""
    from torch_geometric.data import Data

    if isinstance(graph, tuple) and len(graph) == 3:
        edge_index, rel_pos, num_nodes = graph
        return Data(edge_index=edge_index, rel_pos=rel_pos, num_nodes=int(num_nodes))
    if type(graph).__module__.split(".")[0] == "dgl":
        raise ValueError(
            "graph: a DGL graph; pass a PyG Data(edge_index=[2, E] (row 0 source), rel_pos=[E, 3], num_nodes=N) "
            "or the tuple (edge_index, rel_pos, num_nodes)"
        )
    return graph


def _no_basis_dict(basis: Any) -> Basis | Tensor | None:
    if isinstance(basis, Mapping):
        raise ValueError("basis: NVIDIA's precomputed basis dicts are not used; pass None (or se3pyg's Basis)")
    return basis


def _checked_choice(name: str, value: Any, allowed: tuple[str, ...]) -> Any:
    if value is not None and value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


class SE3Transformer(model.SE3Transformer):
    """NVIDIA's ``SE3Transformer(num_layers, fiber_in, fiber_hidden, fiber_out, num_heads, channels_div,
    fiber_edge, return_type, pooling, norm, use_layer_norm, tensor_cores, low_memory)``, with the arguments that
    RoseTTAFold2 and RFdiffusion2 add to their copies (``final_layer``, ``populate_edge``, ``sum_over_edge``,
    ``compute_gradients``), called as ``forward(graph, node_feats, edge_feats=None, basis=None)`` with a PyG graph
    (module docstring).

    The parameter layout follows NVIDIA's current flags (`nvidia_layout()`; ``low_memory`` also recomputes
    the convolutions in the backward pass, as NVIDIA's does). Any other argument is refused with a ``TypeError``:
    a copy's argument that se3pyg did not build would give a different network without a word.

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
        norm: an equivariant norm after each attention block.
        use_layer_norm: LayerNorm inside the radial networks.
        tensor_cores: NVIDIA's flag: the fully fused layout.
        low_memory: NVIDIA's flag: the pairwise layout, recomputed in the backward pass.
        final_layer: ``"conv"``, ``"lin"`` or ``"att"`` ([`se3pyg.model.SE3Transformer`][se3pyg.model.SE3Transformer]).
        populate_edge: ``"lin"``, ``"arcsin"``, ``"log"`` or ``"zero"``
            (`se3pyg.model.edge_length_feature()`).
        sum_over_edge: ``False``: the final convolution averages its messages instead of summing them.
        compute_gradients: gradients flow through the bases into ``rel_pos`` (NVIDIA's ``get_basis`` flag;
            the edge length's gradient flows either way).
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
        norm: bool = True,
        use_layer_norm: bool = True,
        tensor_cores: bool = False,
        low_memory: bool = False,
        *,
        final_layer: FinalLayer = "conv",
        populate_edge: EdgeLength = "lin",
        sum_over_edge: bool = True,
        compute_gradients: bool = False,
    ) -> None:
        _checked_choice("final_layer", final_layer, FINAL_LAYERS)
        _checked_choice("populate_edge", populate_edge, EDGE_LENGTHS)
        layout, final_layout, recompute = self.layouts(tensor_cores, low_memory)
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
            layout=layout,
            low_memory=recompute,
            final_layer=final_layer,
            populate_edge=populate_edge,
            final_aggr="add" if sum_over_edge else "mean",
            final_layout=final_layout,
            basis_gradients=compute_gradients,
        )
        self.tensor_cores = tensor_cores
        for module in self.modules():
            if isinstance(module, KernelGroup):
                module.float32_inference_above = self.FLOAT32_INFERENCE_ABOVE

    #: Edges above which inference under autocast computes the convolutions in float32, as the copy does
    #: (``None``: never; NVIDIA's code never does).
    FLOAT32_INFERENCE_ABOVE: int | None = None

    @staticmethod
    def layouts(tensor_cores: bool, low_memory: bool) -> tuple[Layout, Layout | None, bool]:
        """What the copy's flags build: the blocks' layout, the final convolution's (``None``: the same), and
        whether convolutions are recomputed in the backward pass (`nvidia_layout()`).

        Args:
            tensor_cores: the copy's ``tensor_cores`` flag.
            low_memory: its ``low_memory`` flag.
        """
        return nvidia_layout(tensor_cores, low_memory), None, low_memory

    def forward(
        self,
        graph: Any,
        node_feats: Mapping[str, Tensor],
        edge_feats: Mapping[str, Tensor] | None = None,
        basis: Any = None,
    ) -> Tensor | dict[str, Tensor]:
        """NVIDIA's call.

        Args:
            graph: a PyG ``Data``/``Batch``, or ``(edge_index, rel_pos, num_nodes)`` (a DGL graph's tensors).
            node_feats: the nodes' features by degree (``{"0": [N, C, 1], ...}``).
            edge_feats: the edges' features by degree.
            basis: ignored unless a precomputed basis tensor (NVIDIA's dict of bases is recomputed).
        """
        return super().forward(_pyg_graph(graph), node_feats, edge_feats, _no_basis_dict(basis))


class SE3TransformerPooled(model.SE3TransformerPooled):
    """NVIDIA's ``SE3TransformerPooled(fiber_in, fiber_out, fiber_edge, num_degrees, num_channels, output_dim,
    **kwargs)``, called as ``forward(graph, node_feats, edge_feats, basis=None)``; the graph carries ``batch`` for
    several graphs.

    ``kwargs``: the model's arguments (``num_layers``, ``num_heads``, ``channels_div``, ``pooling``, ``norm``,
    ``use_layer_norm``, ``tensor_cores``, ``low_memory``) and the other options of NVIDIA's training script
    (`NVIDIA_SCRIPT_ARGUMENTS`, ignored as NVIDIA ignores them); any other name is a ``TypeError``.

    Args:
        fiber_in: node input fiber (degree 0).
        fiber_out: transformer output fiber (degree 0).
        fiber_edge: edge fiber (degree 0).
        num_degrees: hidden degrees ``0 .. num_degrees - 1``.
        num_channels: hidden channels per degree.
        output_dim: targets per graph.
        **kwargs: as above.
    """

    MODEL_ARGUMENTS = frozenset(
        {"num_layers", "num_heads", "channels_div", "pooling", "norm", "use_layer_norm", "tensor_cores", "low_memory"}
    )

    def __init__(
        self,
        fiber_in: Fiber | Mapping[int, int],
        fiber_out: Fiber | Mapping[int, int],
        fiber_edge: Fiber | Mapping[int, int],
        num_degrees: int,
        num_channels: int,
        output_dim: int,
        **kwargs: Any,
    ) -> None:
        unknown = sorted(set(kwargs) - self.MODEL_ARGUMENTS - NVIDIA_SCRIPT_ARGUMENTS)
        if unknown:
            raise TypeError(f"SE3TransformerPooled() got unexpected keyword arguments {unknown}")
        options = {k: v for k, v in kwargs.items() if k in self.MODEL_ARGUMENTS and v is not None}
        layout = nvidia_layout(options.pop("tensor_cores", False), options.get("low_memory", False))
        super().__init__(
            fiber_in,
            fiber_out,
            fiber_edge,
            output_dim,
            num_degrees=num_degrees,
            num_channels=num_channels,
            layout=layout,
            **options,
        )

    def forward(  # type: ignore[override]  # NVIDIA's call
        self, graph: Any, node_feats: Mapping[str, Tensor], edge_feats: Mapping[str, Tensor], basis: Any = None
    ) -> Tensor:
        """NVIDIA's call: one prediction a graph.

        Args:
            graph: a PyG ``Batch`` (or ``(edge_index, rel_pos, num_nodes)`` with a ``batch``).
            node_feats: the nodes' features by degree.
            edge_feats: the edges' features by degree.
            basis: as `SE3Transformer.forward`.
        """
        pooled = self.transformer(_pyg_graph(graph), node_feats, edge_feats, _no_basis_dict(basis))
        return self.head(pooled)


_LAYER = re.compile(r"^graph_modules\.(\d+)\.")


def _read(checkpoint: str | os.PathLike | Mapping[str, Any]) -> tuple[dict[str, Tensor], str]:
    if isinstance(checkpoint, str | os.PathLike):
        name = os.fspath(checkpoint)
        checkpoint = read_torch_file(name)
    else:
        name = "checkpoint"
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{name}: not an NVIDIA SE(3)-Transformer checkpoint (a {type(checkpoint).__name__})")
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{name}: not an NVIDIA SE(3)-Transformer checkpoint (no tensor state dict)")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return state, name


def _infer_transformer(
    state: Mapping[str, Tensor], name: str, channels_div: int, fibers: Mapping[str, Fiber | None]
) -> dict[str, Any]:
    """Hyperparameters of an ``SE3Transformer`` from its (unprefixed) state dict."""
    layers: dict[int, set[str]] = {}
    for key in state:
        match = _LAYER.match(key)
        if match is None:
            raise ValueError(f"{name}: unexpected parameter {key!r} for an NVIDIA SE(3)-Transformer")
        layers.setdefault(int(match.group(1)), set()).add(key)
    attention = [i for i in sorted(layers) if any(".to_key_value." in k for k in layers[i])]
    if not attention:
        raise ValueError(f"{name}: no attention blocks (graph_modules.*.to_key_value) found")
    norm = any(".group_norm." in k or ".layer_norms." in k for k in state)
    use_layer_norm = any(re.search(r"radial_func\.net\.1\.weight$", k) for k in state)

    def weights(prefix: str) -> dict[int, Tensor]:
        pat = re.compile(re.escape(prefix) + r"(\d+)$")
        return {int(m.group(1)): v for k, v in state.items() if (m := pat.match(k))}

    last = attention[-1]
    project = weights(f"graph_modules.{last}.project.weights.")
    fiber_hidden = Fiber({d: w.shape[0] for d, w in project.items()})
    if len(attention) > 1:
        value_channels = project[0].shape[1] - fiber_hidden[0]
        if fiber_hidden[0] // channels_div != value_channels:
            raise ValueError(
                f"{name}: channels_div={channels_div} does not fit: the checkpoint's value channels are "
                f"{value_channels} for {fiber_hidden[0]} hidden channels"
            )
    first_project = weights(f"graph_modules.{attention[0]}.project.weights.")
    fiber_in = fibers.get("fiber_in") or Fiber(
        {d: w.shape[1] - fiber_hidden[d] // channels_div for d, w in first_project.items()}
    )
    radial = [v for k, v in state.items() if k.endswith("radial_func.net.0.weight")]
    fiber_edge = fibers.get("fiber_edge") or Fiber({0: radial[0].shape[1] - 1})
    final = max(layers)
    self_kernels = weights(f"graph_modules.{final}.to_kernel_self.")
    fiber_out = fibers.get("fiber_out") or Fiber({d: w.shape[0] for d, w in self_kernels.items()})

    layout = "full"
    for i in attention[1:]:
        keys = layers[i]
        if any(".to_key_value.conv_out." in k or ".to_key_value.conv_in." in k for k in keys):
            layout = "partial"
        elif any(re.search(r"\.to_key_value\.conv\.\d+,\d+\.", k) for k in keys):
            layout = "pairwise"
        break
    return dict(
        num_layers=len(attention),
        fiber_in=fiber_in,
        fiber_hidden=fiber_hidden,
        fiber_out=fiber_out,
        fiber_edge=fiber_edge,
        norm=norm,
        use_layer_norm=use_layer_norm,
        layout=layout,
    )


def _load(model: torch.nn.Module, state: Mapping[str, Tensor], name: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{name}: parameters do not match the inferred model "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
        )
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise ValueError(f"{name}: {key} has shape {list(value.shape)}, the model expects {list(own[key].shape)}")
    model.load_state_dict(state)


def load_nvidia(
    checkpoint: str | os.PathLike | Mapping[str, Any],
    *,
    num_heads: int = 8,
    channels_div: int = 2,
    pooling: Pooling = "max",
    fiber_in: Fiber | Mapping[int, int] | None = None,
    fiber_edge: Fiber | Mapping[int, int] | None = None,
    fiber_out: Fiber | Mapping[int, int] | None = None,
) -> model.SE3TransformerPooled | model.SE3Transformer:
    """An NVIDIA checkpoint as an se3pyg model in eval mode.

    A ``SE3TransformerPooled`` state dict (keys ``transformer.*`` and ``mlp.*``) gives an `SE3TransformerPooled`;
    a bare ``SE3Transformer`` state dict gives an `SE3Transformer` (fibers are inferred where the shapes determine
    them; pass them to be sure).

    Args:
        checkpoint: a path, NVIDIA's training checkpoint (``{"state_dict", ...}``) or a bare state dict.
        num_heads: the attention heads it was trained with (not stored in the weights).
        channels_div: the key and value channel divisor it was trained with (checked against the weights).
        pooling: ``"max"`` or ``"avg"``, as trained.
        fiber_in: the input fiber, where the shapes do not determine it.
        fiber_edge: the edge fiber, likewise.
        fiber_out: the output fiber, likewise.

    Raises:
        ValueError: what does not match, named.
    """
    state, name = _read(checkpoint)
    fibers = {
        "fiber_in": Fiber(fiber_in) if fiber_in is not None else None,
        "fiber_edge": Fiber(fiber_edge) if fiber_edge is not None else None,
        "fiber_out": Fiber(fiber_out) if fiber_out is not None else None,
    }
    if any(k.startswith("transformer.") for k in state):
        built: torch.nn.Module = _pooled_model(state, name, num_heads, channels_div, pooling, fibers)
    else:
        hp = _infer_transformer(state, name, channels_div, fibers)
        _check_heads(name, hp["fiber_hidden"], num_heads, channels_div)
        built = model.SE3Transformer(num_heads=num_heads, channels_div=channels_div, **hp)
    _load(built, state, name)
    return built.eval()


def _pooled_model(
    state: dict[str, Tensor], name: str, num_heads: int, channels_div: int, pooling: Pooling, fibers: dict[str, Any]
) -> model.SE3TransformerPooled:
    """The untrained `SE3TransformerPooled` an NVIDIA pooled state dict describes (``transformer.*``, ``mlp.*``)."""
    mlp = {k: v for k, v in state.items() if k.startswith("mlp.")}
    if set(mlp) != {"mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"}:
        raise ValueError(f"{name}: expected the pooled model's MLP head (mlp.0, mlp.2), found {sorted(mlp)}")
    inner = {k.removeprefix("transformer."): v for k, v in state.items() if k.startswith("transformer.")}
    other = sorted(set(state) - set(mlp) - {f"transformer.{k}" for k in inner})
    if other:
        raise ValueError(f"{name}: unexpected parameters {other[:3]}")
    hp = _infer_transformer(inner, name, channels_div, fibers)
    hidden = hp["fiber_hidden"]
    if len(set(hidden.channels)) != 1 or hidden.degrees != list(range(len(hidden))):
        raise ValueError(f"{name}: hidden fiber {hidden} is not degrees 0..n-1 with equal channels")
    _check_heads(name, hidden, num_heads, channels_div)
    return model.SE3TransformerPooled(
        fiber_in=hp["fiber_in"],
        fiber_out=hp["fiber_out"],
        fiber_edge=hp["fiber_edge"],
        num_degrees=len(hidden),
        num_channels=hidden.channels[0],
        output_dim=state["mlp.2.weight"].shape[0],
        num_layers=hp["num_layers"],
        num_heads=num_heads,
        channels_div=channels_div,
        pooling=pooling,
        norm=hp["norm"],
        use_layer_norm=hp["use_layer_norm"],
        layout=hp["layout"],
    )


def _check_heads(name: str, hidden: Fiber, num_heads: int, channels_div: int) -> None:
    bad = [c for c in hidden.channels if (c // channels_div) % num_heads]
    if bad:
        raise ValueError(
            f"{name}: num_heads={num_heads} does not divide the value channels "
            f"{[c // channels_div for c in hidden.channels]}"
        )
