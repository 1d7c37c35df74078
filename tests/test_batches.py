"""FlatLoader: the batches PyG's DataLoader would give, in DistributedSampler's order, per epoch and rank."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data.distributed import DistributedSampler
from torch_geometric.data import Batch

from se3pyg.data import FlatLoader, get_task, make_loader, qm9_splits

from .conftest import QM9_SUBSET, run_se3pyg

KEYS = ("x", "pos", "edge_index", "edge_attr", "y", "idx", "batch", "ptr")


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "harmonics"])
def split(request: pytest.FixtureRequest, qm9_dir: Path):
    degree = 2 if request.param else None
    return qm9_splits(qm9_dir, get_task("gap"), limit=QM9_SUBSET, precompute_degree=degree).train


def test_batches_equal_pyg_collation_of_the_same_molecules(split) -> None:
    loader = FlatLoader(split, batch_size=32, shuffle=True, drop_last=False, seed=3)
    order = loader._positions().tolist()
    batches = list(loader)
    assert len(batches) == len(loader) == -(-len(split) // 32)
    for k, flat in enumerate(batches):
        expected = Batch.from_data_list([split[i] for i in order[32 * k : 32 * (k + 1)]])
        assert flat.num_graphs == expected.num_graphs
        for key in (*KEYS, "sh") if "sh" in expected else KEYS:
            assert flat[key].dtype == expected[key].dtype, key
            assert torch.equal(flat[key], expected[key]), key


def test_reshuffled_every_epoch_and_reproducible(split) -> None:
    loader = FlatLoader(split, batch_size=16, shuffle=True, drop_last=True)
    first = [b.y for b in loader]
    second = [b.y for b in loader]  # the next epoch, by itself
    assert len(first) == len(split) // 16
    assert not torch.equal(torch.cat(first), torch.cat(second))
    loader.set_epoch(0)
    assert torch.equal(torch.cat([b.y for b in loader]), torch.cat(first))
    unshuffled = FlatLoader(split, batch_size=16)
    assert torch.equal(torch.cat([b.y for b in unshuffled]), torch.stack([split[i].y[0] for i in range(len(split))]))


@pytest.mark.parametrize("drop_last", [True, False])
def test_ddp_shares_follow_distributed_sampler(split, drop_last: bool) -> None:
    for rank in range(3):
        loader = FlatLoader(split, 8, shuffle=True, drop_last=drop_last, rank=rank, world_size=3, seed=5)
        loader.set_epoch(2)
        sampler = DistributedSampler(split, num_replicas=3, rank=rank, shuffle=True, seed=5, drop_last=drop_last)
        sampler.set_epoch(2)
        assert loader._positions().tolist() == list(sampler)
        batches = list(loader)
        share = len(list(sampler))
        assert len(batches) == len(loader) == (share // 8 if drop_last else -(-share // 8))


def test_make_loader_serves_qm9_splits_flat_and_other_data_through_pyg(split) -> None:
    """Every loader's batches come with their edges in reverse pairs, flagged (se3pyg.data.pairs), worker processes
    included."""
    flat = make_loader(split, 8, shuffle=False)
    assert isinstance(flat, FlatLoader) and next(iter(flat)).edge_pairs is True
    with_workers = make_loader(split, 8, shuffle=False, num_workers=1)
    assert not isinstance(with_workers, FlatLoader) and next(iter(with_workers)).edge_pairs is True
    molecules = [split[0], split[1]]
    listed = make_loader(molecules, 8, shuffle=False)
    assert not isinstance(listed, FlatLoader) and next(iter(listed)).edge_pairs is True
    molecules[1].edge_attr = torch.rand_like(molecules[1].edge_attr)  # directions no longer alike: no pairs
    assert "edge_pairs" not in next(iter(make_loader(molecules, 8, shuffle=False)))


@pytest.mark.slow
def test_benchmark_data_reports_molecules_delivered(qm9_dir: Path, tmp_path: Path) -> None:
    done = run_se3pyg("benchmark", "data", "--data-dir", str(qm9_dir), "--limit", str(QM9_SUBSET), "--gpus", "0",
                      "--batch-size", "16", "--steps", "5", "--no-tracking", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["mode"] == "data" and result["steps"] == 5 and result["throughput_mol_per_ms"] > 0
    assert 5 < result["edges_per_molecule"] < 60
