"""``se3pyg data``: prepare QM9 offline."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from se3pyg.cli.console import console, one_line_errors, stage_progress

app = typer.Typer(no_args_is_help=True, help="Prepare datasets.")

DATA_DIR = typer.Option(Path("data/qm9"), "--data-dir", help="Folder of the QM9 build.")


@app.command()
def prepare(
    data_dir: Path = DATA_DIR,
    limit: int | None = typer.Option(None, "--limit", help="Keep only the first N characterized molecules."),
) -> None:
    """Build QM9 from the qm9pack package (no network), once; an existing complete build is kept."""
    from se3pyg.data import prepare_qm9

    start = time.perf_counter()
    with one_line_errors(), stage_progress() as progress:
        manifest = prepare_qm9(data_dir, limit, progress=progress)
    console.print(
        f"QM9 ready in {data_dir}: {manifest['count']} molecules ({time.perf_counter() - start:.1f} s)",
        markup=False,
        highlight=False,
    )
