"""The DGL-free drop-in for RFdiffusion's vendored SE(3)-Transformer: strict loading, its outputs, equivariance."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch_geometric.data import Data

from se3pyg.compat import nvidia, rfdiffusion
from se3pyg.compat.nvidia import Fiber, SE3TransformerPooled

from .conftest import relative_error, wigner_D

TOL = 1e-5
RFDIFFUSION = Path(__file__).parent / "golden" / "rfdiffusion.pt"


@pytest.fixture(scope="module")
def golden() -> dict:
    """RFdiffusion's "full" module on its full graph of two 40-residue proteins (``tests/golden/record_family.py``)."""
    record = torch.load(RFDIFFUSION, weights_only=True)
    case, inputs = record["configs"]["full"], record["inputs"]
    graph, edge_feats = rfdiffusion.make_full_graph(inputs["xyz"][:, :, 1], inputs["pair"][..., :32], inputs["idx"])
    l0 = inputs["l0"][:, :8, None]
    return dict(
        config=case["se3_kwargs"],
        state_dict=case["state_dict"],
        edge_index=graph.edge_index,
        rel_pos=graph.rel_pos,
        num_nodes=graph.num_nodes,
        node_feats={"0": l0, "1": (inputs["xyz"] - inputs["xyz"][:, :, 1:2]).reshape(-1, 3, 3)},
        edge_feats={"0": edge_feats},
        expected=case["graphs"]["full"]["expected"],
    )


def _model(config: dict, module: ModuleType = rfdiffusion) -> nvidia.SE3Transformer:
    """Built with the arguments RFdiffusion's SE3TransformerWrapper passes."""
    return module.SE3Transformer(**config)


@pytest.mark.parametrize("form", ["data", "tuple"])
def test_outputs_of_rfdiffusions_module(golden: dict, form: str) -> None:
    model = _model(golden["config"]).eval()
    model.load_state_dict(golden["state_dict"], strict=True)
    graph = (golden["edge_index"], golden["rel_pos"], golden["num_nodes"])
    if form == "data":
        graph = Data(edge_index=graph[0], rel_pos=graph[1], num_nodes=graph[2])
    with torch.no_grad():
        out = model(graph, golden["node_feats"], golden["edge_feats"])
    assert set(out) == set(golden["expected"])
    for degree, expected in golden["expected"].items():
        assert out[degree].shape == expected.shape
        assert relative_error(out[degree], expected) <= TOL, degree


def _rotate(feats: dict, R: torch.Tensor) -> dict:
    return {k: torch.einsum("ij,ncj->nci", wigner_D(int(k), R).float(), v) for k, v in feats.items()}


def _self_loops(golden: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = golden["num_nodes"]
    loops = torch.arange(n).repeat(2, 1)
    edge_index = torch.cat([golden["edge_index"], loops], 1)
    rel_pos = torch.cat([golden["rel_pos"], torch.zeros(n, 3)])
    edge_feats = torch.cat([golden["edge_feats"]["0"], torch.randn(n, *golden["edge_feats"]["0"].shape[1:])])
    return edge_index, rel_pos, edge_feats


@pytest.mark.parametrize("self_loops", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_rotation_equivariance(golden: dict, self_loops: bool, num_layers: int) -> None:
    torch.manual_seed(0)
    model = _model({**golden["config"], "num_layers": num_layers}).eval()
    if num_layers == 1:
        model.load_state_dict(golden["state_dict"], strict=True)
    edge_index, rel_pos, edge_feats = (golden["edge_index"], golden["rel_pos"], golden["edge_feats"]["0"])
    if self_loops:
        edge_index, rel_pos, edge_feats = _self_loops(golden)
    R = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(3)))[0]
    R = R * torch.sign(torch.det(R))  # a rotation
    n = golden["num_nodes"]
    with torch.no_grad():
        out = model((edge_index, rel_pos, n), golden["node_feats"], {"0": edge_feats})
        rotated = model((edge_index, rel_pos @ R.T, n), _rotate(golden["node_feats"], R), {"0": edge_feats})
    assert all(torch.isfinite(v).all() for v in out.values())
    assert relative_error(rotated["0"], out["0"]) <= TOL
    assert relative_error(rotated["1"], _rotate({"1": out["1"]}, R)["1"]) <= TOL


def test_nvidia_flags_choose_the_layout_and_foreign_inputs_are_refused(golden: dict) -> None:
    config = golden["config"]
    assert _model(config).graph_modules[0].to_key_value.fuse == "in"  # conv_in, as RFdiffusion's copy
    assert _model({**config, "low_memory": True}, nvidia).layout == "pairwise"
    assert _model({**config, "tensor_cores": True}, nvidia).layout == "full"
    assert _model({**config, "low_memory": True}).layout == "partial"  # RFdiffusion's 2021 rule
    assert _model({**config, "tensor_cores": True}).layout == "full"
    model = _model(config)
    graph = (golden["edge_index"], golden["rel_pos"], golden["num_nodes"])
    with pytest.raises(ValueError, match="basis dicts are not used"):
        model(graph, golden["node_feats"], golden["edge_feats"], basis={"0,0": torch.zeros(1)})


def test_pooled_model_takes_nvidias_arguments_and_call() -> None:
    torch.manual_seed(0)
    model = SE3TransformerPooled(
        fiber_in=Fiber({0: 6}), fiber_out=Fiber({0: 32}), fiber_edge=Fiber({0: 4}), num_degrees=2, num_channels=16,
        output_dim=1, num_layers=1, num_heads=4, channels_div=2, pooling=None, norm=True, use_layer_norm=True,
        tensor_cores=False, low_memory=False, amp=True, seed=0,  # argparse leftovers are ignored, as NVIDIA's
    )  # fmt: skip
    assert model.config["layout"] == "partial" and model.config["pooling"] == "max"
    edge_index = torch.tensor([[0, 1, 1, 2, 3, 4], [1, 0, 2, 1, 4, 3]])
    graph = Data(edge_index=edge_index, rel_pos=torch.randn(6, 3), num_nodes=5, batch=torch.tensor([0, 0, 0, 1, 1]))
    graph.num_graphs = 2
    out = model(graph, {"0": torch.randn(5, 6, 1)}, {"0": torch.randn(6, 4, 1)})
    assert out.shape == (2,) and torch.isfinite(out).all()


def _reference_graph(xyz, pair, b, i, j):
    L = xyz.shape[1]
    edge_index = torch.stack([b * L + i, b * L + j])
    rel_pos = (xyz[b, j] - xyz[b, i]).detach()
    return Data(edge_index=edge_index, rel_pos=rel_pos, num_nodes=xyz.shape[0] * L), pair[b, i, j][..., None]


def _reference_full(xyz, pair, idx, top_k=64, kmin=9):
    b, i, j = torch.where((idx[:, None, :] - idx[:, :, None]).abs() > 0)
    return _reference_graph(xyz, pair, b, i, j)


def _reference_topk(xyz, pair, idx, top_k=64, kmin=32, eps=1e-6):
    B, L = xyz.shape[:2]
    eye = torch.eye(L, device=xyz.device)[None] * 999.9
    sep = (idx[:, None, :] - idx[:, :, None]).abs() + eye
    D = torch.cdist(xyz, xyz) + eye + sep * eps
    nearest = torch.zeros(B, L, L, device=xyz.device).scatter_(2, D.topk(min(top_k, L), largest=False).indices, 1.0)
    b, i, j = torch.where((nearest > 0) | (sep < kmin))
    return _reference_graph(xyz, pair, b, i, j)


@pytest.mark.parametrize(("length", "top_k", "kmin"), [(16, 64, 32), (80, 64, 32), (80, 8, 4), (40, 64, 9)])
def test_graph_builders_match_the_readme_recipe(length: int, top_k: int, kmin: int) -> None:
    """se3pyg.compat.rfdiffusion against the functions the README had users copy (the reference above), on
    proteins with a chain break: the same edges in the same order, positions, features and node count; the
    positions carry no gradient."""
    from se3pyg.compat.rfdiffusion import make_full_graph, make_topk_graph

    gen = torch.Generator().manual_seed(length)
    xyz = (torch.randn(2, length, 3, generator=gen) * 8).requires_grad_()
    pair = torch.randn(2, length, length, 5, generator=gen)
    idx = torch.arange(length).repeat(2, 1)
    idx[1, length // 2 :] += 200  # a second chain
    for ours, theirs in ((make_full_graph, _reference_full), (make_topk_graph, _reference_topk)):
        (graph, feats), (expected, expected_feats) = (
            ours(xyz, pair, idx, top_k, kmin),
            theirs(xyz, pair, idx, top_k, kmin),
        )
        assert torch.equal(graph.edge_index, expected.edge_index) and graph.num_nodes == expected.num_nodes
        assert torch.equal(graph.rel_pos, expected.rel_pos) and torch.equal(feats, expected_feats)
        assert not graph.rel_pos.requires_grad and feats.shape[1:] == (5, 1)
