"""``se3pyg benchmark train|predict``: NVIDIA's throughput method, plus latency and peak memory."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.table import Table

from se3pyg.cli.console import console, fail


def benchmark(
    mode: str = typer.Argument(..., help="train or predict."),
    batch_size: int = typer.Option(240, help="Molecules per batch."),
    steps: int = typer.Option(20, help="Timed steps after the warm-up."),
    epochs: int = typer.Option(0, help="Instead of --steps: time this many epochs after a warm-up epoch."),
    warmup: int = typer.Option(2, help="Untimed warm-up steps."),
    amp: bool = typer.Option(False, "--amp/--no-amp", help="Mixed precision."),
    amp_dtype: str = typer.Option("fp16", help="fp16 or bf16."),
    seed: int = typer.Option(0, help="Seed of the model and of the molecules drawn."),
    data_dir: Path = typer.Option(Path("data/qm9"), help="QM9 folder (built when missing)."),
    limit: int | None = typer.Option(None, help="Draw from the first N molecules only."),
    precompute_bases: bool = typer.Option(False, "--precompute-bases", help="Harmonics precomputed in RAM."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model (dynamic shapes)."),
    num_layers: int = typer.Option(7),
    num_heads: int = typer.Option(8),
    channels_div: int = typer.Option(2),
    pooling: str = typer.Option("max"),
    norm: bool = typer.Option(True, "--norm/--no-norm"),
    use_layer_norm: bool = typer.Option(True, "--use-layer-norm/--no-use-layer-norm"),
    low_memory: bool = typer.Option(False, "--low-memory"),
    num_degrees: int = typer.Option(4),
    num_channels: int = typer.Option(32),
    layout: str = typer.Option("full", help="full, partial or pairwise."),
    gpus: int | None = typer.Option(None, help="GPUs, one process each (0: the CPU; default: all visible)."),
    processes: int = typer.Option(1, help="CPU processes under DDP (gloo)."),
    tracking_uri: str | None = typer.Option(None, help="MLflow store (default $MLFLOW_TRACKING_URI or mlruns/)."),
    experiment: str = typer.Option("se3pyg-benchmark", help="MLflow experiment."),
    no_tracking: bool = typer.Option(False, "--no-tracking", help="Do not log to MLflow."),
) -> None:
    """Measure throughput (mol/ms), latency and peak memory; the last line is one JSON object."""
    import torch

    from se3pyg.data import DataError
    from se3pyg.engine.benchmark import BenchmarkConfig, run_benchmark
    from se3pyg.engine.tracking import TrackingError

    if mode not in ("train", "predict"):
        raise fail(f"mode must be train or predict, got {mode!r}")
    if gpus is None:
        gpus = torch.cuda.device_count()
    config = BenchmarkConfig(
        mode=mode, batch_size=batch_size, steps=steps, warmup=warmup, amp=amp, amp_dtype=amp_dtype, seed=seed,
        data_dir=str(data_dir), limit=limit, precompute_bases=precompute_bases, compile=compile,
        num_layers=num_layers, num_heads=num_heads, channels_div=channels_div, pooling=pooling, norm=norm,
        use_layer_norm=use_layer_norm, low_memory=low_memory, num_degrees=num_degrees, num_channels=num_channels,
        layout=layout, gpus=gpus, epochs=epochs, processes=processes,
    )  # fmt: skip
    try:
        tracker = None
        if not no_tracking and os.environ.get("RANK", "0") == "0":
            from se3pyg.engine.tracking import Tracker

            tracker = Tracker(tracking_uri, experiment, None, {"command": "benchmark", "mode": mode})
        result = run_benchmark(config)
        if result is None:  # a torchrun rank other than 0
            return
        if tracker is not None:
            tracker.log_params(result["config"])
            numbers = {k: v for k, v in result.items() if isinstance(v, int | float) and not isinstance(v, bool)}
            tracker.log_metrics(numbers, step=0)
            tracker.finish()
    except (ValueError, DataError, TrackingError) as exc:
        raise fail(str(exc)) from None
    table = Table(title=f"se3pyg benchmark {mode} on {result['device']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.items():
        if key != "config":
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)
    summary = {k: v for k, v in result.items() if k != "config"}
    print(json.dumps(summary), flush=True)
