"""``se3pyg train``: options -> TrainConfig -> se3pyg.engine.train.run, and what it prints."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from se3pyg.cli.console import console, duration, one_line_errors, stage_progress
from se3pyg.cli.options import announce_eager, config_options, defaults_for_untyped, typed_by_user, validated
from se3pyg.engine.config import TrainConfig

#: ``--quick``: defaults of a demo run (small model, 10,000 molecules, minutes on a CPU); typed options win.
QUICK = dict(
    limit=10_000,
    epochs=10,
    batch_size=32,
    num_layers=2,
    num_degrees=2,
    num_channels=16,
    num_heads=4,
    eval_interval=1,
    gpus=0,
    save_ckpt_path="quick.pt",
)


@config_options(TrainConfig)
def train(
    ctx: typer.Context,
    values: dict[str, Any],
    quick: bool = typer.Option(False, "--quick", help="Demo: small model on 10,000 molecules, a few minutes on CPU."),
    config_file: str | None = typer.Option(
        None, "--config", help="Options from a TOML, YAML or JSON file, or runs:/RUN_ID/config.json; typed ones win."
    ),
    silent: bool = typer.Option(False, "--silent", help="Print nothing but errors and the final line."),
) -> None:
    """Train on QM9 (or your --dataset) with NVIDIA's recipe; every run is an MLflow run with a model."""
    if quick:
        _quick_defaults(ctx, values)
    from_file = _file_options(ctx, values, config_file) if config_file is not None else set()
    config = validated(TrainConfig, **values)
    if quick:
        data = f"--dataset {config.dataset}" if config.dataset else f"{config.limit:,} QM9 molecules"
        data = data if config.dataset or config.limit else "all QM9 molecules"
        console.print(f"se3pyg --quick: a demo run (small model, {data}), not the published recipe", markup=False)
    announce_eager(config)
    from se3pyg.engine.train import run

    done_epochs: list[float] = []  # when each epoch of this run ended

    def report(m: dict[str, float]) -> None:
        done_epochs.append(time.perf_counter())
        if not silent:
            val = f"  val_mae {m['val_mae']:.5f}" if "val_mae" in m else ""
            left = int(m["epochs"]) - 1 - int(m["epoch"])
            eta = f"  run: {duration((done_epochs[-1] - start) / len(done_epochs) * left)} left" if left else ""
            console.print(
                f"epoch {int(m['epoch'])}  train_loss {m['train_loss']:.4f}{val}  "
                f"{m['throughput_mol_per_ms'] * 1000:.1f} mol/s  {m['epoch_time_s']:.1f} s{eta}",
                highlight=False,
            )

    start = time.perf_counter()
    with one_line_errors(), stage_progress() as progress:
        typed = {name for name in values if typed_by_user(ctx, name)} | from_file  # what a resume keeps
        result = run(config, on_epoch=report, on_progress=None if silent else progress, typed=typed)
    if result is None:
        return
    _print_result(result, time.perf_counter() - start)


def _quick_defaults(ctx: typer.Context, values: dict[str, Any]) -> None:
    """``--quick``'s defaults for the options not typed; with ``--dataset``, its own checkpoint and no limit."""
    defaults_for_untyped(ctx, values, QUICK)
    if values["dataset"] and not typed_by_user(ctx, "save_ckpt_path"):  # not over the QM9 demo's checkpoints
        values["save_ckpt_path"] = f"quick-{Path(values['dataset']).stem}.pt"
    if values["dataset"] and not typed_by_user(ctx, "limit"):
        values["limit"] = None


def _file_options(ctx: typer.Context, values: dict[str, Any], source: str) -> set[str]:
    """Set the options ``--config`` holds, except those typed (a typed option wins over the file); their names."""
    from se3pyg.engine.config_file import options_from_file

    with one_line_errors():
        found = options_from_file(TrainConfig, source, values.get("tracking_uri"))
    return defaults_for_untyped(ctx, values, found)


def _print_result(result: Any, seconds: float) -> None:
    """A finished run's lines: skipped records, the MAEs, the MLflow model, the checkpoints, the next command."""
    from se3pyg.engine.checkpoint import best_path

    if result.skipped:
        console.print(
            f"skipped {result.skipped} bad records of --dataset (first: {'; '.join(result.skip_reasons[:3])})",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    tracked = f", MLflow run {result.run_id}" if result.run_id else ""
    console.print(
        f"done in {seconds:.1f} s ({result.parameters:,} parameters): best val MAE "
        f"{result.best_val_mae:.5f}, test MAE {result.test_mae:.5f} ({result.task}){tracked}",
        highlight=False,
        soft_wrap=True,
    )
    if result.model_uri:
        alias = f" (models:/{result.registered_as}@{result.registered_alias})" if result.registered_alias else ""
        registered = f", registered as {result.registered_as}{alias}" if result.registered_as else ""
        console.print(f"MLflow model: runs:/{result.run_id}/model{registered}", highlight=False, soft_wrap=True)
    model = result.model_uri and f"runs:/{result.run_id}/model"
    if result.save_ckpt_path:
        best = best_path(result.save_ckpt_path)
        model = str(best if best.exists() else result.save_ckpt_path)
        console.print(
            f"checkpoint: {model} (best validation), last epoch: {result.save_ckpt_path}",
            highlight=False,
            soft_wrap=True,
        )
    next_step = f"se3pyg predict --ckpt {model} --input MOLECULES.xyz" if model else "nothing saved: --save-ckpt-path"
    console.print(f"next: {next_step}", markup=False, highlight=False, soft_wrap=True)
