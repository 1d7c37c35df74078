"""Inference: a checkpoint (se3pyg's or NVIDIA's) on QM9 splits or on the user's molecules."""

from __future__ import annotations

import csv
import dataclasses
import functools
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import torch

from se3pyg.allocator import keep_freed_memory
from se3pyg.compat.nvidia import load_nvidia
from se3pyg.data import DatasetSpec, TargetStats, TrainingView, dataset_splits, get_task, make_loader, qm9_splits
from se3pyg.data.custom import build_dataset, dataset_digest
from se3pyg.data.errors import DataError
from se3pyg.data.molecules import ELEMENTS, read_molecules
from se3pyg.data.tasks import Task
from se3pyg.engine.checkpoint import (
    CheckpointError,
    check_trained,
    is_se3pyg_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
)
from se3pyg.engine.config import PredictConfig, dataset_spec
from se3pyg.engine.distributed import DistInfo
from se3pyg.engine.evaluate import mean_absolute_error
from se3pyg.engine.graphs import GraphedPredictor
from se3pyg.engine.precision import Precision
from se3pyg.engine.step import predict_step
from se3pyg.engine.tracking import Tracker, checkpoint_of
from se3pyg.io import atomic_write, check_writable, exclusive_use, read_torch_file, spreadsheet_text
from se3pyg.model import SE3TransformerPooled
from se3pyg.processes import raise_if_stopped

if TYPE_CHECKING:
    from torch_geometric.data import Batch, Data, InMemoryDataset


@dataclass
class LoadedModel:
    model: SE3TransformerPooled
    task: Task
    mean: float | None
    std: float | None
    source: str  # "se3pyg" or "nvidia"
    config: dict | None = None
    elements: tuple[str, ...] = ELEMENTS  # one-hot node features, in order
    dataset_sha256: str | None = None  # the digest of the --dataset it was trained on, as it was then

    @property
    def dataset(self) -> DatasetSpec | None:
        """The ``--dataset`` it was trained on (``None``: QM9)."""
        trained = self.config or {}
        return dataset_spec(trained) if trained.get("dataset") else None


def load_model(
    path: str | os.PathLike,
    task: str | None = None,
    target_mean: float | None = None,
    target_std: float | None = None,
    num_heads: int = 8,
    channels_div: int = 2,
) -> LoadedModel:
    """The model of an se3pyg checkpoint, or of an NVIDIA one (heads and ``channels_div`` as given).

    Args:
        path: an se3pyg or NVIDIA checkpoint file.
        task: an NVIDIA checkpoint's task (default ``homo``).
        target_mean: an NVIDIA checkpoint's training-split mean of the task.
        target_std: its standard deviation.
        num_heads: an NVIDIA checkpoint's attention heads.
        channels_div: its key and value channel divisor.

    Raises:
        CheckpointError: a file that is no usable checkpoint, named.
    """
    p = Path(path)
    payload = read_torch_file(p)
    if is_se3pyg_checkpoint(payload):
        ckpt = check_trained(load_checkpoint(p, payload), str(p))
        if task is not None and task != ckpt["task"]:
            raise CheckpointError(f"{p}: trained for task {ckpt['task']!r}, not {task!r}")
        model = model_from_checkpoint(ckpt, str(p)).eval()
        custom = bool(ckpt["config"].get("dataset"))
        task_of = Task(ckpt["task"], 0, ckpt.get("unit", "")) if custom else get_task(ckpt["task"])
        elements = tuple(ckpt.get("elements", ELEMENTS))
        stats = (ckpt["target_mean"], ckpt["target_std"])
        return LoadedModel(model, task_of, *stats, "se3pyg", ckpt["config"], elements, ckpt.get("dataset_sha256"))
    try:
        model = load_nvidia(payload, num_heads=num_heads, channels_div=channels_div)
    except ValueError as exc:
        raise CheckpointError(f"{p}: not an se3pyg or NVIDIA SE(3)-Transformer checkpoint ({exc})") from None
    if not isinstance(model, SE3TransformerPooled):
        raise CheckpointError(f"{p}: an NVIDIA SE3Transformer without the pooled regression head")
    return LoadedModel(model, get_task(task or "homo"), target_mean, target_std, "nvidia")


def prediction_step(
    model: SE3TransformerPooled, precision: Precision, device: torch.device, cuda_graphs: bool = False
) -> Callable[[Batch], torch.Tensor]:
    """``batch -> model's float32 prediction``: `predict_step()`, or with ``cuda_graphs`` a
    `GraphedPredictor`'s (replayed CUDA graphs on a GPU; elsewhere the same padded batches run eagerly).

    Args:
        model: the model, on ``device``.
        precision: the precision policy.
        device: where it predicts.
        cuda_graphs: replay the step as CUDA graphs.
    """
    if cuda_graphs:
        return GraphedPredictor(model, precision, capture=device.type == "cuda").predict
    return functools.partial(predict_step, model, precision=precision)


@torch.no_grad()
def predict_molecules(
    loaded: LoadedModel,
    molecules: list[Data],
    batch_size: int,
    device: torch.device,
    precision: Precision,
    cuda_graphs: bool = False,
) -> torch.Tensor:
    """Predictions in the task's unit, one per molecule, in order (``cuda_graphs``: see `prediction_step()`).

    Args:
        loaded: the model and its task and statistics (`load_model`).
        molecules: the molecules, in order.
        batch_size: molecules a batch.
        device: where it predicts.
        precision: the precision policy.
        cuda_graphs: replay the step as CUDA graphs.

    Raises:
        CheckpointError: a prediction that is not finite (unusable weights or statistics).
    """
    if loaded.mean is None or loaded.std is None:
        raise CheckpointError(
            "an NVIDIA checkpoint holds no target statistics: pass --target-mean and --target-std "
            f"(the mean and std of {loaded.task.name} over the training split, in {loaded.task.unit})"
        )
    model = loaded.model.to(device).eval()
    loader = make_loader(molecules, batch_size, shuffle=False)  # PyG's batches, edges in reverse pairs where they pair
    predict = prediction_step(model, precision, device, cuda_graphs)
    out = []
    for batch in loader:
        raise_if_stopped()
        out.append(predict(batch.to(device)).cpu())
    values = torch.cat(out) * loaded.std + loaded.mean if out else torch.zeros(0)
    bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
    if bad:
        raise CheckpointError(
            f"{molecules[bad[0]].name}: the prediction is {values[bad[0]].item()} ({len(bad)} of {len(values)} not "
            "finite): the model's weights or target statistics are not usable"
        )
    return values


def evaluate_split(
    loaded: LoadedModel,
    data_dir: str | os.PathLike,
    limit: int | None,
    split: str,
    batch_size: int,
    device: torch.device,
    precision: Precision,
    dataset: str | None = None,
    cuda_graphs: bool = False,
) -> tuple[float, int, float]:
    """``(MAE in the task's unit, molecules, seconds of the prediction pass)`` on NVIDIA's ``test`` or ``val``
    split of the first ``limit`` QM9 molecules, or on that split of the ``--dataset`` the model was trained on (as
    its checkpoint records), or of ``dataset`` (another file of molecules, with the model's target, elements and
    split options; ``split`` may be ``all`` there).

    Targets are standardized with the checkpoint's statistics (an se3pyg checkpoint) or the train split's.
    ``cuda_graphs``: see `prediction_step()`.

    Args:
        loaded: the model and its task and statistics.
        data_dir: the QM9 folder.
        limit: the first molecules, as the model was trained.
        split: ``test`` or ``val``.
        batch_size: molecules a batch.
        device: where it predicts.
        precision: the precision policy.
        cuda_graphs: replay the step as CUDA graphs.
    """
    if split not in ("test", "val", "all") or (split == "all" and dataset is None):
        raise ValueError(f"--split must be test or val (or all, with --dataset), got {split!r}")
    stats = TargetStats(loaded.mean, loaded.std) if loaded.source == "se3pyg" else None
    custom = loaded.dataset
    if dataset is None and custom is not None and loaded.dataset_sha256 not in (None, dataset_digest(custom.source)):
        raise DataError(
            f"{custom.source}: not the dataset the checkpoint was trained on (its files changed since); "
            f"--dataset {custom.source} evaluates on it as it is now"
        )
    if dataset is not None:
        recorded = custom or DatasetSpec(dataset, loaded.task.name, loaded.task.unit)
        custom = dataclasses.replace(recorded, source=dataset, elements=loaded.elements)
    if split == "all":
        molecules, std = _whole(custom, stats, len(loaded.elements) + 1)
    else:
        splits = (
            dataset_splits(custom, stats=stats) if custom else qm9_splits(data_dir, loaded.task, limit, stats=stats)
        )
        molecules, std = (splits.test if split == "test" else splits.val), splits.stats.std
    loader = make_loader(molecules, batch_size, shuffle=False, device=device)
    model = loaded.model.to(device).eval()
    predict = prediction_step(model, precision, device, cuda_graphs)
    start = time.perf_counter()  # batches served and predicted; the MAE read back ends the pass
    mae = mean_absolute_error(model, loader, DistInfo(device=device), std, precision, predict)
    return mae, len(molecules), time.perf_counter() - start


def _whole(spec: DatasetSpec, stats: TargetStats | None, node_features: int) -> tuple[InMemoryDataset, float]:
    """Every molecule of a dataset in the training view, standardized with ``stats`` (or its own)."""
    dataset = build_dataset(spec).dataset
    stats = stats or TargetStats.of(dataset._data.y[:, 0])
    dataset.transform = TrainingView(spec.task, stats, node_features)
    return dataset, stats.std


def write_predictions_csv(handle: TextIO, names: list[str], task: Task, values: torch.Tensor) -> None:
    """``molecule,task,prediction,unit``, one row a molecule, to an open text file.

    Args:
        handle: a text file open for writing.
        names: the molecules' names, in order.
        task: the task predicted.
        values: the predictions, in the task's unit.
    """
    writer = csv.writer(handle)
    writer.writerow(["molecule", "task", "prediction", "unit"])
    for name, value in zip(names, values.tolist(), strict=True):
        writer.writerow(
            [spreadsheet_text(name), spreadsheet_text(task.name), f"{value:.6f}", spreadsheet_text(task.unit)]
        )


@dataclass
class PredictResult:
    """What ``se3pyg predict`` did: predictions (written to ``output`` when given), or the MAE on ``split``."""

    task: Task
    count: int
    output: str | None = None
    names: list[str] | None = None
    values: torch.Tensor | None = None
    split: str | None = None
    mae: float | None = None
    seconds: float | None = None  # of the pass over the split (loading the data and the model excluded)


def _load(config: PredictConfig) -> LoadedModel:
    """The model of ``--ckpt``: a file, or an MLflow model or run artifact (fetched into a scratch folder that is
    removed once the model is loaded, whatever happens)."""
    options = (config.task, config.target_mean, config.target_std, config.num_heads, config.channels_div)
    if not config.ckpt.startswith(("runs:/", "models:/")):
        return load_model(config.ckpt, *options)
    with tempfile.TemporaryDirectory(prefix="se3pyg-model-") as scratch:
        return load_model(checkpoint_of(config.ckpt, scratch, config.tracking_uri), *options)


def _predict_files(
    config: PredictConfig, loaded: LoadedModel, device: torch.device, precision: Precision
) -> PredictResult:
    """``--input``'s molecules predicted, written to ``--output`` (atomically, held) or returned for stdout."""
    if config.output is not None:
        check_writable(config.output, "--output")
    molecules = read_molecules(config.input, loaded.elements)
    values = predict_molecules(loaded, molecules, config.batch_size, device, precision, config.cuda_graphs)
    names = [m.name for m in molecules]
    if config.output is not None:
        try:
            with (
                exclusive_use(config.output, "--output"),  # no other se3pyg command writes it meanwhile
                atomic_write(config.output) as tmp,
                tmp.open("w", newline="") as handle,
            ):
                write_predictions_csv(handle, names, loaded.task, values)
        except OSError as exc:  # a full disk: nothing is left at --output
            raise ValueError(f"--output {config.output}: cannot be written ({exc.strerror or exc})") from None
    return PredictResult(loaded.task, len(molecules), config.output, names, values)


def run_predict(config: PredictConfig) -> PredictResult:
    """Predict for ``config.input`` into a CSV, or evaluate on a QM9 split (an MLflow run).

    Args:
        config: the command's options.

    Raises:
        CheckpointError: an unusable checkpoint or prediction.
        DataError: unusable molecules.
        ValueError: options that cannot be used together.
    """
    config = config.resolve_gpus()
    device = torch.device("cuda" if config.gpus else "cpu")
    precision = Precision.choose(config.amp, config.amp_dtype, device)
    keep_freed_memory()
    loaded = _load(config)
    if config.input:
        return _predict_files(config, loaded, device, precision)
    trained = loaded.config or {}
    data_dir = config.data_dir or trained.get("data_dir", "data/qm9")
    limit = config.limit if config.limit is not None else trained.get("limit")
    tags = {"task": loaded.task.name, "command": "predict"}
    tracker = Tracker(config.tracking_uri, config.experiment, config.run_name, tags) if config.tracking else None
    status = "FAILED"
    try:
        mae, n, seconds = evaluate_split(
            loaded,
            data_dir,
            limit,
            config.split,
            config.batch_size,
            device,
            precision,
            config.dataset,
            config.cuda_graphs,
        )
        if tracker is not None:
            params = {
                "ckpt": config.ckpt,
                "split": config.split,
                "task": loaded.task.name,
                "n": n,
                "source": loaded.source,
                "cuda_graphs": config.cuda_graphs,
                "batch_size": config.batch_size,
            }
            tracker.log_params(params)
            tracker.log_metrics({f"{config.split}_mae": mae, "throughput_mol_per_ms": n / seconds / 1000}, step=0)
        status = "FINISHED"
    finally:
        if tracker is not None:
            tracker.finish(status)
    return PredictResult(loaded.task, n, split=config.split, mae=mae, seconds=seconds)
