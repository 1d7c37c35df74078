"""The MLflow UI server of ``se3pyg ui``: checked before it starts, stopped with its parent's stop signals.

The server is MLflow's own (``mlflow server --app-name se3pyg``, whose app is
`se3pyg.engine.ui_app`), run in
its own process group so that a stop reaches its workers too.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from typing import Any

from se3pyg.engine.tracking import TRAINING_NAVIGATION, TrackingError, artifact_location, check_reachable, sqlite_file
from se3pyg.processes import guard_process_group, stop_handled, stop_signal, stop_signals_noted


def runs_page(uri: str, experiment: str, base_url: str) -> str:
    """The UI page of ``experiment``'s runs under ``base_url`` (the UI's root when it has no runs yet), opened
    through ``/se3pyg/``, which keeps the UI in its model-training navigation for the pages that follow
    (`se3pyg.engine.ui_app`).

    Args:
        uri: the store.
        experiment: the experiment.
        base_url: the UI's root URL.
    """
    import mlflow

    try:
        exp = mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    except Exception:
        exp = None
    if exp is None:
        return f"{base_url}/se3pyg/#/?{TRAINING_NAVIGATION}"
    return f"{base_url}/se3pyg/#/experiments/{exp.experiment_id}/runs?{TRAINING_NAVIGATION}"


def ui_server_command(uri: str, host: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of an MLflow UI server over ``uri``: one worker, no job runner.

    Args:
        uri: the store.
        host: the address to bind.
        port: the port.
    """
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--registry-store-uri", uri]
    cmd += ["--host", host, "--port", str(port), "--workers", "1", "--uvicorn-opts", "--log-level warning"]
    cmd += ["--app-name", "se3pyg"]  # se3pyg.engine.ui_app: MLflow's app and the page runs_page starts at
    artifacts = artifact_location(uri)
    if artifacts:
        cmd += ["--default-artifact-root", artifacts]
    quiet = {"PYTHONWARNINGS": "ignore"}  # its web stack's deprecation warnings are not the user's business
    return cmd, {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **quiet}


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine.

    Args:
        host: an address or host name.
    """
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port_free(host: str, port: int) -> None:
    """`TrackingError` naming ``--port`` when ``host:port`` cannot be bound (in use, not an address here).

    Args:
        host: the address to bind.
        port: the port.
    """
    if not 0 <= port <= 65535:
        raise TrackingError(f"--port {port}: must be between 0 and 65535")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # as the server binds: a port whose last connections linger in TIME-WAIT is free, a listened one is not
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise TrackingError(f"--port {port}: {host}:{port} cannot be served ({exc.strerror})") from None


def check_servable(uri: str, host: str, port: int) -> None:
    """What `serve_ui()` needs, refused by name: ``host:port`` free, and a local SQLite store that can be
    created, or that exists and reads as a database within seconds (the server would print a traceback for a
    damaged one, and retry a locked one for minutes).

    Raises:
        TrackingError: naming the option or the store.

    Args:
        uri: the store.
        host: the address to bind.
        port: the port.
    """
    check_port_free(host, port)
    db = sqlite_file(uri)
    check_reachable(uri, writing=db is not None and not db.is_file())
    if db is not None and db.is_file():
        _check_readable(db, uri)


def _check_readable(db: Any, uri: str) -> None:
    """`TrackingError` when the SQLite file ``db`` is not a database or stays locked for 5 seconds."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5)) as store:
            store.execute("SELECT name FROM sqlite_master").fetchall()
    except sqlite3.Error as exc:
        held = " (another process holds it: try again once it is done)" if "locked" in str(exc) else ""
        raise TrackingError(f"MLflow tracking store {uri}: {exc}{held}") from None


#: The line of the MLflow server's output that says nothing to a user of ``se3pyg ui`` (its default security
#: settings, loopback only, chosen here).
_SERVER_CHATTER = "[MLflow] Security middleware enabled"


class _ServerOutput:
    """The MLflow server's output, without `_SERVER_CHATTER`: kept until the server answers (a server that
    fails to start is reported as one line, its last), then passed on to this process's stderr."""

    def __init__(self, stream: Any) -> None:
        self.kept: list[str] = []
        self.passing = False
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.reader.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            if line.startswith(_SERVER_CHATTER):
                continue
            with self.lock:
                if self.passing:
                    sys.stderr.write(line)
                else:
                    self.kept.append(line)

    def pass_on(self) -> None:
        """From now on, and what was kept so far, on stderr."""
        with self.lock:
            sys.stderr.writelines(self.kept)
            self.kept.clear()
            self.passing = True

    def last_line(self) -> str:
        """The last line the server wrote (its error, when it failed), or nothing: read to the end of its output
        once the server has ended (a few seconds at most otherwise)."""
        self.reader.join(timeout=5)
        with self.lock:
            lines = [line.strip() for line in self.kept if line.strip()]
        return lines[-1] if lines else ""


def _answers(server: Any, host: str, port: int, timeout: float = 120) -> bool:
    """Whether the server answers its health check before it ends, a stop signal is noted, or ``timeout`` seconds
    pass."""
    import urllib.request

    address = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)
    deadline = time.monotonic() + timeout
    while server.poll() is None and stop_signal() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{address}:{port}/health", timeout=2):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def serve_ui(uri: str, host: str, port: int, on_ready: Any = None) -> int:
    """Run the MLflow UI server over ``uri`` until it ends or this process is told to stop (a stop signal, noted as
    `stop_signals_noted()` says, is passed on as SIGTERM to the server's whole
    process
    group, so that nothing is left listening; a watchdog ends the group if this process is killed).

    Args:
        uri: the tracking store.
        host: the address to bind.
        port: the port.
        on_ready: called once the server answers.

    Returns:
        The server's exit status, or 128 + the signal that stopped it (a stop it has acted on in full).

    Raises:
        TrackingError: the store cannot be served, or the server did not start.
    """
    import signal
    import subprocess

    check_servable(uri, host, port)
    cmd, env = ui_server_command(uri, host, port)
    with stop_signals_noted():
        server = subprocess.Popen(
            cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        guard = guard_process_group(server.pid)  # the server ends with this process, even when it is killed
        output = _ServerOutput(server.stdout)
        try:
            if _answers(server, host, port):
                output.pass_on()
                if on_ready is not None:
                    on_ready()
            elif stop_signal() is None:  # ended or silent on its own; a stop while it started is no failure
                said = output.last_line()
                raise TrackingError(
                    f"the MLflow UI server on {host}:{port} did not start (exit status "
                    f"{server.poll()}){': ' + said[:300] if said else ''}"
                )
            while server.poll() is None and stop_signal() is None:
                time.sleep(0.2)
            stop = stop_signal()
            stop_handled()
            return 128 + stop if stop is not None else server.returncode
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGTERM)  # the server and the workers it started
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=30)
            if guard is not None:
                guard.terminate()
                guard.wait()
