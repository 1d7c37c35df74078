"""Throughput and latency, NVIDIA's way: timestamps at each batch start after a warm-up.

``throughput = batch_size * world_size / mean(delta)``; latency statistics are
over the same deltas. ``train`` times :func:`~se3pyg.engine.step.train_step`
on a :class:`~se3pyg.engine.state.TrainState` built as ``se3pyg train``
builds it; ``predict`` times :func:`~se3pyg.engine.step.predict_step`. On CPU
the speed of a 2048x2048 float32 matmul on the same threads is measured
beside, so that figures from a busy machine can be scaled.
"""

from __future__ import annotations

import itertools
import math
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from se3pyg.data import get_task, make_loader, prepare_qm9, qm9_splits
from se3pyg.engine import distributed
from se3pyg.engine.config import BenchmarkConfig
from se3pyg.engine.distributed import DistInfo
from se3pyg.engine.state import TrainState
from se3pyg.engine.step import predict_step, train_step
from se3pyg.engine.tracking import Tracker


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` speed of a ``size x size`` float32 matmul on the current threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def run_benchmark(config: BenchmarkConfig, molecules: Sequence[Data] | None = None) -> dict[str, Any] | None:
    """One benchmark on random QM9 training molecules (or on ``molecules``, training view); returns the figures.

    With ``processes`` (CPU, gloo) or ``gpus`` above 1, that many ranks run under DDP (spawned here, or
    torchrun's); the figures come back in the launching process and on rank 0, ``None`` elsewhere. With
    ``tracking``, rank 0 logs them as an MLflow run.
    """
    config = config.resolve_gpus()
    tracker = None
    if config.tracking and distributed.is_main_process():
        tracker = Tracker(config.tracking_uri, config.experiment, None, {"command": "benchmark", "mode": config.mode})
    status = "FAILED"
    try:
        result = distributed.launch(
            _measure, config.world_size, config.use_cuda, config, molecules,
            prepare=lambda: molecules is None and prepare_qm9(config.data_dir, config.limit),
        )  # fmt: skip
        if tracker is not None and result is not None:
            tracker.log_params(result["config"])
            numbers = {k: v for k, v in result.items() if isinstance(v, int | float) and not isinstance(v, bool)}
            tracker.log_metrics(numbers, step=0)
        status = "FINISHED"
        return result
    finally:
        if tracker is not None:
            tracker.finish(status)


def _batches(
    config: BenchmarkConfig, info: DistInfo, state: TrainState, molecules: Sequence[Data] | None
) -> tuple[DataLoader, list | None]:
    """The loader of this rank's molecules, and with ``--steps`` the batches to time, already on the device."""
    if molecules is None:
        if info.local_rank == 0:
            prepare_qm9(config.data_dir, config.limit)
        distributed.barrier(info)
        degree = state.model.transformer.max_degree if config.precompute_bases else None
        molecules = qm9_splits(config.data_dir, get_task("homo"), config.limit, precompute_degree=degree).train
    loader = make_loader(molecules, config.batch_size, True, 0, info.rank, info.world_size, config.seed, drop_last=True)
    if config.epochs:
        if len(loader) < 2:
            raise ValueError(f"{len(molecules)} molecules give {len(loader)} batch(es) a rank: raise --limit")
        return loader, None  # read each epoch; the first epoch is the warm-up
    needed = config.steps + config.warmup + 1
    if len(loader) < needed:
        raise ValueError(
            f"{len(molecules)} training molecules give {len(loader)} batches of {config.batch_size} a rank; "
            f"{needed} needed: raise --limit or lower --steps"
        )
    return loader, [b.to(info.device) for b, _ in zip(loader, range(needed), strict=False)]


def _time(
    config: BenchmarkConfig, info: DistInfo, step: Callable[[Data], object], loader: DataLoader, batches: list | None
) -> tuple[list[float], list[Data]]:
    """Timestamps at the start of each timed step (and after the last): their deltas, and the timed batches."""

    def sync() -> None:
        if info.device.type == "cuda":
            torch.cuda.synchronize()

    stamps: list[float] = []
    timed: list[Data] = []
    if batches is not None:
        for i, batch in enumerate(batches[:-1]):
            if i >= config.warmup:
                sync()
                stamps.append(time.perf_counter())
                timed.append(batch)
            step(batch)
    else:
        for epoch in range(config.epochs + 1):
            if info.distributed:
                loader.sampler.set_epoch(epoch)
            for batch in loader:
                if epoch > 0:
                    sync()
                    stamps.append(time.perf_counter())
                    timed.append(batch)
                step(batch.to(info.device, non_blocking=True))
    sync()
    stamps.append(time.perf_counter())
    return [b - a for a, b in itertools.pairwise(stamps)], timed


def _measure(info: DistInfo, config: BenchmarkConfig, molecules: Sequence[Data] | None) -> dict[str, Any]:
    """One rank's benchmark: the training state ``se3pyg train`` would build, its step timed."""
    state = TrainState.build(config.training(), info, compile=config.compile)
    loader, batches = _batches(config, info, state, molecules)
    training = config.mode == "train"
    state.net.train(training)
    if info.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.enable_grad() if training else torch.inference_mode():
        if training:
            deltas, timed = _time(config, info, lambda b: train_step(state, b), loader, batches)
        else:
            deltas, timed = _time(config, info, lambda b: predict_step(state.net, b, state.precision), loader, batches)
    return _figures(config, info, deltas, timed, state)


def _figures(
    config: BenchmarkConfig, info: DistInfo, deltas: list[float], timed: list[Data], state: TrainState
) -> dict[str, Any]:
    if info.device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
        device_name = torch.cuda.get_device_name()
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        device_name = f"cpu ({torch.get_num_threads()} threads)"
    mean = sum(deltas) / len(deltas)
    molecules = sum(b.num_graphs for b in timed)
    return {
        "mode": config.mode,
        "batch_size": config.batch_size,
        "world_size": info.world_size,
        "throughput_mol_per_ms": config.batch_size * info.world_size / (mean * 1000),
        "latency_ms_mean": mean * 1000,
        "latency_ms_median": _percentile(deltas, 50) * 1000,
        "latency_ms_p90": _percentile(deltas, 90) * 1000,
        "latency_ms_p95": _percentile(deltas, 95) * 1000,
        "latency_ms_p99": _percentile(deltas, 99) * 1000,
        "peak_memory_mb": peak_mb,
        "device": device_name,
        "edges_per_molecule": sum(b.edge_index.shape[1] for b in timed) / molecules,
        "atoms_per_molecule": sum(b.num_nodes for b in timed) / molecules,
        "matmul_gflops": matmul_gflops() if info.device.type == "cpu" else None,
        "amp": config.amp,
        "precision": state.precision.name,
        "steps": len(deltas),
        "config": asdict(config),
    }
