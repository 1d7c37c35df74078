"""``se3pyg ui`` and ``se3pyg runs``: look at the tracked runs."""

from __future__ import annotations

import typer
from rich.table import Table

from se3pyg.cli.console import console, err_console, one_line_errors


def ui(
    tracking_uri: str | None = typer.Option(None, help="MLflow store (default $MLFLOW_TRACKING_URI or mlruns/)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback unless told otherwise)."),
    port: int = typer.Option(5000, help="Port."),
    experiment: str = typer.Option("se3pyg", help="MLflow experiment whose runs page to print."),
) -> None:
    """The MLflow UI over the run store, until Ctrl-C (the server stops with it)."""
    from se3pyg.engine.tracking import check_port_free, is_loopback, resolve_tracking_uri, runs_page, serve_ui

    uri = resolve_tracking_uri(tracking_uri)
    if not is_loopback(host):
        err_console.print(
            f"warning: --host {host} serves the MLflow UI and its API, without authentication, to the network",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    with one_line_errors():
        check_port_free(host, port)
        console.print(f"MLflow UI for {uri}: {runs_page(uri, experiment, f'http://{host}:{port}')}", highlight=False)
        status = serve_ui(uri, host, port)
    raise typer.Exit(status)


def runs(
    experiment: str = typer.Option("se3pyg", help="MLflow experiment."),
    task: str | None = typer.Option(None, help="Only runs of this task."),
    tracking_uri: str | None = typer.Option(None, help="MLflow store (default $MLFLOW_TRACKING_URI or mlruns/)."),
) -> None:
    """A table comparing training runs."""
    from se3pyg.engine.tracking import list_runs, resolve_tracking_uri

    with one_line_errors():
        found = list_runs(tracking_uri, experiment, task)
    table = Table(title=f"{experiment} ({resolve_tracking_uri(tracking_uri)})")
    for column in ("run", "task", "status", "epochs", "best val MAE", "test MAE", "mol/s", "duration"):
        table.add_column(column)

    def number(value: float | None, digits: int) -> str:
        return "" if value is None else f"{value:.{digits}f}"

    for r in found:
        table.add_row(
            r.name, r.task, r.status, f"{r.epochs_done}/{r.epochs}", number(r.best_val_mae, 5),
            number(r.test_mae, 5), number(r.throughput_mol_per_s, 1), f"{r.duration_s:.0f} s",
        )  # fmt: skip
    console.print(table)
