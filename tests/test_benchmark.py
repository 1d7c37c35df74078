"""se3pyg benchmark: NVIDIA's method, a table and one JSON line last, logged to MLflow."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import pytest

from .conftest import GOLDEN, QM9_SUBSET, TINY_MODEL_ARGS, run_se3pyg

KEYS = {
    "mode", "batch_size", "throughput_mol_per_ms", "latency_ms_mean", "latency_ms_p90", "latency_ms_p95",
    "latency_ms_p99", "peak_memory_mb", "device", "edges_per_molecule", "matmul_gflops",
}  # fmt: skip


def _bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_se3pyg("benchmark", *args, cwd=cwd)


@pytest.mark.slow
def test_benchmark_prints_json_last_and_logs_to_mlflow(qm9_dir: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tiny = TINY_MODEL_ARGS
    for mode in ("train", "predict"):
        done = _bench(mode, "--data-dir", str(qm9_dir), "--limit", str(QM9_SUBSET), "--batch-size", "8",
                      "--steps", "5", "--gpus", "0", "--tracking-uri", uri, *tiny, cwd=tmp_path)  # fmt: skip
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert set(result) >= KEYS
        assert result["mode"] == mode and result["batch_size"] == 8
        assert result["throughput_mol_per_ms"] > 0 and result["matmul_gflops"] > 0
        assert result["latency_ms_mean"] <= result["latency_ms_p99"] * 1.0001
        assert 5 < result["edges_per_molecule"] < 60
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("se3pyg-benchmark").experiment_id])
    assert len(runs) == 2 and all("throughput_mol_per_ms" in r.data.metrics for r in runs)


@pytest.mark.slow
def test_benchmark_refuses_what_cannot_run(qm9_dir: Path, tmp_path: Path) -> None:
    done = _bench("fit", "--no-tracking", cwd=tmp_path)
    said = " ".join(re.sub("[│╭╮╰╯─]", " ", done.stderr).split())  # the box the command line draws, taken off
    assert done.returncode == 2 and "is not one of 'train', 'predict', 'data'" in said, done.stderr
    done = _bench("train", "--data-dir", str(qm9_dir), "--limit", "50", "--batch-size", "64", "--gpus", "0",
                  "--no-tracking", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2 and "raise --limit or lower --steps" in done.stderr
    assert "Traceback" not in done.stderr
    refused = [
        (("--cuda-graphs", "--gpus", "0"), "--cuda-graphs needs a GPU, and this run is on the CPU"),
        (("--cuda-graphs", "--compile"), "--compile and --cuda-graphs: choose one"),
        (("--cuda-graphs", "--precompute-bases"), "padded batches cannot carry precomputed harmonics"),
    ]
    for options, message in refused:
        done = _bench("train", "--data-dir", str(qm9_dir), "--limit", str(QM9_SUBSET), "--no-tracking", *options,
                      cwd=tmp_path)  # fmt: skip
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_benchmark_says_what_it_builds_and_never_replaces_a_smaller_build(qm9_dir: Path, tmp_path: Path) -> None:
    """A folder without QM9: the molecules it builds and about how long that takes; a folder holding fewer
    molecules than asked (a user's build): refused, naming --limit; enough: nothing to build."""
    from se3pyg.data import NUM_MOLECULES
    from se3pyg.engine.benchmark import data_to_build
    from se3pyg.engine.config import BenchmarkConfig

    molecules, seconds = data_to_build(BenchmarkConfig(data_dir=str(tmp_path / "new")))
    assert molecules == NUM_MOLECULES and seconds > 0
    with pytest.raises(ValueError) as refused:
        data_to_build(BenchmarkConfig(data_dir=str(qm9_dir)))
    assert str(refused.value).startswith(
        f"--data-dir {qm9_dir}: holds {QM9_SUBSET} QM9 molecules, and the benchmark reads {NUM_MOLECULES:,}; "
        f"--limit {QM9_SUBSET} uses them"
    )
    assert data_to_build(BenchmarkConfig(data_dir=str(qm9_dir), limit=QM9_SUBSET)) is None


@pytest.mark.slow
def test_a_quick_benchmark_shows_its_progress_and_every_figure(qm9_dir: Path, tmp_path: Path) -> None:
    done = _bench("train", "--quick", "--data-dir", str(qm9_dir), "--limit", str(QM9_SUBSET), "--batch-size", "16",
                  "--no-tracking", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert "warm-up train steps (2 steps)" in out and "timing train steps (10 steps)" in out  # as train's stages
    result = json.loads(out[-1])
    assert result["batch_size"] == 16 and result["steps"] == 10
    table = "\n".join(out[:-1])
    for key, value in result.items():  # every figure of the JSON line in the table too
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        assert re.search(rf"{key}\s.*{re.escape(shown)}", table), key


@pytest.mark.slow
def test_epochs_and_processes(qm9_dir: Path, tmp_path: Path) -> None:
    """``--epochs``: whole epochs timed after a warm-up epoch; ``--processes 2``: two gloo ranks under DDP."""
    tiny = [*TINY_MODEL_ARGS, "--no-tracking"]
    common = ["train", "--data-dir", str(qm9_dir), "--limit", str(QM9_SUBSET), "--gpus", "0", *tiny]
    done = _bench(*common, "--batch-size", "32", "--epochs", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["steps"] == 229 // 32  # one timed epoch of the 229 training molecules, full batches
    done = _bench(*common, "--batch-size", "8", "--steps", "4", "--processes", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["world_size"] == 2 and result["steps"] == 4


@pytest.mark.slow
def test_compiled_model(qm9_dir: Path, tmp_path: Path) -> None:
    """``--compile``: the model runs under torch.compile (the Clebsch-Gordan constants stay outside the graph), here
    with ``--kernel fused``, whose operators the compiled graph calls."""
    tiny = [*TINY_MODEL_ARGS, "--no-tracking"]
    done = _bench("predict", "--data-dir", str(qm9_dir), "--limit", str(QM9_SUBSET), "--gpus", "0", *tiny,
                  "--batch-size", "8", "--steps", "3", "--compile", "--kernel", "fused", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["steps"] == 3 and result["throughput_mol_per_ms"] > 0


#: Imported first by a Python started with this folder on ``PYTHONPATH``: the GPU machine's packages, which lack these.
GPU_MACHINE_SITE = """
import sys


class _Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("mlflow", "rdkit", "qm9pack"):
            raise ModuleNotFoundError(f"No module named {name!r} (not on the GPU machine)")


sys.meta_path.insert(0, _Missing())
"""


@pytest.mark.slow
def test_gpu_suite_smoke_run_on_cpu(qm9_dir: Path, tmp_path: Path) -> None:
    """The GPU suite as a lent GPU runs it (exported molecules, golden files from --golden, no mlflow, rdkit or
    qm9pack), short, on CPU: golden checks pass in both edge orders, the fused kernels' operators equal float64
    products, a training step is timed and counted; a missing golden folder is an error."""
    suite_py = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"
    sample, out = tmp_path / "sample.pt", tmp_path / "gpu_results.json"
    export = [sys.executable, str(suite_py), "--export", str(sample), "--data-dir", str(qm9_dir), "--count", "64",
              "--limit", str(QM9_SUBSET)]  # fmt: skip
    subprocess.run(export, check=True, capture_output=True, timeout=300)
    archive = tmp_path / "qm9.tar.gz"
    export = [sys.executable, str(suite_py), "--export-qm9", str(archive), "--data-dir", str(qm9_dir)]
    subprocess.run(export, check=True, capture_output=True, timeout=300)
    golden = GOLDEN
    site = tmp_path / "gpu_machine_site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(GPU_MACHINE_SITE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    missing = subprocess.run([sys.executable, "-c", "import mlflow"], env=env, capture_output=True, text=True)
    assert "not on the GPU machine" in missing.stderr

    def suite(folder: Path, jobs: str) -> dict:
        command = [sys.executable, str(suite_py), "--molecules", str(sample), "--golden", str(folder), "--smoke",
                   "--qm9", str(archive), "--only", jobs, "--out", str(out)]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, timeout=600, env=env)
        return json.loads(out.read_text())

    jobs = "golden_reassociated,operator_checks,step_counts_reassociated,step_counts_amp_fp16_reassociated"
    jobs += ",default_command,equivariance_b8"
    report = suite(golden, f"{jobs},train_amp_fp16_b8")
    command = json.loads(out.with_name("default-command.json").read_text())  # the command's figures, in a file
    assert command == report["default_command"] and command["command"].startswith("se3pyg train --task homo --amp")
    assert len(command["epochs"]) == 2 and command["throughput_mol_per_ms"] > 0
    assert command["predict_throughput_mol_per_ms"] > 0 and command["predict_molecules"] == QM9_SUBSET // 10
    assert all(row["pass"] for row in report["equivariance_b8"].values())
    assert set(report["summary"].pop("default_command")) == {"train", "predict"}
    assert all(row["pass"] for row in report["golden_reassociated"].values())
    assert set(report["operator_checks"]) == {"fused", "fused_edge_weights"}
    assert all(row["pass"] for row in report["operator_checks"].values())
    assert report["step_counts_reassociated"]["host_syncs"] == 0
    assert report["step_counts_reassociated"]["gflop"] > 0
    amp_counts = report["step_counts_amp_fp16_reassociated"]
    assert amp_counts["precision"] == "fp16" and amp_counts["host_syncs"] == 0
    assert report["train_amp_fp16_b8"]["throughput_mol_per_ms"] > 0
    assert set(report["seconds"]) == {*jobs.split(","), "train_amp_fp16_b8"}
    assert report["summary"] == {"failed_checks": []}  # no graphed job ran: nothing timed decides yet
    report = suite(tmp_path / "no-golden", "golden_reassociated")
    assert "no nvidia_*.pt golden files" in report["golden_reassociated"]["error"]


def test_gpu_suite_summary_names_the_fastest_correct_kernel_and_the_failed_checks() -> None:
    """The suite's summary: per mode, the graphed AMP fp16 rate of each kernel timed and the fastest one whose golden
    checks (fused kernels: and operator checks) passed, with the floor and goal (12 and 25 mol/ms training, 40 and
    60 inference); the checks that failed or raised."""
    suite = _gpu_suite()
    report = {
        "graphs_train_amp_fp16_b240": {"throughput_mol_per_ms": 10.3},
        "graphs_train_amp_fp16_b240_fused_edge_weights": {"throughput_mol_per_ms": 13.0},
        "graphs_train_amp_fp16_b240_fused": {"throughput_mol_per_ms": 14.0},
        "graphs_train_amp_fp16_b240_edge_weights": {"error": "Traceback ..."},
        "graphs_predict_amp_fp16_b1600": {"throughput_mol_per_ms": 41.0},
        "graphs_predict_amp_fp16_b1600_edge_weights": {"throughput_mol_per_ms": 61.0},
        "golden_reassociated": {"nvidia_a": {"pass": True}, "nvidia_b": {"pass": True}},
        "golden_fused": {"nvidia_a": {"pass": False}},
        "golden_edge_weights": {"error": "Traceback ..."},
        "golden_fused_edge_weights": {"nvidia_a": {"pass": True}},
        "operator_checks": {"fused": {"pass": True}, "fused_edge_weights": {"pass": True}},
    }
    rates = {"reassociated": 10.3, "fused_edge_weights": 13.0, "fused": 14.0}
    assert suite.summary(report, 240, 1600) == {
        "train": {"mol_per_ms": rates, "fastest": "fused_edge_weights", "floor_met": True, "goal_met": False},
        "predict": {"mol_per_ms": {"reassociated": 41.0, "edge_weights": 61.0}, "fastest": "reassociated",
                    "floor_met": True, "goal_met": False},
        "failed_checks": ["golden_fused", "golden_edge_weights"],
    }  # fmt: skip
    report["operator_checks"] = {"error": "Traceback ..."}
    assert suite.summary(report, 240, 1600)["train"]["fastest"] == "reassociated"


def _gpu_suite() -> Any:
    """``benchmarks/gpu_suite.py`` as a module."""
    spec = importlib.util.spec_from_file_location(
        "gpu_suite", Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"
    )
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    return suite


def test_gpu_suite_exports_never_write_over_their_input(qm9_dir: Path) -> None:
    suite = _gpu_suite()
    processed = next((qm9_dir / "processed").glob("*.pt"))
    before = processed.read_bytes()
    with pytest.raises(ValueError, match=rf"--export-qm9 {processed}: lies inside --data-dir {qm9_dir}"):
        suite.export_qm9(str(qm9_dir), str(processed))
    with pytest.raises(ValueError, match=rf"--export {processed}: lies inside --data-dir {qm9_dir}"):
        suite.export(str(qm9_dir), str(processed), 4)
    assert processed.read_bytes() == before
