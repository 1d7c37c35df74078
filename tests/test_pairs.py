"""Edges in reverse pairs: the same function as any edge order, flagged only where the order was checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch_geometric.data import Batch, InMemoryDataset

from se3pyg.compat.nvidia import load_nvidia
from se3pyg.data import FlatLoader, get_task, load_qm9, qm9_splits
from se3pyg.data.padding import pad_batch
from se3pyg.data.pairs import in_reverse_pairs, pair_dataset_edges, pair_edges
from se3pyg.data.qm9 import OfflineQM9
from se3pyg.engine.counting import count_ops
from se3pyg.model import SE3TransformerPooled
from se3pyg.nn import KERNELS, ConvSE3, auto_kernel
from se3pyg.nn.conv import KernelGroup

from .conftest import QM9_SUBSET, chain_molecule, golden_batch, relative_error

TOL = 1e-4
COMPUTING = [k for k in KERNELS if k != "auto"]


def _edges(batch: Batch) -> list[tuple]:
    """Each edge as ``(src, dst, features)``, sorted: the graph whatever the edge order."""
    rows = zip(batch.edge_index.T.tolist(), batch.edge_attr.tolist(), strict=True)
    return sorted((s, d, tuple(a)) for (s, d), a in rows)


def _use(model: torch.nn.Module, kernel: str) -> None:
    for module in model.modules():
        if isinstance(module, ConvSE3):
            module.kernel = kernel


def test_pair_edges_reorders_a_symmetric_graph_and_flags_it(golden: dict) -> None:
    batch = golden_batch(golden)
    paired = pair_edges(batch)
    assert paired.edge_pairs is True and "edge_pairs" not in batch
    assert in_reverse_pairs(paired.edge_index, paired.edge_attr)
    assert _edges(paired) == _edges(batch)
    assert torch.equal(paired.x, batch.x) and torch.equal(paired.pos, batch.pos)


@pytest.mark.parametrize("flaw", ["features differ", "no reverse", "self-loop", "repeated edge"])
def test_graphs_that_cannot_pair_are_left_alone(flaw: str) -> None:
    molecule = chain_molecule(5)
    half = molecule.edge_index.shape[1] // 2
    molecule.edge_attr[half:] = molecule.edge_attr[:half]  # each bond's two directions alike
    assert pair_edges(molecule).edge_pairs is True
    if flaw == "features differ":
        molecule.edge_attr[0, 0] += 1
    elif flaw == "no reverse":
        molecule.edge_index[1, 0] = 4
    elif flaw == "self-loop":
        molecule.edge_index[:, 0] = 2
        molecule.edge_index[:, half] = 2
    else:
        index = molecule.edge_index
        index[:, 1], index[:, half + 1] = index[:, 0].clone(), index[:, half].clone()
    assert pair_edges(molecule) is molecule and "edge_pairs" not in molecule


@pytest.mark.parametrize("chunk_floats", [1 << 12, 1 << 30])
@pytest.mark.parametrize("kernel", COMPUTING)
def test_paired_edges_match_nvidia(
    golden: dict, kernel: str, chunk_floats: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every kernel, many CPU chunks of pairs or one, and the autograd path give NVIDIA's outputs."""
    monkeypatch.setattr(KernelGroup, "CPU_CHUNK_FLOATS", chunk_floats)
    cfg = golden["nvidia_config"]
    model = load_nvidia(golden["state_dict"], num_heads=cfg["num_heads"], channels_div=cfg["channels_div"])
    _use(model, kernel)
    batch = pair_edges(golden_batch(golden))
    assert batch.edge_pairs is True
    with torch.no_grad():
        assert relative_error(model(batch), golden["expected_prediction"]) <= TOL
    assert relative_error(model(batch).detach(), golden["expected_prediction"]) <= TOL


@pytest.mark.parametrize("layout", ["full", "partial", "pairwise"])
@pytest.mark.parametrize("kernel", COMPUTING)
def test_pairs_give_the_same_outputs_and_gradients(golden: dict, layout: str, kernel: str) -> None:
    """In float64, the paired path and the general one (same graph, PyG's edge order) agree to rounding."""
    results = []
    for batch in (golden_batch(golden), pair_edges(golden_batch(golden))):
        torch.manual_seed(0)
        model = SE3TransformerPooled(num_layers=2, num_degrees=3, num_channels=8, num_heads=2, layout=layout)
        model = model.double()
        _use(model, kernel)
        for key in ("x", "pos", "edge_attr"):
            batch[key] = batch[key].double()
        out = model(batch)
        out.square().sum().backward()
        results.append((out.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    (out, grad), (paired_out, paired_grad) = results
    assert relative_error(paired_out, out) <= 1e-12
    assert ((paired_grad - grad).abs().max() / grad.abs().max()).item() <= 1e-12


def test_paired_gpu_kernel_reads_no_device_value_on_the_host(golden: dict) -> None:
    batch = pair_edges(golden_batch(golden))
    model = SE3TransformerPooled(num_layers=2, num_degrees=3, num_channels=8, num_heads=2, kernel=auto_kernel("cuda"))
    counts = count_ops(lambda: model(batch).sum().backward())
    assert counts.host_syncs == 0, counts.syncs_by_op


def test_qm9_loads_in_reverse_pairs_and_its_batches_say_so(qm9_dir: Path) -> None:
    dataset = load_qm9(qm9_dir, limit=QM9_SUBSET)
    as_processed = OfflineQM9(str(qm9_dir))  # PyG's order: sorted by source, then destination
    for k in range(len(dataset)):
        molecule = dataset[k]
        assert in_reverse_pairs(molecule.edge_index, molecule.edge_attr), k
        assert _edges(molecule) == _edges(as_processed[k]), k
    split = qm9_splits(qm9_dir, get_task("homo"), limit=QM9_SUBSET).train
    batch = next(iter(FlatLoader(split, batch_size=16)))
    assert batch.edge_pairs is True and in_reverse_pairs(batch.edge_index, batch.edge_attr)


def test_a_dataset_with_an_unpairable_molecule_is_left_alone() -> None:
    good, bad = chain_molecule(4, seed=1), chain_molecule(5, seed=2)
    for molecule in (good, bad):
        half = molecule.edge_index.shape[1] // 2
        molecule.edge_attr[half:] = molecule.edge_attr[:half]
    bad.edge_attr[0, 1] += 1
    dataset = InMemoryDataset()
    dataset.data, dataset.slices = InMemoryDataset.collate([good, bad])
    before = dataset._data.edge_index.clone()
    assert not pair_dataset_edges(dataset)
    assert torch.equal(dataset._data.edge_index, before)
    dataset.data, dataset.slices = InMemoryDataset.collate([good, good])
    assert pair_dataset_edges(dataset)
    assert all(in_reverse_pairs(dataset[k].edge_index, dataset[k].edge_attr) for k in range(2))


def test_padding_keeps_pairs_and_the_first_outputs(golden: dict) -> None:
    batch = pair_edges(golden_batch(golden))
    padded = pad_batch(batch, batch.num_nodes + 5, batch.edge_index.shape[1] + 12)
    assert padded.edge_pairs is True and in_reverse_pairs(padded.edge_index, padded.edge_attr)
    torch.manual_seed(0)
    model = SE3TransformerPooled(num_layers=2, num_degrees=3, num_channels=8, num_heads=2).eval()
    with torch.no_grad():
        assert torch.allclose(model(padded)[: batch.num_graphs], model(batch), atol=1e-6)


def test_pairs_form_half_the_radial_weights(golden: dict) -> None:
    """The flag is what the model reads: a paired batch writes about half the radial weights of the same graph."""
    written = {}
    for name, batch in (("plain", golden_batch(golden)), ("paired", pair_edges(golden_batch(golden)))):
        torch.manual_seed(0)
        model = SE3TransformerPooled(num_layers=2, num_degrees=3, num_channels=8, num_heads=2, kernel="edge_weights")
        step = lambda model=model, batch=batch: model(batch).sum().backward()  # noqa: E731
        written[name] = count_ops(step).bytes_by_op["mm"]  # the radial weights: [E or E / 2, F C_in C_out]
    assert written["paired"] < 0.7 * written["plain"], written


def test_pairs_with_recomputed_kernels_give_the_same_gradients(golden: dict) -> None:
    """``low_memory`` (kernels recomputed in the backward pass) takes the flag along."""
    grads = []
    for batch in (golden_batch(golden), pair_edges(golden_batch(golden))):
        torch.manual_seed(0)
        model = SE3TransformerPooled(num_layers=2, num_degrees=3, num_channels=8, num_heads=2, low_memory=True)
        model(batch).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert ((grads[1] - grads[0]).abs().max() / grads[0].abs().max()).item() <= 1e-5
