"""The MLflow UI server of ``se3pyg ui``: checked before it starts, stopped with its parent's stop signals.

The server is MLflow's own (``mlflow server --app-name se3pyg``, whose app is :mod:`se3pyg.engine.ui_app`), run in
its own process group so that a stop reaches its workers too.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from typing import Any

from se3pyg.engine.tracking import TRAINING_NAVIGATION, TrackingError, artifact_location, check_reachable, sqlite_file
from se3pyg.processes import guard_process_group


def runs_page(uri: str, experiment: str, base_url: str) -> str:
    """The UI page of ``experiment``'s runs under ``base_url`` (the UI's root when it has no runs yet), opened
    through ``/se3pyg/``, which keeps the UI in its model-training navigation for the pages that follow
    (:mod:`se3pyg.engine.ui_app`)."""
    import mlflow

    try:
        exp = mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    except Exception:
        exp = None
    if exp is None:
        return f"{base_url}/se3pyg/#/?{TRAINING_NAVIGATION}"
    return f"{base_url}/se3pyg/#/experiments/{exp.experiment_id}/runs?{TRAINING_NAVIGATION}"


def ui_server_command(uri: str, host: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of an MLflow UI server over ``uri``: one worker, no job runner."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--registry-store-uri", uri]
    cmd += ["--host", host, "--port", str(port), "--workers", "1", "--uvicorn-opts", "--log-level warning"]
    cmd += ["--app-name", "se3pyg"]  # se3pyg.engine.ui_app: MLflow's app and the page runs_page starts at
    artifacts = artifact_location(uri)
    if artifacts:
        cmd += ["--default-artifact-root", artifacts]
    quiet = {"PYTHONWARNINGS": "ignore"}  # its web stack's deprecation warnings are not the user's business
    return cmd, {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **quiet}


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port_free(host: str, port: int) -> None:
    """:class:`TrackingError` naming ``--port`` when ``host:port`` cannot be bound (in use, not an address here)."""
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
    """What :func:`serve_ui` needs, refused by name: ``host:port`` free, and a local SQLite store that exists or
    can be created (the server would retry one it cannot open for minutes)."""
    check_port_free(host, port)
    db = sqlite_file(uri)
    check_reachable(uri, writing=db is not None and not db.is_file())


#: The line of the MLflow server's output that says nothing to a user of ``se3pyg ui`` (its default security
#: settings, loopback only, chosen here).
_SERVER_CHATTER = "[MLflow] Security middleware enabled"


def _forward_output(stream: Any) -> None:
    """The MLflow server's output on this process's stderr, without :data:`_SERVER_CHATTER`."""
    for line in stream:
        if not line.startswith(_SERVER_CHATTER):
            sys.stderr.write(line)


def _answers(server: Any, host: str, port: int, timeout: float = 120) -> bool:
    """Whether the server answers its health check before it ends (or ``timeout`` seconds pass)."""
    import urllib.request

    address = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)
    deadline = time.monotonic() + timeout
    while server.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{address}:{port}/health", timeout=2):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def serve_ui(uri: str, host: str, port: int, on_ready: Any = None) -> int:
    """Run the MLflow UI server over ``uri`` until it ends or this process is told to stop (SIGINT, SIGTERM or
    SIGHUP, passed on to the server's whole process group, so that nothing is left listening; a watchdog ends the
    group if this process is killed); ``on_ready()`` is called
    once it answers. Returns the server's exit status, or 128 + the signal that stopped it.
    """
    import signal
    import subprocess
    import threading

    check_servable(uri, host, port)
    cmd, env = ui_server_command(uri, host, port)
    server = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)  # fmt: skip
    guard = guard_process_group(server.pid)  # the server ends with this process, even when it is killed
    threading.Thread(target=_forward_output, args=(server.stdout,), daemon=True).start()
    stopped_by: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        stopped_by.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        if _answers(server, host, port):
            if on_ready is not None:
                on_ready()
        elif not stopped_by:  # ended or silent on its own; a stop while it started is no failure
            raise TrackingError(f"the MLflow UI server on {host}:{port} did not start (exit status {server.poll()})")
        status = server.wait()
        return 128 + stopped_by[0] if stopped_by else status
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)  # workers the server left behind
        if guard is not None:
            guard.terminate()
            guard.wait()
