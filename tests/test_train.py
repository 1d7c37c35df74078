"""Training with real parts: QM9 subset, SQLite MLflow store, gloo DDP processes, signals, resume."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import mlflow
import pytest
import torch
from PIL import Image
from torch_geometric.data import Batch

from se3pyg.data import get_task, load_qm9, qm9_splits
from se3pyg.engine import distributed
from se3pyg.engine.checkpoint import best_path, load_checkpoint
from se3pyg.engine.config import PredictConfig, TrainConfig
from se3pyg.engine.optim import Lamb
from se3pyg.engine.predict import run_predict
from se3pyg.engine.tracking import list_runs
from se3pyg.engine.train import TrainingError, run
from se3pyg.model import SE3TransformerPooled

from .conftest import QM9_SUBSET, TINY_MODEL, invoke_se3pyg, run_se3pyg

TINY = dict(**TINY_MODEL, batch_size=16, limit=QM9_SUBSET)


def _client(uri: str) -> mlflow.MlflowClient:
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient()


def _tiny_args(qm9_dir: Path) -> list[str]:
    out = ["--data-dir", str(qm9_dir), "--gpus", "0"]
    for key, value in TINY.items():
        out += [f"--{key.replace('_', '-')}", str(value)]
    return out


def test_training_run_lands_in_sqlite_mlflow(qm9_dir: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    ckpt = tmp_path / "ckpt" / "model.pt"
    config = TrainConfig(
        **TINY, epochs=3, eval_interval=2, data_dir=str(qm9_dir), save_ckpt_path=str(ckpt), tracking_uri=uri
    )
    result = run(config)
    assert result is not None and result.epochs_run == 3
    assert result.test_mae > 0 and result.best_val_mae < float("inf")

    run_info = _client(uri).get_run(result.run_id)
    params, metrics = run_info.data.params, run_info.data.metrics
    for name in ("task", "epochs", "batch_size", "learning_rate", "num_layers", "num_degrees", "num_channels",
                 "world_size", "n_params", "n_train", "n_val", "n_test", "device", "version_torch"):  # fmt: skip
        assert name in params, name
    assert params["task"] == "homo" and params["world_size"] == "1"
    assert (params["n_train"], params["n_val"], params["n_test"]) == ("229", "41", "30")
    assert {"best_val_mae", "test_mae"} <= set(metrics)
    history = {k: _client(uri).get_metric_history(result.run_id, k) for k in ("train_loss", "val_mae", "lr")}
    assert [m.step for m in history["train_loss"]] == [0, 1, 2]
    assert [m.step for m in history["val_mae"]] == [1, 2]  # every 2nd epoch and the last
    assert history["lr"][0].value == pytest.approx(0.002)
    assert run_info.info.status == "FINISHED"
    (used,) = run_info.inputs.dataset_inputs  # the UI's dataset column: which data, where, and its digest
    assert used.dataset.name == "QM9 (first 300 molecules)" and used.dataset.source_type == "local"
    assert json.loads(used.dataset.source)["uri"] == str(qm9_dir.resolve()) and len(used.dataset.digest) == 36
    assert [(t.key, t.value) for t in used.tags] == [("mlflow.data.context", "training")]
    artifacts = {a.path for a in _client(uri).list_artifacts(result.run_id)}
    assert {"model.pt", "model.best.pt", "config.json", "learning_curve.png", "parity_test.png"} <= artifacts
    water = "3\nwater\nO 0.0 0.0 0.117\nH 0.0 0.757 -0.467\nH 0.0 -0.757 -0.467\n"
    assert result.model_uri is not None  # every training leaves an MLflow model: molecule texts in, floats out
    assert len(mlflow.pyfunc.load_model(f"runs:/{result.run_id}/model").predict([water, water])) == 2
    rows = _test_predictions(uri, result.run_id)
    assert len(rows) == 30 and len({r["molecule"] for r in rows}) == 30  # every test molecule, once
    errors = [abs(float(r["prediction"]) - float(r["truth"])) for r in rows]
    assert sum(errors) / len(errors) == pytest.approx(result.test_mae, rel=1e-5)  # the logged test MAE
    qm9, test = load_qm9(qm9_dir, QM9_SUBSET), qm9_splits(qm9_dir, get_task("homo"), limit=QM9_SUBSET).test
    assert {r["molecule"] for r in rows} == {qm9[i].name for i in test.indices()}  # QM9's names
    for picture in ("learning_curve.png", "parity_test.png"):
        with Image.open(_client(uri).download_artifacts(result.run_id, picture, str(tmp_path))) as image:
            assert image.format == "PNG" and image.width >= 500 and image.getextrema() != ((255, 255),) * 4

    saved = load_checkpoint(ckpt)
    assert saved["epoch"] == 2 and saved["task"] == "homo" and saved["model_config"]["num_channels"] == 8
    assert best_path(ckpt).is_file() and load_checkpoint(best_path(ckpt))["best_val_mae"] == pytest.approx(
        result.best_val_mae
    )


def _test_predictions(uri: str, run_id: str) -> list[dict[str, str]]:
    """The rows of the run's ``test_predictions.csv`` artifact."""
    with tempfile.TemporaryDirectory() as folder:
        path = _client(uri).download_artifacts(run_id, "test_predictions.csv", folder)
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))


def _ddp_gradients(out: str, state: dict, batch: Batch) -> None:
    info = distributed.init(use_cuda=False, timeout=timedelta(seconds=120))  # a stuck rank fails, not hangs
    model = SE3TransformerPooled(num_layers=1, num_degrees=2, num_channels=8, num_heads=2)
    model.load_state_dict(state)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    half = batch.num_graphs // info.world_size
    part = Batch.from_data_list(batch.to_data_list()[info.rank * half : (info.rank + 1) * half])
    torch.nn.functional.l1_loss(ddp(part), part.y).backward()
    if info.is_main:
        torch.save([p.grad for p in model.parameters()], out)
    distributed.shutdown()


@pytest.mark.slow
def test_two_process_ddp_gradients_equal_one_process(qm9_dir: Path, tmp_path: Path) -> None:
    splits = qm9_splits(qm9_dir, get_task("homo"), limit=QM9_SUBSET)
    batch = Batch.from_data_list([splits.train[i] for i in range(8)])
    torch.manual_seed(0)
    model = SE3TransformerPooled(num_layers=1, num_degrees=2, num_channels=8, num_heads=2)
    torch.nn.functional.l1_loss(model(batch), batch.y).backward()
    out = tmp_path / "grads.pt"
    distributed.spawn(_ddp_gradients, 2, str(out), model.state_dict(), batch)
    ddp_grads = torch.load(out, weights_only=True)
    for p, g in zip(model.parameters(), ddp_grads, strict=True):
        assert torch.allclose(p.grad, g, atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_cli_ddp_run_on_two_gloo_processes(qm9_dir: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = run_se3pyg(
        "train", *_tiny_args(qm9_dir), "--epochs", "1", "--processes", "2", "--tracking-uri", uri, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("done in") == 1  # rank 0's result reaches the launcher, which prints it
    runs = _client(uri).search_runs([_client(uri).get_experiment_by_name("se3pyg").experiment_id])
    assert len(runs) == 1 and runs[0].data.params["world_size"] == "2"
    assert runs[0].info.status == "FINISHED" and "test_mae" in runs[0].data.metrics
    artifacts = {a.path for a in _client(uri).list_artifacts(runs[0].info.run_id)}
    assert "model.best.pt" in artifacts  # the best model is logged without --save-ckpt-path too
    rows = _test_predictions(uri, runs[0].info.run_id)  # both ranks' shares, each molecule once
    assert len(rows) == 30 and len({r["molecule"] for r in rows}) == 30


@pytest.mark.slow
def test_sigterm_saves_marks_killed_and_resume_continues(qm9_dir: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ckpt = tmp_path / "model.pt"
    args = ["train", *_tiny_args(qm9_dir), "--tracking-uri", uri, "--save-ckpt-path", str(ckpt)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "se3pyg", *args, "--epochs", "1000", "--ckpt-interval", "1"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert ckpt.exists(), proc.stderr.read() if proc.poll() is not None else "no checkpoint in time"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in stderr and f"saved {ckpt}: epoch" in stderr
    assert "interrupted in epoch" in stderr or "interrupted before epoch" in stderr  # in an epoch, or between two
    killed = load_checkpoint(ckpt)
    client = _client(uri)
    first = client.search_runs([client.get_experiment_by_name("se3pyg").experiment_id])[0]
    assert first.info.status == "KILLED"

    epochs = killed["epoch"] + 3
    resumed = run_se3pyg(*args, "--load-ckpt-path", str(ckpt), "--epochs", str(epochs), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(ckpt)["epoch"] == epochs - 1
    runs = client.search_runs([client.get_experiment_by_name("se3pyg").experiment_id], "tags.resumed_from != ''")
    assert len(runs) == 1 and runs[0].data.tags["resumed_from"] == first.info.run_id
    assert runs[0].data.params["start_epoch"] == str(killed["epoch"] + 1)
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "train_loss")]
    assert steps == [killed["epoch"] + 1, killed["epoch"] + 2]


def test_a_resume_continues_the_run_it_resumes(qm9_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Stopped after its first epoch, a run is resumed from its checkpoint alone: the same batch size, epochs,
    validation interval and checkpoint path; the new MLflow run is the child of the one it continues, and a typed
    option that changes the run is named in one line."""
    uri = f"sqlite:///{tmp_path}/m.db"
    ckpt = tmp_path / "demo.pt"
    config = TrainConfig(**{**TINY, "batch_size": 8}, epochs=3, eval_interval=1, data_dir=str(qm9_dir),
                         save_ckpt_path=str(ckpt), tracking_uri=uri)  # fmt: skip
    with pytest.raises(TrainingError) as stopped:
        run(config, on_epoch=lambda metrics: os.kill(os.getpid(), signal.SIGTERM))
    assert stopped.value.code == 128 + signal.SIGTERM
    assert str(stopped.value) == (f"interrupted before epoch 1 (saved {ckpt}: epoch 0; `se3pyg train "
                                  f"--load-ckpt-path {ckpt}` runs epoch 1 on)")  # fmt: skip
    first = _client(uri).search_runs([_client(uri).get_experiment_by_name("se3pyg").experiment_id])[0]

    typed = {"load_ckpt_path", "tracking_uri"}
    resumed = run(TrainConfig(load_ckpt_path=str(ckpt), tracking_uri=uri), typed=typed)
    assert resumed.epochs == 3 and [m["epoch"] for m in resumed.history] == [1, 2]
    assert all("val_mae" in m for m in resumed.history) and resumed.save_ckpt_path == str(ckpt)
    saved = load_checkpoint(ckpt)
    assert saved["epoch"] == 2 and saved["config"]["batch_size"] == 8 and saved["config"]["limit"] == QM9_SUBSET
    tags = _client(uri).get_run(resumed.run_id).data.tags
    assert tags["resumed_from"] == tags["mlflow.parentRunId"] == first.info.run_id
    summaries = {r.run_id: r for r in list_runs(uri, "se3pyg")}
    killed, continued = summaries[first.info.run_id], summaries[resumed.run_id]
    assert killed.status == "KILLED" and killed.epochs_done == 1 and killed.best_val_mae > 0  # its epochs' best
    assert continued.epochs_done == 3 and continued.epochs == "3" and continued.resumed_from == first.info.run_id
    listed = json.loads(invoke_se3pyg("runs", "--tracking-uri", uri, "--json", cwd=tmp_path).stdout)
    assert {r["run_id"] for r in listed} == set(summaries)
    table = invoke_se3pyg("runs", "--tracking-uri", uri, cwd=tmp_path).stdout
    assert resumed.run_id[:8] in table and resumed.run_id not in table  # the first 8 characters, as git shows
    predicted = run_predict(PredictConfig(ckpt=f"runs:/{resumed.run_id[:8]}/model", tracking_uri=uri))
    assert predicted.count > 0 and predicted.mae is not None
    predict_runs = _client(uri).search_runs([_client(uri).get_experiment_by_name("se3pyg-predict").experiment_id])
    assert len(predict_runs) == 1 and len(list_runs(uri, "se3pyg")) == 2  # predictions apart from the trainings

    with caplog.at_level("WARNING", logger="se3pyg.train"):
        again = run(TrainConfig(load_ckpt_path=str(ckpt), tracking_uri=uri, epochs=4, batch_size=16),
                    typed={*typed, "epochs", "batch_size"})  # fmt: skip
    assert again.epochs == 4 and [m["epoch"] for m in again.history] == [3]
    said = [r.getMessage() for r in caplog.records if r.name == "se3pyg.train"]
    assert said == ["this resume changes --batch-size 8 -> 16, --epochs 3 -> 4"]


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(qm9_dir: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "model.pt"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = ["train", *_tiny_args(qm9_dir), "--optimizer", "sgd", "--save-ckpt-path", str(ckpt), "--tracking-uri", uri]
    good = run_se3pyg(*common, "--epochs", "1", cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    before = ckpt.read_bytes()
    done = run_se3pyg(*common, "--epochs", "5", "--lr", "1e30", cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    assert "loss became" in done.stderr and "Traceback" not in done.stderr
    assert ckpt.read_bytes() == before  # the diverged run wrote nothing over the good checkpoint
    assert torch.isfinite(torch.cat([v.flatten() for v in load_checkpoint(ckpt)["state_dict"].values()])).all()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "homos"], "unknown task 'homos'; valid tasks: mu, alpha, homo"),
        (["--num-heads", "3"], "--num-heads 3 must divide"),
        (["--load-ckpt-path", "missing.pt"], "missing.pt: no such file"),
        (["--gradient-clip", "-1"], "--gradient-clip must be > 0, got -1.0"),
        (["--lr", "inf"], "--learning-rate must be a number > 0, got inf"),
        (["--min-learning-rate", "-1"], "--min-learning-rate must be between 0 and --learning-rate 0.002, got -1.0"),
        (["--weight-decay", "nan"], "--weight-decay must be a number >= 0"),
        (["--amp-dtype", "bf16"], "--amp-dtype bf16 needs --amp"),
        (["--batch-size", "500"], "--batch-size 500: the training split has 229 molecules a process"),
        (["--save-ckpt-path", "."], "--save-ckpt-path .: is a directory"),
        (["--save-ckpt-path", "/proc/model.pt"], "--save-ckpt-path /proc/model.pt: cannot write in /proc"),
        (["--tracking-uri", "http://127.0.0.1:9"], "MLflow tracking store http://127.0.0.1:9 is unreachable"),
        (["--tracking-uri", "sqlite:////proc/m.db"], "MLflow tracking store /proc/m.db: cannot write in /proc"),
        (["--target", "energy"], "--target: only with --dataset (QM9's value is --task)"),
        (["--unit", "eV"], "--unit: only with --dataset"),
        (["--split-fractions", "0.5,0.25,0.25"], "--split-fractions: only with --dataset"),
        (["--bad-records", "refuse"], "--bad-records: only with --dataset"),
        (["--seed", str(2**64)], f"--seed must be between 0 and 2**32 - 1, got {2**64}"),
        (["--seed", "-1"], "--seed must be between 0 and 2**32 - 1, got -1"),
        (["--experiment", " "], "--experiment must name an MLflow experiment, got ' '"),
        (["--register-model", "a/b"], "--register-model 'a/b': a registered model's name cannot be blank or hold"),
        (["--num-channels", "100000"], "--num-channels must be at most 4,096, got 100,000"),
        (["--num-layers", "100000"], "--num-layers must be at most 64, got 100,000"),
        (["--register-model", ".."], "--register-model '..': a registered model's name cannot be blank"),
        (["--register-model", "m", "--register-alias", "latest"], "--register-alias 'latest': an alias is letters"),
        (["--register-model", "m", "--register-alias", "v2"], "--register-alias 'v2': an alias is letters"),
    ],
)
def test_bad_training_options_are_one_line_errors(qm9_dir: Path, tmp_path: Path, args: list[str], message: str) -> None:
    """Refused in process, before any work: the command's own check, as ``se3pyg train`` runs it."""
    env_uri = ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"] if "--tracking-uri" not in args else []
    done = invoke_se3pyg("train", *_tiny_args(qm9_dir), "--epochs", "1", *env_uri, *args, cwd=tmp_path)
    assert done.exit_code == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert len([line for line in done.stderr.splitlines() if line.startswith("error:")]) == 1


@pytest.mark.parametrize(("args", "choices"), [(["--optimizer", "adagrad"], "'adam', 'sgd', 'lamb'"),
                                              (["--amp-dtype", "fp8"], "'auto', 'fp16', 'bf16'")])  # fmt: skip
def test_an_option_with_choices_offers_them_and_refuses_others(
    qm9_dir: Path, tmp_path: Path, args: list[str], choices: str
) -> None:
    """``--help`` lists the values; another is refused by the command line, and by the config in Python."""
    assert (
        f"<{choices.replace(chr(39), '').replace(', ', '|')}>" in invoke_se3pyg("train", "--help", cwd=tmp_path).stdout
    )
    done = invoke_se3pyg("train", *_tiny_args(qm9_dir), *args, cwd=tmp_path)
    said = " ".join(re.sub("[│╭╮╰╯─]", " ", done.stderr).split())  # the box the command line draws, taken off
    assert done.exit_code == 2 and f"is not one of {choices}" in said
    with pytest.raises(ValueError, match=f"^{args[0]} must be"):
        TrainConfig(**{args[0].removeprefix("--").replace("-", "_"): args[1]}).validate()


def test_lamb_takes_trust_ratio_steps() -> None:
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = Lamb([w], lr=0.1, weight_decay=0.0)
    w.grad = torch.tensor([1.0, 1.0])
    opt.step()
    # First step: Adam update ~ sign(g) = (1, 1), |u| = sqrt(2); trust = |w| / |u| = 5 / sqrt(2).
    assert torch.allclose(w.detach(), torch.tensor([3.0, 4.0]) - 0.1 * 5 / 2**0.5, atol=1e-4)


@pytest.mark.slow
def test_torchrun_launch_joins_its_process_group(qm9_dir: Path, tmp_path: Path) -> None:
    """``torchrun -m se3pyg train``: each rank joins torchrun's group; one MLflow run, one final line."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        [
            str(torchrun),
            "--nproc-per-node",
            "2",
            "--master-port",
            str(distributed.free_port()),
            "-m",
            "se3pyg",
            "train",
            *_tiny_args(qm9_dir),
            "--epochs",
            "1",
            "--tracking-uri",
            uri,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("done in") == 1
    client = _client(uri)
    runs = client.search_runs([client.get_experiment_by_name("se3pyg").experiment_id])
    assert len(runs) == 1 and runs[0].data.params["world_size"] == "2"


@pytest.mark.slow
def test_ddp_ranks_report_progress_and_epochs_through_the_launcher(qm9_dir: Path, tmp_path: Path) -> None:
    """--processes 2: rank 0's progress and epoch lines are relayed to the command, which prints them as a single
    process does; a tracked run with its MLflow model leaves no leaked semaphore behind."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = run_se3pyg("train", *_tiny_args(qm9_dir), "--processes", "2", "--epochs", "2", "--tracking-uri", uri,
                      cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "epoch 0 (" in done.stdout and re.search(r"^epoch 1  train_loss \S+  val_mae", done.stdout, re.M)
    assert re.search(r"^epoch 0  train_loss .*  run: \d+ s left$", done.stdout, re.M)  # the whole run's time left
    assert "leaked semaphore" not in done.stderr and "Downloading artifacts" not in done.stderr
    assert "CloudPickle" not in done.stderr + done.stdout  # the MLflow model is logged as code, not pickled


def _listening_addresses() -> list[str]:
    """The addresses this process's TCP sockets listen on (from /proc)."""
    import ipaddress

    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/self/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[9]) in inodes:  # LISTEN
                hexed = fields[1].split(":")[0]  # little-endian 32-bit words
                raw = b"".join(bytes.fromhex(hexed[i : i + 8])[::-1] for i in range(0, len(hexed), 8))
                found.append(str(ipaddress.ip_address(raw)))
    return found


def _report_listening(folder: str) -> None:
    info = distributed.init(use_cuda=False)
    distributed.barrier(info)
    Path(folder, f"rank{info.rank}").write_text(json.dumps(_listening_addresses()))
    distributed.barrier(info)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="reads Linux's /proc")
def test_spawned_ranks_listen_on_loopback_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranks spawned on one node (``--processes``, ``--gpus``) meet in a file and talk over loopback: no socket of
    theirs listens on another interface; the file's folder is removed afterwards."""
    import ipaddress

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    distributed.spawn(_report_listening, 2, str(tmp_path))
    for rank in (0, 1):
        addresses = json.loads((tmp_path / f"rank{rank}").read_text())
        assert addresses, "gloo listens for its peers"
        assert [a for a in addresses if not ipaddress.ip_address(a).is_loopback] == [], (rank, addresses)
    assert list(scratch.iterdir()) == []
