"""``se3pyg``: the Typer application. Parses options and calls ``se3pyg.engine``."""

from __future__ import annotations

import os
import sys

import typer

import se3pyg
from se3pyg.cli import data
from se3pyg.cli.benchmark import benchmark
from se3pyg.cli.predict import predict
from se3pyg.cli.register import register
from se3pyg.cli.runs import runs, ui
from se3pyg.cli.train import train
from se3pyg.processes import stop_signals_noted, use_own_scratch

app = typer.Typer(no_args_is_help=True, add_completion=False, help="SE(3)-Transformer on PyTorch Geometric.")


app.add_typer(data.app, name="data")
app.command()(train)
app.command()(predict)
app.command()(ui)
app.command()(runs)
app.command()(register)
app.command()(benchmark)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"se3pyg {se3pyg.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """SE(3)-Transformer on PyTorch Geometric."""


def main() -> None:
    for stream in (sys.stdout, sys.stderr):  # a terminal or pipe that takes ASCII only: Å as \xc5, never a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow's INFO lines are not the user's business
    with stop_signals_noted():  # a stop at any stage ends as one line, where work can stop, its cleanup done
        use_own_scratch()  # what a killed command leaves in temporary folders, the next one removes
        app()
