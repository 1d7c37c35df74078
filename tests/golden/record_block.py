"""Record RoseTTAFold-All-Atom's structure block (``Str2Str``) with its own DGL code (run in a DGL environment, with
the tool's own requirements: icecream, opt_einsum, assertpy, openbabel; not by the tests).

    python tests/golden/record_block.py --checkout PATH/RoseTTAFold-All-Atom --commit SHA tests/golden/rf2aa_block.pt

``Str2Str`` is built as the model's main block builds it (``d_msa`` 256, ``d_pair`` 192, ``d_state`` 64,
``SE3_param`` of ``config/inference/base.yaml`` with its 3 extra chiral vectors), every parameter drawn at random,
eval mode, float32, and called as the model calls it (protein only: no atom frames move) on one 40-residue
backbone with a chain break, with ``top_k`` 16 (a top-k graph) and 0 (the full graph). Recorded: the inputs; the
block's state dict; what the block hands to its SE(3) module besides the graph (the embedded node features and
pair features ``edge``, before the graph is built from them); the block's outputs (``xyz``, ``state``, ``alpha``,
``quat``); and DGL's own float32 sensitivity: how far the outputs move when every input is rounded differently
(multiplied by ``1 + 2^-24 n``, ``n`` standard normal). Nothing of the tool's code is stored.
"""

from __future__ import annotations

import argparse
import math
import sys
import types
from pathlib import Path

import torch

L = 40
SE3_PARAM = dict(num_layers=1, num_channels=32, num_degrees=2, l0_in_features=64, l0_out_features=64,
                 l1_in_features=3, l1_out_features=2, num_edge_features=64, n_heads=4, div=4)  # fmt: skip


def inputs(gen: torch.Generator) -> dict:
    """The block's arguments for one protein of ``L`` residues, the second half a second chain."""
    steps = torch.randn(1, L, 3, generator=gen, dtype=torch.float64)
    ca = (3.8 * steps / steps.norm(dim=-1, keepdim=True)).cumsum(1)
    offsets = torch.randn(1, L, 2, 3, generator=gen, dtype=torch.float64)
    offsets = 1.5 * offsets / offsets.norm(dim=-1, keepdim=True)
    xyz = torch.stack([ca + offsets[:, :, 0], ca, ca + offsets[:, :, 1]], dim=2).float()
    idx = torch.arange(L)[None].clone()
    idx[0, L // 2 :] += 100
    chain = torch.arange(L) >= L // 2
    same_chain = chain[:, None] == chain[None, :]
    separation = (torch.arange(L)[:, None] - torch.arange(L)[None, :]).abs().float()
    bond_feats = ((separation == 1) & same_chain).long() * 5  # peptide bonds
    dist_matrix = torch.where(same_chain, separation, torch.full_like(separation, 999.0))
    return dict(
        msa=torch.randn(1, 1, L, 256, generator=gen),
        pair=torch.randn(1, L, L, 192, generator=gen),
        xyz=xyz,
        state=torch.randn(1, L, 64, generator=gen),
        idx=idx,
        rotation_mask=torch.zeros(1, L, dtype=torch.bool),
        bond_feats=bond_feats[None],
        dist_matrix=dist_matrix[None],
        atom_frames=torch.zeros(1, 0, 3, 2, dtype=torch.long),
        is_motif=torch.zeros(L, dtype=torch.bool),
        extra_l1=torch.randn(L, 3, 3, generator=gen),
    )


def call(block: torch.nn.Module, x: dict, top_k: int) -> tuple:
    order = ("msa", "pair", "xyz", "state", "idx", "rotation_mask", "bond_feats", "dist_matrix", "atom_frames",
             "is_motif")  # fmt: skip
    with torch.no_grad():
        return block(*(x[k] for k in order), extra_l0=None, extra_l1=x["extra_l1"], use_atom_frames=True, top_k=top_k)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, required=True, help="RoseTTAFold-All-Atom's repository checkout")
    parser.add_argument("--commit", required=True, help="the checkout's commit, recorded in the file")
    parser.add_argument("output", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(args.checkout))
    package = types.ModuleType("rf2aa")  # the package without its __init__, which imports the whole tool
    package.__path__ = [str(args.checkout / "rf2aa")]
    sys.modules["rf2aa"] = package
    from rf2aa.chemical import initialize_chemdata
    from rf2aa.model.Track_module import Str2Str

    class Params(dict):
        __getattr__ = dict.__getitem__

    initialize_chemdata(Params(use_phospate_frames_for_NA=True, use_cif_ordering_for_trp=True))  # base.yaml's

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(2027)
    block = Str2Str(d_msa=256, d_pair=192, d_state=64, d_rbf=64, SE3_param=dict(SE3_PARAM), nextra_l1=3)
    with torch.no_grad():
        for name, p in block.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(noise / math.sqrt(p.shape[-1]) if p.dim() > 1 else noise * 0.2 + name.endswith("weight"))
    block.eval()
    x = inputs(gen)
    seen: dict = {}
    block.norm_edge.register_forward_hook(lambda m, a, out: seen.__setitem__("edge", out.detach().clone()))
    block.se3.register_forward_pre_hook(lambda m, a: seen.__setitem__("node", a[1].detach().clone()))
    cases = {}
    for name, top_k in (("topk", 16), ("full", 0)):
        xyz, state, alpha, quat = call(block, x, top_k)
        perturbed = {k: v * (1 + 2**-24 * torch.randn(v.shape, generator=gen)) if v.is_floating_point() else v
                     for k, v in x.items()}  # fmt: skip
        moved = call(block, perturbed, top_k)
        outputs = dict(xyz=xyz, state=state, alpha=alpha, quat=quat)
        sensitivity = {
            k: ((m - v).abs().max() / (1 + v.abs().max())).item()
            for (k, v), m in zip(outputs.items(), moved, strict=True)
        }
        cases[name] = dict(top_k=top_k, edge=seen["edge"], node=seen["node"], expected=outputs, sensitivity=sensitivity)
        print(name, {k: f"{v:.1e}" for k, v in sensitivity.items()})
    versions = {name: str(__import__(name).__version__) for name in ("torch", "dgl", "e3nn")}
    state_dict = {k: v.detach().clone() for k, v in block.state_dict().items()}
    record = dict(tool="rf2aa", commit=args.commit, versions=versions, se3_param=SE3_PARAM, nextra_l1=3, inputs=x,
                  state_dict=state_dict, cases=cases)  # fmt: skip
    torch.save(record, args.output)


if __name__ == "__main__":
    main()
