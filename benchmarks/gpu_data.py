"""Molecules and QM9 builds carried to a GPU machine: ``--export`` and ``--export-qm9``."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch_geometric.data import Batch, Data

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from se3pyg.data.pairs import pair_edges  # noqa: E402
from se3pyg.io import atomic_write, refuse_overwrites  # noqa: E402

KEYS = ("x", "pos", "edge_index", "edge_attr")


def export(data_dir: str, path: str, count: int, limit: int | None = None, seed: int = 0) -> None:
    """``count`` random QM9 molecules (training view, standardized homo; of the first ``limit``) as a list of
    tensor dicts."""
    from se3pyg.data import get_task, qm9_splits

    refuse_overwrites([("--data-dir", data_dir)], [("--export", path)])
    splits = qm9_splits(data_dir, get_task("homo"), limit)
    order = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(seed))[:count]
    # clone: a molecule's tensors are views of the whole collated dataset, which torch.save would write each time
    mols = [{k: getattr(splits.train[int(i)], k).clone() for k in (*KEYS, "y")} for i in order]
    with atomic_write(path) as tmp:
        torch.save(mols, tmp)


def export_qm9(data_dir: str, path: str) -> None:
    """The QM9 build in ``data_dir`` (its manifest and processed file: the raw files are not read once processed)
    as a gzipped tar, for :func:`default_command` on a machine without qm9pack or RDKit."""
    import tarfile

    from se3pyg.data.qm9 import MANIFEST, verify

    refuse_overwrites([("--data-dir", data_dir)], [("--export-qm9", path)])  # never its own input
    manifest = verify(data_dir)
    with atomic_write(path) as tmp, tarfile.open(tmp, "w:gz") as tar:
        tar.add(Path(data_dir, MANIFEST), arcname=MANIFEST)
        processed = Path("processed", manifest["processed_file"])
        tar.add(Path(data_dir, processed), arcname=str(processed))


def first_batch(mols: list[dict], batch_size: int, device: torch.device) -> Batch:
    """The sample's first ``batch_size`` molecules as one batch on ``device``, edges in reverse pairs as in training."""
    return pair_edges(Batch.from_data_list([Data(**m) for m in mols[:batch_size]])).to(device)
