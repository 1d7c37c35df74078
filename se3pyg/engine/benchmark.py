"""Throughput and latency, NVIDIA's way: timestamps at each batch start after a warm-up.

``throughput = batch_size * world_size / mean(delta)``; latency statistics are
over the same deltas. ``train`` times [`train_step()`][se3pyg.engine.step.train_step]
on a [`TrainState`][se3pyg.engine.state.TrainState] built as ``se3pyg train``
builds it; ``predict`` times [`predict_step()`][se3pyg.engine.step.predict_step];
``data`` times the batches' arrival on the training device alone. On CPU
the speed of a 2048x2048 float32 matmul on the same threads is measured
beside, so that figures from a busy machine can be scaled.
"""

from __future__ import annotations

import contextlib
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
    """Best-of-``repeats`` speed of a ``size x size`` float32 matmul on the current threads.

    Args:
        size: the square matrices' size.
        repeats: the products timed (after one untimed).
    """
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


#: How long all of QM9 takes to build, in core-minutes: 8.4 minutes on this project's 2-core CPU machine
#: (`se3pyg data prepare`, 2026-12-06, 504.5 s while a test suite ran beside it); the molecules are shared
#: among the cores.
QM9_BUILD_CORE_MINUTES = 17.0


def data_to_build(config: BenchmarkConfig) -> tuple[int, float] | None:
    """The QM9 molecules a benchmark builds before it runs, and about how many seconds that takes on this
    machine; ``None`` when the data is there (or is a ``--dataset``).

    Raises:
        ValueError: ``--data-dir`` holds a smaller QM9 build (a user's): the benchmark does not replace it, and
            names ``--limit`` to use it instead.

    Args:
        config: the benchmark's options (``data_dir``, ``limit``, ``dataset``).
    """
    import os

    from se3pyg.data import NUM_MOLECULES
    from se3pyg.data.qm9 import read_manifest

    if config.dataset:
        return None
    wanted = config.limit or NUM_MOLECULES
    manifest = read_manifest(config.data_dir)
    have = manifest["count"] if manifest else 0
    if have >= wanted:
        return None
    if have:
        raise ValueError(
            f"--data-dir {config.data_dir}: holds {have:,} QM9 molecules, and the benchmark reads {wanted:,}; "
            f"--limit {have} uses them (QM9's first molecules are its smallest: more mol/ms than over all of "
            "QM9), or another --data-dir builds them apart"
        )
    return wanted, QM9_BUILD_CORE_MINUTES * 60 * wanted / NUM_MOLECULES / (os.cpu_count() or 1)


def run_benchmark(
    config: BenchmarkConfig, molecules: Sequence[Data] | None = None, on_progress: Callable[..., None] | None = None
) -> dict[str, Any] | None:
    """One benchmark on random QM9 training molecules (or ``--dataset``'s, or ``molecules``, training view).

    With ``processes`` (CPU, gloo) or ``gpus`` above 1, that many ranks run under DDP (spawned here, or
    torchrun's). With ``tracking``, rank 0 logs the figures as an MLflow run.

    Args:
        config: what to time, on which data and devices.
        molecules: the molecules to time on, instead of QM9's or ``--dataset``'s.
        on_progress: ``progress(stage, done, total, unit)`` as the data is prepared and the steps run (rank 0's,
            relayed from spawned ranks).

    Returns:
        The figures, in the launching process and on rank 0; ``None`` elsewhere.
    """
    config = config.resolve_gpus()
    tracker = None
    if config.tracking and distributed.is_main_process():
        tracker = Tracker(config.tracking_uri, config.experiment, None, {"command": "benchmark", "mode": config.mode})
    status = "FAILED"
    try:
        spawning = distributed.spawns(config.world_size)
        with distributed.relayed(on_progress) if spawning else contextlib.nullcontext((on_progress,)) as (progress,):
            result = distributed.launch(
                _measure,
                config.world_size,
                config.use_cuda,
                config,
                molecules,
                progress,
                prepare=lambda: molecules is None and prepare_data(config, on_progress),
            )
        if tracker is not None and result is not None:
            tracker.log_params(result["config"])
            numbers = {k: v for k, v in result.items() if isinstance(v, int | float) and not isinstance(v, bool)}
            tracker.log_metrics(numbers, step=0)
        status = "FINISHED"
        return result
    finally:
        if tracker is not None:
            tracker.finish(status)


def _loader(
    config: BenchmarkConfig, info: DistInfo, molecules: Sequence[Data] | None, progress: Callable[..., None] | None
) -> tuple[Loader, int]:
    """This rank's share of random QM9 (or ``--dataset``) training molecules, or of ``molecules``, as training
    reads them; and their node features (QM9's 6, or one a --dataset element and the atomic number)."""
    if molecules is None:
        molecules = load_splits(config, info, "homo", progress=progress).train
    loader = make_loader(
        molecules,
        config.batch_size,
        True,
        0,
        info.rank,
        info.world_size,
        config.seed,
        drop_last=True,
        device=info.device,
    )
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
    config: BenchmarkConfig,
    info: DistInfo,
    step: Callable[[Data], object],
    loader: Loader,
    progress: Callable[..., None] | None = None,
) -> tuple[list[float], list[Data]]:
    """Timestamps at the start of each timed step (for a model, also after the last): deltas and timed batches.

    ``data`` mode times the loader alone: the stamps are the batches' arrivals on the device. ``progress`` is
    told of each warm-up step, and of the timed ones at most once a second (its cost falls within a step's time:
    microseconds a second).
    """

    def stamp(batch: Data | None = None) -> None:
        if info.device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        if batch is not None:
            timed.append(batch)

    stamps: list[float] = []
    timed: list[Data] = []
    warmup = config.warmup if not config.epochs else len(loader)
    timing = config.steps if not config.epochs else config.epochs * len(loader)
    said = 0.0
    for k, (is_timed, batch) in enumerate(_stream(config, loader)):
        raise_if_stopped()
        batch = batch.to(info.device, non_blocking=True)
        if is_timed:
            stamp(batch)
        step(batch)
        if progress is not None and (not is_timed or time.perf_counter() - said >= 1.0 or k + 1 == warmup + timing):
            stage, done, total = ("timing", k + 1 - warmup, timing) if is_timed else ("warm-up", k + 1, warmup)
            progress(f"{stage} {config.mode} steps", min(done, total), total, unit="steps")
            said = time.perf_counter()
    if config.mode == "data":
        timed.pop()  # the last arrival only ends the last timed step
    else:
        stamp()
    return [b - a for a, b in itertools.pairwise(stamps)], timed


def _measure(
    info: DistInfo, config: BenchmarkConfig, molecules: Sequence[Data] | None, progress: Callable[..., None] | None
) -> dict[str, Any]:
    """One rank's benchmark: the training state ``se3pyg train`` would build, its step timed (or the loader)."""
    if info.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    progress = progress if info.is_main else None
    if config.mode == "data":
        deltas, timed = _time(
            config, info, lambda _batch: None, _loader(config, info, molecules, progress)[0], progress
        )
        return _figures(config, info, deltas, timed, None)
    loader, node_features = _loader(config, info, molecules, progress)
    state = TrainState.build(config.training(), info, compile=config.compile, node_features=node_features)
    training = config.mode == "train"
    state.net.train(training)
    with torch.enable_grad() if training else torch.inference_mode():
        if training:
            deltas, timed = _time(config, info, lambda b: train_step(state, b), loader, progress)
        else:
            predict = state.graphs.predict if state.graphs else lambda b: predict_step(state.net, b, state.precision)
            deltas, timed = _time(config, info, predict, loader, progress)
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
