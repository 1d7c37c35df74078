"""Training state in one place: built from the config (or restored from a checkpoint), saved as one."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from se3pyg.engine.checkpoint import model_from_checkpoint
from se3pyg.engine.config import TrainConfig
from se3pyg.engine.distributed import DistInfo
from se3pyg.engine.graphs import GraphedSteps
from se3pyg.engine.optim import make_optimizer
from se3pyg.engine.precision import Precision
from se3pyg.model import SE3TransformerPooled


@dataclass
class TrainState:
    """What training steps read and change, and where the run stands.

    ``model`` is the bare model (what checkpoints hold), ``net`` what the
    step calls: the model, compiled and/or wrapped in DDP; ``graphs`` the
    CUDA-graph steps that replace it with ``--cuda-graphs``. ``epoch`` is the
    next epoch to run.
    """

    model: SE3TransformerPooled
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts
    scaler: torch.amp.GradScaler
    precision: Precision
    accumulate: int = 1
    gradient_clip: float | None = None
    epoch: int = 0
    best_val_mae: float = math.inf
    graphs: GraphedSteps | None = None

    @classmethod
    def build(
        cls,
        config: TrainConfig,
        info: DistInfo,
        checkpoint: dict[str, Any] | None = None,
        compile: bool = False,
        node_features: int = 6,
    ) -> TrainState:
        """NVIDIA's recipe for ``config`` on ``info.device``: seeded model (``node_features`` in: QM9's 6, or
        a dataset's), AdamW (or SGD, LAMB), cosine schedule with warm restarts every ``epochs``, loss scaling
        for fp16, DDP with a static graph."""
        torch.manual_seed(config.seed)
        precision = Precision.choose(config.amp, config.amp_dtype, info.device)
        precision.configure_backends()
        model = (
            model_from_checkpoint(checkpoint, str(config.load_ckpt_path))
            if checkpoint
            else SE3TransformerPooled(fiber_in={0: node_features}, **config.model_options())
        )
        model = model.to(info.device)
        net: nn.Module = torch.compile(model, dynamic=True) if compile else model
        if info.distributed:
            net = DistributedDataParallel(net, device_ids=[info.device.index] if info.device.type == "cuda" else None)
            net._set_static_graph()
        optimizer = make_optimizer(
            config.optimizer, model.parameters(), config.learning_rate, config.weight_decay, config.momentum
        )
        floor = config.min_learning_rate if config.min_learning_rate is not None else config.learning_rate / 10
        scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=config.epochs, eta_min=floor)
        state = cls(model, net, optimizer, scheduler, precision.grad_scaler(), precision)
        state.accumulate, state.gradient_clip = config.accumulate_grad_batches, config.gradient_clip
        if checkpoint is not None:
            state.restore(checkpoint, config.epochs)
        if config.cuda_graphs:
            state.graphs = GraphedSteps(state)
        return state

    def restore(self, checkpoint: dict[str, Any], epochs: int) -> None:
        """Optimizer, schedule (stretched to ``epochs`` in total), loss scale and progress of ``checkpoint``."""
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scheduler.T_0 = self.scheduler.T_i = epochs
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.epoch = checkpoint["epoch"] + 1
        self.best_val_mae = checkpoint.get("best_val_mae", math.inf)

    def to_checkpoint(self, epoch: int, **extra: Any) -> dict[str, Any]:
        """A checkpoint payload after ``epoch``, with ``extra`` entries (task, statistics, run id, ...)."""
        return {
            "model_config": self.model.config,
            "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "best_val_mae": self.best_val_mae,
            **extra,
        }
