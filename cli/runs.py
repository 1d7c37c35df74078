"""``se3pyg ui`` and ``se3pyg runs``: look at the tracked runs."""

from __future__ import annotations

import os
import subprocess
import sys

import typer
from rich.table import Table

from se3pyg.cli.console import console, fail


def ui(
    tracking_uri: str | None = typer.Option(None, help="MLflow store (default $MLFLOW_TRACKING_URI or mlruns/)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback unless told otherwise)."),
    port: int = typer.Option(5000, help="Port."),
) -> None:
    """The MLflow UI over the run store."""
    from se3pyg.engine.tracking import artifact_location, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri]
    cmd += ["--host", host, "--port", str(port), "--workers", "1"]
    artifacts = artifact_location(uri)
    if artifacts:
        cmd += ["--default-artifact-root", artifacts]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    console.print(f"MLflow UI for {uri} at http://{host}:{port}", highlight=False)
    try:
        raise typer.Exit(subprocess.call(cmd, env=env))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def runs(
    experiment: str = typer.Option("se3pyg", help="MLflow experiment."),
    task: str | None = typer.Option(None, help="Only runs of this task."),
    tracking_uri: str | None = typer.Option(None, help="MLflow store (default $MLFLOW_TRACKING_URI or mlruns/)."),
) -> None:
    """A table comparing training runs."""
    import mlflow

    from se3pyg.engine.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    try:
        mlflow.set_tracking_uri(uri)
        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise fail(f"--experiment {experiment!r}: no such experiment in {uri}")
        query = "tags.command = 'train'" + (f" and tags.task = '{task}'" if task else "")
        found = client.search_runs([exp.experiment_id], filter_string=query, order_by=["attributes.start_time DESC"])
    except typer.Exit:
        raise
    except Exception as exc:
        raise fail(f"MLflow tracking store {uri}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    table = Table(title=f"{experiment} ({uri})")
    for column in ("run", "task", "status", "epochs", "best val MAE", "test MAE", "mol/ms", "duration"):
        table.add_column(column)
    for r in found:
        m, p = r.data.metrics, r.data.params
        duration = ((r.info.end_time or r.info.start_time) - r.info.start_time) / 1000
        table.add_row(
            r.info.run_name or r.info.run_id[:8],
            r.data.tags.get("task", ""),
            r.info.status,
            p.get("epochs", ""),
            f"{m['best_val_mae']:.5f}" if "best_val_mae" in m else "",
            f"{m['test_mae']:.5f}" if "test_mae" in m else "",
            f"{m['throughput_mol_per_ms']:.3f}" if "throughput_mol_per_ms" in m else "",
            f"{duration:.0f} s",
        )
    console.print(table)
