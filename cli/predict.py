"""``se3pyg predict``: MAE on a QM9 split, or predictions for the user's molecules to CSV."""

from __future__ import annotations

from pathlib import Path

import typer

from se3pyg.cli.console import console, fail


def predict(
    ckpt: Path = typer.Option(..., "--ckpt", help="se3pyg or NVIDIA checkpoint."),
    input: list[Path] | None = typer.Option(None, "--input", help="XYZ/SDF file or folder (repeatable)."),
    output: Path = typer.Option(Path("predictions.csv"), "--output", help="CSV for --input predictions."),
    split: str = typer.Option("test", help="Without --input: QM9 split to evaluate, test or val."),
    batch_size: int = typer.Option(240, help="Molecules per batch."),
    gpus: int | None = typer.Option(None, help="1 to run on the GPU, 0 for CPU (default: GPU if visible)."),
    amp: bool = typer.Option(False, "--amp/--no-amp", help="Mixed precision."),
    data_dir: Path | None = typer.Option(None, help="QM9 folder (default: the checkpoint's)."),
    limit: int | None = typer.Option(None, help="First N QM9 molecules (default: the checkpoint's)."),
    task: str | None = typer.Option(None, help="Task of an NVIDIA checkpoint (default homo)."),
    target_mean: float | None = typer.Option(None, help="NVIDIA checkpoints: train mean of the task."),
    target_std: float | None = typer.Option(None, help="NVIDIA checkpoints: train std of the task."),
    num_heads: int = typer.Option(8, help="NVIDIA checkpoints: attention heads."),
    channels_div: int = typer.Option(2, help="NVIDIA checkpoints: channels_div."),
    tracking_uri: str | None = typer.Option(None, help="MLflow store for split evaluations."),
    experiment: str = typer.Option("se3pyg", help="MLflow experiment."),
    run_name: str | None = typer.Option(None, help="MLflow run name."),
) -> None:
    """Evaluate a checkpoint on a QM9 split (an MLflow run), or predict for XYZ/SDF molecules."""
    import torch

    from se3pyg.data import DataError
    from se3pyg.data.molecules import read_molecules
    from se3pyg.engine.allocator import keep_freed_memory
    from se3pyg.engine.checkpoint import CheckpointError
    from se3pyg.engine.predict import evaluate_split, load_model, predict_molecules, write_predictions_csv
    from se3pyg.engine.tracking import Tracker, TrackingError

    if batch_size < 1:
        raise fail(f"--batch-size must be >= 1, got {batch_size}")
    use_gpu = torch.cuda.is_available() if gpus is None else gpus > 0
    if use_gpu and not torch.cuda.is_available():
        raise fail("--gpus: no GPU is visible")
    device = torch.device("cuda" if use_gpu else "cpu")
    keep_freed_memory()
    try:
        loaded = load_model(ckpt, task, target_mean, target_std, num_heads, channels_div)
        if input:
            molecules = read_molecules(input)
            values = predict_molecules(loaded, molecules, batch_size, device, amp)
            write_predictions_csv(output, [m.name for m in molecules], loaded.task, values)
            console.print(f"{len(molecules)} predictions of {loaded.task.name} written to {output}", highlight=False)
            return
        config = loaded.config or {}
        directory = data_dir or Path(config.get("data_dir", "data/qm9"))
        count = limit if limit is not None else config.get("limit")
        tracker = Tracker(tracking_uri, experiment, run_name, {"task": loaded.task.name, "command": "predict"})
        mae, n = evaluate_split(loaded, directory, count, split, batch_size, device, amp)
        tracker.log_params(
            {"ckpt": str(ckpt), "split": split, "task": loaded.task.name, "n": n, "source": loaded.source}
        )
        tracker.log_metrics({f"{split}_mae": mae}, step=0)
        tracker.finish()
        console.print(f"{split} MAE {mae:.5f} {loaded.task.unit} on {n} molecules ({loaded.task.name})")
    except (ValueError, DataError, CheckpointError, TrackingError) as exc:
        raise fail(str(exc)) from None
