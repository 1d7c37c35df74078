"""What a finished training run leaves to look at: its learning curve, a parity plot of the test split and the
test predictions as a table.

Plots are Matplotlib figures saved as PNG without pyplot (no display, no global state).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from se3pyg.data.tasks import Task
from se3pyg.engine.evaluate import Predictions
from se3pyg.io import spreadsheet_text

LEARNING_CURVE, PARITY_PLOT, TEST_PREDICTIONS = "learning_curve.png", "parity_test.png", "test_predictions.csv"


def in_task_unit(predictions: Predictions, mean: float, std: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(truth, prediction)`` in the task's unit: $y = \sigma z + \mu$ of the standardized values.

    Args:
        predictions: standardized predictions and targets.
        mean: the target's training-split mean.
        std: its standard deviation.
    """
    return predictions.target.double() * std + mean, predictions.pred.double() * std + mean


def write_test_predictions(
    path: Path, predictions: Predictions, task: Task, mean: float, std: float, name: Callable[[int], str]
) -> None:
    """``molecule,task,truth,prediction,error,unit``: one row a test molecule, named by ``name(index)``.

    Args:
        path: the file written.
        predictions: standardized predictions and targets.
        task: the task, for labels and units.
        mean: the target's training-split mean.
        std: its standard deviation.
        name: the name of a molecule by its index.
    """
    truth, pred = in_task_unit(predictions, mean, std)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["molecule", "task", "truth", "prediction", "error", "unit"])
        for index, t, p in zip(predictions.idx.tolist(), truth.tolist(), pred.tolist(), strict=True):
            writer.writerow(
                [
                    spreadsheet_text(name(index) if index >= 0 else ""),
                    spreadsheet_text(task.name),
                    f"{t:.6f}",
                    f"{p:.6f}",
                    f"{p - t:.6f}",
                    spreadsheet_text(task.unit),
                ]
            )


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # drawn without pyplot: no backend, no global state

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def write_learning_curve(path: Path, history: Sequence[dict[str, float]], task: Task) -> None:
    """Training loss (L1 on standardized targets) and validation MAE (task unit) per epoch, side by side.

    Args:
        path: the file written.
        history: each epoch's metrics (``epoch``, ``train_loss``, ``val_mae`` where validated).
        task: the task, for labels and units.
    """
    fig = _figure(9, 3.6)
    loss_ax, val_ax = fig.subplots(1, 2)
    epochs = [int(m["epoch"]) for m in history]
    loss_ax.plot(epochs, [m["train_loss"] for m in history], marker="o", markersize=3, color="tab:blue")
    loss_ax.set(xlabel="epoch", ylabel="L1 loss (standardized)", title="training loss")
    validated = [m for m in history if "val_mae" in m]
    val_ax.plot(
        [int(m["epoch"]) for m in validated],
        [m["val_mae"] for m in validated],
        marker="o",
        markersize=3,
        color="tab:orange",
    )
    if validated:
        best = min(validated, key=lambda m: m["val_mae"])
        val_ax.axhline(best["val_mae"], color="grey", linewidth=0.8, linestyle="--")
        val_ax.annotate(
            f"best {best['val_mae']:.4g}",
            (best["epoch"], best["val_mae"]),
            textcoords="offset points",
            xytext=(0, 8),
            ha="center",
            fontsize=8,
        )
    val_ax.set(xlabel="epoch", ylabel=f"MAE ({task.unit})", title=f"validation MAE, {task.name}")
    for ax in (loss_ax, val_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.savefig(path)


def write_parity_plot(path: Path, predictions: Predictions, task: Task, mean: float, std: float) -> None:
    """Predictions against the truth on the test split, with the diagonal and the MAE.

    Args:
        path: the file written.
        predictions: standardized predictions and targets.
        task: the task, for labels and units.
        mean: the target's training-split mean.
        std: its standard deviation.
    """
    truth, pred = (v.numpy() for v in in_task_unit(predictions, mean, std))
    fig = _figure(5, 5)
    ax = fig.subplots()
    if len(truth) > 2000:
        shown = ax.hexbin(truth, pred, gridsize=60, mincnt=1, bins="log", cmap="viridis")
        fig.colorbar(shown, ax=ax, label="molecules")
    else:
        ax.scatter(truth, pred, s=6, alpha=0.6, color="tab:blue", linewidths=0)
    if len(truth):
        low, high = float(min(truth.min(), pred.min())), float(max(truth.max(), pred.max()))
        pad = 0.03 * (high - low or 1.0)
        ax.plot([low - pad, high + pad], [low - pad, high + pad], color="black", linewidth=0.8)
        ax.set_xlim(low - pad, high + pad)
        ax.set_ylim(low - pad, high + pad)
    mae = float(abs(pred - truth).mean()) if len(truth) else math.nan
    ax.set_aspect("equal")
    ax.set(
        xlabel=f"truth ({task.unit})",
        ylabel=f"prediction ({task.unit})",
        title=f"{task.name}, test split: {len(truth)} molecules, MAE {mae:.4g} {task.unit}",
    )
    ax.grid(alpha=0.3)
    fig.savefig(path)


def write_run_report(
    folder: Path,
    history: Sequence[dict[str, float]],
    test: Predictions,
    task: Task,
    mean: float,
    std: float,
    name: Callable[[int], str],
) -> list[Path]:
    """The learning curve, the parity plot and the test predictions (molecules named by ``name(index)``) in
    ``folder``; their paths.

    Args:
        folder: where the files go.
        history: each epoch's metrics.
        test: the test split's standardized predictions.
        task: the task.
        mean: the target's training-split mean.
        std: its standard deviation.
        name: the name of a molecule by its index.
    """
    paths = [folder / LEARNING_CURVE, folder / PARITY_PLOT, folder / TEST_PREDICTIONS]
    write_learning_curve(paths[0], history, task)
    write_parity_plot(paths[1], test, task, mean, std)
    write_test_predictions(paths[2], test, task, mean, std, name)
    return paths
