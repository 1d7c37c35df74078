"""Training: NVIDIA's recipe in a loop that reads top to bottom.

`run()` resolves the config and launches the ranks; `train_worker()`
is one rank's whole training; `train_epoch()` is one pass over the
training split, a [`train_step()`][se3pyg.engine.step.train_step] per batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import math
import shlex
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from se3pyg.data import Loader, QM9Splits, TargetStats, make_loader, set_epoch
from se3pyg.data.custom import dataset_digest
from se3pyg.engine import distributed
from se3pyg.engine.checkpoint import best_path, check_trained, load_checkpoint, save_checkpoint
from se3pyg.engine.config import TrainConfig
from se3pyg.engine.distributed import DistInfo
from se3pyg.engine.evaluate import Predictions, gather_predictions, mean_absolute_error, predict_split, split_mae
from se3pyg.engine.report import write_run_report
from se3pyg.engine.state import TrainState
from se3pyg.engine.step import train_step
from se3pyg.engine.tracking import Tracker, check_reachable, resolve_tracking_uri
from se3pyg.engine.training_data import load_splits, prepare_data
from se3pyg.engine.versions import library_versions
from se3pyg.io import exclusive_writes, first_line, read_torch_file
from se3pyg.processes import raise_if_stopped, stop_signal, stop_signals_noted, stops_deferred

log = logging.getLogger("se3pyg.train")
EpochCallback = Callable[[dict[str, float]], None]
#: ``progress(stage, done, total, unit, **fields)`` on rank 0: data preparation (molecules) and each epoch
#: (batches, with ``molecules`` trained so far and the ``loss`` last read, or None).
ProgressCallback = Callable[..., None]


class TrainingError(Exception):
    """Training ended early (interrupted, non-finite loss, nothing left to run); ``code`` is the exit status.

    Args:
        message: what ended the training.
        code: the exit status.
    """

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple:  # raised again in the launcher of spawned ranks
        return (TrainingError, (str(self), self.code))


@dataclass
class TrainResult:
    """What a training run returns on rank 0: the task, the best validation and the test MAE (in the task's unit),
    the epochs this run ran, its MLflow run and logged model, the per-epoch history, the ``--dataset`` records
    skipped (with the first reasons) and the model's parameter count."""

    task: str
    best_val_mae: float = math.inf
    test_mae: float = math.nan
    epochs_run: int = 0
    run_id: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    model_uri: str | None = None  # the MLflow model logged from the best checkpoint
    skipped: int = 0  # --dataset records skipped as bad, and the first reasons
    skip_reasons: list[str] = field(default_factory=list)
    parameters: int = 0  # the model's
    epochs: int = 0  # the run's last epoch + 1 (a resume's too: the checkpoint's)
    save_ckpt_path: str | None = None  # where the last checkpoint went (a resume: where it was, unless told)
    registered_as: str | None = None  # the registered model's name (a resume's: the checkpoint's), and alias
    registered_alias: str | None = None


def run(
    config: TrainConfig,
    on_epoch: EpochCallback | None = None,
    on_progress: ProgressCallback | None = None,
    typed: Collection[str] | None = None,
) -> TrainResult | None:
    """Train as ``config`` says: in this process, under torchrun, or in ``--gpus``/``--processes`` spawned ones.

    Args:
        config: the run's options. With ``load_ckpt_path`` the run continues the checkpoint's
            ([`resumed_from()`][se3pyg.engine.config.TrainConfig.resumed_from]): its task, model and options unless
            typed.
        on_epoch: called after each epoch with its metrics, in this process (for spawned ranks too: rank 0's calls
            are relayed to it).
        on_progress: called as data is prepared and batches are trained, likewise.
        typed: the options the user typed (field names), which a resume keeps; ``None``: those that differ from
            their defaults.

    Returns:
        Rank 0's result (also in a launcher that spawned), ``None`` on the other ranks.

    Raises:
        TrainingError: the run ended early (interrupted, a non-finite loss, nothing left to run).
        ValueError: an option or file that cannot be used, named.
    """
    with stop_signals_noted():  # a stop ends the run where it can, saved and marked KILLED
        return _run(config, on_epoch, on_progress, typed)


def _run(
    config: TrainConfig,
    on_epoch: EpochCallback | None,
    on_progress: ProgressCallback | None,
    typed: Collection[str] | None,
) -> TrainResult | None:
    path = config.load_ckpt_path
    checkpoint = check_trained(load_checkpoint(path), str(path), resuming=True) if path else None
    if checkpoint is not None:
        config = config.resumed_from(checkpoint, typed)
        config.validate()
        changed = config.changed_on_resume(checkpoint)
        if changed and distributed.is_main_process():
            log.warning("this resume changes %s", ", ".join(changed))
    else:
        config = dataclasses.replace(config, task=config.task or (None if config.dataset else "homo"))
    config = config.resolve_gpus()
    config.check_before_training()
    if config.tracking and distributed.is_main_process():
        check_reachable(resolve_tracking_uri(config.tracking_uri), writing=True)  # before the data build
    if config.dataset:  # recorded as the file it is, wherever the run was started
        config = dataclasses.replace(config, dataset=str(Path(config.dataset).resolve()))
        if checkpoint is not None and checkpoint.get("dataset_sha256") not in (None, dataset_digest(config.dataset)):
            raise ValueError(
                f"--dataset {config.dataset}: changed since {config.load_ckpt_path} was trained on it; "
                "a resume needs the same molecules"
            )
    if checkpoint is not None and checkpoint["epoch"] + 1 >= config.epochs:
        raise TrainingError(f"--epochs {config.epochs}: the checkpoint has already run {checkpoint['epoch'] + 1}", 2)
    spawning = distributed.spawns(config.world_size)
    held = config.save_ckpt_path and distributed.is_main_process()
    with (
        exclusive_writes(config.checkpoints_written()[:2]) if held else contextlib.nullcontext(),  # and the best
        distributed.relayed(on_epoch, on_progress)
        if spawning
        else contextlib.nullcontext((on_epoch, on_progress)) as callbacks,
    ):  # spawned ranks report through the launcher
        return distributed.launch(
            train_worker,
            config.world_size,
            config.use_cuda,
            config,
            checkpoint,
            *callbacks,
            prepare=lambda: prepare_data(config, on_progress),
        )


@dataclass
class _Data:
    splits: QM9Splits
    train: Loader
    val: Loader
    test: Loader


def _load_data(
    config: TrainConfig, info: DistInfo, stats: TargetStats | None, progress: ProgressCallback | None
) -> tuple[_Data, TrainConfig]:
    """NVIDIA's splits of QM9 or the splits of ``--dataset`` (local rank 0 builds what is missing), each rank's
    share of them as loaders; and the config, whose batch size a ``--dataset`` too small for one batch a process
    lowers to what it has (said in a warning)."""
    splits = load_splits(config, info, config.task, stats, progress)
    share = len(splits.train) // info.world_size
    if config.dataset and share < config.batch_size:
        if share < 1:
            raise ValueError(
                f"--dataset {config.dataset}: its training split has {len(splits.train)} molecules, "
                f"fewer than the {info.world_size} processes"
            )
        if info.is_main:
            log.warning(
                "--batch-size %d: the training split of --dataset has %d molecules a process; batches of %d",
                config.batch_size,
                share,
                share,
            )
        config = dataclasses.replace(config, batch_size=share)

    def loader(dataset: Any, train: bool) -> Loader:
        return make_loader(
            dataset,
            config.batch_size,
            train,
            config.num_workers,
            info.rank,
            info.world_size,
            config.seed,
            drop_last=train,
            pin_memory=info.device.type == "cuda",
            device=info.device,
        )

    return _Data(splits, loader(splits.train, True), loader(splits.val, False), loader(splits.test, False)), config


def _start_tracking(
    config: TrainConfig, info: DistInfo, state: TrainState, data: _Data, resumed: str | None
) -> Tracker:
    tags = {"task": data.splits.task.name, "command": "train"}
    if resumed:  # the run it continues: linked, and shown as its parent in the UI
        tags.update(resumed_from=resumed, **{"mlflow.parentRunId": resumed})
    tracker = Tracker(config.tracking_uri, config.experiment, config.run_name, tags, config.system_metrics)
    params = {k: v for k, v in config.to_dict().items() if k != "tracking_uri"}
    params.update(
        world_size=info.world_size,
        n_params=sum(p.numel() for p in state.model.parameters()),
        n_train=len(data.splits.train),
        n_val=len(data.splits.val),
        n_test=len(data.splits.test),
        device=str(info.device),
        start_epoch=state.epoch,
        elements=",".join(data.splits.elements),
        n_skipped=data.splits.skipped,
        **library_versions(),
    )
    tracker.log_params(params)
    tracker.log_dict(config.to_dict(), "config.json")
    tracker.log_dataset(*_dataset_identity(config, data.splits))
    return tracker


def _dataset_identity(config: TrainConfig, splits: QM9Splits) -> tuple[str, str, str]:
    """The training data's name, source and digest: ``--dataset``'s (a SHA-256 over its files), or the QM9
    build's (its processed file's SHA-256, with the molecules taken)."""
    if config.dataset:
        return Path(config.dataset).name, str(Path(config.dataset).resolve()), dataset_digest(config.dataset)
    from se3pyg.data.qm9 import read_manifest

    manifest = read_manifest(config.data_dir) or {}
    molecules = len(splits.train) + len(splits.val) + len(splits.test)
    name = f"QM9 (first {molecules:,} molecules)" if config.limit else f"QM9 ({molecules:,} molecules)"
    digest = hashlib.sha256(f"{manifest.get('processed_sha256')}:{config.limit}".encode()).hexdigest()
    return name, str(Path(config.data_dir).resolve()), digest


def train_worker(
    info: DistInfo,
    config: TrainConfig,
    checkpoint: dict[str, Any] | None,
    on_epoch: EpochCallback | None = None,
    on_progress: ProgressCallback | None = None,
) -> TrainResult:
    """One rank's training: state, data, tracking (rank 0), the epochs, the test MAE.

    Args:
        info: this rank's place in the run.
        config: the run's options.
        checkpoint: the checkpoint resumed from.
        on_epoch: called after each epoch on rank 0.
        on_progress: called as data is prepared and batches are trained, on rank 0.
    """
    stats = TargetStats(checkpoint["target_mean"], checkpoint["target_std"]) if checkpoint else None
    progress = on_progress if info.is_main else None
    data, config = _load_data(config, info, stats, progress)
    state = _built_state(config, info, checkpoint, data.splits.elements)
    resumed = checkpoint and checkpoint.get("run_id")
    tracker = _start_tracking(config, info, state, data, resumed) if info.is_main and config.tracking else None
    result = _new_result(config, data, state, tracker)
    saver = _Saver(
        config.save_ckpt_path if info.is_main else None,
        state,
        _recorded(config, data.splits, result.run_id) if info.is_main else {},  # only rank 0 saves
        keep_best=tracker is not None,  # without --save-ckpt-path the best model still goes to MLflow
    )
    status = "FAILED"
    try:
        for metrics in _epochs(state, data, config, info, saver, progress):
            result.history.append(metrics)
            result.epochs_run += 1
            result.best_val_mae = state.best_val_mae
            if tracker is not None:
                tracker.log_metrics(
                    {k: v for k, v in metrics.items() if k not in ("epoch", "epochs")}, step=int(metrics["epoch"])
                )
            if on_epoch is not None and info.is_main:
                on_epoch(metrics)
        test = predict_split(state.net, data.test, info, state.precision, state.predict)
        result.test_mae = split_mae(test, info, data.splits.stats.std)
        test = gather_predictions(test, info)
        if tracker is not None:
            tracker.log_metrics({"best_val_mae": result.best_val_mae, "test_mae": result.test_mae}, state.epoch - 1)
            result.model_uri = _log_outcome(
                tracker, result.history, test, data.splits, saver, config.register_model, config.register_alias
            )
        raise_if_stopped()  # a stop noted while testing and logging ends the run KILLED, not FINISHED
        status = "FINISHED"
        return result
    except (_InterruptError, KeyboardInterrupt):  # in an epoch, or at any other stage (se3pyg.processes.Interrupted)
        status = "KILLED"
        raise
    finally:
        if tracker is not None:
            tracker.finish(status)
        saver.close()


def _built_state(
    config: TrainConfig, info: DistInfo, checkpoint: dict[str, Any] | None, elements: tuple[str, ...]
) -> TrainState:
    """The run's state, new or the checkpoint's, for data of ``elements``; a resumed run's best validation MAE
    is the better of its checkpoint's and the best checkpoint's beside ``--save-ckpt-path``."""
    if checkpoint is not None and tuple(checkpoint.get("elements", elements)) != elements:
        raise ValueError(
            f"--dataset {config.dataset}: holds {elements}, the checkpoint was trained on "
            f"{tuple(checkpoint['elements'])}"
        )
    state = TrainState.build(config, info, checkpoint, node_features=len(elements) + 1)
    if checkpoint is not None and config.save_ckpt_path:
        state.best_val_mae = min(state.best_val_mae, _recorded_best(config.save_ckpt_path))
    return state


def _new_result(config: TrainConfig, data: _Data, state: TrainState, tracker: Tracker | None) -> TrainResult:
    """What a run returns, as it starts: its task, data, model size, checkpoint path and registration."""
    registering = tracker is not None and config.register_model is not None
    return TrainResult(
        data.splits.task.name,
        state.best_val_mae,
        run_id=tracker.run_id if tracker else None,
        skipped=data.splits.skipped,
        skip_reasons=data.splits.skip_reasons,
        parameters=sum(p.numel() for p in state.model.parameters()),
        epochs=config.epochs,
        save_ckpt_path=config.save_ckpt_path,
        registered_as=config.register_model if registering else None,
        registered_alias=config.register_alias if registering else None,
    )


def _recorded(config: TrainConfig, splits: QM9Splits, run_id: str | None) -> dict[str, Any]:
    """What a checkpoint records beside the state: the task, the target statistics, the elements, the run, the
    versions, the config, and the digest of ``--dataset``'s files (so that a changed dataset is told)."""
    return dict(
        task=splits.task.name,
        unit=splits.task.unit,
        target_mean=splits.stats.mean,
        target_std=splits.stats.std,
        elements=list(splits.elements),
        run_id=run_id,
        versions=library_versions(),
        config=config.to_dict(),
        dataset_sha256=dataset_digest(config.dataset) if config.dataset else None,
    )


def _log_outcome(
    tracker: Tracker,
    history: list[dict[str, float]],
    test: Predictions,
    splits: QM9Splits,
    saver: _Saver,
    register_as: str | None,
    alias: str | None,
) -> str | None:
    """The run's learning curve, test parity plot and test predictions, its checkpoints (as ``model.pt`` and
    ``model.best.pt`` whatever their files are called, so that ``runs:/RUN_ID/model.best.pt`` names every run's
    best), and its MLflow model (from the best checkpoint, else the last; registered as ``register_as`` with
    ``alias``), as its artifacts; the model's URI."""
    stats = splits.stats
    with tempfile.TemporaryDirectory(prefix="se3pyg-report-") as folder:
        paths = write_run_report(Path(folder), history, test, splits.task, stats.mean, stats.std, splits.molecule_name)
        saved = {
            name: Path(p)
            for name, p in (("model.pt", saver.path), ("model.best.pt", saver.best))
            if p and Path(p).is_file()
        }
        for name, path in saved.items():
            paths.append(shutil.copyfile(path, Path(folder, name)))
        for path in paths:
            tracker.log_artifact(path)
        best = saved.get("model.best.pt", saved.get("model.pt"))
        return _log_model(tracker, best, register_as, alias) if best else None


def _log_model(tracker: Tracker, checkpoint: Path, register_as: str | None, alias: str | None) -> str | None:
    """``checkpoint`` as the run's MLflow model (``runs:/RUN_ID/model``), registered as ``register_as`` when given;
    its URI, or None when it could not be logged (a warning: the run and its other artifacts stay tracked)."""
    if not tracker.active:
        return None
    try:
        from se3pyg.engine.serving import log_trained_model

        return log_trained_model(tracker.run_id, checkpoint, register_as, alias)
    except Exception as exc:
        log.warning("MLflow model logging failed (%s); the checkpoint artifacts remain", first_line(exc))
        return None


def _recorded_best(path: str) -> float:
    """The validation MAE the best checkpoint beside ``path`` records (inf when there is none): a resumed run
    replaces it only with a better model, whatever its last checkpoint says (it may be older)."""
    best = best_path(path)
    if not best.is_file():
        return math.inf
    try:
        return float(read_torch_file(best).get("best_val_mae", math.inf))
    except (ValueError, AttributeError):
        return math.inf


def _epochs(
    state: TrainState,
    data: _Data,
    config: TrainConfig,
    info: DistInfo,
    saver: _Saver,
    progress: ProgressCallback | None,
) -> Iterator[dict[str, float]]:
    """Run the remaining epochs, yielding each one's metrics; validate and save on their intervals. A stop signal
    ends an epoch after its step (saving what it has), or between epochs (saving the epoch before it); an epoch's
    validation and checkpoints are never cut."""
    first = state.epoch
    for epoch in range(first, config.epochs):
        if (stop := _stop_on_every_rank(info)) is not None:
            raise _InterruptError(f"interrupted before epoch {epoch} ({saver.save_interrupted(epoch, first)})", stop)
        set_epoch(data.train, epoch)
        try:
            health = _Health(info, config.check_every(info.device))
            batches = functools.partial(progress, f"epoch {epoch}", unit="batches") if progress else None
            metrics = train_epoch(state, data.train, info, health, batches)
        except _InterruptError as exc:
            done = saver.save_interrupted(epoch, first, within=True)
            raise _InterruptError(f"interrupted in epoch {epoch} ({done})", exc.code) from None
        except _NonFiniteLossError as exc:
            saved = saver.path is not None and Path(saver.path).is_file()
            kept = f"the last good checkpoint is kept ({saver.path})" if saved else "no checkpoint was saved before"
            raise TrainingError(f"loss became {exc.value} at epoch {epoch} step {exc.step}; {kept}", 3) from None
        state.scheduler.step()
        state.epoch = epoch + 1
        last = epoch == config.epochs - 1
        with stops_deferred():
            if last or (config.eval_interval > 0 and (epoch + 1) % config.eval_interval == 0):
                std = data.splits.stats.std
                metrics["val_mae"] = mean_absolute_error(state.net, data.val, info, std, state.precision, state.predict)
                if metrics["val_mae"] < state.best_val_mae:
                    state.best_val_mae = metrics["val_mae"]
                    saver.save(epoch, best=True)
            if last or (config.ckpt_interval > 0 and (epoch + 1) % config.ckpt_interval == 0):
                saver.save(epoch)
        yield {"epoch": epoch, "epochs": config.epochs, **metrics}


def _stop_on_every_rank(info: DistInfo) -> int | None:
    """The exit status of a stop signal noted on any rank (all ranks agree), ``None`` without one."""
    stop = stop_signal()
    if not info.distributed:
        return None if stop is None else 128 + stop
    codes = torch.tensor([128 + stop if stop is not None else 0], device=info.device)
    return int(distributed.all_reduce_max(codes, info)) or None


def train_epoch(
    state: TrainState,
    loader: Loader,
    info: DistInfo,
    health: _Health,
    on_batch: Callable[..., None] | None = None,
) -> dict[str, float]:
    """One pass over the training batches: a `train_step()` each, an optimizer update every
    ``state.accumulate`` batches (and after the last); mean loss and throughput over all ranks.
    Nothing is read on the host inside the loop but ``health``'s periodic check (whose loss ``on_batch`` shows).

    Args:
        state: the model, optimizer and precision.
        loader: this rank's training batches.
        info: this rank's place in the run.
        health: the periodic check of the loss and of stop signals.
        on_batch: called after each batch.
    """
    state.net.train()
    start = time.perf_counter()
    totals = torch.zeros(2, dtype=torch.float64, device=info.device)
    steps, seen = len(loader), 0
    for step, batch in enumerate(loader):
        batch = batch.to(info.device, non_blocking=True)
        last = step + 1 == steps
        loss = train_step(state, batch, update=(step + 1) % state.accumulate == 0 or last)
        health.after_step(loss, step, last)
        seen += batch.num_graphs
        if on_batch is not None:
            on_batch(step + 1, steps, molecules=seen * info.world_size, loss=health.loss)
        totals[0] += loss.double() * batch.num_graphs
        totals[1] += batch.num_graphs
    distributed.all_reduce_sum(totals, info)
    loss_sum, molecules = totals.tolist()
    elapsed = time.perf_counter() - start
    return {
        "train_loss": loss_sum / max(molecules, 1),
        "lr": state.optimizer.param_groups[0]["lr"],
        "epoch_time_s": elapsed,
        "throughput_mol_per_ms": molecules / (elapsed * 1000),
    }


class _InterruptError(TrainingError):
    """SIGINT or SIGTERM on any rank."""


class _NonFiniteLossError(Exception):
    """A rank's loss is NaN or infinite."""

    def __init__(self, value: float | str, step: int) -> None:
        super().__init__(value, step)
        self.value, self.step = value, step


class _Health:
    """Non-finite losses and stop signals, noted on the device each step and read on the host every
    ``every`` steps and after the last (all ranks together), so that a GPU's queue is not drained each step.
    Without DDP a stop signal is acted on at the next step.
    """

    def __init__(self, info: DistInfo, every: int) -> None:
        self.info, self.every = info, every
        self.first_bad = torch.tensor(-1, device=info.device)  # the first step with a non-finite loss
        self.bad_loss = torch.tensor(0.0, device=info.device)
        self.loss: float | None = None  # the mean over the ranks of the loss last read

    def after_step(self, loss: torch.Tensor, step: int, last: bool) -> None:
        new = (self.first_bad < 0) & ~torch.isfinite(loss)
        self.first_bad = torch.where(new, step, self.first_bad)
        self.bad_loss = torch.where(new, loss, self.bad_loss)
        stop = stop_signal()
        if not (last or (stop is not None and not self.info.distributed) or (step + 1) % self.every == 0):
            return
        signalled = torch.tensor(stop is not None, device=self.info.device)
        flags = torch.stack([(self.first_bad >= 0).double(), signalled.double(), loss.detach().double()])
        flags = distributed.all_reduce_sum(flags, self.info).tolist()  # the one read on the host
        self.loss = flags[2] / self.info.world_size
        if flags[0] > 0:
            first = int(self.first_bad)
            raise _NonFiniteLossError(float(self.bad_loss) if first >= 0 else "non-finite (on another rank)", first)
        if flags[1] > 0:
            raise _InterruptError("interrupted", 128 + (stop or signal.SIGTERM))  # a rank without one: passed on


class _Saver:
    """Checkpoints of rank 0: the last to ``path``, the best beside it (`best_path()`). Without a path, a
    tracked run (``keep_best``) keeps its best in a scratch folder until it is logged and `close()` removes
    it; otherwise nothing is saved."""

    def __init__(self, path: str | None, state: TrainState, extra: dict[str, Any], keep_best: bool = False) -> None:
        self.path, self.state, self.extra = path, state, extra
        self.scratch = tempfile.TemporaryDirectory(prefix="se3pyg-best-") if keep_best and not path else None
        self.best = best_path(path) if path else Path(self.scratch.name, "model.best.pt") if self.scratch else None

    def close(self) -> None:
        if self.scratch is not None:
            self.scratch.cleanup()

    def save(self, epoch: int, best: bool = False) -> None:
        target = self.best if best else self.path
        if target:
            save_checkpoint(target, self.state.to_checkpoint(epoch, **self.extra))

    def save_interrupted(self, epoch: int, first: int, within: bool = False) -> str:
        """Save the state of a run stopped before ``epoch`` (``within``: in it), whose first was ``first``; what
        was saved, in words."""
        if not self.path:
            return "nothing saved: no --save-ckpt-path"
        if epoch == first:
            return "nothing saved: no epoch completed"
        self.save(epoch - 1)
        done = f"epoch {epoch - 1} and the batches of epoch {epoch} so far" if within else f"epoch {epoch - 1}"
        return (
            f"saved {self.path}: {done}; `se3pyg train --load-ckpt-path {shlex.quote(self.path)}` runs epoch {epoch} on"
        )
