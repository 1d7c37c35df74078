"""MLflow tracking: the default store, and a store that drops mid-run."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import mlflow
import pytest

from se3pyg.engine.tracking import DEFAULT_TRACKING_URI, Tracker, TrackingError, resolve_tracking_uri


def test_default_store_is_sqlite_under_mlruns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None) == DEFAULT_TRACKING_URI == "sqlite:///mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert resolve_tracking_uri(None) == "sqlite:///elsewhere.db"
    assert resolve_tracking_uri("sqlite:///given.db") == "sqlite:///given.db"


def test_artifacts_go_beside_the_sqlite_store(tmp_path: Path) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path}/mlruns/mlflow.db", "exp")
    note = tmp_path / "note.txt"
    note.write_text("hello")
    tracker.log_artifact(note)
    tracker.finish()
    run = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db").get_run(tracker.run_id)
    assert run.info.artifact_uri.startswith((tmp_path / "mlruns").as_uri())
    assert list((tmp_path / "mlruns").rglob("note.txt"))


def test_a_store_that_drops_later_only_disables_tracking(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "mlflow.db"
    tracker = Tracker(f"sqlite:///{db}", "exp")
    tracker.log_metrics({"train_loss": 1.0}, step=0)
    tracker.client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/gone/missing/mlflow.db")  # the store is gone
    with caplog.at_level(logging.WARNING, logger="se3pyg.tracking"):
        tracker.log_metrics({"train_loss": 0.5}, step=1)
        tracker.log_metrics({"train_loss": 0.25}, step=2)  # a no-op now: no second warning
    assert not tracker.active
    assert len([r for r in caplog.records if "tracking disabled" in r.getMessage()]) == 1


def test_a_run_whose_artifact_could_not_be_logged_ends_failed_not_running(tmp_path: Path) -> None:
    """An artifact that cannot be stored (here: gone before it was logged, as one that did not fit is) disables
    tracking, and the run still ends: FAILED, the cause in its ``tracking_error`` tag."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, "exp")
    tracker.log_artifact(tmp_path / "learning_curve.png")  # not there
    tracker.finish("FINISHED")
    run = mlflow.MlflowClient(uri).get_run(tracker.run_id)
    assert run.info.status == "FAILED" and run.data.tags["tracking_error"].startswith("MLflow log_artifact failed")


def test_system_metrics_are_logged_while_a_run_lasts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU and memory use as the run's ``system/`` metrics (sampled every half second here), ended with the run."""
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, "exp", system_metrics=True)
    time.sleep(2)
    tracker.finish("FINISHED")
    metrics = mlflow.MlflowClient(uri).get_run(tracker.run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics)


def test_unreachable_store_at_start_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(TrackingError, match=r"MLflow tracking store http://127\.0\.0\.1:9 is unreachable"):
        Tracker("http://127.0.0.1:9", "exp")


@pytest.mark.slow
def test_a_run_left_running_by_a_killed_process_is_shown_stale(tmp_path: Path) -> None:
    """kill -9 leaves the run RUNNING in MLflow; se3pyg runs tells it from a live one."""
    import signal
    import subprocess
    import sys

    from se3pyg.engine.tracking import list_runs

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    code = (
        "import sys, time; from se3pyg.engine.tracking import Tracker;"
        f"t = Tracker({uri!r}, 'se3pyg', 'killed-run', {{'command': 'train', 'task': 'homo'}});"
        "t.log_metrics({'epoch_time_s': 2.0, 'throughput_mol_per_ms': 0.5}, step=0); print('ready', flush=True);"
        "time.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    (alive,) = list_runs(uri, "se3pyg")
    assert alive.status == "RUNNING" and alive.duration_s > 0
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    (killed,) = list_runs(uri, "se3pyg")
    assert killed.status == "STALE (process gone)" and killed.epochs_done == 1
    assert killed.throughput_mol_per_s == pytest.approx(500.0)


@pytest.mark.slow
def test_concurrent_first_use_of_a_new_sqlite_store(tmp_path: Path) -> None:
    """Three processes open one new store at once: each gets its run (the first creates the tables)."""
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path}/new/mlflow.db"
    code = f"from se3pyg.engine.tracking import Tracker; Tracker({uri!r}, 'se3pyg').finish()"
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errors = [p.communicate(timeout=180)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    client = mlflow.MlflowClient(tracking_uri=uri)
    assert len(client.search_runs([client.get_experiment_by_name("se3pyg").experiment_id])) == 3


@pytest.mark.slow
def test_runs_listing_neither_creates_a_store_nor_waits_for_an_absent_server(tmp_path: Path) -> None:
    import time

    from .conftest import run_se3pyg

    db = tmp_path / "mlruns" / "mlflow.db"
    done = run_se3pyg("runs", "--tracking-uri", f"sqlite:///{db}", cwd=tmp_path)
    assert done.returncode == 2 and "no store there yet" in done.stderr and not db.exists()
    start = time.monotonic()
    done = run_se3pyg("runs", "--tracking-uri", "http://127.0.0.1:9", cwd=tmp_path)
    assert done.returncode == 2 and "http://127.0.0.1:9 is unreachable" in done.stderr
    assert time.monotonic() - start < 60 and "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_store_whose_creation_ran_out_of_disk_leaves_nothing_half_made(tmp_path: Path) -> None:
    """A disk that fills while the store's tables are created (a file size limit here: the store needs ~1 MB) ends
    that command, and the next one finds no broken store but makes a whole one."""
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
        "from se3pyg.engine.tracking import Tracker\n"
        "Tracker(sys.argv[1], 'exp')\n"
    )
    full = subprocess.run([sys.executable, "-c", code, uri], capture_output=True, text=True, timeout=120)
    assert full.returncode != 0 and "TrackingError" in full.stderr
    assert not (tmp_path / "mlflow.db").exists()
    tracker = Tracker(uri, "exp")
    tracker.finish()
    assert mlflow.MlflowClient(uri).get_run(tracker.run_id).info.status == "FINISHED"
