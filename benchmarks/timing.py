"""Timing on a device, shared by the GPU suite's jobs: synchronized step times, profiles, throughput, counts."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch_geometric.data import Data

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.gpu_data import first_batch  # noqa: E402
from se3pyg.engine.benchmark import run_benchmark  # noqa: E402
from se3pyg.engine.config import BenchmarkConfig  # noqa: E402
from se3pyg.engine.counting import count_training_step  # noqa: E402
from se3pyg.engine.precision import DTYPES  # noqa: E402
from se3pyg.model import SE3TransformerPooled  # noqa: E402


def step_counts(mols: list[dict], device: torch.device, batch_size: int, kernel: str, amp: str | None = None) -> dict:
    """Host syncs, launches, bytes written and FLOPs of one published-recipe forward + backward on ``device``
    (the forward under autocast to ``amp``, ``"fp16"`` or ``"bf16"``, if given, as ``--amp`` runs it)."""
    batch = first_batch(mols, batch_size, device)
    torch.manual_seed(0)
    model = SE3TransformerPooled(kernel=kernel).to(device)
    counts = count_training_step(model, batch, DTYPES[amp] if amp else None)
    edges = batch.edge_index.shape[1]
    return {
        "kernel": kernel,
        "precision": amp or "fp32",
        "batch_size": batch.num_graphs,
        "directed_bonds": edges,
        "host_syncs": counts.host_syncs,
        "launches": counts.launches,
        "mb_written_per_bond": counts.bytes_written / edges / 1e6,
        "gflop": counts.flops / 1e9,
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def ms_per_step(step: Callable[[], object], steps: int, device: torch.device, sync_each: bool = False) -> float:
    """Wall milliseconds a ``step()`` after three untimed ones; ``sync_each``: a synchronize after every step."""
    for _ in range(3):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
        if sync_each:
            synchronize(device)
    synchronize(device)
    return (time.perf_counter() - start) / steps * 1e3


def profiled(step: Callable[[], object], steps: int, device: torch.device) -> list:
    """The profiler's events of ``steps`` steps (host operators, and CUDA kernels on a GPU), averaged by name."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        for _ in range(steps):
            step()
        synchronize(device)
    return profile.key_averages()


def device_busy(mols: list[dict], device: torch.device, batch_size: int, amp: str | None, steps: int) -> dict:
    """Wall time of an eager published-recipe training step against the time its kernels run on ``device``.

    A busy fraction well under 1 means the host (about 1,170 operator launches a step) is what the step waits for,
    which CUDA graphs remove (`--cuda-graphs`). Forward, L1 loss and backward under autocast, no optimizer.
    """
    batch = first_batch(mols, batch_size, device)
    torch.manual_seed(0)
    model = SE3TransformerPooled().to(device)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp or "", torch.float32)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=amp is not None):
            loss = torch.nn.functional.l1_loss(model(batch).float(), batch.y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    wall_ms = ms_per_step(step, steps, device)
    events = profiled(step, steps, device)
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]  # each kernel once
    kernel_ms = sum(e.device_time_total for e in kernels) / steps / 1e3
    operators = [e for e in events if e.device_type == DeviceType.CPU]  # with the time of the kernels they launch
    top = sorted(operators, key=lambda e: e.self_device_time_total, reverse=True)[:10]
    return {
        "precision": amp or "tf32",
        "batch_size": batch.num_graphs,
        "wall_ms_per_step": wall_ms,
        "device_kernel_ms_per_step": kernel_ms,
        "busy_fraction": kernel_ms / wall_ms,
        "top_operators_device_ms_per_step": {e.key: e.self_device_time_total / steps / 1e3 for e in top},
    }


def step_breakdown(mols: list[dict], device: torch.device, batch_size: int, steps: int) -> dict:
    """Where the benchmark's AMP fp16 training step spends its time, milliseconds a step.

    The model's forward + backward alone (AMP fp16, and float32/TF32), the whole step (GradScaler and AdamW) with
    ``make_optimizer``'s AdamW and with the other one (fused / foreach), each also with a synchronize after every
    step (as the benchmark times it); and the whole step's launches and operators by host time.
    """
    from se3pyg.engine.distributed import DistInfo
    from se3pyg.engine.state import TrainState
    from se3pyg.engine.step import train_step

    batch = first_batch(mols, batch_size, device)
    config = BenchmarkConfig(mode="train", batch_size=batch_size, amp=True, amp_dtype="fp16", tracking=False)
    state = TrainState.build(config.training(), DistInfo(device=device))
    state.net.train()

    def forward_backward(amp: bool) -> None:
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss = torch.nn.functional.l1_loss(state.net(batch).float(), batch.y)
        state.scaler.scale(loss).backward() if amp else loss.backward()
        state.optimizer.zero_grad(set_to_none=True)

    fused = bool(state.optimizer.defaults.get("fused"))
    result: dict = {
        "batch_size": batch.num_graphs,
        "forward_backward_amp_fp16": ms_per_step(lambda: forward_backward(True), steps, device),
        "forward_backward_tf32": ms_per_step(lambda: forward_backward(False), steps, device),
    }
    for name in ("fused" if fused else "foreach", "foreach" if fused else "fused"):
        result[f"train_step_adamw_{name}"] = ms_per_step(lambda: train_step(state, batch), steps, device)
        result[f"train_step_adamw_{name}_synced"] = ms_per_step(lambda: train_step(state, batch), steps, device, True)
        lr = state.optimizer.param_groups[0]["lr"]
        state.optimizer = torch.optim.AdamW(
            state.model.parameters(),
            lr=lr,
            weight_decay=0.1,
            fused=name == "foreach" or None,
            foreach=name == "fused" or None,
        )  # the other one, for the second round
    events = profiled(lambda: train_step(state, batch), steps, device)
    result["launches_per_step"] = sum(e.count for e in events if e.device_type == DeviceType.CUDA) / steps
    top = sorted((e for e in events if e.device_type == DeviceType.CPU), key=lambda e: e.self_cpu_time_total)
    result["top_operators_host_ms_per_step"] = {e.key: e.self_cpu_time_total / steps / 1e3 for e in reversed(top[-15:])}
    return result


def throughput(
    mols: list[dict],
    mode: str,
    batch_size: int,
    amp: str | None,
    kernel: str = "auto",
    steps: int = 20,
    gpus: int = 1,
    graphs: bool = False,
) -> dict:
    """se3pyg's benchmark (NVIDIA's method) on the GPU for the published recipe; with ``graphs``, ``--cuda-graphs``
    with a longer warm-up (each batch shape is captured on its first batch)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    config = BenchmarkConfig(
        mode=mode, batch_size=batch_size, steps=2 * steps if graphs else steps, warmup=30 if graphs else 2,
        amp=amp is not None, amp_dtype=amp or "auto", gpus=gpus, tracking=False, kernel=kernel, cuda_graphs=graphs,
    )  # fmt: skip
    data = [Data(**m) for m in mols]
    # the benchmark reads steps + warm-up + 1 batches: the sample is repeated to fill them
    needed = (config.steps + config.warmup + 1) * batch_size
    result = run_benchmark(config, data * -(-needed // len(data)))
    result["precision"] = amp or "tf32"
    return result
