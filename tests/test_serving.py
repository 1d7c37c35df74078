"""Every training leaves an MLflow model: registered, loaded by --ckpt URI, served over HTTP."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pytest
import yaml

from se3pyg.engine import distributed

from .conftest import TINY_MODEL_ARGS, run_se3pyg

pytestmark = pytest.mark.slow  # starts processes

WATER = "3\nwater\nO 0.0 0.0 0.117\nH 0.0 0.757 -0.467\nH 0.0 -0.757 -0.467\n"
AMMONIA_SDF = """ammonia
     se3pyg

  4  3  0  0  0  0  0  0  0  0999 V2000
    0.0000    0.0000    0.1173 N   0  0  0  0  0  0  0  0  0  0  0  0
    0.0000    0.9377   -0.2737 H   0  0  0  0  0  0  0  0  0  0  0  0
    0.8121   -0.4689   -0.2737 H   0  0  0  0  0  0  0  0  0  0  0  0
   -0.8121   -0.4689   -0.2737 H   0  0  0  0  0  0  0  0  0  0  0  0
  1  2  1  0
  1  3  1  0
  1  4  1  0
M  END
$$$$
"""


def _predictions(done: subprocess.CompletedProcess) -> list[float]:
    assert done.returncode == 0, done.stderr
    return [float(row["prediction"]) for row in csv.DictReader(io.StringIO(done.stdout))]


@pytest.fixture(scope="module")
def registered(qm9_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A tiny model trained with --register-model: its folder, tracking URI and run id."""
    folder = tmp_path_factory.mktemp("served")
    uri = f"sqlite:///{folder}/mlruns/mlflow.db"
    done = run_se3pyg(
        "train", "--data-dir", str(qm9_dir), "--limit", "300", "--gpus", "0", *TINY_MODEL_ARGS,
        "--batch-size", "16", "--epochs", "1",
        "--save-ckpt-path", "model.pt", "--register-model", "homo-tiny", "--tracking-uri", uri, cwd=folder,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("MLflow model: ")]
    assert line.endswith(", registered as homo-tiny (models:/homo-tiny@challenger)")
    run_id = line.split("runs:/")[1].split("/")[0]
    (folder / "water.xyz").write_text(WATER)
    (folder / "ammonia.sdf").write_text(AMMONIA_SDF)
    return folder, uri, run_id


def test_a_runs_model_is_registered_again_under_an_alias(registered: tuple[Path, str, str]) -> None:
    """``se3pyg register`` with the run ID's first 8 characters: the next version, the alias moved to it, and
    ``models:/NAME@ALIAS`` predicts as the run's model does; a prefix that names no run is one line."""
    folder, uri, run_id = registered
    done = run_se3pyg("register", run_id[:8], "homo-tiny", "--alias", "champion", "--tracking-uri", uri, cwd=folder)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "registered as models:/homo-tiny/2, alias champion: models:/homo-tiny@champion"
    client = mlflow.MlflowClient(uri)
    assert client.get_model_version_by_alias("homo-tiny", "champion").run_id == run_id
    assert str(client.get_model_version_by_alias("homo-tiny", "challenger").version) == "1"
    by_alias = run_se3pyg("predict", "--ckpt", "models:/homo-tiny@champion", "--input", "water.xyz",
                          "--tracking-uri", uri, cwd=folder)  # fmt: skip
    by_run = run_se3pyg("predict", "--ckpt", f"runs:/{run_id}/model", "--input", "water.xyz", "--tracking-uri", uri,
                        cwd=folder)  # fmt: skip
    assert _predictions(by_alias) == _predictions(by_run)
    done = run_se3pyg("register", "0000ffff", "homo-tiny", "--tracking-uri", uri, cwd=folder)
    assert done.returncode == 2 and done.stderr.strip() == "error: run 0000ffff: no run's ID starts with it"


def test_predict_takes_runs_and_models_uris(registered: tuple[Path, str, str]) -> None:
    folder, uri, run_id = registered
    inputs = ["--input", "water.xyz", "--input", "ammonia.sdf"]
    from_file = _predictions(run_se3pyg("predict", "--ckpt", "model.best.pt", *inputs, cwd=folder))
    scratch = folder / "tmp"  # what the commands leave in the temporary folder: nothing (PyG's generated code too)
    scratch.mkdir()
    env = {"MLFLOW_TRACKING_URI": uri, "TMPDIR": str(scratch)}
    for ckpt in (f"runs:/{run_id}/model", "models:/homo-tiny/1", f"runs:/{run_id}/model.best.pt", f"runs:/{run_id}"):
        done = run_se3pyg("predict", "--ckpt", ckpt, *inputs, cwd=folder, env=env)
        assert _predictions(done) == from_file, ckpt
    missing = run_se3pyg("predict", "--ckpt", "models:/nope/1", *inputs, cwd=folder, env=env)
    assert missing.returncode == 2 and "--ckpt models:/nope/1: cannot be fetched from MLflow" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert list(scratch.iterdir()) == []
    client = mlflow.MlflowClient(tracking_uri=uri)
    version = client.get_model_version("homo-tiny", "1")
    assert version.run_id == run_id


def test_the_logged_model_holds_data_only(registered: tuple[Path, str, str], tmp_path: Path) -> None:
    """Nothing in the model's artifacts is code: no Python file, no pickle; its MLmodel names se3pyg's loader, and
    MLflow's own loading gives what ``se3pyg predict`` gives."""
    folder, uri, _ = registered
    mlflow.set_tracking_uri(uri)
    local = Path(mlflow.artifacts.download_artifacts("models:/homo-tiny/1", dst_path=str(tmp_path)))
    files = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    assert "data/model.best.pt" in files
    assert [f for f in files if f.endswith((".py", ".pkl", ".pickle", ".cloudpickle"))] == []
    flavour = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavour["loader_module"] == "se3pyg.engine.serving" and "python_model" not in flavour
    expected = _predictions(run_se3pyg("predict", "--ckpt", "model.best.pt", "--input", "water.xyz", cwd=folder))
    assert mlflow.pyfunc.load_model("models:/homo-tiny/1").predict([WATER]) == pytest.approx(expected, abs=1e-5)


def _invoke(port: int, inputs: list[str]) -> tuple[int, object]:
    """``(status, predictions or error)`` of a served model's answer to ``{"inputs": inputs}``."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps({"inputs": inputs}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())["predictions"]
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_mlflow_models_serve_answers_with_the_same_predictions(registered: tuple[Path, str, str]) -> None:
    folder, uri, _ = registered
    expected = _predictions(
        run_se3pyg("predict", "--ckpt", "model.best.pt", "--input", "water.xyz", "--input", "ammonia.sdf", cwd=folder)
    )
    port = distributed.free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/homo-tiny/1", "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow models serve did not come up: {server.stdout.read()[-2000:]}")
                time.sleep(0.5)
        assert _invoke(port, [WATER, AMMONIA_SDF]) == (200, pytest.approx(expected, abs=1e-5))  # the CSV: 6 decimals
        # one prediction an input, or a 400 naming the row, without a stack trace; the server stays up
        two_frames, chloride = WATER + WATER, WATER.replace("O ", "Cl ")
        for inputs, reason in [([WATER, two_frames], "row 1: holds 2 molecules"),
                               ([AMMONIA_SDF * 2], "row 0: holds 2 molecules"),
                               ([chloride], "row 0: unknown element Cl (the model knows H, C, N, O, F)")]:  # fmt: skip
            status, answer = _invoke(port, inputs)
            assert status == 400 and reason in answer["message"], answer
            assert "stack_trace" not in answer and "se3pyg-serve-" not in answer["message"]
        status, answer = _invoke(port, [])  # no molecule: refused by the model's signature, as an empty evaluation
        assert status == 400 and "missing inputs" in answer["message"], answer
        assert _invoke(port, [WATER]) == (200, pytest.approx(expected[:1], abs=1e-5))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
