"""The CLI as users call it: version, data prepare, runs, training options, README examples."""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

import se3pyg
from se3pyg.engine.config import TrainConfig
from se3pyg.engine.train import run

from .conftest import QM9_SUBSET, ROOT, TINY_MODEL, invoke_se3pyg, run_se3pyg

TINY = dict(**TINY_MODEL, batch_size=16, limit=QM9_SUBSET, epochs=1)


@pytest.mark.slow
def test_version_and_module_entry_point(tmp_path: Path) -> None:
    done = run_se3pyg("--version", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == f"se3pyg {se3pyg.__version__}"


@pytest.mark.slow
def test_the_command_line_is_built_without_torch_pyg_or_mlflow(tmp_path: Path) -> None:
    """``se3pyg --help`` and every command's help come from the option classes alone (0.2-0.4 s instead of 4 s):
    the app imports neither torch, PyG, e3nn nor MLflow; a command imports them when it runs."""
    heavy = ("torch", "torch_geometric", "e3nn", "mlflow")
    probe = f"import sys\nfrom se3pyg.cli.app import app\nprint(sorted(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert done.stdout.strip() == "[]"
    for command in ([], ["train"], ["predict"], ["benchmark"], ["runs"], ["ui"], ["data", "prepare"]):
        done = run_se3pyg(*command, "--help", cwd=tmp_path)
        assert done.returncode == 0 and "Usage: " in done.stdout, done.stderr


@pytest.mark.slow
def test_option_errors_are_told_before_torch_loads(tmp_path: Path) -> None:
    """A mistyped option is refused as one line before torch, PyG or MLflow load (0.3 s instead of 5-7 s here)."""
    mistakes = {
        ("train", "--task", "homos"): "unknown task 'homos'",
        ("train", "--num-heads", "3"): "--num-heads 3 must divide num_channels / channels_div = 16",
        ("predict", "--ckpt", "model.pt"): "--ckpt model.pt: no such file",
        ("train", "--load-ckpt-path", "."): "--load-ckpt-path .: is a folder, not a file",
        ("benchmark", "train", "--steps", "0"): "--steps must be >= 1",
    }
    heavy = ("torch", "torch_geometric", "e3nn", "mlflow")
    probe = (
        "import sys\nfrom se3pyg.cli.app import app\n"
        f"try:\n    app(sys.argv[1:])\nexcept SystemExit as exit:\n    print(exit.code)\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    choices = {  # refused by the command line itself, which offers the choices
        ("train", "--optimizer", "adamw"): "'adamw' is not one of 'adam', 'sgd', 'lamb'",
        ("predict", "--ckpt", "model.pt", "--split", "train"): "'train' is not one of 'test', 'val', 'all'",
    }
    for argv, message in {**mistakes, **choices}.items():
        done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, cwd=tmp_path)
        assert done.stdout.split() == ["2", "[]"], (argv, done.stdout, done.stderr)
        said = " ".join(re.sub("[│╭╮╰╯─]", " ", done.stderr).split())
        assert message in said and "Traceback" not in done.stderr, (argv, done.stderr)
        assert done.stderr.startswith("error: ") or argv in choices


@pytest.mark.slow
def test_data_prepare_prints_a_line_per_stage_off_terminal(tmp_path: Path) -> None:
    done = run_se3pyg("data", "prepare", "--data-dir", str(tmp_path / "qm9"), "--limit", "20", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "perceiving bonds (20 molecules)"
    assert lines[1] == "processing with torch_geometric.datasets.QM9 (20 molecules)"
    assert lines[-1].startswith(f"QM9 ready in {tmp_path / 'qm9'}: 20 molecules")
    again = run_se3pyg("data", "prepare", "--data-dir", str(tmp_path / "qm9"), "--limit", "10", cwd=tmp_path)
    assert again.returncode == 0 and len(again.stdout.strip().splitlines()) == 1  # nothing to build
    bad = run_se3pyg("data", "prepare", "--data-dir", str(tmp_path / "qm9"), "--limit", "0", cwd=tmp_path)
    assert bad.returncode == 2 and "--limit must be between 1 and 130831" in bad.stderr


@pytest.mark.slow
def test_runs_table_compares_training_runs(qm9_dir: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run(TrainConfig(**TINY, data_dir=str(qm9_dir), tracking_uri=uri, run_name="table-run-7"))
    done = run_se3pyg("runs", "--tracking-uri", uri, "--task", "homo", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "table-run-7" in done.stdout and "FINISHED" in done.stdout
    row = next(line for line in done.stdout.splitlines() if "table-run-7" in line)
    assert "1/1" in row  # epochs done of planned
    from se3pyg.engine.tracking import list_runs

    (summary,) = list_runs(uri, "se3pyg", "homo")
    assert summary.epochs_done == 1 and summary.throughput_mol_per_s > 0
    assert f"{summary.throughput_mol_per_s:.1f}" in row  # whole-run molecules per second, as training prints
    assert "table-run-7" not in run_se3pyg("runs", "--tracking-uri", uri, "--task", "gap", cwd=tmp_path).stdout
    long_name = "gap-published-recipe-on-8-gpus-with-amp-bf16"
    run(TrainConfig(**TINY, task="gap", data_dir=str(qm9_dir), tracking_uri=uri, run_name=long_name))
    narrow = run_se3pyg("runs", "--tracking-uri", uri, cwd=tmp_path, env={"COLUMNS": "80"}).stdout.splitlines()
    assert max(len(line) for line in narrow) <= 80
    header = next(line for line in narrow if line.startswith("id "))
    assert header.split() == ["id", "run", "task", "status", "epochs", "val", "MAE", "test", "MAE", "mol/s", "time"]
    body = narrow[narrow.index(header) + 2 : next(i for i, line in enumerate(narrow) if line.startswith("id: "))]
    names = "".join(line[header.index("run") : header.index("task")].strip() for line in body)
    assert names == long_name + "table-run-7"  # wrapped, never cut; newest first
    missing = run_se3pyg("runs", "--tracking-uri", uri, "--experiment", "nope", cwd=tmp_path)
    assert missing.returncode == 2 and "--experiment 'nope': no such experiment" in missing.stderr


@pytest.mark.parametrize(
    "options",
    [
        dict(amp=True, amp_dtype="bf16"),
        dict(amp=True, amp_dtype="fp16"),
        dict(optimizer="lamb"),
        dict(optimizer="sgd", momentum=0.5),
        dict(gradient_clip=0.1, accumulate_grad_batches=3),
        dict(precompute_bases=True),
        dict(layout="partial", low_memory=True),
        dict(num_workers=1),
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_every_training_option_completes_a_run(qm9_dir: Path, tmp_path: Path, options: dict) -> None:
    """Each option end to end; what each does is asserted in test_engine.py (precision, accumulation, ...)."""
    result = run(TrainConfig(**TINY, **options, data_dir=str(qm9_dir), tracking_uri=f"sqlite:///{tmp_path}/m.db"))
    assert result is not None and result.epochs_run == 1
    assert torch.isfinite(torch.tensor([result.best_val_mae, result.test_mae])).all()


@pytest.mark.slow
def test_quick_sets_defaults_that_typed_options_override(qm9_dir: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    typed = ["--data-dir", str(qm9_dir), "--limit", str(QM9_SUBSET), "--epochs", "1", "--num-channels", "8"]
    done = run_se3pyg("train", "--quick", *typed, "--tracking-uri", uri, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run_id = re.search(r"MLflow run (\w+)", done.stdout).group(1)
    params = mlflow.MlflowClient(tracking_uri=uri).get_run(run_id).data.params
    assert (params["epochs"], params["limit"], params["num_channels"]) == ("1", str(QM9_SUBSET), "8")  # typed
    assert (params["num_layers"], params["batch_size"], params["gpus"]) == ("2", "32", "0")  # --quick's
    assert params["save_ckpt_path"] == "quick.pt" and (tmp_path / "quick.best.pt").is_file()
    assert f"{QM9_SUBSET:,} QM9 molecules" in done.stdout.splitlines()[0]  # the banner says what it trains on
    assert done.stdout.splitlines()[-1] == "next: se3pyg predict --ckpt quick.best.pt --input MOLECULES.xyz"
    # every run's best checkpoint is runs:/RUN_ID/model.best.pt, whatever its file was called
    artifacts = {a.path for a in mlflow.MlflowClient(tracking_uri=uri).list_artifacts(run_id)}
    assert {"model.pt", "model.best.pt"} <= artifacts and "quick.best.pt" not in artifacts

    # --quick on your molecules: its own checkpoints (not the QM9 demo's), and a batch that fits its training split
    from .test_custom_data import _embedded, _write_sdf

    smiles = ["CCO", "CCN", "CCC", "CO", "CN", "CC=O", "CCCO", "CCCN", "OCCO", "NCCN"] * 2
    _write_sdf(tmp_path / "mols.sdf", [(_embedded(smi), {"y": str(k % 4)}) for k, smi in enumerate(smiles)])
    before = (tmp_path / "quick.best.pt").read_bytes()
    done = run_se3pyg("train", "--quick", "--dataset", "mols.sdf", "--target", "y", "--epochs", "1",
                      "--tracking-uri", uri, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "small model, --dataset mols.sdf" in done.stdout.splitlines()[0]
    assert "--batch-size 32: the training split of --dataset has 16 molecules a process; batches of 16" in done.stderr
    assert (tmp_path / "quick-mols.best.pt").is_file() and (tmp_path / "quick.best.pt").read_bytes() == before
    assert "1 processes" not in done.stderr + done.stdout


@pytest.mark.slow
def test_no_third_party_deprecation_warnings(tmp_path: Path) -> None:
    """Even with every warning shown, se3pyg's imports and a model run print none of PyG's or e3nn's (as in
    every se3pyg command, se3pyg is imported first: a user's own earlier PyG import is the user's)."""
    code = (
        "import se3pyg.engine.predict, se3pyg.engine.benchmark, se3pyg.cli.app;"
        "from se3pyg import SE3TransformerPooled; import torch; from torch_geometric.data import Batch, Data;"
        "m = SE3TransformerPooled(num_layers=1, num_degrees=2, num_channels=8, num_heads=2);"
        "d = Data(x=torch.randn(2, 6), pos=torch.randn(2, 3), edge_index=torch.tensor([[0, 1], [1, 0]]),"
        " edge_attr=torch.randn(2, 4)); m(Batch.from_data_list([d]))"
    )
    done = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr


@pytest.mark.slow
def test_quick_start_from_training_to_a_prediction(qm9_dir: Path, tmp_path: Path) -> None:
    """The README's Quick start, with fewer molecules and one epoch, using only what it and the output say."""
    quick_start = re.search(r"## Quick start\n\n```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    lines = [line.split("  #")[0].strip() for line in quick_start.splitlines()]
    train = next(line for line in lines if line.startswith("se3pyg train --quick")).split()[1:]
    reduced = ["--data-dir", str(qm9_dir), "--limit", str(QM9_SUBSET), "--epochs", "1"]
    done = run_se3pyg(*train, *reduced, "--tracking-uri", f"sqlite:///{tmp_path}/m.db", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "model built" not in done.stdout  # a parameter count is no progress bar: the last lines give it
    assert re.search(r"^done in [\d.]+ s \([\d,]+ parameters\): best val MAE", done.stdout, re.M)
    assert "epoch 0 (7 batches)" in done.stdout  # 229 training molecules in batches of 32: a line as it starts
    named = re.search(r"^checkpoint: (\S+) \(best validation\)", done.stdout, re.M).group(1)
    assert (tmp_path / named).is_file()
    molecule = next(line for line in lines if line.startswith("printf"))
    subprocess.run(["bash", "-c", molecule], cwd=tmp_path, check=True)
    predict = next(line for line in lines if line.startswith("se3pyg predict")).split()[1:]
    assert predict[predict.index("--ckpt") + 1] == named
    done = run_se3pyg(*predict, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [r["molecule"] for r in rows] == ["water.xyz:0"] and rows[0]["unit"] == "eV"
    assert -20 < float(rows[0]["prediction"]) < 5


def test_plain_progress_prints_a_stage_once_then_at_most_every_interval(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from se3pyg.cli import console

    monkeypatch.setattr(console, "PLAIN_PROGRESS_EVERY_S", 0.0)
    with console.stage_progress() as progress:
        for done in range(1, 4):
            progress("epoch 0", done, 3, "batches", molecules=32 * done, loss=None if done < 2 else 0.25)
        progress("perceiving bonds", 10, 20)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "epoch 0 (3 batches)" and lines[2] == "perceiving bonds (20 molecules)"
    assert re.fullmatch(r"epoch 0: 2/3 batches  \d+ mol/s  loss 0\.2500", lines[1])  # rate and the loss last read
    monkeypatch.setattr(console, "PLAIN_PROGRESS_EVERY_S", 3600.0)
    with console.stage_progress() as progress:
        for done in range(1, 100):
            progress("epoch 1", done, 100, "batches")
    assert capsys.readouterr().out.splitlines() == ["epoch 1 (100 batches)"]  # no flood in logs


def test_runs_names_a_missing_store_or_experiment_in_one_line(tmp_path: Path) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = invoke_se3pyg("runs", "--tracking-uri", uri, cwd=tmp_path)
    assert (
        done.exit_code == 2
        and done.stderr == f"error: MLflow tracking store {uri}: no store there yet (nothing has been tracked)\n"
    )
    mlflow.MlflowClient(tracking_uri=uri).create_experiment("other")
    done = invoke_se3pyg("runs", "--tracking-uri", uri, "--experiment", "nope", cwd=tmp_path)
    assert done.exit_code == 2 and done.stderr.startswith("error: --experiment 'nope': no such experiment")


def test_failures_of_the_machine_are_one_line_naming_their_cause(capsys: pytest.CaptureFixture[str]) -> None:
    """A full disk (torch.save's 'unexpected pos'), memory that cannot be allocated, a library that cannot be
    loaded: one line and exit 1; any other exception stays a traceback (a bug to report)."""
    import typer

    from se3pyg.cli.console import one_line_errors

    failures = {
        RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4480 vs 4374"): "the disk is full",
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to "
                     "allocate 1099511627776 bytes. Error code 12"): "out of memory (",
        MemoryError(): "out of memory",
        ImportError("libtorch_cpu.so: failed to map segment from shared object"): "a library could not be loaded",
    }  # fmt: skip
    for exc, cause in failures.items():
        with pytest.raises(typer.Exit) as exit, one_line_errors():
            raise exc
        said = capsys.readouterr().err
        assert exit.value.exit_code == 1 and said.startswith(f"error: {cause}") and said.count("\n") == 1, said
    with pytest.raises(KeyError), one_line_errors():
        raise KeyError("a bug")


@pytest.mark.slow
def test_a_terminal_that_takes_ascii_only_gets_every_character_escaped_not_a_crash(tmp_path: Path) -> None:
    done = run_se3pyg("train", "--help", cwd=tmp_path, env={"PYTHONIOENCODING": "ascii"})
    assert done.returncode == 0 and "Traceback" not in done.stderr and "--epochs" in done.stdout


def test_options_offer_the_values_their_checks_take() -> None:
    """An option's choices on the command line are the values the library's own check takes, whatever edits
    follow."""
    import dataclasses

    from se3pyg.data.custom import BAD_RECORDS
    from se3pyg.engine.config import AMP_DTYPES, OPTIMIZERS, TrainConfig
    from se3pyg.nn.conv import KERNELS
    from se3pyg.options import choices_of

    offered = {f.name: choices_of(f) for f in dataclasses.fields(TrainConfig) if choices_of(f)}
    assert offered == {
        "kernel": KERNELS, "pooling": ("max", "avg"), "layout": ("full", "partial", "pairwise"),
        "amp_dtype": AMP_DTYPES, "bad_records": tuple(BAD_RECORDS), "optimizer": OPTIMIZERS,
    }  # fmt: skip


def test_rates_read_in_the_unit_that_shows_them() -> None:
    """A GPU's thousands of molecules a second in mol/ms; a CPU's small work in mol/s, never ``0.00 mol/ms``."""
    from se3pyg.cli.console import rate

    assert rate(37_900, 1.0) == "37.9 mol/ms" and rate(12, 4.0) == "3.0 mol/s" and rate(999, 1.0) == "999.0 mol/s"
