"""MLflow tracking on rank 0: one run per command, parameters and per-epoch metrics.

An unreachable store at start is an error; a store that drops later only
disables tracking (with a warning), so training and checkpoints go on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from se3pyg.io import atomic_write, check_writable, exclusive_use, first_line

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
#: MLflow 3 opens an experiment in its model-training view (charts, run comparison) rather than its GenAI
#: view (traces, evaluations) when the experiment carries this tag.
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
#: ... and its navigation shows the model-training pages (runs, models) rather than the GenAI ones (traces,
#: judges, prompts) when a page is opened with this query.
TRAINING_NAVIGATION = "workflowType=machine_learning"
#: The process that owns a run, so that a run left RUNNING by a killed process can be shown as such.
PID_TAG, HOST_TAG = "se3pyg.pid", "se3pyg.host"

log = logging.getLogger("se3pyg.tracking")


class TrackingError(Exception):
    """The tracking store cannot be used."""


def resolve_tracking_uri(uri: str | None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else the local SQLite store under ``mlruns/``.

    Args:
        uri: ``--tracking-uri`` as given (``None``: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlruns/mlflow.db``).
    """
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def sqlite_file(uri: str) -> Path | None:
    """The database file of a local SQLite store (``sqlite:///PATH``), ``None`` for other stores.

    Args:
        uri: a tracking URI.
    """
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def artifact_location(uri: str) -> str | None:
    """Artifacts beside a local SQLite store (``.../mlruns/mlflow.db`` -> ``.../mlruns/``).

    Args:
        uri: a tracking URI.
    """
    db = sqlite_file(uri)
    return None if db is None else db.resolve().parent.as_uri()


def no_artifact_progress_bars() -> None:
    """MLflow's artifact transfers without their tqdm bars (not se3pyg's style, and their lock, made in a spawned
    rank, is a semaphore left behind)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def check_reachable(uri: str, writing: bool = False) -> None:
    """A tracking server must answer within seconds: fail fast, and never stall a run in MLflow's retries.

    ``writing``: a local SQLite store that a run will write must be in a folder that takes files (created if
    missing): its journal and the run's artifacts go there.

    Args:
        uri: the store.
        writing: a run will write it.

    Raises:
        TrackingError: a server that does not answer.
        ValueError: a local store whose folder takes no files.
    """
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        _probe(uri)
    elif writing and (db := sqlite_file(uri)) is not None:
        check_writable(db, "MLflow tracking store")


@contextlib.contextmanager
def _first_use(uri: str) -> Iterator[None]:
    """Processes opening one local SQLite store take turns, and the first creates it whole
    (`_create_sqlite_store()`)."""
    db = sqlite_file(uri)
    if db is None:
        yield
        return
    with exclusive_use(db, "MLflow tracking store", waiting="creates or opens it"):
        if not db.exists():
            _create_sqlite_store(db)
        yield


def _create_sqlite_store(db: Path) -> None:
    """A new SQLite store, made whole or not at all: its tables are created in a temporary file beside it,
    renamed into place once complete (a disk that fills midway leaves no half-made store to fail every later
    command)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    with atomic_write(db) as tmp:
        SqlAlchemyStore(f"sqlite:///{tmp}", db.resolve().parent.as_uri()).engine.dispose()


def _probe(uri: str) -> None:
    """Fail fast when a tracking server does not answer its health check."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5):
            pass
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(f"MLflow tracking store {uri} is unreachable: {reason}") from None


class Tracker:
    """A started MLflow run; every call after a failure is a no-op.

    Args:
        uri: the store (`resolve_tracking_uri`).
        experiment: the experiment, created (in MLflow's training view) when new.
        run_name: the run's name (``None``: MLflow's).
        tags: the run's tags.
        system_metrics: log MLflow's system metrics while the run lasts.

    Raises:
        TrackingError: the store cannot be reached or written.
    """

    def __init__(
        self,
        uri: str | None,
        experiment: str,
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
        system_metrics: bool = False,
    ) -> None:
        import mlflow

        self._mlflow = mlflow
        self.monitor: Any = None
        self.uri = resolve_tracking_uri(uri)
        self.active = True
        self.failure: str | None = None  # the first MLflow call that failed: the run then ends FAILED
        check_reachable(self.uri, writing=True)
        try:
            with _first_use(self.uri):
                self._start(experiment, run_name, tags)
        except Exception as exc:
            raise TrackingError(f"MLflow tracking store {self.uri} is unreachable: {first_line(exc)}") from None
        self.run_id = self.run.info.run_id
        if system_metrics:
            self._monitor()

    def _monitor(self) -> None:
        """MLflow's system metrics (CPU, memory, disk, network; GPUs with ``nvidia-ml-py``) as ``system/...``
        metrics of the run, sampled every ``$MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` seconds (10 by default)."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        interval = float(os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL") or 10)
        try:
            self.monitor = SystemMetricsMonitor(self.run_id, sampling_interval=interval, tracking_uri=self.uri)
            self.monitor.start()
        except Exception as exc:  # a machine whose counters cannot be read: the run goes on without them
            self.monitor = None
            log.warning("MLflow system metrics not logged (%s)", first_line(exc))

    def _start(self, experiment: str, run_name: str | None, tags: dict[str, str] | None) -> None:
        """The experiment (created and tagged for the training view when new) and a new run in it."""
        mlflow = self._mlflow
        mlflow.set_tracking_uri(self.uri)
        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name(experiment)
        exp_id = (
            exp.experiment_id
            if exp is not None
            else client.create_experiment(experiment, artifact_location=artifact_location(self.uri))
        )
        if exp is None or exp.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:
            client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
        owner = {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}  # so a dead run can be told
        self.run = client.create_run(exp_id, run_name=run_name, tags={**(tags or {}), **owner})
        self.client = client

    def _guard(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        if not self.active:
            return
        try:
            fn(*args, **kwargs)
        except Exception as exc:
            self.active = False
            self.failure = f"MLflow {what} failed ({first_line(exc)})"
            log.warning("%s; tracking disabled for this run, training goes on", self.failure)

    def log_params(self, params: dict[str, Any]) -> None:
        """Log the run's parameters.

        Args:
            params: the parameters (values as text, cut at 6,000 characters).
        """
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        self._guard("log_params", self.client.log_batch, self.run_id, params=items)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log metrics at one step.

        Args:
            metrics: the metrics.
            step: their step (the epoch).
        """
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self._guard("log_metrics", self.client.log_batch, self.run_id, metrics=items)

    def log_artifact(self, path: str | os.PathLike) -> None:
        """Store a file with the run.

        Args:
            path: the file.
        """
        self._guard("log_artifact", self.client.log_artifact, self.run_id, str(path))

    def log_dict(self, data: dict, name: str) -> None:
        """Store a dict with the run, as JSON.

        Args:
            data: a JSON-serializable dict.
            name: the artifact's file name.
        """
        self._guard("log_dict", self.client.log_dict, self.run_id, data, name)

    def log_dataset(self, name: str, source: str, digest: str, context: str = "training") -> None:
        """The run's input data as MLflow records datasets (the UI's dataset column): ``name``, where it lies
        (``source``, a local path) and a ``digest`` of its content, which tells runs on other data apart.

        Args:
            name: the dataset's name.
            source: where it lies (a local path).
            digest: a digest of its content (the first 36 characters are kept).
            context: what the run does with it.
        """
        import warnings

        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        with warnings.catch_warnings():  # a local path matches two of MLflow's equivalent source types
            warnings.simplefilter("ignore", UserWarning)
            dataset = MetaDataset(resolve_dataset_source(source), name=name, digest=digest[:36])
        entity = DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", context)])
        self._guard("log_inputs", self.client.log_inputs, self.run_id, [entity])

    def finish(self, status: str = "FINISHED") -> None:
        """End the run as ``status``; a run whose tracking failed on the way (an artifact that did not fit) ends
        FAILED, with the failure in its ``tracking_error`` tag, never left RUNNING.

        Args:
            status: ``FINISHED``, ``FAILED`` or ``KILLED``.
        """
        if self.monitor is not None:
            with contextlib.suppress(Exception):  # its last sample: nothing to lose a run's status over
                self.monitor.finish()
        try:
            if self.failure is not None:
                self.client.set_tag(self.run_id, "tracking_error", self.failure[:5000])
                status = "FAILED" if status == "FINISHED" else status
            self.client.set_terminated(self.run_id, status)
        except Exception as exc:
            log.warning("MLflow could not end run %s (%s); it shows as RUNNING", self.run_id, first_line(exc))


def full_run_id(prefix: str, tracking_uri: str | None = None) -> str:
    """The one run ID of the store that starts with ``prefix`` (at least 4 hex characters, as ``se3pyg runs``
    shows 8); ``prefix`` itself when it is a whole ID.

    Raises:
        TrackingError: no run, or several, start with it.

    Args:
        prefix: a run ID, or its first characters.
        tracking_uri: the store.
    """
    import mlflow
    from mlflow.entities import ViewType

    if len(prefix) == 32 or not (len(prefix) >= 4 and all(c in "0123456789abcdef" for c in prefix)):
        return prefix
    client = mlflow.MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    found, token = [], None
    while experiments:
        page = client.search_runs(experiments, run_view_type=ViewType.ALL, max_results=5000, page_token=token)
        found += [r.info.run_id for r in page if r.info.run_id.startswith(prefix)]
        token = page.token
        if not token:
            break
    if len(found) != 1:
        many = f"{len(found)} runs start with it; give more of the ID" if found else "no run's ID starts with it"
        raise TrackingError(f"run {prefix}: {many}")
    return found[0]


def checkpoint_of(uri: str, scratch: str | os.PathLike, tracking_uri: str | None = None) -> Path:
    """The se3pyg checkpoint behind an MLflow URI: ``runs:/RUN_ID/model`` or ``models:/NAME/VERSION`` (a logged
    model), ``runs:/RUN_ID/PATH.pt`` (a checkpoint artifact) or ``runs:/RUN_ID`` (the run's best checkpoint);
    downloaded into the folder ``scratch`` (the caller's, to remove). ``RUN_ID`` may be the first characters of
    one (`full_run_id()`).

    Args:
        uri: an MLflow URI.
        scratch: the folder it is downloaded into.
        tracking_uri: the store (default as `resolve_tracking_uri`).

    Raises:
        CheckpointError: the URI names no run or model, or no se3pyg checkpoint.
    """
    import mlflow

    from se3pyg.io import CheckpointError

    no_artifact_progress_bars()
    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    scratch = str(scratch)
    if uri.startswith("runs:/"):
        given, _, rest = uri.removeprefix("runs:/").partition("/")
        try:
            uri = "runs:/" + "/".join(p for p in (full_run_id(given, tracking_uri), rest) if p)
        except TrackingError as exc:
            raise CheckpointError(f"--ckpt {uri}: {exc}") from None
    run_id = uri.removeprefix("runs:/").strip("/")
    try:
        if uri.startswith("runs:/") and "/" not in run_id:  # MLflow's runs:/ URIs need a path: take the root
            local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=scratch))
        else:
            local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=scratch))
    except Exception as exc:
        raise CheckpointError(f"--ckpt {uri}: cannot be fetched from MLflow ({first_line(exc)[:200]})") from None
    if local.is_file():
        return local
    # a logged model's checkpoint is its data (data/), or an artifact (artifacts/) in models se3pyg logged before
    found = sorted(local.glob("data/*.pt")) or sorted(local.glob("artifacts/*.pt")) or sorted(local.glob("*.pt"))
    best = [f for f in found if f.name.endswith(".best.pt")]
    if len(found) == 1 or len(best) == 1:  # a model's checkpoint, or a run's best one
        return found[0] if len(found) == 1 else best[0]
    raise CheckpointError(f"--ckpt {uri}: holds no se3pyg checkpoint (or several, none of them the best)")


@dataclass
class RunSummary:
    """One training run as ``se3pyg runs`` lists it: its MLflow run ID (and the run it continues, for a resume),
    ``epochs_done`` of ``epochs`` planned (counted from the first epoch of the whole training), the best
    validation MAE (logged at the end, else the best of the epochs logged: a killed run's), and the whole run's
    throughput (molecules over all epochs' time, in molecules per second as training prints it)."""

    run_id: str
    name: str
    task: str
    status: str
    epochs_done: int
    epochs: str
    best_val_mae: float | None
    test_mae: float | None
    throughput_mol_per_s: float | None
    duration_s: float
    resumed_from: str | None = None


def _history(client: Any, run_id: str, key: str) -> list[Any]:
    """The run's ``key`` metric objects, by step."""
    return sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)


def list_runs(uri: str | None, experiment: str, task: str | None = None) -> list[RunSummary]:
    """The training runs of ``experiment`` (of ``task`` only, when given), newest first.

    Args:
        uri: the store (default as `resolve_tracking_uri`).
        experiment: the experiment.
        task: only runs of this task.

    Raises:
        TrackingError: no store there, no such experiment, or an unreadable store.
    """
    import mlflow

    uri = resolve_tracking_uri(uri)
    db = sqlite_file(uri)
    if db is not None and not db.is_file():
        raise TrackingError(f"MLflow tracking store {uri}: no store there yet (nothing has been tracked)")
    check_reachable(uri)
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise TrackingError(f"--experiment {experiment!r}: no such experiment in {uri}")
        found = client.search_runs(
            [exp.experiment_id], filter_string="tags.command = 'train'", order_by=["attributes.start_time DESC"]
        )
        found = [r for r in found if task is None or r.data.tags.get("task") == task]
        histories = {r.info.run_id: [_history(client, r.info.run_id, k) for k in _EPOCH_KEYS] for r in found}
    except TrackingError:
        raise
    except Exception as exc:
        raise TrackingError(f"MLflow tracking store {uri}: {first_line(exc)}") from None
    return [_summary(r, *histories[r.info.run_id]) for r in found]


_EPOCH_KEYS = ("epoch_time_s", "throughput_mol_per_ms", "val_mae")


def _status(run: Any, last_metric_ms: int | None) -> tuple[str, float]:
    """The run's status and its duration in seconds; a RUNNING run whose process on this machine is gone is
    ``STALE`` (killed without a word), lasting until its last epoch's metrics."""
    from se3pyg.processes import pid_alive

    info, tags = run.info, run.data.tags
    if info.status != "RUNNING":
        return info.status, ((info.end_time or info.start_time) - info.start_time) / 1000
    pid, host = tags.get(PID_TAG, ""), tags.get(HOST_TAG)
    if host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid)):
        return "STALE (process gone)", ((last_metric_ms or info.start_time) - info.start_time) / 1000
    return "RUNNING", time.time() - info.start_time / 1000


def _summary(run: Any, time_history: list[Any], rate_history: list[Any], val_history: list[Any]) -> RunSummary:
    times, rates = [m.value for m in time_history], [m.value for m in rate_history]
    molecules = sum(rate * 1000 * t for rate, t in zip(rates, times, strict=False))
    metrics = run.data.metrics
    status, duration = _status(run, max((m.timestamp for m in time_history), default=None))
    start = run.data.params.get("start_epoch", "0")
    best = metrics.get("best_val_mae", min((m.value for m in val_history), default=None))
    return RunSummary(
        run_id=run.info.run_id,
        name=run.info.run_name or run.info.run_id[:8],
        task=run.data.tags.get("task", ""),
        status=status,
        epochs_done=(int(start) if start.isdigit() else 0) + len(times),
        epochs=run.data.params.get("epochs", ""),
        best_val_mae=best,
        test_mae=metrics.get("test_mae"),
        throughput_mol_per_s=molecules / sum(times) if times else None,
        duration_s=duration,
        resumed_from=run.data.tags.get("resumed_from"),
    )
