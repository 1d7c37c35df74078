"""Throughput and latency, NVIDIA's way: timestamps at each batch start after a warm-up.

``throughput = batch_size * world_size / mean(delta)``; latency statistics are
over the same deltas. ``train`` times :func:`~se3pyg.engine.step.train_step`
on a :class:`~se3pyg.engine.state.TrainState` built as ``se3pyg train``
builds it; ``predict`` times :func:`~se3pyg.engine.step.predict_step`;
``data`` times the batches' arrival on the training device alone. On CPU
the speed of a 2048x2048 float32 matmul on the same threads is measured
beside, so that figures from a busy machine can be scaled.
"""

from __future__ import annotations

import itertools
import math
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import torch

from se3pyg.data import Loader, make_loader, set_epoch
from se3pyg.engine import distributed
from se3pyg.engine.config import BenchmarkConfig
from se3pyg.engine.distributed import DistInfo
from se3pyg.engine.state import TrainState
from se3pyg.engine.step import predict_step, train_step
from se3pyg.engine.tracking import Tracker
from se3pyg.engine.training_data import load_splits, prepare_data
from se3pyg.processes import raise_if_stopped

if TYPE_CHECKING:
    from torch_geometric.data import Data


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
    """One benchmark on random QM9 training molecules (or ``--dataset``'s, or ``molecules``, training view);
    returns the figures.

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
            prepare=lambda: molecules is None and prepare_data(config),
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


def _loader(config: BenchmarkConfig, info: DistInfo, molecules: Sequence[Data] | None) -> tuple[Loader, int]:
    """This rank's share of random QM9 (or ``--dataset``) training molecules, or of ``molecules``, as training
    reads them; and their node features (QM9's 6, or one a --dataset element and the atomic number)."""
    if molecules is None:
        molecules = load_splits(config, info, "homo").train
    loader = make_loader(
        molecules, config.batch_size, True, 0, info.rank, info.world_size, config.seed, drop_last=True,
        device=info.device,
    )  # fmt: skip
    if config.epochs and len(loader) < 2:
        raise ValueError(f"{len(molecules)} molecules give {len(loader)} batch(es) a rank: raise --limit")
    needed = config.steps + config.warmup + 1
    if not config.epochs and len(loader) < needed:
        raise ValueError(
            f"{len(molecules)} training molecules give {len(loader)} batches of {config.batch_size} a rank; "
            f"{needed} needed: raise --limit or lower --steps"
        )
    return loader, molecules[0].x.shape[1]


def _stream(config: BenchmarkConfig, loader: Loader) -> Iterator[tuple[bool, Data]]:
    """``(timed, batch)``: with ``--epochs`` a warm-up epoch then timed ones, else ``--warmup`` then ``--steps``
    batches (read ahead onto the device when a model step is timed, so that only the step is)."""
    if config.epochs:
        for epoch in range(config.epochs + 1):
            set_epoch(loader, epoch)
            yield from ((epoch > 0, batch) for batch in loader)
        return
    count = config.warmup + config.steps + (config.mode == "data")  # data: one more arrival ends the last step
    batches = zip(range(count), loader, strict=False)
    if config.mode != "data":
        batches = list(batches)
    yield from ((i >= config.warmup, batch) for i, batch in batches)


def _time(
    config: BenchmarkConfig, info: DistInfo, step: Callable[[Data], object], loader: Loader
) -> tuple[list[float], list[Data]]:
    """Timestamps at the start of each timed step (for a model, also after the last): deltas and timed batches.

    ``data`` mode times the loader alone: the stamps are the batches' arrivals on the device.
    """

    def stamp(batch: Data | None = None) -> None:
        if info.device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        if batch is not None:
            timed.append(batch)

    stamps: list[float] = []
    timed: list[Data] = []
    for is_timed, batch in _stream(config, loader):
        raise_if_stopped()
        batch = batch.to(info.device, non_blocking=True)
        if is_timed:
            stamp(batch)
        step(batch)
    if config.mode == "data":
        timed.pop()  # the last arrival only ends the last timed step
    else:
        stamp()
    return [b - a for a, b in itertools.pairwise(stamps)], timed


def _measure(info: DistInfo, config: BenchmarkConfig, molecules: Sequence[Data] | None) -> dict[str, Any]:
    """One rank's benchmark: the training state ``se3pyg train`` would build, its step timed (or the loader)."""
    if info.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if config.mode == "data":
        deltas, timed = _time(config, info, lambda _batch: None, _loader(config, info, molecules)[0])
        return _figures(config, info, deltas, timed, None)
    loader, node_features = _loader(config, info, molecules)
    state = TrainState.build(config.training(), info, compile=config.compile, node_features=node_features)
    training = config.mode == "train"
    state.net.train(training)
    with torch.enable_grad() if training else torch.inference_mode():
        if training:
            deltas, timed = _time(config, info, lambda b: train_step(state, b), loader)
        else:
            predict = state.graphs.predict if state.graphs else lambda b: predict_step(state.net, b, state.precision)
            deltas, timed = _time(config, info, predict, loader)
    return _figures(config, info, deltas, timed, state)


def _figures(
    config: BenchmarkConfig, info: DistInfo, deltas: list[float], timed: list[Data], state: TrainState | None
) -> dict[str, Any]:
    """The result: throughput (``data`` mode: molecules delivered per ms by this process), latency, memory."""
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
        "throughput_mol_per_ms": config.batch_size * (1 if state is None else info.world_size) / (mean * 1000),
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
        "precision": None if state is None else state.precision.name,
        "steps": len(deltas),
        "config": asdict(config),
    }
