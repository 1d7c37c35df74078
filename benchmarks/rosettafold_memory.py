"""Peak memory of RoseTTAFold-All-Atom's refiner-scale SE(3) inference on a full residue graph, on CPU.

The module as RoseTTAFold-All-Atom's ``SE3_ref_param`` builds it (2 layers, 32 channels, degrees 0..1, 64 edge
features; its wrapper's ``final_layer="lin"``, ``populate_edge="arcsin"``) on ``make_full_graph`` of one protein
of ``--length`` residues (``L (L - 1)`` edges), float32, inference (no gradient). Each length runs in a process of
its own, so its peak resident memory (``ru_maxrss``) is its own. Writes one JSON file.

    python benchmarks/rosettafold_memory.py --length 1000 --out benchmarks/results/rosettafold-memory.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from se3pyg.compat import rf2aa
from se3pyg.fiber import Fiber


def measure(length: int) -> dict:
    """One inference at ``length`` residues, in this process: edges, seconds, peak resident memory."""
    torch.manual_seed(0)
    se3 = rf2aa.SE3Transformer(
        num_layers=2, fiber_in=Fiber({0: 64, 1: 3}), fiber_hidden=Fiber.create(2, 32), fiber_out=Fiber({0: 64, 1: 2}),
        num_heads=4, channels_div=4, fiber_edge=Fiber({0: 64}), populate_edge="arcsin", final_layer="lin",
        use_layer_norm=True,
    ).eval()  # fmt: skip
    xyz = torch.randn(1, length, 3, 3) * 10
    pair = torch.randn(1, length, length, 64)
    start = time.perf_counter()
    with torch.no_grad():
        graph, edge_feats = rf2aa.make_full_graph(xyz[:, :, 1], pair, torch.arange(length)[None])
        del pair
        node = {"0": torch.randn(length, 64, 1), "1": (xyz - xyz[:, :, 1:2]).reshape(length, 3, 3)}
        out = se3(graph, node, {"0": edge_feats})
    seconds = time.perf_counter() - start
    assert all(torch.isfinite(v).all() for v in out.values())
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"length": length, "edges": graph.edge_index.shape[1], "seconds": round(seconds, 1),
            "peak_rss_gib": round(peak_kib / 2**20, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, nargs="+", default=[1000], help="residues, one run each")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: print only)")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # a child process's length
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one)))
        return
    runs = []
    for length in args.length:
        done = subprocess.run([sys.executable, __file__, "--one", str(length)], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"length {length}: {done.stderr.strip().splitlines()[-1]}")
        runs.append(json.loads(done.stdout.splitlines()[-1]))
        print(runs[-1])
    report = {"machine": platform.node(), "cpus": torch.get_num_threads(), "torch": torch.__version__, "runs": runs}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
