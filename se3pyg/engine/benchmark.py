"""Throughput and latency, NVIDIA's way: timestamps at each batch start after a warm-up.

``throughput = batch_size * world_size / mean(delta)``; latency statistics are
over the same deltas. On CPU the speed of a 2048x2048 float32 matmul on the
same threads is measured beside, so that figures from a busy machine can be
scaled.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import resource
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from se3pyg.data import get_task, qm9_splits
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
    gpus: int = 0


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


def run_benchmark(config: BenchmarkConfig, molecules: Sequence[Data] | None = None) -> dict[str, Any]:
    """One benchmark on random QM9 training molecules (or on ``molecules``, training view); returns the figures."""
    if config.mode not in ("train", "predict"):
        raise ValueError(f"mode must be train or predict, got {config.mode!r}")
    if config.steps < 1 or config.batch_size < 1:
        raise ValueError("--steps and --batch-size must be >= 1")
    device = torch.device("cuda" if config.gpus > 0 and torch.cuda.is_available() else "cpu")
    torch.manual_seed(config.seed)
    model = SE3TransformerPooled(**config.model_kwargs()).to(device)
    if molecules is None:
        degree = model.transformer.max_degree if config.precompute_bases else None
        molecules = qm9_splits(config.data_dir, get_task("homo"), config.limit, precompute_degree=degree).train
    needed = (config.steps + config.warmup + 1) * config.batch_size
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(molecules, batch_size=config.batch_size, shuffle=True, generator=generator, drop_last=True)
    if len(loader) < config.steps + config.warmup + 1:
        raise ValueError(
            f"{len(molecules)} training molecules give {len(loader)} batches of {config.batch_size}; "
            f"{config.steps + config.warmup + 1} needed ({needed} molecules): raise --limit or lower --steps"
        )
    batches = []
    for batch in loader:
        batches.append(batch.to(device))
        if len(batches) == config.steps + config.warmup + 1:
            break

    forward = torch.compile(model, dynamic=True) if config.compile else model
    optimizer = make_optimizer("adam", model.parameters(), 0.002, 0.1, 0.9)
    dtype = torch.float16 if config.amp_dtype == "fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp and dtype == torch.float16)
    loss_fn = nn.L1Loss()

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=dtype) if config.amp else contextlib.nullcontext()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats()
    model.train(config.mode == "train")
    stamps: list[float] = []
    grad = torch.enable_grad() if config.mode == "train" else torch.inference_mode()
    with grad:
        for i, batch in enumerate(batches):
            if i >= config.warmup:
                sync()
                stamps.append(time.perf_counter())
            if i == len(batches) - 1:
                break
            with autocast():
                prediction = forward(batch)
            if config.mode == "train":
                loss = loss_fn(prediction.float(), batch.y)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
    deltas = [b - a for a, b in itertools.pairwise(stamps)]
    timed = batches[config.warmup : config.warmup + len(deltas)]
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
        "throughput_mol_per_ms": config.batch_size / (mean * 1000),
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
