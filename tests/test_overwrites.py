"""Nothing written over what a command reads or writes elsewhere: refused by name, before any work, links
resolved."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from se3pyg.engine.config import PredictConfig, TrainConfig

from .conftest import run_se3pyg


def _files(folder: Path, *names: str) -> list[Path]:
    paths = [folder / name for name in names]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("kept\n")
    return paths


def test_a_checkpoint_is_never_written_over_the_dataset_the_store_or_the_qm9_folder(tmp_path: Path) -> None:
    sdf, db, gdb = _files(tmp_path, "mols.sdf", "runs.db", "qm9/raw/gdb9.sdf")
    store = f"sqlite:///{db}"
    cases = [
        (dict(dataset=str(sdf), target="y", save_ckpt_path=str(sdf)), rf"--save-ckpt-path {sdf}: is --dataset {sdf}"),
        (dict(save_ckpt_path=str(db)), rf"--save-ckpt-path {db}: is the MLflow tracking store {db}, which this"),
        (dict(data_dir=str(gdb.parents[1]), save_ckpt_path=str(gdb)), rf"--save-ckpt-path {gdb}: lies inside"),
        # the companions: the best checkpoint beside model.pt is the dataset
        (dict(dataset=str(tmp_path / "m.best.pt"), target="y", save_ckpt_path=str(tmp_path / "m.pt")),
         r"the best checkpoint of --save-ckpt-path .*m\.pt .*m\.best\.pt: is --dataset"),
    ]  # fmt: skip
    (tmp_path / "m.best.pt").write_text("kept\n")
    for options, refused in cases:
        with pytest.raises(ValueError, match=refused):
            TrainConfig(**{"tracking_uri": store, **options}).validate()
    assert all(path.read_text() == "kept\n" for path in (sdf, db, gdb, tmp_path / "m.best.pt"))


def test_links_are_resolved_and_resuming_onto_the_same_checkpoint_stays_allowed(tmp_path: Path) -> None:
    (sdf,) = _files(tmp_path, "mols.sdf")
    link = tmp_path / "link.pt"
    link.symlink_to(sdf)
    hard = tmp_path / "hard.pt"
    os.link(sdf, hard)
    for save in (link, hard):
        with pytest.raises(ValueError, match=rf"--save-ckpt-path {save}: is --dataset {sdf}"):
            TrainConfig(dataset=str(sdf), target="y", save_ckpt_path=str(save)).validate()
    (ckpt,) = _files(tmp_path, "model.pt")
    TrainConfig(load_ckpt_path=str(ckpt), save_ckpt_path=str(ckpt), tracking_uri="sqlite:///x.db").validate()


def test_predictions_are_never_written_over_the_checkpoint_or_into_an_input_folder(tmp_path: Path) -> None:
    ckpt, molecule = _files(tmp_path, "model.pt", "mols/b.xyz")
    with pytest.raises(ValueError, match=rf"--output {ckpt}: is --ckpt {ckpt}"):
        PredictConfig(ckpt=str(ckpt), input=[str(molecule)], output=str(ckpt)).validate()
    with pytest.raises(ValueError, match=rf"--output {molecule}: lies inside --input {molecule.parent}"):
        PredictConfig(ckpt=str(ckpt), input=[str(molecule.parent)], output=str(molecule)).validate()
    PredictConfig(ckpt=str(ckpt), input=[str(molecule.parent)], output=str(tmp_path / "out.csv")).validate()


def test_the_tracking_store_its_companions_and_artifacts_are_never_written_over(tmp_path: Path) -> None:
    """The database, SQLite's journal, WAL and shared-memory files, and every experiment folder of the artifact
    root (runs' plots and checkpoints, logged models) are refused to --output and --save-ckpt-path, whether or not
    the command tracks; links are resolved."""
    db, curve, logged = _files(tmp_path, "mlruns/mlflow.db", "mlruns/1/run/artifacts/learning_curve.png",
                               "mlruns/1/models/m-1/artifacts/data/model.best.pt")  # fmt: skip
    link = tmp_path / "curve.png"
    link.symlink_to(curve)
    store = f"sqlite:///{db}"
    ckpt = tmp_path / "model.pt"
    ckpt.write_text("kept\n")
    targets = {db: "is the MLflow tracking store", Path(f"{db}-journal"): "tracking store's -journal file",
               Path(f"{db}-wal"): "-wal file", curve: "lies inside the MLflow artifacts of experiment",
               link: "lies inside the MLflow artifacts", logged: "lies inside the MLflow artifacts"}  # fmt: skip
    for target, refused in targets.items():
        with pytest.raises(ValueError, match=rf"--output {target}: .*{refused}"):
            PredictConfig(ckpt=str(ckpt), input=[str(ckpt)], output=str(target), tracking_uri=store).validate()
        with pytest.raises(ValueError, match=rf"--save-ckpt-path {target}: .*{refused}"):
            TrainConfig(save_ckpt_path=str(target), tracking_uri=store, tracking=False).validate()
    assert db.read_text() == curve.read_text() == logged.read_text() == "kept\n"
    PredictConfig(
        ckpt=str(ckpt), input=[str(ckpt)], output=str(tmp_path / "mlruns" / "p.csv"), tracking_uri=store
    ).validate()


def test_only_regular_files_are_replaced_and_keep_their_permissions(tmp_path: Path) -> None:
    """A device, a FIFO or a link to one is never replaced by a regular file; a replaced file keeps its mode."""
    from se3pyg.io import atomic_write

    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    stdout = tmp_path / "stdout.csv"
    stdout.symlink_to("/dev/null")
    ckpt = tmp_path / "model.pt"
    ckpt.write_text("kept\n")
    for target in (Path("/dev/null"), fifo, stdout):
        with pytest.raises(ValueError, match=rf"--output {target}: not a regular file"):
            PredictConfig(ckpt=str(ckpt), input=[str(ckpt)], output=str(target)).validate()
        with pytest.raises(ValueError, match=rf"--save-ckpt-path {target}: not a regular file"):
            TrainConfig(save_ckpt_path=str(target), tracking=False).validate()
    assert stdout.is_symlink() and fifo.is_fifo()
    private = tmp_path / "private.csv"
    private.write_text("old\n")
    private.chmod(0o600)
    with atomic_write(private) as tmp:
        tmp.write_text("new\n")
    assert private.read_text() == "new\n" and private.stat().st_mode & 0o777 == 0o600


@pytest.mark.slow
def test_the_command_line_refuses_before_any_work(tmp_path: Path) -> None:
    ckpt, molecule = _files(tmp_path, "model.pt", "mols/b.xyz")
    done = run_se3pyg("predict", "--ckpt", str(ckpt), "--input", str(tmp_path / "mols"), "--output", str(molecule),
                      cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert (
        done.stderr.strip()
        == f"error: --output {molecule}: lies inside --input {tmp_path / 'mols'}, which this command reads"
    )
    db = tmp_path / "mlruns.db"
    db.write_text("history\n")
    done = run_se3pyg("train", "--save-ckpt-path", str(db), "--tracking-uri", f"sqlite:///{db}", cwd=tmp_path)
    assert done.returncode == 2 and f"--save-ckpt-path {db}: is the MLflow tracking store" in done.stderr
    assert db.read_text() == "history\n" and ckpt.read_text() == molecule.read_text() == "kept\n"
