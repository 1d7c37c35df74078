"""Record the RoseTTAFold family's goldens with the tools' own DGL code (run in a DGL environment, not by the tests).

    python tests/golden/record_family.py --tool rf2aa --checkout PATH/RoseTTAFold-All-Atom \
        --commit SHA tests/golden/rf2aa.pt

The tool's vendored SE(3)-Transformer is imported from its checkout (its package's ``__init__`` left out: it
imports the whole tool), and its ``SE3TransformerWrapper`` and graph
builders are taken from its own source files (their definitions only: the modules around them import the tool's
whole package). The wrapper is built at its config's sizes, every parameter is drawn at random (the tools zero
their last layer, and a zero output proves nothing), and it runs in float32 on graphs from the tool's builders.
Recorded: the inputs; for each config, the arguments the wrapper passes to ``SE3Transformer`` and the state dict;
each graph's edges, ``rel_pos`` and pair features; the outputs, the gradient of a random projection of them with
respect to the backbone coordinates, and the DGL module's own rotation error. Nothing of the tool's code is stored.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import math
import sys
import types
from pathlib import Path
from typing import Any

import dgl
import numpy as np
import torch
from torch import nn

#: Per tool: where its SE(3) package lives, where its wrapper and builders are defined, the wrapper's
#: configurations (as its configs give them) and the graphs to record (builder name and its keyword arguments).
TOOLS: dict[str, dict[str, Any]] = {
    "rfdiffusion": {
        "package_root": "env/SE3Transformer",
        "se3_module": "se3_transformer.model",
        "wrapper_file": "rfdiffusion/SE3_network.py",
        "builder_file": "rfdiffusion/util_module.py",
        "configs": {  # config/inference/base.yaml: SE3_param_full, SE3_param_topk
            "full": dict(num_layers=1, num_channels=32, num_degrees=2, n_heads=4, div=4, l0_in_features=8,
                         l0_out_features=8, l1_in_features=3, l1_out_features=2, num_edge_features=32),
            "topk": dict(num_layers=1, num_channels=32, num_degrees=2, n_heads=4, div=4, l0_in_features=64,
                         l0_out_features=64, l1_in_features=3, l1_out_features=2, num_edge_features=64),
        },
        "graphs": {
            "full": ("make_full_graph", {}),
            "topk": ("make_topk_graph", dict(top_k=16, kmin=5)),
            "topk_default": ("make_topk_graph", {}),
        },
    },
    "rf2aa": {
        "package_root": ".",
        "se3_module": "rf2aa.SE3Transformer.se3_transformer.model",
        "wrapper_file": "rf2aa/model/layers/SE3_network.py",
        "builder_file": "rf2aa/util_module.py",
        "configs": {  # rf2aa/config/inference/base.yaml: SE3_param, SE3_ref_param, with the extra inputs the model
            # adds (Track_module.py: 3 chiral vectors; the refiner also 3 Lennard-Jones vectors and 2 * 20 scalars)
            "main": dict(num_layers=1, num_channels=32, num_degrees=2, l0_in_features=64, l0_out_features=64,
                         l1_in_features=6, l1_out_features=2, num_edge_features=64, n_heads=4, div=4),
            "refine": dict(num_layers=2, num_channels=32, num_degrees=2, l0_in_features=104, l0_out_features=64,
                           l1_in_features=9, l1_out_features=2, num_edge_features=64, n_heads=4, div=4),
        },
        "graphs": {
            "full": ("make_full_graph", {}),
            "topk_local": ("make_topk_graph", dict(top_k=16, nlocal=5, topk_incl_local=True)),
            "topk_nonlocal": ("make_topk_graph", dict(top_k=16, nlocal=5, topk_incl_local=False)),
            "topk_default": ("make_topk_graph", {}),
        },
    },
    "rfd2": {
        "package_root": ".",
        "se3_module": "rf2aa.SE3Transformer.se3_transformer.model",
        "wrapper_file": "rf2aa/model/layers/SE3_network.py",
        "builder_file": "rf2aa/util_module.py",
        "configs": {  # rf_diffusion/config/training/RFD_26.yaml: SE3_param; the wrapper's compute_gradients both ways
            "main": dict(num_layers=1, num_channels=32, num_degrees=2, l0_in_features=64, l0_out_features=64,
                         l1_in_features=3, l1_out_features=2, num_edge_features=64, n_heads=4, div=4),
            "gradients": dict(num_layers=1, num_channels=32, num_degrees=2, l0_in_features=64, l0_out_features=64,
                              l1_in_features=3, l1_out_features=2, num_edge_features=64, n_heads=4, div=4,
                              compute_gradients=True),
        },
        "graphs": {
            "full": ("make_full_graph", {}),
            "topk_local": ("make_topk_graph", dict(top_k=16, nlocal=5, topk_incl_local=True)),
            "topk_nonlocal": ("make_topk_graph", dict(top_k=16, nlocal=5, topk_incl_local=False)),
        },
    },
    "rfantibody_rfdiffusion": {  # RFantibody's RFdiffusion: its wrapper and builders on include/SE3Transformer
        "package_root": "include/SE3Transformer",
        "se3_module": "se3_transformer.model",
        "wrapper_file": "src/rfantibody/rfdiffusion/SE3_network.py",
        "builder_file": "src/rfantibody/rfdiffusion/util_module.py",
        "configs": {  # scripts/config/inference/base.yaml: SE3_param_full, SE3_param_topk
            "full": dict(num_layers=1, num_channels=32, num_degrees=2, n_heads=4, div=4, l0_in_features=8,
                         l0_out_features=8, l1_in_features=3, l1_out_features=2, num_edge_features=32),
            "topk": dict(num_layers=1, num_channels=32, num_degrees=2, n_heads=4, div=4, l0_in_features=64,
                         l0_out_features=64, l1_in_features=3, l1_out_features=2, num_edge_features=64),
        },
        "graphs": {"full": ("make_full_graph", {}), "topk": ("make_topk_graph", dict(top_k=16, kmin=5))},
    },
    "rfantibody_rf2": {  # RFantibody's RoseTTAFold2: its wrapper and builders on include/SE3Transformer
        "package_root": "include/SE3Transformer",
        "se3_module": "se3_transformer.model",
        "wrapper_file": "src/rfantibody/rf2/network/SE3_network.py",
        "builder_file": "src/rfantibody/rf2/network/util_module.py",
        "configs": {  # src/rfantibody/rf2/config/base.yaml: SE3_param_full, SE3_param_topk
            "full": dict(num_layers=1, num_channels=48, num_degrees=2, l0_in_features=32, l0_out_features=32,
                         l1_in_features=2, l1_out_features=2, num_edge_features=32, div=4, n_heads=4),
            "topk": dict(num_layers=1, num_channels=128, num_degrees=2, l0_in_features=64, l0_out_features=64,
                         l1_in_features=2, l1_out_features=2, num_edge_features=64, div=4, n_heads=4),
        },
        "graphs": {"full": ("make_full_graph", {}), "topk": ("make_topk_graph", dict(top_k=16, kmin=5))},
    },
    "rf2na": {
        "package_root": "SE3Transformer",
        "se3_module": "se3_transformer.model",
        "wrapper_file": "network/SE3_network.py",
        "builder_file": "network/util_module.py",
        "configs": {  # network/predict.py: SE3_param, SE3_ref_param
            "full": dict(num_layers=1, num_channels=32, num_degrees=2, l0_in_features=64, l0_out_features=64,
                         l1_in_features=3, l1_out_features=2, num_edge_features=64, div=4, n_heads=4),
            "refine": dict(num_layers=2, num_channels=32, num_degrees=2, l0_in_features=64, l0_out_features=64,
                           l1_in_features=3, l1_out_features=2, num_edge_features=64, div=4, n_heads=4),
        },
        "graphs": {
            "full": ("make_full_graph", {}),
            "topk_local": ("make_topk_graph", dict(top_k=16, nlocal=5, topk_incl_local=True)),
        },
    },
    "rf2": {
        "package_root": "SE3Transformer",
        "se3_module": "se3_transformer.model",
        "wrapper_file": "network/SE3_network.py",
        "builder_file": "network/util_module.py",
        "configs": {  # network/predict.py: SE3_param_full, SE3_param_topk
            "full": dict(num_layers=1, num_channels=48, num_degrees=2, l0_in_features=32, l0_out_features=32,
                         l1_in_features=2, l1_out_features=2, num_edge_features=32, div=4, n_heads=4),
            "topk": dict(num_layers=1, num_channels=128, num_degrees=2, l0_in_features=64, l0_out_features=64,
                         l1_in_features=2, l1_out_features=2, num_edge_features=64, div=4, n_heads=4),
        },
        "graphs": {
            "full": ("make_full_graph", {}),
            "topk": ("make_topk_graph", dict(top_k=16, kmin=5)),
            "topk_all": ("make_topk_graph", dict(top_k=-1)),
        },
    },
}  # fmt: skip

B, L = 2, 40  # two chains of 40 residues, the second with a chain break in the middle


def definitions(path: Path, names: set[str]) -> str:
    """The source of the top-level functions and classes ``names`` of ``path``."""
    source = path.read_text()
    found = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef | ast.ClassDef) and n.name in names]
    if {n.name for n in found} != names:
        raise SystemExit(f"{path}: expected definitions {sorted(names)}, found {sorted(n.name for n in found)}")
    return "\n\n".join(ast.get_source_segment(source, n) for n in found)


def load_tool(tool: str, checkout: Path) -> dict[str, Any]:
    """The tool's SE3TransformerWrapper, make_full_graph and make_topk_graph, from its own files."""
    spec = TOOLS[tool]
    sys.path.insert(0, str(checkout / spec["package_root"]))
    top = spec["se3_module"].split(".")[0]
    if (checkout / spec["package_root"] / top / "__init__.py").exists() and top != "se3_transformer":
        package = types.ModuleType(top)  # the package without its __init__, which imports the whole tool
        package.__path__ = [str(checkout / spec["package_root"] / top)]
        sys.modules[top] = package
    model = __import__(spec["se3_module"], fromlist=["SE3Transformer", "Fiber"])
    namespace: dict[str, Any] = dict(torch=torch, nn=nn, np=np, dgl=dgl, inspect=inspect)
    calls: list[dict[str, Any]] = []

    def se3_transformer(**kwargs: Any) -> nn.Module:
        """The tool's SE3Transformer, its arguments kept (fibers as ``{degree: channels}``)."""
        calls.append({k: {d: c for d, c in v} if isinstance(v, model.Fiber) else v for k, v in kwargs.items()})
        return model.SE3Transformer(**kwargs)

    namespace.update(SE3Transformer=se3_transformer, Fiber=model.Fiber, se3_calls=calls)
    builders = {"make_full_graph", "make_topk_graph", "init_lecun_normal_param"}
    exec(definitions(checkout / spec["builder_file"], builders), namespace)
    exec(definitions(checkout / spec["wrapper_file"], {"SE3TransformerWrapper"}), namespace)
    return namespace


def backbone(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``xyz [B, L, 3, 3]`` (N, CA, C): CA a random walk of 3.8 A steps, N and C 1.5 A off it; ``idx [B, L]``."""
    steps = torch.randn(B, L, 3, generator=gen, dtype=torch.float64)
    ca = (3.8 * steps / steps.norm(dim=-1, keepdim=True)).cumsum(1)
    offsets = torch.randn(B, L, 2, 3, generator=gen, dtype=torch.float64)
    offsets = 1.5 * offsets / offsets.norm(dim=-1, keepdim=True)
    xyz = torch.stack([ca + offsets[:, :, 0], ca, ca + offsets[:, :, 1]], dim=2).float()
    idx = torch.arange(L).repeat(B, 1)
    idx[1, L // 2 :] += 100
    return xyz, idx


def randomize(module: nn.Module, gen: torch.Generator) -> None:
    """Every parameter at random, about the scale of a trained one (vectors near 1 for weights, near 0 else)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.dim() > 1:
                p.copy_(noise / math.sqrt(p.shape[-1]))
            else:
                p.copy_(noise * 0.2 + (1.0 if name.endswith("weight") else 0.0))


def node_features(xyz: torch.Tensor, l1_in: int, extra: torch.Tensor) -> torch.Tensor:
    """Degree-1 node features as the tools make them, ``[B * L, l1_in, 3]``: the backbone atoms relative to CA (N
    and C only for 2 features), then ``l1_in - 3`` of the ``extra`` vectors (chiral and Lennard-Jones gradients)."""
    rel = xyz - xyz[:, :, 1:2]
    rel = rel[:, :, [0, 2]] if l1_in == 2 else rel
    return torch.cat([rel.reshape(B * L, -1, 3), extra[:, : max(l1_in - 3, 0)]], dim=1)


def rotation(gen: torch.Generator) -> torch.Tensor:
    q = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))[0]
    return (q * torch.sign(torch.det(q))).float()


def record_graph(tool: dict, builder: str, kwargs: dict, inputs: dict) -> dict:
    """The tool's graph of the inputs: its edges, ``rel_pos``, whether it carries a gradient, and each edge's pair
    features summed (a fingerprint: the features themselves are the inputs' ``pair`` rows)."""
    xyz = inputs["xyz"].clone().requires_grad_()
    G, edge_feats = tool[builder](xyz[:, :, 1], inputs["pair"], inputs["idx"], **kwargs)
    src, dst = G.edges()
    return dict(
        builder=builder,
        kwargs=kwargs,
        edge_index=torch.stack([src, dst]),
        rel_pos=G.edata["rel_pos"].detach().clone(),
        rel_pos_requires_grad=G.edata["rel_pos"].requires_grad,
        edge_feats_sum=edge_feats.sum(dim=(1, 2)).detach().clone(),
    )


def record_config(tool: dict, config: dict, graphs: dict, inputs: dict, gen: torch.Generator) -> dict:
    """One wrapper at random weights, run on each graph: outputs, the gradient of a random projection of them with
    respect to ``xyz``, and the rotation error of the DGL module itself."""
    wrapper = tool["SE3TransformerWrapper"](**config)
    se3_kwargs = tool["se3_calls"].pop()
    randomize(wrapper, gen)
    wrapper.eval()
    pair = inputs["pair"][..., : config["num_edge_features"]]
    l0 = inputs["l0"][:, : config["l0_in_features"]]
    results = {}
    for graph_name, (builder, kwargs) in graphs.items():
        xyz = inputs["xyz"].clone().requires_grad_()
        G, edge_feats = tool[builder](xyz[:, :, 1], pair, inputs["idx"], **kwargs)
        out = wrapper(G, l0[..., None], node_features(xyz, config["l1_in_features"], inputs["l1_extra"]), edge_feats)
        projections = {k: torch.randn(v.shape, generator=gen) for k, v in out.items()}
        (grad,) = torch.autograd.grad(sum((out[k] * projections[k]).sum() for k in out), xyz)
        R = rotation(gen)
        with torch.no_grad():
            xyz_r = inputs["xyz"] @ R.T
            G_r, edge_feats_r = tool[builder](xyz_r[:, :, 1], pair, inputs["idx"], **kwargs)
            out_r = wrapper(
                G_r,
                l0[..., None],
                node_features(xyz_r, config["l1_in_features"], inputs["l1_extra"] @ R.T),
                edge_feats_r,
            )
        scale = 1 + out["1"].abs().max()
        results[graph_name] = dict(
            expected={k: v.detach().clone() for k, v in out.items()},
            projections=projections,
            expected_grad=grad,
            rotation=R,
            dgl_rotation_error=((out_r["1"] - out["1"].detach() @ R.T).abs().max() / scale).item(),
        )
    state_dict = {k: v.detach().clone() for k, v in wrapper.se3.state_dict().items()}
    return dict(config=config, se3_kwargs=se3_kwargs, state_dict=state_dict, graphs=results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tool", choices=sorted(TOOLS), required=True)
    parser.add_argument("--checkout", type=Path, required=True, help="the tool's repository checkout")
    parser.add_argument("--commit", default="", help="the checkout's commit, recorded in the file")
    parser.add_argument("output", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(2026)
    tool = load_tool(args.tool, args.checkout)
    xyz, idx = backbone(gen)
    pair, l0 = torch.randn(B, L, L, 64, generator=gen), torch.randn(B * L, 128, generator=gen)
    inputs = dict(xyz=xyz, idx=idx, pair=pair, l0=l0, l1_extra=torch.randn(B * L, 6, 3, generator=gen))
    graphs, configs = {}, {}
    for graph_name, (builder, kwargs) in TOOLS[args.tool]["graphs"].items():
        graphs[graph_name] = record_graph(tool, builder, kwargs, inputs)
        print(f"{graph_name}: {graphs[graph_name]['edge_index'].shape[1]} edges")
    for config_name, config in TOOLS[args.tool]["configs"].items():
        configs[config_name] = record_config(tool, config, TOOLS[args.tool]["graphs"], inputs, gen)
    versions = {name: str(__import__(name).__version__) for name in ("torch", "dgl", "e3nn")}
    record = dict(tool=args.tool, commit=args.commit, versions=versions, inputs=inputs, graphs=graphs, configs=configs)
    torch.save(record, args.output)


if __name__ == "__main__":
    main()
