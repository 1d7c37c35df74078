"""Record NVIDIA's golden outputs with NVIDIA's own DGL code (run in a DGL environment, not by the tests).

    python tests/golden/record_nvidia.py --checkout PATH/SE3Transformer --commit SHA \\
        --molecules MOLECULES.pt --layout full --seed 1 tests/golden/nvidia_small_full.pt

``--checkout`` is the folder holding NVIDIA's ``se3_transformer`` package (DeepLearningExamples,
``DGLPyTorch/DrugDiscovery/SE3Transformer``). ``--molecules`` is a ``.pt`` file of molecules (a list of dicts, or a
dict with such a list under ``molecules``) with ``x`` [N, 6], ``pos`` [N, 3], ``edge_index`` [2, E] (row 0 the
source), ``edge_attr`` [E, 4] and ``index``. ``SE3TransformerPooled`` is built as NVIDIA's QM9 script builds it,
at the ``small`` sizes below; every parameter is moved off its initial value by N(0, 0.1) noise (so that no
LayerNorm or GroupNorm affine parameter sits at its default), and the model runs in float32 in eval mode on the
molecules batched in one graph; the pooled features are also computed under CPU autocast to bfloat16, and their
largest deviation is recorded. Nothing of NVIDIA's code is stored.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import dgl
import torch

SMALL = dict(num_layers=2, num_degrees=3, num_channels=16, num_heads=4, channels_div=2, pooling="max", norm=True,
             use_layer_norm=True, low_memory=False)  # fmt: skip
CONVENTION = (
    "x: node features [N,6] (one-hot H,C,N,O,F + atomic number); edge_attr: [E,4] one-hot bond type "
    "(single,double,triple,aromatic); edge_index[0]=source, edge_index[1]=destination; relative position of an "
    "edge = pos[destination] - pos[source]; QM9 index is the 1-based QM9 id."
)


def batch_graph(molecules: list[dict]) -> tuple:
    """The molecules as one DGL graph with ``rel_pos``, and NVIDIA's node and edge feature dicts."""
    graphs = []
    for m in molecules:
        g = dgl.graph((m["edge_index"][0], m["edge_index"][1]), num_nodes=m["x"].shape[0])
        g.ndata["pos"], g.ndata["attr"], g.edata["attr"] = m["pos"], m["x"], m["edge_attr"]
        graphs.append(g)
    g = dgl.batch(graphs)
    src, dst = g.edges()
    g.edata["rel_pos"] = g.ndata["pos"][dst] - g.ndata["pos"][src]
    return g, {"0": g.ndata["attr"][:, :, None]}, {"0": g.edata["attr"][:, :, None]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, required=True, help="the folder holding se3_transformer/")
    parser.add_argument("--commit", required=True, help="the checkout's commit, recorded in the file")
    parser.add_argument("--molecules", type=Path, required=True)
    parser.add_argument("--layout", choices=["full", "partial"], required=True, help="tensor_cores on or off")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("output", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(args.checkout))
    from se3_transformer.model import Fiber, SE3TransformerPooled

    molecules = torch.load(args.molecules, weights_only=True)
    molecules = molecules["molecules"] if isinstance(molecules, dict) else molecules
    keep = ("index", "pos", "x", "edge_index", "edge_attr")
    molecules = [{k: m[k] for k in keep} for m in molecules]
    config = dict(SMALL, tensor_cores=args.layout == "full")
    fibers = dict(fiber_in={0: 6}, fiber_edge={0: 4}, fiber_out={0: config["num_degrees"] * config["num_channels"]})
    torch.manual_seed(args.seed)
    model = SE3TransformerPooled(**{k: Fiber(v) for k, v in fibers.items()}, output_dim=1, **config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    graph, node_feats, edge_feats = batch_graph(molecules)
    with torch.no_grad():
        pooled = model.transformer(graph, node_feats, edge_feats).squeeze(-1)
        prediction = model(graph, node_feats, edge_feats)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # NVIDIA's own sensitivity to bfloat16 (DGL has no CPU fp16)
            pooled_bf16 = model.transformer(graph, node_feats, edge_feats).squeeze(-1).float()
    versions = {name: str(__import__(name).__version__) for name in ("torch", "dgl", "e3nn")}
    record = dict(
        about=f"NVIDIA SE3TransformerPooled at {args.commit}, {args.layout} layout, seed {args.seed}, {versions}",
        commit=args.commit,
        versions=versions,
        nvidia_config=config,
        **fibers,
        output_dim=1,
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
        molecules=molecules,
        input_convention=CONVENTION,
        expected_pooled=pooled.detach().clone(),
        expected_prediction=prediction.detach().clone(),
        nvidia_bf16_pooled_error=((pooled_bf16 - pooled).abs().max() / pooled.abs().max()).item(),
    )
    torch.save(record, args.output)
    print(f"{len(molecules)} molecules, prediction {prediction.tolist()}")


if __name__ == "__main__":
    main()
