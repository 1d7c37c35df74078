"""se3pyg ui: the MLflow UI on a free loopback port, its runs page rendered by headless Chromium; what it refuses
before a server starts, checked in process."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from se3pyg.engine import distributed
from se3pyg.engine.tracking import Tracker

from .conftest import invoke_se3pyg

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"se3pyg ui exited early: {proc.stderr.read() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer in {timeout} s")


def _render(page: str, profile: Path) -> str:
    """The text of ``page`` as headless Chromium renders it (wide window: MLflow's tables render what is in view)."""
    dom = subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--window-size=1400,3000", "--virtual-time-budget=30000", "--dump-dom", page,
        ],
        capture_output=True, text=True, timeout=180,
    ).stdout  # fmt: skip
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian package chromium is not installed")
def test_ui_shows_runs_and_compares_two_in_chromium(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    run_ids = []
    for name, maes in (("ui-visible-run-42", [0.5, 0.25]), ("ui-visible-run-43", [0.625, 0.375])):
        tracker = Tracker(uri, "se3pyg", run_name=name, tags={"task": "homo", "command": "train"})
        for epoch, mae in enumerate(maes):
            tracker.log_metrics({"val_mae": mae}, step=epoch)
        tracker.finish()
        run_ids.append(tracker.run_id)
    experiment = mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name("se3pyg")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # MLflow's training view

    port = distributed.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "se3pyg", "ui", "--tracking-uri", uri, "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        page = proc.stdout.readline().split(": ", 1)[1].strip()  # the runs page se3pyg ui prints, on one line
        base = f"http://127.0.0.1:{port}"
        assert page == f"{base}/se3pyg/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
        with urllib.request.urlopen(f"{base}/health", timeout=5) as response:  # printed once it answers
            assert response.status == 200
        runs_page = _render(page, tmp_path / "chromium")
        assert "ui-visible-run-42" in runs_page and "ui-visible-run-43" in runs_page
        assert "Model registry" in runs_page and "Judges" not in runs_page  # training navigation, not GenAI's
        # a run's page reached from there (as a click on the run does: no workflowType in its address) keeps it
        run_page = _render(f"{base}/#/experiments/{experiment.experiment_id}/runs/{run_ids[0]}", tmp_path / "chromium")
        assert "ui-visible-run-42" in run_page and "Model registry" in run_page and "Judges" not in run_page
        ids, experiments = ",".join(f'"{r}"' for r in run_ids), f'"{experiment.experiment_id}"'
        compared = _render(f"{base}/#/compare-runs?runs=[{ids}]&experiments=[{experiments}]", tmp_path / "chromium")
        assert "Comparing 2 Runs" in compared
        metrics = compared[compared.index("Metrics") :]
        assert "val_mae 0.250 0.375" in metrics or "val_mae 0.25 0.375" in metrics  # each run's last val_mae
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    said = proc.stderr.read()
    assert not any(noise in said for noise in ("Registry store URI", "Security middleware", "DeprecationWarning"))


def test_ui_refuses_a_taken_port_and_warns_beyond_loopback(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        uri = f"sqlite:///{tmp_path}/mlflow.db"
        done = invoke_se3pyg("ui", "--tracking-uri", uri, "--port", str(port), cwd=tmp_path)
        assert done.exit_code == 2 and f"--port {port}: 127.0.0.1:{port} cannot be served" in done.stderr
        done = invoke_se3pyg("ui", "--tracking-uri", uri, "--host", "0.0.0.0", "--port", str(port), cwd=tmp_path)
        assert "warning: --host 0.0.0.0 serves the MLflow UI and its API, without authentication" in done.stderr
        assert done.exit_code == 2  # the port is taken there too: nothing was served


def test_ui_refuses_a_port_out_of_range_and_a_store_it_could_not_open(tmp_path: Path) -> None:
    """One line each, at once: not a traceback, nor a server retrying a store it cannot create for minutes."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    for port in ("65536", "-1"):
        done = invoke_se3pyg("ui", "--tracking-uri", uri, "--port", port, cwd=tmp_path)
        assert done.exit_code == 2 and f"--port {port}: must be between 0 and 65535" in done.stderr, done.stderr
    done = invoke_se3pyg("ui", "--tracking-uri", "sqlite:////proc/mlflow.db", "--port", "0", cwd=tmp_path)
    assert done.exit_code == 2 and "MLflow tracking store /proc/mlflow.db: cannot write in /proc" in done.stderr
    assert not (tmp_path / "mlflow.db").exists()  # nothing was served, nor created


def test_the_server_runs_mlflows_app_on_loopback_with_se3pygs_landing_page(tmp_path: Path) -> None:
    """The command line ``se3pyg ui`` starts, the page it prints for a store without runs yet, and the page that
    keeps MLflow's UI in its model-training navigation, answered before MLflow's own pages."""
    import asyncio

    from se3pyg.engine import ui_app, ui_server

    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    cmd, env = ui_server.ui_server_command(uri, "127.0.0.1", 5123)
    assert cmd[cmd.index("--host") + 1 : cmd.index("--host") + 4] == ["127.0.0.1", "--port", "5123"]
    assert cmd[cmd.index("--app-name") + 1] == "se3pyg" and env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert cmd[cmd.index("--default-artifact-root") + 1] == (tmp_path / "mlruns").as_uri()
    page = ui_server.runs_page(uri, "se3pyg", "http://127.0.0.1:5123")
    assert page == "http://127.0.0.1:5123/se3pyg/#/?workflowType=machine_learning"
    assert [ui_server.is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "example.org")] == [
        True, True, True, False, False,
    ]  # fmt: skip
    assert ui_app.app.router.routes[0].path == "/se3pyg/"
    landing = asyncio.run(ui_app.app.router.routes[0].endpoint(None))
    assert b"localStorage.setItem('mlflow.workflowType_v1', JSON.stringify('machine_learning'))" in landing.body


def _serving_ui(tmp_path: Path, uri: str, port: int) -> subprocess.Popen:
    """``se3pyg ui`` in its own process (the server's group apart), once its server answers."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "se3pyg", "ui", "--tracking-uri", uri, "--port", str(port)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", proc)
    except BaseException:
        proc.kill()
        raise
    return proc


def _stops_listening(port: int, after: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return  # nothing listens any more
        time.sleep(0.5)
    pytest.fail(f"the MLflow server still listens on {port} after {after}")


@pytest.mark.slow
def test_sigterm_to_ui_stops_its_server(tmp_path: Path) -> None:
    port = distributed.free_port()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = _serving_ui(tmp_path, uri, port)
    proc.send_signal(signal.SIGTERM)  # to se3pyg ui alone, not its process group
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    _stops_listening(port, "se3pyg ui ended")
    # at once on the same port, while its last connections linger in TIME-WAIT: served again
    again = subprocess.Popen(
        [sys.executable, "-m", "se3pyg", "ui", "--tracking-uri", uri, "--port", str(port)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert again.stdout.readline().startswith("MLflow UI for"), again.stderr.read() if again.poll() else ""
    finally:
        os.killpg(again.pid, signal.SIGTERM)
        again.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's parent-death signal")
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGHUP], ids=["SIGKILL", "SIGHUP"])
def test_a_killed_or_hung_up_ui_leaves_no_server(tmp_path: Path, stop: signal.Signals) -> None:
    """``se3pyg ui`` killed (nothing of it runs) or hung up on (a closed terminal): its MLflow server ends too."""
    port = distributed.free_port()
    proc = _serving_ui(tmp_path, f"sqlite:///{tmp_path}/mlflow.db", port)
    proc.send_signal(stop)  # to se3pyg ui alone, not its process group
    assert proc.wait(timeout=60) in (-signal.SIGKILL, 128 + signal.SIGHUP)
    _stops_listening(port, f"se3pyg ui got {stop.name}")


def test_a_damaged_or_locked_store_is_refused_before_a_server_starts(tmp_path: Path) -> None:
    """Not a database, or held by a writer: one line naming the store, no server (whose traceback would follow)."""
    import sqlite3

    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(os.urandom(4096))
    done = invoke_se3pyg(
        "ui", "--tracking-uri", f"sqlite:///{damaged}", "--port", str(distributed.free_port()), cwd=tmp_path
    )
    assert done.exit_code == 2
    assert done.stderr.strip() == f"error: MLflow tracking store sqlite:///{damaged}: file is not a database"
    locked = tmp_path / "locked.db"
    with sqlite3.connect(locked, isolation_level=None) as writer:
        writer.execute("CREATE TABLE t (x)")
        writer.execute("BEGIN EXCLUSIVE")
        done = invoke_se3pyg(
            "ui", "--tracking-uri", f"sqlite:///{locked}", "--port", str(distributed.free_port()), cwd=tmp_path
        )
        writer.execute("ROLLBACK")
    assert done.exit_code == 2
    assert done.stderr.strip() == (f"error: MLflow tracking store sqlite:///{locked}: database is locked (another "
                                   "process holds it: try again once it is done)")  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian package chromium is not installed")
def test_the_docs_pictures_of_the_ui_are_regenerated_by_their_script(qm9_dir: Path, tmp_path: Path) -> None:
    """``scripts/ui_screenshots.py`` (here on small runs) writes the three pictures docs/mlflow.md shows."""
    from PIL import Image

    from .conftest import QM9_SUBSET, ROOT

    script = ROOT / "scripts" / "ui_screenshots.py"
    small = ["--data-dir", str(qm9_dir), "--limit", str(QM9_SUBSET), "--epochs", "2"]
    done = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "out"), *small], capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    shown = re.findall(r"\(images/(mlflow-[\w-]+\.png)\)", (ROOT / "docs" / "mlflow.md").read_text())
    assert sorted(shown) == sorted(p.name for p in (tmp_path / "out").iterdir()) and len(shown) == 3
    for name in shown:
        with Image.open(tmp_path / "out" / name) as picture:
            assert picture.width == 1400 and len(picture.getcolors(1 << 16) or range(1 << 16)) > 50  # not blank
        assert (ROOT / "docs" / "images" / name).is_file()
