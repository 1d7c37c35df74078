"""Host syncs, kernel launches, bytes written and FLOPs of one forward + backward, counted on this CPU.

    python benchmarks/step_counts.py --data-dir data/qm9 --batch-size 240 [--kernel cuda]

The published recipe on a random QM9 training batch; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch_geometric.data import Batch

from se3pyg import SE3TransformerPooled
from se3pyg.data import get_task, qm9_splits
from se3pyg.data.pairs import pair_edges
from se3pyg.engine.counting import count_training_step
from se3pyg.engine.precision import DTYPES
from se3pyg.nn.conv import KERNELS, auto_kernel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data/qm9")
    parser.add_argument("--limit", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=240)
    parser.add_argument(
        "--kernel",
        default=None,
        choices=[*KERNELS, "cpu", "cuda"],
        help="a kernel of se3pyg.nn.conv.KERNELS, or a device type: the kernel auto_kernel picks there",
    )
    parser.add_argument("--autocast", choices=list(DTYPES), help="forward under autocast, as --amp runs it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--any-edge-order", action="store_true", help="the general path: edges not in reverse pairs")
    args = parser.parse_args()

    train = qm9_splits(args.data_dir, get_task("homo"), args.limit).train
    generator = torch.Generator().manual_seed(args.seed)
    picks = torch.randperm(len(train), generator=generator)[: args.batch_size].tolist()
    batch = Batch.from_data_list([train[i] for i in picks])
    if not args.any_edge_order:
        batch = pair_edges(batch)  # as the training loaders give it (se3pyg.data.pairs)
    torch.manual_seed(args.seed)
    kernel = auto_kernel(args.kernel) if args.kernel in ("cpu", "cuda") else args.kernel
    options = {} if kernel is None else {"kernel": kernel}
    model = SE3TransformerPooled(**options)
    counts = count_training_step(model, batch, DTYPES.get(args.autocast))
    edges = batch.edge_index.shape[1]
    precision = args.autocast or "fp32"
    print(f"{batch.num_graphs} molecules, {edges} directed bonds, kernel {kernel or 'default'}, {precision}")
    print(f"host syncs {counts.host_syncs} {dict(counts.syncs_by_op)}")
    print(f"operator calls (launches) {counts.launches}: {counts.by_op.most_common(12)}")
    print(f"launches by module (forward) and in backward: {counts.by_module.most_common(12)}")
    print(f"bytes written {counts.bytes_written / 1e9:.2f} GB, {counts.bytes_written / edges / 1e6:.2f} MB per bond")
    print("GB written by operator:", [(k, round(v / 1e9, 2)) for k, v in counts.bytes_by_op.most_common(10)])
    print(f"{counts.flops / 1e12:.2f} TFLOP ({counts.flops / counts.bytes_written:.0f} a byte written):",
          [(k, round(v / 1e12, 3)) for k, v in counts.flops_by_op.most_common(6)])  # fmt: skip
    result = {
        "batch_size": batch.num_graphs,
        "directed_bonds": edges,
        "kernel": kernel,
        "edge_pairs": getattr(batch, "edge_pairs", None) is True,
        "precision": precision,
        "host_syncs": counts.host_syncs,
        "launches": counts.launches,
        "bytes_written": counts.bytes_written,
        "mb_written_per_bond": counts.bytes_written / edges / 1e6,
        "flops": counts.flops,
        "launches_by_module": dict(counts.by_module),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
