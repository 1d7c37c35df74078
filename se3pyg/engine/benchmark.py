"""Throughput and latency, NVIDIA's way: timestamps at each batch start after a warm-up.

``throughput = batch_size * world_size / mean(delta)``; latency statistics are
over the same deltas. On CPU the speed of a 2048x2048 float32 matmul on the
same threads is measured beside, so that figures from a busy machine can be
scaled.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import resource
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch_geometric.data import Data

from se3pyg.data import get_task, make_loader, prepare_qm9, qm9_splits
from se3pyg.engine import distributed
from se3pyg.engine.allocator import keep_freed_memory
from se3pyg.engine.config import ModelOptions
from se3pyg.engine.optim import make_optimizer
from se3pyg.model import SE3TransformerPooled


@dataclass
class BenchmarkConfig(ModelOptions):
    mode: str = "train"
    batch_size: int = 240
    steps: int = 20
    warmup: int = 2
    amp: bool = False
    amp_dtype: str = "fp16"
    seed: int = 0
    data_dir: str = "data/qm9"
    limit: int | None = None
    precompute_bases: bool = False
    compile: bool = False
    epochs: int = 0
    gpus: int = 0
    processes: int = 1


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
    torchrun's); the figures come back in the launching process and on rank 0, ``None`` elsewhere.
    """
    if config.mode not in ("train", "predict"):
        raise ValueError(f"mode must be train or predict, got {config.mode!r}")
    if config.steps < 1 or config.batch_size < 1 or config.processes < 1 or config.epochs < 0:
        raise ValueError("--steps, --batch-size and --processes must be >= 1, --epochs >= 0")
    world = config.gpus if config.gpus > 1 else config.processes
    if world > 1 and not distributed.launched_by_torchrun():
        if molecules is None:
            prepare_qm9(config.data_dir, config.limit)
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch) / "result.json"
            distributed.spawn(_worker, world, config, molecules, str(out))
            return json.loads(out.read_text())
    return _worker(config, molecules, None)


def _worker(config: BenchmarkConfig, molecules: Sequence[Data] | None, out: str | None) -> dict[str, Any] | None:
    keep_freed_memory()
    info = distributed.init(use_cuda=config.gpus > 0 and torch.cuda.is_available())
    try:
        result = _measure(config, molecules, info)
        if info.is_main and out is not None:
            Path(out).write_text(json.dumps(result))
        return result if info.is_main else None
    finally:
        distributed.shutdown()


def _measure(config: BenchmarkConfig, molecules: Sequence[Data] | None, info: distributed.DistInfo) -> dict[str, Any]:
    device = info.device
    torch.manual_seed(config.seed)
    model = SE3TransformerPooled(**config.model_kwargs()).to(device)
    if molecules is None:
        if info.local_rank == 0:
            prepare_qm9(config.data_dir, config.limit)
        distributed.barrier(info)
        degree = model.transformer.max_degree if config.precompute_bases else None
        molecules = qm9_splits(config.data_dir, get_task("homo"), config.limit, precompute_degree=degree).train
    loader = make_loader(molecules, config.batch_size, True, 0, info.rank, info.world_size, config.seed, drop_last=True)
    if config.epochs:
        if len(loader) < 2:
            raise ValueError(f"{len(molecules)} molecules give {len(loader)} batch(es) a rank: raise --limit")
        batches = None  # read from the loader each epoch; the first epoch is the warm-up
    else:
        needed = config.steps + config.warmup + 1
        if len(loader) < needed:
            raise ValueError(
                f"{len(molecules)} training molecules give {len(loader)} batches of {config.batch_size} a rank; "
                f"{needed} needed: raise --limit or lower --steps"
            )
        batches = [b.to(device) for b, _ in zip(loader, range(needed), strict=False)]

    net: nn.Module = torch.compile(model, dynamic=True) if config.compile else model
    if info.distributed:
        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer("adam", model.parameters(), 0.002, 0.1, 0.9)
    dtype = torch.float16 if config.amp_dtype == "fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp and dtype == torch.float16)
    loss_fn = nn.L1Loss()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step(batch: Data) -> None:
        with torch.autocast(device.type, dtype=dtype) if config.amp else contextlib.nullcontext():
            prediction = net(batch)
        if config.mode == "train":
            scaler.scale(loss_fn(prediction.float(), batch.y)).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats()
    model.train(config.mode == "train")
    stamps: list[float] = []
    timed: list[Data] = []
    with torch.enable_grad() if config.mode == "train" else torch.inference_mode():
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
                    step(batch.to(device, non_blocking=True))
        sync()
        stamps.append(time.perf_counter())
    deltas = [b - a for a, b in itertools.pairwise(stamps)]
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
        device_name = torch.cuda.get_device_name()
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        device_name = f"cpu ({torch.get_num_threads()} threads)"
    mean = sum(deltas) / len(deltas)
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
        "edges_per_molecule": sum(b.edge_index.shape[1] for b in timed) / sum(b.num_graphs for b in timed),
        "atoms_per_molecule": sum(b.num_nodes for b in timed) / sum(b.num_graphs for b in timed),
        "matmul_gflops": matmul_gflops() if device.type == "cpu" else None,
        "amp": config.amp,
        "steps": len(deltas),
        "config": asdict(config),
    }
