"""The RoseTTAFold family's SE(3) modules and graph builders without DGL, against goldens recorded with each tool's
own code (``tests/golden/record_family.py``): RFdiffusion, RoseTTAFold-All-Atom (``rf2aa``), RoseTTAFold2
(``rf2``), RFdiffusion2 (``rfd2``), RoseTTAFold2NA (``rf2na``) and RFantibody's two packages. Each module is built
with the arguments the tool's wrapper passed, as recorded."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from se3pyg.compat import nvidia, rf2, rf2aa, rf2na, rfdiffusion, rfdiffusion2
from se3pyg.fiber import Fiber
from se3pyg.nn.conv import KernelGroup

from .conftest import relative_error, wigner_D

GOLDEN = Path(__file__).parent / "golden"
TOL = 1e-5  # outputs, relative to 1 + max |expected|
GRAD_TOL = 1e-4  # gradients with respect to the coordinates, likewise
#: Per golden file: the se3pyg module of the tool's SE(3) copy, and that of its graph builders.
TOOLS: dict[str, tuple[ModuleType, ModuleType]] = {
    "rfdiffusion": (rfdiffusion, rfdiffusion),
    "rf2aa": (rf2aa, rf2aa),
    "rf2": (rf2, rf2),
    "rfd2": (rfdiffusion2, rfdiffusion2),
    "rf2na": (rf2na, rf2na),
    "rfantibody_rfdiffusion": (rf2aa, rfdiffusion),  # one copy of RoseTTAFold-All-Atom's module, two packages
    "rfantibody_rf2": (rf2aa, rf2),
}


@pytest.fixture(scope="module", params=sorted(TOOLS))
def golden(request: pytest.FixtureRequest) -> dict:
    return torch.load(GOLDEN / f"{request.param}.pt", weights_only=True)


def build(golden: dict, graph_name: str, xyz: torch.Tensor, pair: torch.Tensor) -> tuple:
    spec = golden["graphs"][graph_name]
    builder = getattr(TOOLS[golden["tool"]][1], spec["builder"])
    return builder(xyz[:, :, 1], pair, golden["inputs"]["idx"], **spec["kwargs"])


def node_features(xyz: torch.Tensor, config: dict, extra: torch.Tensor) -> dict[str, torch.Tensor]:
    """The wrapper's degree-1 inputs, as recorded: the backbone atoms relative to CA (N and C only for 2 features),
    then the extra vectors (chiral and Lennard-Jones gradients in RoseTTAFold-All-Atom)."""
    rel = xyz - xyz[:, :, 1:2]
    rel = rel[:, :, [0, 2]] if config["l1_in_features"] == 2 else rel
    extra = extra[:, : max(config["l1_in_features"] - 3, 0)]
    return {"1": torch.cat([rel.reshape(-1, rel.shape[2], 3), extra], dim=1)}


def run(
    golden: dict, config_name: str, graph_name: str, xyz: torch.Tensor, R: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """The module on the tool's graph of ``xyz`` (the extra vectors turned by ``R``, if given)."""
    case = golden["configs"][config_name]
    config = case["config"]
    model = TOOLS[golden["tool"]][0].SE3Transformer(**case["se3_kwargs"]).eval()
    model.load_state_dict(case["state_dict"], strict=True)
    pair = golden["inputs"]["pair"][..., : config["num_edge_features"]]
    G, edge_feats = build(golden, graph_name, xyz, pair)
    l0 = golden["inputs"]["l0"][:, : config["l0_in_features"], None]
    extra = golden["inputs"]["l1_extra"] if R is None else golden["inputs"]["l1_extra"] @ R.T
    return model(G, {"0": l0, **node_features(xyz, config, extra)}, {"0": edge_feats})


def cases(golden: dict) -> list[tuple[str, str]]:
    return [(c, g) for c, case in golden["configs"].items() for g in case["graphs"]]


def test_builders_give_the_tools_graphs_edge_for_edge(golden: dict) -> None:
    for graph_name, expected in golden["graphs"].items():
        xyz = golden["inputs"]["xyz"].clone().requires_grad_()
        G, edge_feats = build(golden, graph_name, xyz, golden["inputs"]["pair"])
        assert torch.equal(G.edge_index, expected["edge_index"]), graph_name
        assert G.num_nodes == xyz.shape[0] * xyz.shape[1]
        assert relative_error(G.rel_pos.detach(), expected["rel_pos"]) <= TOL, graph_name
        assert G.rel_pos.requires_grad == expected["rel_pos_requires_grad"], graph_name
        assert edge_feats.shape == (G.edge_index.shape[1], golden["inputs"]["pair"].shape[-1], 1)
        assert relative_error(edge_feats.sum(dim=(1, 2)), expected["edge_feats_sum"]) <= TOL, graph_name


def test_outputs_and_coordinate_gradients_match_the_tools(golden: dict) -> None:
    for config_name, graph_name in cases(golden):
        expected = golden["configs"][config_name]["graphs"][graph_name]
        xyz = golden["inputs"]["xyz"].clone().requires_grad_()
        out = run(golden, config_name, graph_name, xyz)
        assert set(out) == set(expected["expected"])
        for degree, value in expected["expected"].items():
            assert out[degree].shape == value.shape
            assert relative_error(out[degree].detach(), value) <= TOL, (config_name, graph_name, degree)
        loss = sum((out[k] * expected["projections"][k]).sum() for k in out)
        (grad,) = torch.autograd.grad(loss, xyz)
        assert relative_error(grad, expected["expected_grad"]) <= GRAD_TOL, (config_name, graph_name)


def test_rotating_the_coordinates_rotates_the_outputs(golden: dict) -> None:
    """Degree-1 outputs turn with the backbone, degree-0 outputs stay, as in the tool's own module."""
    for config_name, graph_name in cases(golden):
        R = golden["configs"][config_name]["graphs"][graph_name]["rotation"]
        xyz = golden["inputs"]["xyz"]
        with torch.no_grad():
            out = run(golden, config_name, graph_name, xyz)
            out_r = run(golden, config_name, graph_name, xyz @ R.T, R)
        D = wigner_D(1, R).float()
        assert relative_error(out_r["1"], out["1"] @ D.T) <= TOL, (config_name, graph_name)
        assert relative_error(out_r["0"], out["0"]) <= TOL, (config_name, graph_name)


def test_golden_files_record_where_they_came_from(golden: dict) -> None:
    assert len(golden["commit"]) == 40
    assert set(golden["versions"]) == {"torch", "dgl", "e3nn"}
    for case in golden["configs"].values():
        for expected in case["graphs"].values():
            assert all(v.abs().max() > 0.1 for v in expected["expected"].values()), "a zero output proves nothing"


def _tiny(module: ModuleType, **kwargs: object) -> nn.Module:
    return module.SE3Transformer(
        num_layers=1, fiber_in=Fiber({0: 4, 1: 2}), fiber_hidden=Fiber.create(2, 8), fiber_out=Fiber({0: 4, 1: 2}),
        num_heads=2, channels_div=2, fiber_edge=Fiber({0: 3}), **kwargs,
    )  # fmt: skip


ALL = [nvidia, rfdiffusion, rf2, rf2aa, rfdiffusion2]


@pytest.mark.parametrize("module", ALL, ids=lambda m: m.__name__.split(".")[-1])
def test_an_argument_no_copy_knows_is_refused(module: ModuleType) -> None:
    with pytest.raises(TypeError, match="some_unknown_argument"):
        _tiny(module, some_unknown_argument=1)


def test_the_pooled_model_refuses_an_unknown_argument() -> None:
    with pytest.raises(TypeError, match="some_unknown_argument"):
        nvidia.SE3TransformerPooled(
            fiber_in=Fiber({0: 6}), fiber_out=Fiber({0: 8}), fiber_edge=Fiber({0: 4}), num_degrees=2,
            num_channels=8, output_dim=1, some_unknown_argument=1,
        )  # fmt: skip


@pytest.mark.parametrize("module", [rf2, rf2aa, rfdiffusion2], ids=lambda m: m.__name__.split(".")[-1])
def test_bad_choices_are_refused(module: ModuleType) -> None:
    with pytest.raises(ValueError, match="final_layer"):
        _tiny(module, final_layer="linear")
    with pytest.raises(ValueError, match="populate_edge"):
        _tiny(module, populate_edge="asinh")


def test_each_module_takes_only_its_copys_arguments() -> None:
    """The 2021 code never takes gradients through the bases; only RFdiffusion2's copy has the argument.
    RFdiffusion's copy has none of the family's additions."""
    with pytest.raises(TypeError, match="compute_gradients"):
        _tiny(rf2aa, compute_gradients=True)
    _tiny(rfdiffusion2, compute_gradients=True)
    for name in ("final_layer", "populate_edge", "sum_over_edge", "compute_gradients"):
        with pytest.raises(TypeError, match=name):
            _tiny(rfdiffusion, **{name: "lin"})


def test_the_tools_inspect_getfile_check_holds_for_rf2aa() -> None:
    assert "rf2aa" in inspect.getfile(rf2aa.SE3Transformer)


def test_positional_order_of_the_family() -> None:
    """``final_layer`` comes after ``pooling`` in the family's copies, ``norm`` there in NVIDIA's."""
    for module in (rf2, rf2aa):
        names = list(inspect.signature(module.SE3Transformer).parameters)
        assert names[8:11] == ["pooling", "final_layer", "norm"], module.__name__
    names = list(inspect.signature(nvidia.SE3Transformer).parameters)
    assert names[8:10] == ["pooling", "norm"]


@pytest.mark.parametrize(
    ("tensor_cores", "low_memory", "layout_2021", "layout_2022"),
    [(False, False, "partial", "partial"), (True, False, "full", "full"), (True, True, "partial", "pairwise"),
     (False, True, "partial", "pairwise")],
)  # fmt: skip
def test_flags_choose_each_familys_layout(
    tensor_cores: bool, low_memory: bool, layout_2021: str, layout_2022: str
) -> None:
    """RoseTTAFold2NA passes ``tensor_cores=True, low_memory=True``: partially fused in the 2021 code."""
    assert nvidia.nvidia_2021_layout(tensor_cores, low_memory) == layout_2021
    assert nvidia.nvidia_layout(tensor_cores, low_memory) == layout_2022
    flags = dict(tensor_cores=tensor_cores, low_memory=low_memory)
    for module in (rfdiffusion, rf2aa):
        assert _tiny(module, **flags).layout == layout_2021
    for module in (nvidia, rf2, rfdiffusion2):
        assert _tiny(module, **flags).layout == layout_2022


@pytest.mark.parametrize(
    ("module", "final", "attribute"), [(rf2aa, "lin", "weights"), (rfdiffusion, None, "to_kernel_self")]
)
def test_a_wrappers_reset_parameter_pattern_runs_on_se3pygs_modules(
    module: ModuleType, final: str | None, attribute: str
) -> None:
    """What the wrappers' ``reset_parameter`` touches: radial networks by name (``radial_func``, ``net.6``) and the
    last layer's ``weights`` (the family's final linear layer) or ``to_kernel_self`` (RFdiffusion's convolution)."""
    se3 = _tiny(module, final_layer=final, populate_edge="arcsin") if final else _tiny(module)
    names = [n for n, _ in se3.named_parameters()]
    assert any("radial_func" in n and "net.6" in n for n in names)
    for degree in ("0", "1"):
        nn.init.zeros_(getattr(se3.graph_modules[-1], attribute)[degree])
        assert not getattr(se3.graph_modules[-1], attribute)[degree].any()


def test_sum_over_edge_false_averages_the_final_messages() -> None:
    torch.manual_seed(0)
    summed, averaged = _tiny(rf2aa), _tiny(rf2aa, sum_over_edge=False)
    averaged.load_state_dict(summed.state_dict())
    n = 6
    src, dst = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    keep = src != dst
    edge_index = torch.stack([src[keep], dst[keep]])
    pos = torch.randn(n, 3)
    graph = (edge_index, pos[edge_index[1]] - pos[edge_index[0]], n)
    feats = {"0": torch.randn(n, 4, 1), "1": torch.randn(n, 2, 3)}
    edges = {"0": torch.randn(edge_index.shape[1], 3, 1)}
    with torch.no_grad():
        a, b = summed(graph, feats, edges), averaged(graph, feats, edges)
    assert not torch.allclose(a["0"], b["0"])
    assert "mean" in repr(averaged.graph_modules[-1])


def test_rfdiffusion2_builders_are_rf2aas_with_its_eps() -> None:
    assert inspect.signature(rfdiffusion2.make_topk_graph).parameters["eps"].default == 1e-4
    assert inspect.signature(rf2aa.make_topk_graph).parameters["eps"].default == 1e-6
    assert rfdiffusion2.make_full_graph is rf2aa.make_full_graph
    assert rfdiffusion2.SE3Transformer is rf2.SE3Transformer


def test_rf2_topk_reads_nonpositive_top_k_as_all_pairs() -> None:
    xyz = torch.randn(1, 12, 3) * 5
    pair = torch.randn(1, 12, 12, 2)
    idx = torch.arange(12)[None]
    G, _ = rf2.make_topk_graph(xyz, pair, idx, top_k=-1)
    assert G.edge_index.shape[1] == 12 * 11
    G, _ = rfdiffusion.make_topk_graph(xyz, pair, idx, top_k=64)
    assert G.edge_index.shape[1] == 12 * 12  # RFdiffusion's keeps the self-loops


def test_each_copys_float32_inference_limit() -> None:
    """RoseTTAFold-All-Atom's copy (and RoseTTAFold2NA's, RFantibody's) computes inference convolutions in float32
    over 4,096 edges, RoseTTAFold2's and RFdiffusion2's over 65,536, NVIDIA's and RFdiffusion's never."""
    limits = {rf2aa: 4096, rf2na: 4096, rf2: 65536, rfdiffusion2: 65536, nvidia: None, rfdiffusion: None}
    for module, limit in limits.items():
        kernels = [m for m in _tiny(module).modules() if isinstance(m, KernelGroup)]
        assert kernels and all(k.float32_inference_above == limit for k in kernels), module.__name__


def test_rf2aa_inference_on_large_graphs_runs_its_convolutions_in_float32_under_autocast() -> None:
    """Over 4,096 edges, RoseTTAFold-All-Atom's inference computes the convolutions in float32 under autocast (its
    copy does so): the kernels give float32's results; in training, and without the limit, autocast's dtype."""
    torch.manual_seed(0)
    model = _tiny(rf2aa, final_layer="lin").eval()
    length = 70  # 4,830 edges on the full graph
    xyz = torch.randn(1, length, 3) * 8
    graph, edge_feats = rf2aa.make_full_graph(xyz, torch.randn(1, length, length, 3), torch.arange(length)[None])
    assert graph.edge_index.shape[1] > rf2aa.SE3Transformer.FLOAT32_INFERENCE_ABOVE
    feats = {"0": torch.randn(length, 4, 1), "1": torch.randn(length, 2, 3)}
    kernel = next(m for m in model.graph_modules[0].to_key_value.modules() if isinstance(m, KernelGroup))
    calls: list[tuple] = []
    kernel.register_forward_hook(lambda module, args, out: calls.append((args, out)))

    def under_autocast() -> torch.Tensor:
        calls.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(graph, feats, {"0": edge_feats})
        return calls[0][1]

    with torch.no_grad():
        mixed = under_autocast()
        assert mixed.dtype == torch.float32
        assert relative_error(mixed, kernel(*calls[0][0])) <= TOL  # float32's result for the same inputs
        kernel.float32_inference_above = None
        assert under_autocast().dtype == torch.bfloat16
        kernel.float32_inference_above = rf2aa.SE3Transformer.FLOAT32_INFERENCE_ABOVE
        model.train()
        assert under_autocast().dtype == torch.bfloat16


def frame_update(xyz: torch.Tensor, shift: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """RoseTTAFold-All-Atom's structure block after its SE(3) module: degree 0 is the new state; of the two degree-1
    outputs, the first / 10 translates CA, the second / 100 is the vector part ``v`` of the unnormalised quaternion
    ``(1, v)`` that rotates the backbone about CA. Returns ``(xyz, state, quat)``."""
    batch, length = xyz.shape[:2]
    offset = shift["1"].reshape(batch, length, 2, 3)
    translation, v = offset[:, :, 0] / 10, offset[:, :, 1] / 100
    quat = torch.cat([torch.ones_like(v[..., :1]), v], dim=-1) / (1 + (v * v).sum(-1, keepdim=True)).sqrt()
    w, x, y, z = quat.unbind(-1)
    rotation = torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)  # fmt: skip
    ca = xyz[:, :, 1:2]
    moved = torch.einsum("blij,blaj->blai", rotation, xyz - ca) + ca + translation[:, :, None]
    return moved, shift["0"].reshape(batch, length, -1), quat


@pytest.mark.parametrize("graph", ["topk", "full"])
def test_rf2aa_structure_block_with_se3pyg_matches_the_block_with_dgl(graph: str) -> None:
    """``Str2Str`` as RoseTTAFold-All-Atom calls it (``tests/golden/record_block.py``), with se3pyg's builders and
    module in place of DGL's on the block's own node and pair features: its new coordinates, state and frame
    rotations agree with the DGL block within 3 times DGL's own float32 sensitivity (recorded: how far the block's
    outputs move when its inputs are rounded differently; se3pyg's deviations were 0.3-0.9 of it)."""
    record = torch.load(GOLDEN / "rf2aa_block.pt", weights_only=True)
    kwargs = torch.load(GOLDEN / "rf2aa.pt", weights_only=True)["configs"]["main"]["se3_kwargs"]
    assert kwargs["fiber_in"] == {0: 64, 1: 3 + record["nextra_l1"]}  # the block's module: SE3_param, 3 chiral
    se3 = rf2aa.SE3Transformer(**kwargs).eval()
    prefix = "se3.se3."
    se3.load_state_dict({k[len(prefix) :]: v for k, v in record["state_dict"].items() if k.startswith(prefix)})
    case, x = record["cases"][graph], record["inputs"]
    xyz, idx = x["xyz"], x["idx"]
    if case["top_k"] > 0:
        G, edge_feats = rf2aa.make_topk_graph(xyz[:, :, 1], case["edge"], idx, top_k=case["top_k"])
    else:
        G, edge_feats = rf2aa.make_full_graph(xyz[:, :, 1], case["edge"], idx)
    l1 = torch.cat([(xyz - xyz[:, :, 1:2]).reshape(-1, 3, 3), x["extra_l1"]], dim=1)
    with torch.no_grad():
        shift = se3(G, {"0": case["node"], "1": l1}, {"0": edge_feats})
    for name, value in zip(("xyz", "state", "quat"), frame_update(xyz, shift), strict=True):
        error = relative_error(value, case["expected"][name])
        assert error <= 3 * case["sensitivity"][name], (name, error, case["sensitivity"][name])


BUILDERS = [rfdiffusion.make_full_graph, rfdiffusion.make_topk_graph, rf2.make_topk_graph, rf2aa.make_full_graph,
            rf2aa.make_topk_graph, rf2na.make_full_graph]  # fmt: skip


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda f: f"{f.__module__.split('.')[-1]}.{f.__name__}")
def test_builders_name_the_argument_whose_shape_is_wrong(builder) -> None:
    xyz, pair, idx = torch.randn(2, 6, 3), torch.randn(2, 6, 6, 3), torch.arange(6).repeat(2, 1)
    xyz_atoms = xyz[..., None].expand(2, 6, 3, 3)
    wrong = {
        "xyz: expected [B, L, 3] (one atom a residue, e.g. CA), got [2, 6, 3, 3]": (xyz_atoms, pair, idx),
        "pair: expected [B, L, L, E_pair] = [2, 6, 6, E_pair] from xyz, got [2, 6, 5, 3]": (xyz, pair[:, :, 1:], idx),
        "pair: expected [B, L, L, E_pair] = [2, 6, 6, E_pair] from xyz, got [1, 6, 6, 3]": (xyz, pair[:1], idx),
        "idx: expected [B, L] = [2, 6] from xyz, got [6]": (xyz, pair, idx[0]),
    }
    for message, args in wrong.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            builder(*args)
    if builder.__name__ == "make_topk_graph" and builder is not rf2.make_topk_graph:  # rf2: <= 0 is every pair
        with pytest.raises(ValueError, match=r"top_k: expected >= 1 \(every pair: make_full_graph\), got -1"):
            builder(xyz, pair, idx, top_k=-1)


@pytest.mark.parametrize("module", [rfdiffusion, rf2, rf2aa], ids=lambda m: m.__name__.split(".")[-1])
def test_a_graph_without_edges_is_valid_input(module: ModuleType) -> None:
    """One residue: the builders give no edge, and the module gives outputs from the nodes' own features."""
    xyz, pair, idx = torch.randn(1, 1, 3), torch.randn(1, 1, 1, 3), torch.zeros(1, 1, dtype=torch.long)
    G, edge_feats = module.make_topk_graph(xyz, pair, idx)
    G, edge_feats = rf2aa.make_full_graph(xyz, pair, idx) if G.edge_index.shape[1] else (G, edge_feats)
    assert G.edge_index.shape[1] == 0 and edge_feats.shape == (0, 3, 1)
    model = _tiny(module).eval()
    with torch.no_grad():
        out = model(G, {"0": torch.randn(1, 4, 1), "1": torch.randn(1, 2, 3)}, {"0": edge_feats})
    assert out["0"].shape == (1, 4, 1) and out["1"].shape == (1, 2, 3)
    assert all(torch.isfinite(v).all() for v in out.values())
