"""se3pyg predict: QM9 splits, XYZ/SDF molecules to CSV, NVIDIA checkpoints, bad inputs."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Batch

from se3pyg.data import DataError
from se3pyg.data.molecules import read_molecules
from se3pyg.engine.config import PredictConfig, TrainConfig
from se3pyg.engine.graphs import GraphedPredictor
from se3pyg.engine.precision import Precision
from se3pyg.engine.predict import evaluate_split, load_model, predict_molecules, prediction_step, run_predict
from se3pyg.engine.step import predict_step
from se3pyg.engine.train import run

from .conftest import GOLDEN, QM9_SUBSET, TINY_MODEL, run_se3pyg

WATER_METHANE = """3
water
O 0.0 0.0 0.117
H 0.0 0.757 -0.467
H 0.0 -0.757 -0.467
5
methane
C -0.0127 1.0858 0.0080
H 0.0022 -0.0060 0.0020
H 1.0117 1.4638 0.0003
H -0.5408 1.4475 -0.8766
H -0.5238 1.4379 0.9064
"""

ETHENE_SDF = """ethene
     se3pyg

  6  5  0  0  0  0  0  0  0  0999 V2000
   -0.6672    0.0000    0.0000 C   0  0  0  0  0  0  0  0  0  0  0  0
    0.6672    0.0000    0.0000 C   0  0  0  0  0  0  0  0  0  0  0  0
   -1.2360    0.9289    0.0000 H   0  0  0  0  0  0  0  0  0  0  0  0
   -1.2360   -0.9289    0.0000 H   0  0  0  0  0  0  0  0  0  0  0  0
    1.2360    0.9289    0.0000 H   0  0  0  0  0  0  0  0  0  0  0  0
    1.2360   -0.9289    0.0000 H   0  0  0  0  0  0  0  0  0  0  0  0
  1  2  2  0
  1  3  1  0
  1  4  1  0
  2  5  1  0
  2  6  1  0
M  END
$$$$
"""


@pytest.fixture(scope="module")
def trained(qm9_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trained")
    ckpt = root / "model.pt"
    run(
        TrainConfig(
            **TINY_MODEL,
            batch_size=16,
            limit=QM9_SUBSET,
            epochs=1,
            data_dir=str(qm9_dir),
            save_ckpt_path=str(ckpt),
            tracking_uri=f"sqlite:///{root}/mlflow.db",
        )
    )
    return ckpt


@pytest.fixture()
def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "mols"
    folder.mkdir()
    (folder / "a.xyz").write_text(WATER_METHANE)
    (folder / "b.sdf").write_text(ETHENE_SDF)
    return folder


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_se3pyg("predict", *args, cwd=cwd)


def test_bonds_are_perceived_from_coordinates(inputs: Path) -> None:
    water, methane, ethene = read_molecules([inputs / "a.xyz", inputs / "b.sdf"])
    assert (water.name, methane.name, ethene.name) == ("a.xyz:0", "a.xyz:1", "b.sdf:ethene")
    assert water.edge_index.shape[1] == 4 and methane.edge_index.shape[1] == 8
    assert ethene.edge_attr.sum(0).tolist() == [8.0, 2.0, 0.0, 0.0]  # C=C double bond, both directions
    assert water.x[0].tolist() == [0, 0, 0, 1, 0, 8]


@pytest.mark.slow
def test_predictions_to_csv_in_input_order(trained: Path, inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred.csv"
    done = _cli("--ckpt", str(trained), "--input", str(inputs / "b.sdf"), "--input", str(inputs / "a.xyz"),
                "--output", str(out), cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(out.open()))
    assert [r["molecule"] for r in rows] == ["b.sdf:ethene", "a.xyz:0", "a.xyz:1"]
    assert {r["task"] for r in rows} == {"homo"} and {r["unit"] for r in rows} == {"eV"}
    values = [float(r["prediction"]) for r in rows]
    assert all(-20 < v < 5 for v in values)  # standardization undone: eV, not standard units


@pytest.mark.slow
def test_folder_input_and_split_evaluation(trained: Path, inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred.csv"
    assert _cli("--ckpt", str(trained), "--input", str(inputs), "--output", str(out), cwd=tmp_path).returncode == 0
    assert len(list(csv.DictReader(out.open()))) == 3
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = _cli("--ckpt", str(trained), "--split", "val", "--tracking-uri", uri, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "val MAE" in done.stdout and "on 41 molecules" in done.stdout


@pytest.mark.slow
def test_an_output_that_is_an_input_or_unwritable_is_refused_first(trained: Path, inputs: Path, tmp_path: Path) -> None:
    source = tmp_path / "same.xyz"
    source.write_text((inputs / "a.xyz").read_text())
    before = source.read_bytes()
    done = _cli("--ckpt", str(trained), "--input", str(source), "--output", str(source), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"--output {source}: is --input {source}, which this command reads; not overwritten" in done.stderr
    assert source.read_bytes() == before
    done = _cli("--ckpt", str(trained), "--input", str(source), "--output", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2 and f"--output {tmp_path}: is a directory" in done.stderr
    done = _cli("--ckpt", str(trained), "--input", str(source), "--output", "/proc/out.csv", cwd=tmp_path)
    assert done.returncode == 2 and "--output /proc/out.csv: cannot write in /proc" in done.stderr  # root too


def test_an_empty_evaluation_is_an_error(trained: Path, inputs: Path, tmp_path: Path) -> None:
    """An MAE over no molecules is refused, not reported as 0: a --limit too small for QM9's splits, a --dataset
    whose split holds nothing."""
    with pytest.raises(ValueError, match="--limit must be >= 10 \\(the splits need molecules\\), got 5"):
        PredictConfig(ckpt=str(trained), limit=5).validate()
    folder = tmp_path / "two"
    folder.mkdir()
    (folder / "a.xyz").write_text(WATER_METHANE.split("5\n")[0])  # water alone
    (folder / "b.sdf").write_text(ETHENE_SDF)
    (folder / "values.csv").write_text("molecule,homo\na.xyz,-7.0\nb.sdf,-6.5\n")
    config = PredictConfig(ckpt=str(trained), dataset=str(folder), split="val", gpus=0, tracking=False)
    with pytest.raises(DataError, match=rf"--dataset {folder}: every split needs molecules \(train 2, val 0, test 0\)"):
        run_predict(config)


@pytest.mark.slow
def test_nvidia_checkpoint_needs_target_statistics(inputs: Path, tmp_path: Path) -> None:
    golden = GOLDEN / "nvidia_small_full.pt"
    out = tmp_path / "pred.csv"
    done = _cli("--ckpt", str(golden), "--num-heads", "4", "--input", str(inputs), "--output", str(out), cwd=tmp_path)
    assert done.returncode != 0 and "no target statistics" in done.stderr and not out.exists()
    done = _cli("--ckpt", str(golden), "--num-heads", "4", "--input", str(inputs), "--output", str(out),
                "--target-mean", "-6.5", "--target-std", "0.6", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(list(csv.DictReader(out.open()))) == 3


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.xyz", "2\nwater\nO 0 0 0\nH 0 0.7\n", "bad.xyz:4: expected 'element x y z'"),
        ("short.xyz", "5\nx\nC 0 0 0\n", "short.xyz:1: frame of 5 atoms runs past the end"),
        ("count.xyz", "three\nx\n", "count.xyz:1: expected an atom count"),
        ("empty.xyz", "", "empty.xyz: empty file"),
        ("empty.sdf", "\n", "empty.sdf: empty file"),
        ("bad.sdf", "not a molfile\n$$$$\n", "bad.sdf: record 1 is not a valid molfile"),
        ("si.xyz", "1\nx\nSi 0 0 0\n", "si.xyz:0: unknown element Si"),
        ("notes.txt", "hello", "notes.txt: unsupported file type"),
        ("nan.xyz", "2\nx\nH 0 0 0\nH 0 0 nan\n", "nan.xyz:4: coordinates must be finite"),
        ("far.xyz", "2\nx\nH 0 0 0\nH 0 0 1e9\n", "far.xyz:4: coordinates must be finite"),
        ("atom.xyz", "1\nx\nC 0 0 0\n", "atom.xyz:0: no bonds perceived"),
        ("apart.xyz", "2\nx\nO 0 0 0\nO 0 0 9\n", "apart.xyz:0: no bonds perceived"),
        ("point.xyz", "3\nx\nO 0 0 0\nH 0 0 0\nH 0 0 0\n", "point.xyz:0: atoms 1 and 2 are 0.00 Å apart, closer than"),
    ],
)
def test_bad_inputs_are_refused_without_output(
    trained: Path, tmp_path: Path, name: str, content: str, message: str
) -> None:
    bad = tmp_path / name
    bad.write_text(content)
    out = tmp_path / "pred.csv"
    done = _cli("--ckpt", str(trained), "--input", str(bad), "--output", str(out), cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not out.exists() and not list(tmp_path.glob(".pred.csv*"))


def _damaged(path: Path, drop: str | None = None, **config: object) -> None:
    """An se3pyg checkpoint of a small model with a weight missing or a model_config that does not fit."""
    from se3pyg.engine.checkpoint import save_checkpoint
    from se3pyg.model import SE3TransformerPooled

    model = SE3TransformerPooled(num_layers=1, num_degrees=2, num_channels=8, num_heads=2)
    state = {k: v for k, v in model.state_dict().items() if k != drop}
    payload = dict(model_config={**model.config, **config}, state_dict=state, task="homo", target_mean=0.0,
                   target_std=1.0, config={}, epoch=0)  # fmt: skip
    save_checkpoint(path, payload)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "missing.pt: no such file"),
        (lambda p: p.write_bytes(b"garbage"), "missing.pt: not a readable PyTorch checkpoint"),
        (lambda p: torch.save({"weights": torch.zeros(2)}, p), "not an se3pyg or NVIDIA"),
        (lambda p: _damaged(p, drop="transformer.graph_modules.0.project.weights.0"), "do not match"),
        (lambda p: _damaged(p, num_channels=12), "model_config and weights do not match"),
    ],
)
def test_missing_or_foreign_checkpoints_are_refused(inputs: Path, tmp_path: Path, make, message: str) -> None:
    path = tmp_path / "missing.pt"
    make(path)
    out = tmp_path / "pred.csv"
    done = _cli("--ckpt", str(path), "--input", str(inputs), "--output", str(out), cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


def test_padded_static_shape_predictions_equal_the_eager_ones(trained: Path, inputs: Path, qm9_dir: Path) -> None:
    """``cuda_graphs``: batches padded to static shapes (replayed as CUDA graphs on a GPU, run eagerly here) give
    the eager predictions, for the user's named molecules and for a QM9 split."""
    loaded, cpu = load_model(trained), torch.device("cpu")
    precision = Precision.choose(False, "auto", cpu)
    molecules = read_molecules([inputs])
    eager = predict_molecules(loaded, molecules, 2, cpu, precision)
    padded = predict_molecules(loaded, molecules, 2, cpu, precision, cuda_graphs=True)
    torch.testing.assert_close(padded, eager, rtol=1e-5, atol=1e-6)
    predictor = prediction_step(loaded.model, precision, cpu, cuda_graphs=True).__self__
    assert isinstance(predictor, GraphedPredictor) and not predictor.capture  # no capture off CUDA
    batch = Batch.from_data_list(molecules)  # with the molecules' names, which padding leaves out
    with torch.no_grad():
        expected = predict_step(loaded.model, batch, precision)
        torch.testing.assert_close(predictor.predict(batch), expected, rtol=1e-5, atol=1e-6)
    assert [key[0] for key in predictor.graphs] == ["predict"]
    options = (False, True)
    split = [evaluate_split(loaded, qm9_dir, QM9_SUBSET, "val", 8, cpu, precision, cuda_graphs=g) for g in options]
    assert split[0][1] == split[1][1] == 41
    assert split[1][0] == pytest.approx(split[0][0], rel=1e-5)


@pytest.mark.slow
def test_cuda_graphs_without_a_gpu_is_refused(trained: Path, inputs: Path, tmp_path: Path) -> None:
    done = _cli("--ckpt", str(trained), "--input", str(inputs), "--cuda-graphs", "--gpus", "0", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--cuda-graphs needs a GPU, and this run is on the CPU" in done.stderr
