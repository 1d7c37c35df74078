"""``se3pyg train``: options -> TrainConfig -> se3pyg.engine.train.run."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from se3pyg.cli.console import console, fail

QUICK = dict(
    limit=10_000,
    epochs=10,
    batch_size=32,
    num_layers=2,
    num_degrees=2,
    num_channels=16,
    num_heads=4,
    eval_interval=1,
    data_dir="data/qm9",
    tracking_uri="sqlite:///mlruns/mlflow.db",
)


def train(
    ctx: typer.Context,
    task: str = typer.Option("homo", help="QM9 target, by NVIDIA's name (homo, lumo, gap, U0, ...)."),
    epochs: int = typer.Option(100, help="Total number of epochs (also when resuming)."),
    batch_size: int = typer.Option(240, help="Molecules per batch and process."),
    seed: int = typer.Option(0, help="Random seed."),
    num_workers: int = typer.Option(0, help="DataLoader worker processes."),
    amp: bool = typer.Option(False, "--amp/--no-amp", help="Automatic mixed precision."),
    amp_dtype: str = typer.Option("fp16", help="fp16 (with a GradScaler) or bf16."),
    gradient_clip: float | None = typer.Option(None, help="Clip the gradient norm to this value."),
    accumulate_grad_batches: int = typer.Option(1, help="Batches per optimizer step."),
    ckpt_interval: int = typer.Option(-1, help="Save a checkpoint every N epochs (-1: only the last)."),
    eval_interval: int = typer.Option(20, help="Validate every N epochs (and after the last)."),
    silent: bool = typer.Option(False, "--silent", help="Print nothing but errors and the final line."),
    data_dir: Path = typer.Option(Path("data/qm9"), help="QM9 folder (built when missing)."),
    limit: int | None = typer.Option(None, help="Use only the first N QM9 molecules."),
    save_ckpt_path: Path | None = typer.Option(None, help="Last checkpoint; the best one is saved beside it."),
    load_ckpt_path: Path | None = typer.Option(None, help="Resume from this se3pyg checkpoint."),
    optimizer: str = typer.Option("adam", help="adam (AdamW), sgd or lamb."),
    learning_rate: float = typer.Option(0.002, "--learning-rate", "--lr", help="Initial learning rate."),
    min_learning_rate: float | None = typer.Option(None, help="Cosine schedule floor (default lr / 10)."),
    momentum: float = typer.Option(0.9, help="SGD momentum."),
    weight_decay: float = typer.Option(0.1, help="Weight decay (decoupled for adam and lamb)."),
    precompute_bases: bool = typer.Option(False, "--precompute-bases", help="Keep every bond's harmonics in RAM."),
    num_layers: int = typer.Option(7, help="Attention layers."),
    num_heads: int = typer.Option(8, help="Attention heads."),
    channels_div: int = typer.Option(2, help="Channel division for keys and values."),
    pooling: str = typer.Option("max", help="Graph pooling: max or avg."),
    norm: bool = typer.Option(True, "--norm/--no-norm", help="Equivariant norm after each attention block."),
    use_layer_norm: bool = typer.Option(True, "--use-layer-norm/--no-use-layer-norm", help="LayerNorm in radial MLPs."),
    low_memory: bool = typer.Option(False, "--low-memory", help="Recompute kernels in backward (less memory)."),
    num_degrees: int = typer.Option(4, help="Hidden degrees 0 .. N-1."),
    num_channels: int = typer.Option(32, help="Hidden channels per degree."),
    layout: str = typer.Option("full", help="Parameter layout: full, partial or pairwise."),
    gpus: int | None = typer.Option(None, help="GPUs on this node (0 = CPU; default: all visible, else CPU)."),
    processes: int = typer.Option(1, help="Processes when not on GPUs (gloo), e.g. to test DDP on CPU."),
    tracking_uri: str | None = typer.Option(None, help="MLflow store (default $MLFLOW_TRACKING_URI or mlruns/)."),
    experiment: str = typer.Option("se3pyg", help="MLflow experiment."),
    run_name: str | None = typer.Option(None, help="MLflow run name."),
    quick: bool = typer.Option(False, "--quick", help="Demo: small model on 10,000 molecules, a few minutes on CPU."),
) -> None:
    """Train on QM9 with NVIDIA's recipe; every run is an MLflow run."""
    import torch

    from se3pyg.data import DataError
    from se3pyg.engine.checkpoint import CheckpointError
    from se3pyg.engine.config import TrainConfig
    from se3pyg.engine.tracking import TrackingError
    from se3pyg.engine.train import TrainingError, run

    values = {k: v for k, v in ctx.params.items() if k != "quick"}
    if gpus is None:
        values["gpus"] = torch.cuda.device_count()
    if quick:
        values.update(QUICK)
        values["gpus"] = 0
    values = {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}
    config = TrainConfig(**values)
    if config.gpus > torch.cuda.device_count():
        raise fail(f"--gpus {config.gpus}: only {torch.cuda.device_count()} visible")
    if quick:
        console.print("se3pyg --quick: a demo run (small model, 10,000 QM9 molecules), not the published recipe")

    def report(m: dict[str, float]) -> None:
        if not config.silent:
            val = f"  val_mae {m['val_mae']:.5f}" if "val_mae" in m else ""
            console.print(
                f"epoch {int(m['epoch'])}  train_loss {m['train_loss']:.4f}{val}  "
                f"{m['throughput_mol_per_ms'] * 1000:.1f} mol/s  {m['epoch_time_s']:.1f} s",
                highlight=False,
            )

    start = time.perf_counter()
    try:
        result = run(config, on_epoch=report)
    except (ValueError, DataError, CheckpointError, TrackingError) as exc:
        raise fail(str(exc)) from None
    except TrainingError as exc:
        raise fail(str(exc), exc.code) from None
    if result is not None:
        console.print(
            f"done in {time.perf_counter() - start:.1f} s: best val MAE {result.best_val_mae:.5f}, "
            f"test MAE {result.test_mae:.5f} ({config.task}), MLflow run {result.run_id}",
            highlight=False,
            soft_wrap=True,
        )
