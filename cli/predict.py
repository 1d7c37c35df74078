"""``se3pyg predict``: MAE on a QM9 split, or predictions for the user's molecules to CSV."""

from __future__ import annotations

import sys
from typing import Any

from se3pyg.cli.console import console, one_line_errors, rate
from se3pyg.cli.options import announce_eager, config_options, validated
from se3pyg.engine.config import PredictConfig


@config_options(PredictConfig)
def predict(values: dict[str, Any]) -> None:
    """Evaluate a checkpoint on a split of QM9 or of a --dataset (an MLflow run), or predict for XYZ/SDF molecules."""
    config = validated(PredictConfig, **values)
    from se3pyg.engine.predict import run_predict, write_predictions_csv

    announce_eager(config)

    with one_line_errors():
        done = run_predict(config)
    if done.values is not None and done.output is None:  # the CSV is the output: nothing else on stdout
        write_predictions_csv(sys.stdout, done.names, done.task, done.values)
    elif done.output is not None:
        console.print(f"{done.count} predictions of {done.task.name} written to {done.output}", highlight=False)
    else:
        console.print(
            f"{done.split} MAE {done.mae:.5f} {done.task.unit} on {done.count} molecules ({done.task.name}) "
            f"in {done.seconds:.2f} s, {rate(done.count, done.seconds)}",
            highlight=False,
        )
