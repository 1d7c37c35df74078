"""``se3pyg register``: a tracked run's model as the next version of a registered model."""

from __future__ import annotations

import typer

from se3pyg.cli.console import console, one_line_errors


def register(
    run_id: str = typer.Argument(
        ..., metavar="RUN_ID", help="The run: its ID, or the first characters of it (se3pyg runs shows 8)."
    ),
    name: str = typer.Argument(..., metavar="NAME", help="The registered model."),
    alias: str | None = typer.Option(None, help="An alias for the new version, e.g. champion (moved to it)."),
    tracking_uri: str | None = typer.Option(None, help="MLflow store (default $MLFLOW_TRACKING_URI or mlruns/)."),
) -> None:
    """Register a run's model (one whose model was not logged: from its checkpoint artifact)."""
    with one_line_errors():
        from se3pyg.engine.serving import register_run_model

        version = register_run_model(run_id, name, alias, tracking_uri)
    named = f", alias {alias}: models:/{name}@{alias}" if alias else ""
    console.print(f"registered as models:/{name}/{version}{named}", markup=False, highlight=False, soft_wrap=True)
