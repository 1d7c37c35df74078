"""The training loop: DDP, AMP, accumulation, clipping, evaluation, checkpoints, MLflow.

Read top to bottom: :func:`run` launches processes, :func:`train_worker` is
one rank's whole training.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from se3pyg.data import QM9Splits, TargetStats, get_task, make_loader, prepare_qm9, qm9_splits
from se3pyg.engine import distributed
from se3pyg.engine.allocator import keep_freed_memory
from se3pyg.engine.checkpoint import best_path, load_checkpoint, save_checkpoint
from se3pyg.engine.config import TrainConfig
from se3pyg.engine.evaluate import mean_absolute_error
from se3pyg.engine.optim import make_optimizer
from se3pyg.engine.tracking import Tracker
from se3pyg.engine.versions import library_versions
from se3pyg.model import SE3TransformerPooled

log = logging.getLogger("se3pyg.train")
EpochCallback = Callable[[dict[str, float]], None]


class TrainingError(Exception):
    """Training ended early (interrupted, non-finite loss, nothing left to run); ``code`` is the exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class TrainResult:
    best_val_mae: float = math.inf
    test_mae: float = math.nan
    epochs_run: int = 0
    run_id: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)


def run(config: TrainConfig, on_epoch: EpochCallback | None = None) -> TrainResult | None:
    """Train as ``config`` says: in this process, under torchrun, or in ``--gpus``/``--processes`` spawned ones.

    Returns the result in the process that holds rank 0, ``None`` elsewhere (and in a launcher that spawned).
    """
    config.validate()
    world = config.gpus if config.gpus > 0 else config.processes
    if world > 1 and not distributed.launched_by_torchrun():
        prepare_qm9(config.data_dir, config.limit)  # once, before the workers start
        distributed.spawn(train_worker, world, config, None)
        return None
    return train_worker(config, on_epoch)


def _autocast(config: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if not config.amp:
        return contextlib.nullcontext()
    dtype = torch.float16 if config.amp_dtype == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


class _StopFlag:
    """SIGINT/SIGTERM set a flag the loop checks after each step."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signal = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _build_model(config: TrainConfig, checkpoint: dict | None) -> SE3TransformerPooled:
    if checkpoint is not None:
        model = SE3TransformerPooled.from_config(checkpoint["model_config"])
        model.load_state_dict(checkpoint["state_dict"])
        return model
    return SE3TransformerPooled(**config.model_kwargs())


def train_worker(config: TrainConfig, on_epoch: EpochCallback | None = None) -> TrainResult | None:
    """One rank's training; the result on rank 0, ``None`` on the others."""
    keep_freed_memory()
    info = distributed.init(use_cuda=config.gpus > 0 and torch.cuda.is_available())
    try:
        result = _train(config, info, on_epoch)
        return result if info.is_main else None
    finally:
        distributed.shutdown()


def _train(config: TrainConfig, info: distributed.DistInfo, on_epoch: EpochCallback | None) -> TrainResult:
    torch.manual_seed(config.seed)
    if info.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    checkpoint = load_checkpoint(config.load_ckpt_path) if config.load_ckpt_path else None
    task = get_task(checkpoint["task"] if checkpoint else config.task)
    model = _build_model(config, checkpoint).to(info.device)

    # Data: local rank 0 builds what is missing, the others wait.
    if info.local_rank == 0:
        prepare_qm9(config.data_dir, config.limit)
    distributed.barrier(info)
    degree = model.transformer.max_degree if config.precompute_bases else None
    # A resumed model keeps the target statistics it was trained with.
    stats = TargetStats(checkpoint["target_mean"], checkpoint["target_std"]) if checkpoint else None
    splits: QM9Splits = qm9_splits(config.data_dir, task, config.limit, precompute_degree=degree, stats=stats)
    std = splits.stats.std

    def loader(dataset: Any, shuffle: bool) -> Any:
        return make_loader(
            dataset,
            config.batch_size,
            shuffle,
            config.num_workers,
            info.rank,
            info.world_size,
            config.seed,
            drop_last=shuffle,
            pin_memory=info.device.type == "cuda",
        )

    train_loader, val_loader, test_loader = (
        loader(splits.train, True),
        loader(splits.val, False),
        loader(splits.test, False),
    )

    ddp_model: nn.Module = model
    if info.distributed:
        ddp_model = DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None
        )
        ddp_model._set_static_graph()
    optimizer = make_optimizer(
        config.optimizer, model.parameters(), config.learning_rate, config.weight_decay, config.momentum
    )
    eta_min = config.min_learning_rate if config.min_learning_rate is not None else config.learning_rate / 10
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=config.epochs, eta_min=eta_min)
    scaler = torch.amp.GradScaler(info.device.type, enabled=config.amp and config.amp_dtype == "fp16")
    start_epoch = 0
    best_val = math.inf
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scheduler.T_0 = scheduler.T_i = config.epochs  # --epochs is the total; the schedule follows it
        scaler.load_state_dict(checkpoint["scaler"])
        start_epoch = checkpoint["epoch"] + 1
        best_val = checkpoint.get("best_val_mae", math.inf)
    if start_epoch >= config.epochs:
        raise TrainingError(f"--epochs {config.epochs}: the checkpoint has already run {start_epoch} epochs", 2)

    tracker: Tracker | None = None
    result = TrainResult(best_val_mae=best_val)
    n_params = sum(p.numel() for p in model.parameters())
    if info.is_main:
        tags = {"task": task.name, "command": "train"}
        if checkpoint is not None and checkpoint.get("run_id"):
            tags["resumed_from"] = checkpoint["run_id"]
        tracker = Tracker(config.tracking_uri, config.experiment, config.run_name, tags)
        result.run_id = tracker.run_id
        params = {k: v for k, v in config.to_dict().items() if k not in ("tracking_uri",)}
        if checkpoint is not None:
            params.update(checkpoint["model_config"])
        params.update(
            task=task.name,
            world_size=info.world_size,
            n_params=n_params,
            n_train=len(splits.train),
            n_val=len(splits.val),
            n_test=len(splits.test),
            device=str(info.device),
            start_epoch=start_epoch,
            **library_versions(),
        )
        tracker.log_params(params)
        tracker.log_dict(config.to_dict(), "config.json")

    def payload(epoch: int) -> dict[str, Any]:
        return {
            "model_config": model.config,
            "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "task": task.name,
            "unit": task.unit,
            "target_mean": splits.stats.mean,
            "target_std": splits.stats.std,
            "best_val_mae": result.best_val_mae,
            "run_id": result.run_id,
            "versions": library_versions(),
            "config": config.to_dict(),
        }

    def save(epoch: int, best: bool = False) -> None:
        if info.is_main and config.save_ckpt_path:
            save_checkpoint(best_path(config.save_ckpt_path) if best else config.save_ckpt_path, payload(epoch))

    loss_fn = nn.L1Loss()

    def autocast() -> contextlib.AbstractContextManager:
        return _autocast(config, info.device)

    accumulate = config.accumulate_grad_batches
    status = "FAILED"
    last_done = start_epoch - 1
    try:
        with _StopFlag() as stop:
            for epoch in range(start_epoch, config.epochs):
                if info.distributed:
                    train_loader.sampler.set_epoch(epoch)
                ddp_model.train()
                epoch_start = time.perf_counter()
                loss_sum = torch.zeros((), device=info.device, dtype=torch.float64)
                molecules = 0
                steps = len(train_loader)
                for step, batch in enumerate(train_loader):
                    batch = batch.to(info.device, non_blocking=True)
                    stepping = (step + 1) % accumulate == 0 or step + 1 == steps
                    sync = contextlib.nullcontext() if stepping or not info.distributed else ddp_model.no_sync()
                    with sync:
                        with autocast():
                            loss = loss_fn(ddp_model(batch), batch.y)
                        scaler.scale(loss / accumulate).backward()
                    if stepping:
                        if config.gradient_clip is not None:
                            scaler.unscale_(optimizer)
                            torch.nn.utils.clip_grad_norm_(model.parameters(), config.gradient_clip)
                        scaler.step(optimizer)
                        scaler.update()
                        optimizer.zero_grad(set_to_none=True)
                    flags = torch.tensor(
                        [float(not torch.isfinite(loss)), float(stop.signal is not None)], device=info.device
                    )
                    distributed.all_reduce_sum(flags, info)
                    if flags[0] > 0:
                        raise TrainingError(
                            f"loss became {loss.item()} at epoch {epoch} step {step}; "
                            f"the last good checkpoint is kept ({config.save_ckpt_path or 'none saved'})",
                            3,
                        )
                    if flags[1] > 0:
                        save(last_done)
                        status = "KILLED"
                        saved = f"checkpoint of epoch {last_done} saved" if config.save_ckpt_path else "nothing saved"
                        raise TrainingError(f"interrupted at epoch {epoch} ({saved})", 128 + (stop.signal or 2))
                    loss_sum += loss.detach().double() * batch.num_graphs
                    molecules += batch.num_graphs
                counts = torch.tensor([loss_sum.item(), molecules], device=info.device, dtype=torch.float64)
                distributed.all_reduce_sum(counts, info)
                elapsed = time.perf_counter() - epoch_start
                metrics = {
                    "train_loss": counts[0].item() / max(counts[1].item(), 1),
                    "lr": optimizer.param_groups[0]["lr"],
                    "epoch_time_s": elapsed,
                    "throughput_mol_per_ms": counts[1].item() / (elapsed * 1000),
                }
                scheduler.step()
                last_done = epoch
                is_last = epoch == config.epochs - 1
                if is_last or (config.eval_interval > 0 and (epoch + 1) % config.eval_interval == 0):
                    val_mae = mean_absolute_error(
                        ddp_model, val_loader, info, std, lambda: _autocast(config, info.device)
                    )
                    metrics["val_mae"] = val_mae
                    if val_mae < result.best_val_mae:
                        result.best_val_mae = val_mae
                        save(epoch, best=True)
                if is_last or (config.ckpt_interval > 0 and (epoch + 1) % config.ckpt_interval == 0):
                    save(epoch)
                result.history.append({"epoch": epoch, **metrics})
                result.epochs_run += 1
                if tracker is not None:
                    tracker.log_metrics(metrics, step=epoch)
                if on_epoch is not None and info.is_main:
                    on_epoch({"epoch": epoch, **metrics})
        result.test_mae = mean_absolute_error(ddp_model, test_loader, info, std, autocast)
        if tracker is not None:
            tracker.log_metrics({"best_val_mae": result.best_val_mae, "test_mae": result.test_mae}, step=last_done)
            if config.save_ckpt_path:
                tracker.log_artifact(config.save_ckpt_path)
        status = "FINISHED"
        return result
    finally:
        if tracker is not None:
            tracker.finish(status)
