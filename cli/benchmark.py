"""``se3pyg benchmark train|predict|data``: NVIDIA's throughput method, plus latency and peak memory."""

from __future__ import annotations

import json
from typing import Any, Literal

import typer
from rich.table import Table

from se3pyg.cli.console import console, duration, err_console, one_line_errors, stage_progress
from se3pyg.cli.options import announce_eager, config_options, defaults_for_untyped, validated
from se3pyg.engine.config import BenchmarkConfig

#: ``--quick``: a benchmark that ends in about a minute on a CPU (a small model on 2,000 molecules); typed options
#: win. Its figures say how se3pyg runs here, not the published recipe's speed.
QUICK = dict(
    limit=2000,
    batch_size=32,
    num_layers=2,
    num_degrees=2,
    num_channels=16,
    num_heads=4,
    steps=10,
    warmup=2,
    gpus=0,
)


@config_options(BenchmarkConfig, exclude=("mode",))
def benchmark(
    ctx: typer.Context,
    values: dict[str, Any],
    mode: Literal["train", "predict", "data"] = typer.Argument(
        ..., help="What to time: a training step, a prediction, or the loader alone."
    ),
    quick: bool = typer.Option(False, "--quick", help="A small model on 2,000 molecules: about a minute on a CPU."),
) -> None:
    """Measure throughput (mol/ms), latency and peak memory; the last line is one JSON object."""
    if quick:
        defaults_for_untyped(ctx, values, QUICK)
    config = validated(BenchmarkConfig, mode=mode, **values)
    from se3pyg.engine.benchmark import data_to_build, run_benchmark

    announce_eager(config)
    with one_line_errors():
        building = data_to_build(config)
    if building is not None:
        molecules, seconds = building
        err_console.print(
            f"building {molecules:,} QM9 molecules in {config.data_dir} first: about {duration(seconds)} here",
            markup=False,
            highlight=False,
        )
    with one_line_errors(), stage_progress() as progress:
        result = run_benchmark(config, on_progress=progress)
    if result is None:  # a torchrun rank other than 0
        return
    table = Table(title=f"se3pyg benchmark {mode} on {result['device']}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    summary = {k: v for k, v in result.items() if k != "config"}
    for key, value in summary.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)
    print(json.dumps(summary), flush=True)
