"""The GPU suite's first job: ``se3pyg train --task homo --amp`` as a user types it, then ``se3pyg predict``."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


#: ``se3pyg`` as the installed console script runs it (``se3pyg.cli:main``), from this checkout without installing it:
#: the package maps ``se3pyg.cli`` to ``cli/`` (pyproject.toml), which a checkout on ``sys.path`` alone does not.
SE3PYG = (
    "import importlib.util, sys\n"
    f"sys.path.insert(0, {str(ROOT)!r})\n"
    f"spec = importlib.util.spec_from_file_location('se3pyg.cli', {str(ROOT / 'cli' / '__init__.py')!r}, "
    f"submodule_search_locations=[{str(ROOT / 'cli')!r}])\n"
    "cli = importlib.util.module_from_spec(spec)\n"
    "sys.modules['se3pyg.cli'] = cli\n"
    "spec.loader.exec_module(cli)\n"
    "sys.argv[0] = 'se3pyg'\n"
    "cli.main()\n"
)


_EPOCH_LINE = re.compile(r"^epoch (\d+)  train_loss (\S+)(?:  val_mae (\S+))?  ([\d.]+) mol/s  ([\d.]+) s\b", re.M)


_PREDICT_LINE = re.compile(r"^test MAE (\S+) \S+ on (\d+) molecules \(\w+\) in ([\d.]+) s", re.M)


def _se3pyg(*args: str, timeout: float) -> str:
    """The output of ``se3pyg ARGS``; ``RuntimeError`` with the end of it when the command fails."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", SE3PYG, *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"se3pyg {' '.join(args)}: exit {done.returncode}: {(done.stdout + done.stderr)[-1500:]}")
    return done.stdout + done.stderr


def default_command(archive: Path, scratch: Path, smoke: bool) -> dict:
    """``se3pyg train --task homo --amp`` as a user types it (published recipe; CUDA graphs by default on a GPU) for
    two epochs on the carried QM9 build (``archive``, from ``--export-qm9``), tracking off, then ``se3pyg predict
    --amp --batch-size 1600`` on its test split. Throughputs: each epoch's training (data and step; validation
    timed apart), and the prediction pass over the split (loading data and model excluded); the first epoch
    includes the graphs' captures."""
    import tarfile

    with tarfile.open(archive) as tar:
        tar.extractall(scratch / "qm9", filter="data")
    count = json.loads((scratch / "qm9" / "se3pyg-qm9.json").read_text())["count"]
    size = ["--num-layers", "1", "--num-degrees", "2", "--num-channels", "8", "--num-heads", "2", "--batch-size",
            "16", "--gpus", "0"] if smoke else []  # fmt: skip
    ckpt = scratch / "homo.pt"
    train = ["train", "--task", "homo", "--amp", "--no-tracking", "--data-dir", str(scratch / "qm9"), "--limit",
             str(count), "--epochs", "2", "--eval-interval", "1", "--save-ckpt-path", str(ckpt), *size]  # fmt: skip
    trained = _se3pyg(*train, timeout=420)
    epochs = [
        {"epoch": int(e), "train_loss": float(loss), "val_mae": float(val) if val else None,
         "throughput_mol_per_ms": float(rate) / 1000, "epoch_time_s": float(seconds)}
        for e, loss, val, rate, seconds in _EPOCH_LINE.findall(trained)
    ]  # fmt: skip
    predict = ["predict", "--amp", "--batch-size", "32" if smoke else "1600", "--ckpt", str(ckpt), "--no-tracking",
               *(["--gpus", "0"] if smoke else [])]  # fmt: skip
    predicted = _se3pyg(*predict, timeout=300)
    mae, molecules, seconds = _PREDICT_LINE.search(predicted).groups()
    return {
        "device": "cpu (smoke run)" if smoke else torch.cuda.get_device_name(),
        "command": "se3pyg " + " ".join(train),
        "predict_command": "se3pyg " + " ".join(predict),
        "molecules": count,
        "epochs": epochs,
        "throughput_mol_per_ms": epochs[-1]["throughput_mol_per_ms"],  # the second epoch: graphs captured
        "test_mae_ev": float(mae),
        "predict_molecules": int(molecules),
        "predict_throughput_mol_per_ms": int(molecules) / float(seconds) / 1000,
        "cuda_graphs_note": next((line for line in trained.splitlines() if line.startswith("CUDA graphs")), None),
    }
