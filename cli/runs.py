"""``se3pyg ui`` and ``se3pyg runs``: look at the tracked runs."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING

import typer
from rich import box
from rich.table import Table

from se3pyg.cli.console import console, duration, err_console, one_line_errors

if TYPE_CHECKING:
    from se3pyg.engine.tracking import RunSummary


def ui(
    tracking_uri: str | None = typer.Option(None, help="MLflow store (default $MLFLOW_TRACKING_URI or mlruns/)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback unless told otherwise)."),
    port: int = typer.Option(5000, help="Port."),
    experiment: str = typer.Option("se3pyg", help="MLflow experiment whose runs page to print."),
) -> None:
    """The MLflow UI over the run store, until Ctrl-C (the server stops with it)."""
    from se3pyg.engine import tracking, ui_server

    uri = tracking.resolve_tracking_uri(tracking_uri)
    if not ui_server.is_loopback(host):
        err_console.print(
            f"warning: --host {host} serves the MLflow UI and its API, without authentication, to the network",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    with one_line_errors():
        ui_server.check_servable(uri, host, port)
        page = ui_server.runs_page(uri, experiment, f"http://{host}:{port}")
        ready = lambda: console.print(f"MLflow UI for {uri}: {page}", highlight=False)  # noqa: E731 (once it answers)
        status = ui_server.serve_ui(uri, host, port, on_ready=ready)
    raise typer.Exit(status)


def runs(
    experiment: str = typer.Option("se3pyg", help="MLflow experiment."),
    task: str | None = typer.Option(None, help="Only runs of this task."),
    tracking_uri: str | None = typer.Option(None, help="MLflow store (default $MLFLOW_TRACKING_URI or mlruns/)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object a run (full run IDs), for scripts."),
) -> None:
    """A table comparing training runs."""
    from se3pyg.engine.tracking import list_runs, resolve_tracking_uri

    with one_line_errors():
        found = list_runs(tracking_uri, experiment, task)
    if as_json:
        typer.echo(json.dumps([dataclasses.asdict(r) for r in found], indent=2))
        return
    console.print(runs_table(found, f"{experiment} ({resolve_tracking_uri(tracking_uri)})"), soft_wrap=False)


def runs_table(found: list[RunSummary], title: str) -> Table:
    """One row a run, in 80 columns (printed with ``soft_wrap=False``): names and statuses wrap, numbers never
    do; a task shared by every run is named in the title instead of a column."""
    tasks = {r.task for r in found}
    one_task = len(tasks) == 1
    table = Table(
        title=f"{title}, task {tasks.pop()}" if one_task else title,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1),
        collapse_padding=True,
        pad_edge=False,
        title_justify="left",
        caption_justify="left",
        caption="id: the run ID's first 8 characters (runs:/ID/model takes them; --json gives them whole); val MAE: "
        "the best validation MAE; MAEs in the task's unit; epochs: from the training's first, resumes included; mol/s: "
        "the run's throughput",
    )
    table.add_column("id", no_wrap=True)
    table.add_column("run", overflow="fold", min_width=10)
    if not one_task:
        table.add_column("task", no_wrap=True)
    table.add_column("status", min_width=8, max_width=10)
    for header in ("epochs", "val MAE", "test MAE", "mol/s", "time"):
        table.add_column(header, justify="right", no_wrap=True)

    def number(value: float | None, digits: int) -> str:
        return "" if value is None else f"{value:.{digits}f}"

    for r in found:
        task = [] if one_task else [r.task]
        table.add_row(
            r.run_id[:8],
            r.name,
            *task,
            r.status,
            f"{r.epochs_done}/{r.epochs}",
            number(r.best_val_mae, 5),
            number(r.test_mae, 5),
            number(r.throughput_mol_per_s, 1),
            duration(r.duration_s),
        )
    return table
