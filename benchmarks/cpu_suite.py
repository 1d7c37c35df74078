"""CPU benchmark suite: se3pyg against NVIDIA's figures measured on this machine type.

Runs ``se3pyg benchmark`` (one process a run, so that peak memory is the
run's own) for the published recipe and the small configuration, training
and inference, float32 and bf16 autocast, batch 64 on random QM9 molecules,
``--repeats`` times each (median), and the DataLoader's molecules per second
per worker. NVIDIA's figures were taken with a 2048x2048 float32 matmul at
about 110 GFLOP/s on molecules with 38.7 directed bonds; each figure here is
also given scaled to that speed, and the ratio also per bond. Writes one
JSON file.

    python benchmarks/cpu_suite.py --data-dir data/qm9 --out benchmarks/results/cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch_geometric.loader import DataLoader

from se3pyg.data import get_task, qm9_splits
from se3pyg.engine.benchmark import matmul_gflops

NVIDIA_MATMUL_GFLOPS = 110.0
NVIDIA_EDGES = 38.7  # directed bonds per molecule in NVIDIA's sample
NVIDIA_MOL_PER_S = {  # REFERENCE.md: NVIDIA's DGL implementation on this machine type, batch 64
    ("published", "train"): 5.8,
    ("published", "predict"): 14.2,
    ("small", "train"): 102.0,
    ("small", "predict"): 200.0,
}
CONFIGS = {
    "published": ["--num-layers", "7", "--num-degrees", "4", "--num-channels", "32", "--num-heads", "8"],
    "small": ["--num-layers", "4", "--num-degrees", "3", "--num-channels", "16", "--num-heads", "4"],
}


def run_benchmark(data_dir: str, mode: str, config: list[str], amp: bool, steps: int, seed: int) -> dict:
    """One ``se3pyg benchmark`` run in its own process; its JSON line."""
    command = [sys.executable, "-m", "se3pyg", "benchmark", mode, "--data-dir", data_dir, "--batch-size", "64",
               "--steps", str(steps), "--seed", str(seed), "--gpus", "0", "--no-tracking", *config]  # fmt: skip
    if amp:
        command += ["--amp", "--amp-dtype", "bf16"]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def loader_throughput(data_dir: str, workers: int, batches: int = 60, batch_size: int = 64) -> float:
    """Molecules per second a DataLoader delivers (training view, shuffled) with ``workers`` workers."""
    splits = qm9_splits(data_dir, get_task("homo"))
    loader = DataLoader(splits.train, batch_size=batch_size, shuffle=True, num_workers=workers)
    it = iter(loader)
    next(it)  # workers started
    start = time.perf_counter()
    count = 0
    for _ in range(batches):
        count += next(it).num_graphs
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data/qm9")
    parser.add_argument("--out", default="benchmarks/results/cpu.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    args = parser.parse_args()

    results = []
    for name in args.configs:
        for mode in ("train", "predict"):
            for amp in (False, True):
                steps = args.steps if name == "published" else 4 * args.steps
                runs = [
                    run_benchmark(args.data_dir, mode, CONFIGS[name], amp, steps, seed=repeat)
                    for repeat in range(args.repeats)
                ]
                mol_s = [64 / (r["latency_ms_median"] / 1000) for r in runs]
                gflops = [r["matmul_gflops"] for r in runs]
                scaled = [m * NVIDIA_MATMUL_GFLOPS / g for m, g in zip(mol_s, gflops, strict=True)]
                nvidia = NVIDIA_MOL_PER_S[(name, mode)]
                edges = statistics.mean(r["edges_per_molecule"] for r in runs)
                row = {
                    "config": name,
                    "mode": mode,
                    "precision": "bf16-autocast" if amp else "fp32",
                    "mol_per_s_median_step": statistics.median(mol_s),
                    "mol_per_s_runs": mol_s,
                    "matmul_gflops_runs": gflops,
                    "mol_per_s_at_110_gflops": statistics.median(scaled),
                    "nvidia_mol_per_s_at_110_gflops": nvidia,
                    "speedup_vs_nvidia": statistics.median(scaled) / nvidia,
                    "edges_per_molecule": edges,
                    "speedup_vs_nvidia_per_bond": statistics.median(scaled) / nvidia * edges / NVIDIA_EDGES,
                    "peak_memory_mb": max(r["peak_memory_mb"] for r in runs),
                }
                results.append(row)
                print(json.dumps(row), flush=True)
    loaders = {str(w): loader_throughput(args.data_dir, w) for w in (0, 1, 2)}
    print(json.dumps({"loader_mol_per_s": loaders}), flush=True)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "matmul_gflops_end": matmul_gflops(),
        "results": results,
        "loader_mol_per_s_by_workers": loaders,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
