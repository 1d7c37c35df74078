"""Rotation equivariance and translation invariance of the whole model (NVIDIA's test setup)."""

from __future__ import annotations

import e3nn.o3 as o3
import pytest
import torch

from se3pyg import Fiber, SE3Transformer

from .conftest import wigner_D

NODES, CHANNELS, NEIGHBOURS = 512, 32, 5
TOL = {torch.float32: 1e-4, torch.float64: 1e-9}


def _knn_edges(pos: torch.Tensor, k: int) -> torch.Tensor:
    dist = torch.cdist(pos, pos)
    dist.fill_diagonal_(float("inf"))
    src = dist.topk(k, largest=False).indices.flatten()
    dst = torch.arange(pos.shape[0]).repeat_interleave(k)
    return torch.stack([src, dst])


def _model(dtype: torch.dtype, layout: str = "full", fiber_edge: Fiber | None = None, **kwargs) -> SE3Transformer:
    torch.manual_seed(0)
    model = SE3Transformer(
        num_layers=4,
        fiber_in=Fiber.create(2, CHANNELS),
        fiber_hidden=Fiber.create(3, CHANNELS),
        fiber_out=Fiber.create(2, CHANNELS),
        fiber_edge=fiber_edge,
        num_heads=8,
        channels_div=2,
        layout=layout,
        **kwargs,
    )
    return model.to(dtype).eval()


def _inputs(dtype: torch.dtype, seed: int, fiber_edge: Fiber | None):
    gen = torch.Generator().manual_seed(seed)
    pos = torch.randn(NODES, 3, generator=gen, dtype=dtype)
    edge_index = _knn_edges(pos, NEIGHBOURS)
    node = {
        "0": torch.randn(NODES, CHANNELS, 1, generator=gen, dtype=dtype),
        "1": torch.randn(NODES, CHANNELS, 3, generator=gen, dtype=dtype),
    }
    edge = {
        str(d): torch.randn(edge_index.shape[1], c, 2 * d + 1, generator=gen, dtype=dtype)
        for d, c in (fiber_edge or Fiber()).items()
    }
    return pos, edge_index, node, edge


def _rotate(feats: dict[str, torch.Tensor], R: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v @ wigner_D(int(k), R).to(v.dtype).T for k, v in feats.items()}


def _error(actual: torch.Tensor, expected: torch.Tensor, reference: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / (1 + reference.abs().max())).item()


def _check(model: SE3Transformer, dtype: torch.dtype, seed: int, fiber_edge: Fiber | None) -> None:
    pos, edge_index, node, edge = _inputs(dtype, seed, fiber_edge)
    torch.manual_seed(seed)
    R = o3.rand_matrix(dtype=torch.float64).to(dtype)
    shift = torch.randn(3, dtype=dtype)
    with torch.no_grad():
        out = model((edge_index, pos), node, edge)
        out_rot = model((edge_index, pos @ R.T), _rotate(node, R), _rotate(edge, R))
        out_shift = model((edge_index, pos + shift), node, edge)
    if isinstance(out, torch.Tensor):  # pooled, return_type 0 or 1
        out, out_rot, out_shift = {"p": out}, {"p": out_rot}, {"p": out_shift}
        degree = {"p": model.return_type}
    else:
        degree = {k: int(k) for k in out}
    for key, value in out.items():
        D = wigner_D(degree[key], R).to(dtype)
        expected = value @ D.T if value.dim() == 3 or degree[key] > 0 else value
        assert _error(out_rot[key], expected, value) <= TOL[dtype], (key, _error(out_rot[key], expected, value))
        assert _error(out_shift[key], value, value) <= TOL[dtype]
    # The check must not pass vacuously: a degree-1 output does move under the rotation.
    if "1" in out:
        assert _error(out_rot["1"], out["1"], out["1"]) > 1e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("layout", ["full", "partial", "pairwise"])
def test_node_outputs_rotate(dtype: torch.dtype, layout: str) -> None:
    _check(_model(dtype, layout), dtype, seed=1, fiber_edge=None)


@pytest.mark.parametrize("seed", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_with_degree_one_edge_features(dtype: torch.dtype, seed: int) -> None:
    fiber_edge = Fiber({0: 4, 1: 4})
    _check(_model(dtype, fiber_edge=fiber_edge), dtype, seed=seed, fiber_edge=fiber_edge)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_pooled_invariant(dtype: torch.dtype) -> None:
    _check(_model(dtype, pooling="max", return_type=0), dtype, seed=4, fiber_edge=None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_pooled_equivariant(dtype: torch.dtype) -> None:
    _check(_model(dtype, pooling="avg", return_type=1), dtype, seed=5, fiber_edge=None)
