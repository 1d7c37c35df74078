"""``se3pyg benchmark train|predict|data``: NVIDIA's throughput method, plus latency and peak memory."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table

from se3pyg.cli.console import console, one_line_errors
from se3pyg.cli.options import announce_eager, config_options, validated
from se3pyg.engine.config import BenchmarkConfig


@config_options(BenchmarkConfig, exclude=("mode",))
def benchmark(
    values: dict[str, Any], mode: str = typer.Argument(..., help="train, predict or data (the loader alone).")
) -> None:
    """Measure throughput (mol/ms), latency and peak memory; the last line is one JSON object."""
    config = validated(BenchmarkConfig, mode=mode, **values)
    from se3pyg.engine.benchmark import run_benchmark

    announce_eager(config)

    with one_line_errors():
        result = run_benchmark(config)
    if result is None:  # a torchrun rank other than 0
        return
    table = Table(title=f"se3pyg benchmark {mode} on {result['device']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    summary = {k: v for k, v in result.items() if k != "config"}
    for key, value in summary.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)
    print(json.dumps(summary), flush=True)
