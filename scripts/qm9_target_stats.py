"""The mean and standard deviation of each QM9 target over NVIDIA's training split, as a Markdown table: what
``se3pyg predict --target-mean/--target-std`` needs for an NVIDIA checkpoint (docs/nvidia-checkpoints.md).

    python scripts/qm9_target_stats.py --data-dir data/qm9     # a build of all of QM9 (se3pyg data prepare)
"""

from __future__ import annotations

import argparse

from se3pyg.data import NUM_MOLECULES, TASKS, qm9_splits
from se3pyg.data.qm9 import read_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data/qm9", help="a build of all of QM9")
    args = parser.parse_args()
    manifest = read_manifest(args.data_dir)
    if manifest is None or manifest["count"] < NUM_MOLECULES:
        raise SystemExit(f"error: --data-dir {args.data_dir}: not a build of all {NUM_MOLECULES:,} QM9 molecules")
    print("| task | unit | `--target-mean` | `--target-std` |\n| --- | --- | --- | --- |")
    for name, task in TASKS.items():
        stats = qm9_splits(args.data_dir, task).stats
        print(f"| `{name}` | {task.unit} | {stats.mean:.7g} | {stats.std:.7g} |")


if __name__ == "__main__":
    main()
