"""GPU checks and benchmarks in one go, for a lent GPU machine; writes JSON to $OUT (or --out).

Needs only torch, torch_geometric and e3nn on the GPU machine (no mlflow,
rdkit or qm9pack): molecules come from a file exported beforehand on a
machine with the QM9 build (``--export``), the golden files from
``tests/golden`` or ``--golden`` (DEVELOPERS.md: how a lent GPU runs it).

    python benchmarks/gpu_suite.py --export gpu_carry/qm9_sample.pt --data-dir data/qm9        # here
    python benchmarks/gpu_suite.py --export-qm9 gpu_carry/qm9.tar.gz --data-dir data/qm9       # here
    python benchmarks/gpu_suite.py --molecules gpu_carry/qm9_sample.pt   # on the GPU
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.default_command import default_command  # noqa: E402
from benchmarks.gpu_checks import equivariance, golden_checks, graphs_check, operator_checks  # noqa: E402
from benchmarks.gpu_data import export, export_qm9  # noqa: E402
from benchmarks.tile_sweeps import EDGE_WEIGHTS_TILE_CANDIDATES, TILE_CANDIDATES, edge_weights_tiles, fused_tiles  # noqa: E402
from benchmarks.timing import device_busy, step_breakdown, step_counts, throughput  # noqa: E402
from se3pyg.nn.conv import KERNELS, auto_kernel  # noqa: E402

#: The issue's figures for one H100/H200, mol/ms: AMP training at batch 240, inference at batch 1600.
FLOORS = {"train": 12.0, "predict": 40.0}
GOALS = {"train": 25.0, "predict": 60.0}


def summary(report: dict, small: int, big: int) -> dict:
    """What the suite's timings decide so far: per mode, graphed AMP fp16 mol/ms of each kernel timed, the fastest
    kernel whose golden checks (and, for the fused ones, operator checks) did not fail (the candidate for
    ``auto_kernel("cuda")``), and whether it reaches the floor and the goal; the checks that failed, by job."""
    checks = [name for name in report if name.startswith(("golden_", "equivariance_")) or name == "operator_checks"]
    failed = [
        name for name in checks if "error" in report[name] or not all(row["pass"] for row in report[name].values())
    ]

    def correct(kernel: str) -> bool:
        if f"golden_{kernel}" in failed:
            return False
        if kernel in ("fused", "fused_edge_weights") and "operator_checks" in report:
            return report["operator_checks"].get(kernel, {}).get("pass", False)  # no row: the job raised
        return True

    decided: dict[str, Any] = {}
    default = auto_kernel("cuda")  # what the jobs without a kernel in their name run
    for mode, batch in (("train", small), ("predict", big)):
        prefix = f"graphs_{mode}_amp_fp16_b{batch}"
        rates = {}
        for kernel in (k for k in KERNELS if k != "auto"):
            job = report.get(f"{prefix}_{kernel}") or (report.get(prefix, {}) if kernel == default else {})
            if "throughput_mol_per_ms" in job:
                rates[kernel] = round(job["throughput_mol_per_ms"], 2)
        candidates = [kernel for kernel in rates if correct(kernel)]
        if candidates:
            fastest = max(candidates, key=rates.get)
            best = rates[fastest]
            decided[mode] = {"mol_per_ms": rates, "fastest": fastest,
                             "floor_met": best >= FLOORS[mode], "goal_met": best >= GOALS[mode]}  # fmt: skip
    command = report.get("default_command", {})
    if "throughput_mol_per_ms" in command:  # the figures of the command users type, against the same floors
        rates = {"train": command["throughput_mol_per_ms"], "predict": command["predict_throughput_mol_per_ms"]}
        decided["default_command"] = {
            mode: {"mol_per_ms": round(rate, 2), "floor_met": rate >= FLOORS[mode], "goal_met": rate >= GOALS[mode]}
            for mode, rate in rates.items()
        }
    decided["failed_checks"] = failed
    return decided


#: The kernels timed and checked, the default (``auto``) first; the golden and count jobs name the default.
KERNELS_TIMED = ("auto", "edge_weights", "fused", "fused_edge_weights")
KERNELS_NAMED = ("reassociated", "fused", "edge_weights", "fused_edge_weights")

Job = tuple[str, Callable[[], dict]]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", help="write a molecule sample to this file and stop")
    parser.add_argument("--export-qm9", help="write the QM9 build of --data-dir to this .tar.gz and stop")
    parser.add_argument("--qm9", default=str(ROOT / "gpu_carry" / "qm9.tar.gz"), help="the default command's QM9")
    parser.add_argument("--data-dir", default="data/qm9")
    parser.add_argument("--count", type=int, default=3200)
    parser.add_argument("--limit", type=int, default=None, help="with --export: draw from the first N molecules")
    parser.add_argument("--molecules", default=str(ROOT / "benchmarks" / "qm9_sample.pt"))
    parser.add_argument("--golden", default=str(ROOT / "tests" / "golden"), help="folder of golden files")
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu_results.json"))
    parser.add_argument("--smoke", action="store_true", help="a short run on this machine's CPU, to check the suite")
    parser.add_argument("--only", default="", help="comma-separated job names: run only those jobs")
    return parser


def _timed(
    mols: list[dict],
    mode: str,
    batch: int,
    amp: str | None,
    kernels: Sequence[str],
    graphs: bool,
    steps: int,
    gpus: int,
) -> list[Job]:
    """Throughput jobs of ``mode`` per kernel, named ``[graphs_]MODE_{amp_DTYPE|tf32}_bBATCH[_KERNEL]``."""
    precision = f"amp_{amp}" if amp else "tf32"
    prefix = f"{'graphs_' if graphs else ''}{mode}_{precision}_b{batch}"
    timed = functools.partial(throughput, mols, mode, batch, amp)
    return [
        (prefix + ("" if k == "auto" else f"_{k}"), functools.partial(timed, k, steps, gpus, graphs)) for k in kernels
    ]


def _jobs(args: argparse.Namespace, mols: list[dict], device: torch.device, scratch: Path) -> list[Job]:
    """The suite's jobs, in order: what decides ``auto_kernel("cuda")`` and the floors first (a machine's time may
    run out mid-suite), then the counts, the tile sweeps and the other precisions."""
    gpus, steps, big, small = _sizes(args.smoke)
    golden, tiles = Path(args.golden), None if not args.smoke else 1  # on CPU's interpreter one tile: seconds a call
    jobs: list[Job] = [("default_command", lambda: default_command(Path(args.qm9), scratch, args.smoke))]
    jobs += [(f"golden_{k}", functools.partial(golden_checks, golden, device, k)) for k in KERNELS_NAMED]
    jobs += [("operator_checks", lambda: operator_checks(device))]
    jobs += [(f"equivariance_b{small}", lambda: equivariance(mols, device, small))]
    jobs += _timed(mols, "train", small, "fp16", KERNELS_TIMED, False, steps, gpus)
    jobs += _timed(mols, "train", small, "fp16", KERNELS_TIMED, True, steps, gpus)
    jobs += _timed(mols, "predict", big, "fp16", KERNELS_TIMED, True, steps, gpus)
    jobs += [(f"graphs_check_b{small}", lambda: graphs_check(mols, device, small))]
    jobs += [(f"step_counts_{k}", functools.partial(step_counts, mols, device, small, k)) for k in KERNELS_NAMED]
    jobs += [("step_counts_amp_fp16_reassociated", lambda: step_counts(mols, device, small, "reassociated", "fp16"))]
    jobs += _timed(mols, "predict", big, "fp16", ["auto"], False, steps, gpus)
    jobs += [(f"device_busy_amp_fp16_b{small}", lambda: device_busy(mols, device, small, "fp16", steps))]
    jobs += [(f"step_breakdown_amp_fp16_b{small}", lambda: step_breakdown(mols, device, small, steps))]
    jobs += [(f"fused_tiles_b{small}", lambda: fused_tiles(mols, device, small, steps, TILE_CANDIDATES[:tiles]))]
    sweep = EDGE_WEIGHTS_TILE_CANDIDATES[:tiles]
    jobs += [(f"fused_edge_weights_tiles_b{small}", lambda: edge_weights_tiles(mols, device, small, steps, sweep))]
    for graphs in (False, True):
        jobs += _timed(mols, "train", small, "bf16", ["auto"], graphs, steps, gpus)
        jobs += _timed(mols, "train", small, None, ["auto"], graphs, steps, gpus)
        jobs += _timed(mols, "predict", big, None, ["auto"], graphs, steps, gpus)
    return jobs


def _sizes(smoke: bool) -> tuple[int, int, int, int]:
    """``(gpus, steps, big batch, small batch)``: the published sizes, or a smoke run's on the CPU."""
    return (0, 2, 32, 8) if smoke else (1, 20, 1600, 240)


def _run(jobs: list[Job], report: dict, out: Path, small: int, big: int) -> None:
    """Each job in turn, its result (or its error: one failing measurement must not lose the others) written to
    ``out`` after it, with the time it took and the summary so far."""
    for name, job in jobs:
        start = time.perf_counter()
        try:
            report[name] = job()
        except Exception:
            report[name] = {"error": traceback.format_exc(limit=3)}
        report["seconds"][name] = round(time.perf_counter() - start, 1)  # what fits in the next machine's minutes
        report["summary"] = summary(report, small, big)
        out.write_text(json.dumps(report, indent=2))
        if name == "default_command" and "error" not in report[name]:  # its own file, as the results keep it
            out.with_name("default-command.json").write_text(json.dumps(report[name], indent=2))
        print(name, json.dumps(report[name]), flush=True)


def main() -> None:
    args = _parser().parse_args()
    if args.export:
        export(args.data_dir, args.export, args.count, args.limit)
        return
    if args.export_qm9:
        export_qm9(args.data_dir, args.export_qm9)
        return
    device = torch.device("cpu" if args.smoke else "cuda")
    _, _, big, small = _sizes(args.smoke)
    name = "cpu (smoke run)" if args.smoke else torch.cuda.get_device_name()
    report: dict = {"device": name, "torch": torch.__version__, "seconds": {}}
    mols = torch.load(args.molecules, weights_only=True)
    scratch = Path(tempfile.mkdtemp(prefix="se3pyg-gpu-suite-"))
    jobs = _jobs(args, mols, device, scratch)
    if args.only:
        jobs = [(name, job) for name, job in jobs if name in args.only.split(",")]
    try:
        _run(jobs, report, Path(args.out), small, big)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("summary", json.dumps(summary(report, small, big)), flush=True)


if __name__ == "__main__":
    main()
