"""Options as dataclass fields that carry their own help text.

A command's options are declared once, as the fields of a config dataclass
(`ModelOptions` below, [`se3pyg.engine.config`][se3pyg.engine.config]); the command line is
generated from those fields, so a default or a help text lives in one place.
Nothing here imports torch: ``se3pyg --help`` builds the command line from these
classes alone.
"""

from __future__ import annotations

from dataclasses import Field, dataclass, field
from typing import Any

#: The largest model sizes se3pyg builds (far above any trained model: NVIDIA's recipe has 7 layers, 4 degrees, 32
#: channels, 8 heads), for the command line and for a checkpoint's ``model_config``, read before its weights.
MODEL_SIZE_LIMITS = {
    "num_layers": 64,
    "num_degrees": 7,
    "num_channels": 4096,
    "num_heads": 4096,
    "channels_div": 4096,
    "output_dim": 4096,
}


def option(default: Any, help: str, *flags: str, choices: tuple[str, ...] = ()) -> Any:
    """A dataclass field with ``default``, a one-line ``help`` and, optionally, its command-line ``flags`` and the
    values it takes (``choices``, offered as such by ``--help``)."""
    return field(default=default, metadata={"help": help, "flags": flags, "choices": choices})


def choices_of(f: Field) -> tuple[str, ...]:
    """The values a field declared with `option()` takes (empty: any of its type)."""
    return f.metadata.get("choices", ())


def help_of(f: Field) -> str:
    """The help text of a field declared with `option()` (empty for others)."""
    return f.metadata.get("help", "")


@dataclass
class ModelOptions:
    """The hyperparameters of [`se3pyg.SE3TransformerPooled`][se3pyg.SE3TransformerPooled] (defaults: NVIDIA's published
    QM9 recipe)."""

    num_layers: int = option(7, "Attention layers.")
    num_degrees: int = option(4, "Hidden degrees 0 .. N-1.")
    num_channels: int = option(32, "Hidden channels per degree.")
    num_heads: int = option(8, "Attention heads.")
    channels_div: int = option(2, "Channel division for keys and values.")
    pooling: str = option("max", "Graph pooling.", choices=("max", "avg"))
    norm: bool = option(True, "Equivariant norm after each attention block.")
    use_layer_norm: bool = option(True, "LayerNorm in the radial networks.")
    layout: str = option("full", "Parameter layout.", choices=("full", "partial", "pairwise"))
    low_memory: bool = option(False, "Recompute convolution kernels in the backward pass (less memory).")
    kernel: str = option(
        "auto",
        "How the convolutions compute (auto: reassociated on GPUs).",
        choices=("auto", "edge_weights", "reassociated", "fused", "fused_edge_weights"),
    )
