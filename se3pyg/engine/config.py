"""Configuration of a training run: NVIDIA's options and defaults (the published QM9 recipe)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class ModelOptions:
    """The model hyperparameters a command takes (defaults: NVIDIA's published recipe)."""

    num_layers: int = 7
    num_heads: int = 8
    channels_div: int = 2
    pooling: str = "max"
    norm: bool = True
    use_layer_norm: bool = True
    low_memory: bool = False
    num_degrees: int = 4
    num_channels: int = 32
    layout: str = "full"

    def model_kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(ModelOptions)}


@dataclass
class TrainConfig(ModelOptions):
    task: str = "homo"
    epochs: int = 100
    batch_size: int = 240
    seed: int = 0
    num_workers: int = 0
    amp: bool = False
    amp_dtype: str = "fp16"
    gradient_clip: float | None = None
    accumulate_grad_batches: int = 1
    ckpt_interval: int = -1
    eval_interval: int = 20
    silent: bool = False
    data_dir: str = "data/qm9"
    limit: int | None = None
    save_ckpt_path: str | None = None
    load_ckpt_path: str | None = None
    optimizer: str = "adam"
    learning_rate: float = 0.002
    min_learning_rate: float | None = None
    momentum: float = 0.9
    weight_decay: float = 0.1
    precompute_bases: bool = False
    gpus: int = 0
    processes: int = 1
    tracking_uri: str | None = None
    experiment: str = "se3pyg"
    run_name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        """``ValueError`` naming the first option that cannot work."""
        from se3pyg.data.tasks import get_task
        from se3pyg.engine.optim import OPTIMIZERS

        get_task(self.task)
        positive = ("epochs", "batch_size", "accumulate_grad_batches", "num_layers", "num_degrees", "num_channels")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.num_heads < 1 or self.channels_div < 1:
            raise ValueError("--num-heads and --channels-div must be >= 1")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.amp_dtype not in ("fp16", "bf16"):
            raise ValueError(f"--amp-dtype must be fp16 or bf16, got {self.amp_dtype!r}")
        if self.pooling not in ("max", "avg"):
            raise ValueError(f"--pooling must be max or avg, got {self.pooling!r}")
        if self.learning_rate <= 0:
            raise ValueError(f"--learning-rate must be > 0, got {self.learning_rate}")
        if self.num_workers < 0 or self.processes < 1 or self.gpus < 0:
            raise ValueError("--num-workers and --gpus must be >= 0, --processes >= 1")
        if self.limit is not None and self.limit < 10:
            raise ValueError(f"--limit must be >= 10 (train, validation and test need molecules), got {self.limit}")
        if (self.num_channels // self.channels_div) % self.num_heads:
            raise ValueError(
                f"--num-heads {self.num_heads} must divide num_channels / channels_div = "
                f"{self.num_channels // self.channels_div}"
            )
