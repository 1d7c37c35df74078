"""CPU suite: se3pyg and NVIDIA's DGL implementation side by side, runs alternated on this machine.

For the published recipe and the small configuration, training and inference, float32, batch 64 on random QM9
molecules: ``--repeats`` pairs of runs, NVIDIA's (``../shared/nvidia_ref/bench.py``, its partially fused layout,
its faster one on CPU) then se3pyg's (``se3pyg benchmark``, one process a run), alternated so that both sides see
the same minutes of this shared machine. Both time the model step alone (median step); the ratio is taken per
directed bond, since the molecules drawn differ. Writes one JSON file.

The ``se3pyg`` command runs under glibc's settings for reusing freed memory (:data:`se3pyg.allocator.GLIBC_TUNABLES`,
set by the command itself). They are an environment, not code, and speed NVIDIA's code up as well, so NVIDIA runs
twice in each repeat: as its users run it (``nvidia_*`` keys) and under the same settings (``nvidia_tunables_*``;
``speedup_per_bond_same_allocator`` compares the code alone).

    PYREF=$(../shared/nvidia_ref/setup.sh)
    python ../shared/nvidia_ref/export_sample.py data/qm9 nvidia_sample.pt --count 3200
    python benchmarks/cpu_suite.py --nvidia-python $PYREF --sample nvidia_sample.pt --out benchmarks/results/cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from se3pyg.allocator import GLIBC_TUNABLES
from se3pyg.engine.benchmark import matmul_gflops

NVIDIA_BENCH = Path(__file__).resolve().parents[2] / "shared" / "nvidia_ref" / "bench.py"
CONFIGS = {
    "small": ["--num-layers", "4", "--num-degrees", "3", "--num-channels", "16", "--num-heads", "4"],
    "published": ["--num-layers", "7", "--num-degrees", "4", "--num-channels", "32", "--num-heads", "8"],
}


def _last_json(command: list[str], tunables: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def nvidia(python: str, sample: str, name: str, mode: str, steps: int, seed: int, tunables: str | None = None) -> dict:
    command = [python, str(NVIDIA_BENCH), mode, "--sample", sample, "--config", name, "--layout", "partial",
               "--batch-size", "64", "--steps", str(steps), "--seed", str(seed)]  # fmt: skip
    run = _last_json(command, tunables)
    return {"mol_per_s": run["throughput_mol_per_s"], "edges_per_molecule": run["edges_per_molecule"]}


def se3pyg(data_dir: str, limit: int | None, name: str, mode: str, steps: int, seed: int) -> dict:
    command = [sys.executable, "-m", "se3pyg", "benchmark", mode, "--data-dir", data_dir,
               "--batch-size", "64", "--steps", str(steps), "--seed", str(seed), "--gpus", "0", "--no-tracking",
               *CONFIGS[name], *(["--limit", str(limit)] if limit else [])]  # fmt: skip
    run = _last_json(command)
    return {
        "mol_per_s": 64 / (run["latency_ms_median"] / 1000),
        "edges_per_molecule": run["edges_per_molecule"],
        "peak_memory_mb": run["peak_memory_mb"],
        "matmul_gflops": run["matmul_gflops"],
    }


def row(args: argparse.Namespace, name: str, mode: str) -> dict:
    steps = args.steps if name == "published" else 4 * args.steps
    pairs, same_allocator = [], []
    for repeat in range(args.repeats):  # A B A B: both sides in the same minutes
        theirs = nvidia(args.nvidia_python, args.sample, name, mode, steps, repeat)
        same_allocator.append(nvidia(args.nvidia_python, args.sample, name, mode, steps, repeat, GLIBC_TUNABLES))
        ours = se3pyg(args.data_dir, args.limit, name, mode, steps, repeat)
        pairs.append((theirs, ours))
    nv_same = statistics.median(t["mol_per_s"] for t in same_allocator)
    nv_same_edges = statistics.mean(t["edges_per_molecule"] for t in same_allocator)
    nv = statistics.median(t["mol_per_s"] for t, _ in pairs)
    us = statistics.median(o["mol_per_s"] for _, o in pairs)
    nv_edges = statistics.mean(t["edges_per_molecule"] for t, _ in pairs)
    us_edges = statistics.mean(o["edges_per_molecule"] for _, o in pairs)
    return {
        "config": name,
        "mode": mode,
        "precision": "fp32",
        "nvidia_partial_mol_per_s": nv,
        "se3pyg_mol_per_s": us,
        "nvidia_runs": [t["mol_per_s"] for t, _ in pairs],
        "se3pyg_runs": [o["mol_per_s"] for _, o in pairs],
        "nvidia_edges_per_molecule": nv_edges,
        "se3pyg_edges_per_molecule": us_edges,
        "speedup": us / nv,
        "speedup_per_bond": (us * us_edges) / (nv * nv_edges),
        "nvidia_tunables_mol_per_s": nv_same,
        "nvidia_tunables_runs": [t["mol_per_s"] for t in same_allocator],
        "speedup_per_bond_same_allocator": (us * us_edges) / (nv_same * nv_same_edges),
        "se3pyg_peak_memory_mb": max(o["peak_memory_mb"] for _, o in pairs),
        "matmul_gflops_runs": [o["matmul_gflops"] for _, o in pairs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nvidia-python", required=True, help="the python that ../shared/nvidia_ref/setup.sh prints")
    parser.add_argument("--sample", required=True, help="molecules written by nvidia_ref/export_sample.py")
    parser.add_argument("--data-dir", default="data/qm9")
    parser.add_argument("--limit", type=int, default=None, help="draw from the first N molecules (default: all)")
    parser.add_argument("--out", default="benchmarks/results/cpu.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    args = parser.parse_args()

    results = []
    for name in args.configs:
        for mode in ("train", "predict"):
            results.append(row(args, name, mode))
            print(json.dumps(results[-1]), flush=True)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "matmul_gflops_end": matmul_gflops(),
        "batch_size": 64,
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
