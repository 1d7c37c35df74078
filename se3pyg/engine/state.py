"""Training state in one place: built from the config (or restored from a checkpoint), saved as one."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from torch_geometric.data import Batch


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
            if config.accumulate_grad_batches == 1:  # a static graph's reducer fails inside no_sync (accumulation)
                net._set_static_graph()
        optimizer = make_optimizer(
            config.optimizer, model.parameters(), config.learning_rate, config.weight_decay, config.momentum
        )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=config.epochs, eta_min=config.lr_floor
        )
        state = cls(model, net, optimizer, scheduler, precision.grad_scaler(), precision)
        state.accumulate, state.gradient_clip = config.accumulate_grad_batches, config.gradient_clip
        if checkpoint is not None:
            state.restore(checkpoint, config)
        if config.cuda_graphs:
            state.graphs = GraphedSteps(state)
        return state

    @property
    def predict(self) -> Callable[[Batch], torch.Tensor] | None:
        """How evaluation predicts a batch: replayed with the training's CUDA graphs, else ``None`` (the eager
        [`predict_step()`][se3pyg.engine.step.predict_step])."""
        return self.graphs.predict if self.graphs is not None else None

    def restore(self, checkpoint: dict[str, Any], config: TrainConfig) -> None:
        """Optimizer, schedule (stretched to ``config.epochs`` in total), loss scale and progress of
        ``checkpoint``; then ``config``'s optimizer settings, which differ from the checkpoint's where a resume
        gave others: the learning rate then follows the new schedule from where the run stands.

        Args:
            checkpoint: a checked checkpoint (`check_trained` with ``resuming``).
            config: the resumed run's options (its optimizer settings take effect).
        """
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scheduler.T_0 = self.scheduler.T_i = config.epochs
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.epoch = checkpoint["epoch"] + 1
        self.best_val_mae = checkpoint.get("best_val_mae", math.inf)
        schedule = (self.scheduler.base_lrs[0], self.scheduler.eta_min)
        for group in self.optimizer.param_groups:
            group["weight_decay"] = config.weight_decay
            if "momentum" in group:
                group["momentum"] = config.momentum
        if schedule != (config.learning_rate, config.lr_floor):
            self.scheduler.base_lrs = [config.learning_rate] * len(self.optimizer.param_groups)
            self.scheduler.eta_min = config.lr_floor
            position = math.cos(math.pi * self.scheduler.T_cur / self.scheduler.T_i)
            for group in self.optimizer.param_groups:
                group["initial_lr"] = config.learning_rate
                group["lr"] = config.lr_floor + (config.learning_rate - config.lr_floor) * (1 + position) / 2

    def to_checkpoint(self, epoch: int, **extra: Any) -> dict[str, Any]:
        """A checkpoint payload after ``epoch``, with ``extra`` entries (task, statistics, run id, ...).

        Args:
            epoch: the last epoch completed.
            **extra: what the run records beside the state (task, statistics, config, ...).
        """
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
