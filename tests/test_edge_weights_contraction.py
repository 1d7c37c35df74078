"""The fused edge-weights kernel's contraction: its operators, and its Triton kernels run by Triton's interpreter on
CPU and compiled for GPUs without one."""

from __future__ import annotations

import pytest
import torch

from se3pyg.engine.counting import count_ops
from se3pyg.nn.edge_weights_contraction import (
    MAX_SPLITS,
    OPERATORS,
    contract_reference,
    edge_weights_contract,
    weight_splits,
)

from . import triton_checks as checks


def _inputs(units: int, rows_per_unit: int, p: int, channels: int, mid: int = 32, dtype=torch.float64) -> tuple:
    """``t [U J, P]``, ``w [M, P C]`` as a column slice of a wider map (as a kernel group's radial maps are), ``h``."""
    generator = torch.Generator().manual_seed(0)
    t = torch.randn(units * rows_per_unit, p, generator=generator, dtype=dtype, requires_grad=True)
    wider = torch.randn(mid, p * channels + 10, generator=generator, dtype=dtype)
    w = wider[:, 3 : 3 + p * channels].requires_grad_()
    h = torch.randn(units, mid, generator=generator, dtype=dtype, requires_grad=True)
    return t, w, h


def _strided_gradient(rows: int, channels: int, dtype=torch.float64) -> torch.Tensor:
    """A ``[R, C]`` gradient that is a slice of a wider one, as ``torch.cat``'s backward gives."""
    wider = torch.randn(rows, channels + 3, generator=torch.Generator().manual_seed(1), dtype=dtype)
    return wider[:, 1 : channels + 1]


@pytest.mark.parametrize("rows_per_unit", [1, 14])
def test_operators_equal_autograd_of_the_reference(rows_per_unit: int) -> None:
    """Forward and all three gradients equal PyTorch's products with autograd, float64; dW in several partial sums."""
    units = 8_000 // rows_per_unit
    t, w, h = _inputs(units, rows_per_unit, p=24, channels=6)
    assert weight_splits(units, 24, 6) > 1  # dW in several partial sums
    dy = _strided_gradient(units * rows_per_unit, channels=6)
    expected = contract_reference(t, w, h, rows_per_unit)
    expected_grads = torch.autograd.grad(expected, (t, w, h), dy)
    actual = edge_weights_contract(t, w, h, rows_per_unit)
    assert actual.shape == (units * rows_per_unit, 6)
    assert torch.allclose(actual, expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(torch.autograd.grad(actual, (t, w, h), dy), expected_grads, strict=True):
        assert got.shape == want.shape
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-11)


def test_weight_splits() -> None:
    """About 256 programs for dW's kernel, each over 256 units or more, at most 64 partial sums."""
    assert weight_splits(4416, 512, 32) == 8  # degree 3 at batch 240: 32 tiles
    assert weight_splits(4416, 128, 32) == 17  # degree 0: 8 tiles, 4416 // 256 partial sums
    assert weight_splits(10**6, 32, 16) == MAX_SPLITS
    assert weight_splits(100, 512, 32) == 1 and weight_splits(0, 512, 32) == 1


def test_operators_pass_torch_library_checks() -> None:
    """Schemas, fake (meta) implementations and autograd registration, as ``torch.library.opcheck`` tests them."""
    t, w, h = (x.detach().contiguous().requires_grad_() for x in _inputs(6, 3, p=20, channels=4, mid=8))
    torch.library.opcheck(torch.ops.se3pyg.edge_weights_contract.default, (t, w, h, 3))
    dy = _strided_gradient(18, channels=4)
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.se3pyg.edge_weights_contract_grad_t_h.default, (dy, t, w, h), test_utils=utils)
    torch.library.opcheck(torch.ops.se3pyg.edge_weights_contract_grad_w.default, (t, dy, h, 2), test_utils=utils)


def test_autocast_contracts_in_its_dtype_as_the_reference_does() -> None:
    checks.assert_autocast_rule(edge_weights_contract, contract_reference, *_inputs(30, 5, p=64, channels=8), 5)


def test_no_units() -> None:
    t, w, h = _inputs(0, 3, p=20, channels=4, mid=8)
    y = edge_weights_contract(t, w, h, 3)
    assert y.shape == (0, 4)
    dt, dw, dh = torch.autograd.grad(y, (t, w, h), torch.ones_like(y))
    assert dt.shape == t.shape and dh.shape == h.shape and torch.equal(dw, torch.zeros_like(w))


def test_counted_flops_of_the_operators_are_the_reference_products_and_one_more_of_each() -> None:
    """FLOPs counted for forward + backward: the operators' (``operator_flops``) are PyTorch's count of the reference
    products times 4/3, the backward pass forming ``R`` again for ``dT`` and ``dR`` once for each gradient."""
    units, rows_per_unit, p, channels, mid = 50, 6, 24, 6, 32
    t, w, h = _inputs(units, rows_per_unit, p, channels, mid)
    dy = _strided_gradient(units * rows_per_unit, channels)
    totals = {}
    for name, contract in (("reference", contract_reference), ("fused", edge_weights_contract)):
        totals[name] = count_ops(
            lambda contract=contract: torch.autograd.grad(contract(t, w, h, rows_per_unit), (t, w, h), dy)
        )
    radial, products = 2 * units * mid * p * channels, 2 * units * rows_per_unit * p * channels
    assert totals["reference"].flops == 3 * (radial + products)
    assert totals["fused"].flops == 4 * (radial + products)
    assert set(totals["fused"].flops_by_op) == set(OPERATORS)


INTERPRETED = """
import json, torch
from se3pyg.nn import triton_edge_weights
from se3pyg.nn.edge_weights_contraction import contract_reference

errors = {}
generator = torch.Generator().manual_seed(0)
# units, reduction and channels off the tiles (16, 16, 32); rows a unit of pairs and single edges; channels over two
# tiles; w a column slice of a wider map; dW in three partial sums; dy a strided slice. No bfloat16: the interpreter
# (Triton 3.9) multiplies bfloat16 blocks as if their bits were other numbers (errors of 1e10 on a 16 x 16 product).
for dtype, (units, rows, p, channels) in [
    (torch.float32, (37, 10, 48, 16)), (torch.float32, (20, 14, 40, 48)), (torch.float16, (19, 3, 40, 6)),
    (torch.float16, (17, 2, 24, 32)), (torch.float32, (5, 1, 20, 32)),
]:
    mid = 32
    t = torch.randn(units * rows, p, generator=generator).to(dtype)
    w = (torch.randn(mid, p * channels + 8, generator=generator) / mid**0.5).to(dtype)[:, 4 : 4 + p * channels]
    h = torch.randn(units, mid, generator=generator).to(dtype)
    dy = torch.randn(units * rows, channels + 2, generator=generator).to(dtype)[:, 1:-1]
    # the reference in float64 from the same (rounded) inputs
    t64, w64, h64 = (x.double().requires_grad_() for x in (t, w, h))
    y64 = contract_reference(t64, w64, h64, rows)
    grads64 = torch.autograd.grad(y64, (t64, w64, h64), dy.double())
    dt, dh = triton_edge_weights.grad_t_h(dy, t, w, h)
    actual = [triton_edge_weights.contract(t, w, h, rows), dt, triton_edge_weights.grad_w(t, dy, h, 3).sum(0), dh]
    for name, got, want in zip(["y", "dT", "dW", "dh"], actual, [y64, *grads64]):
        assert got.dtype == (torch.float32 if name == "dW" else dtype), (name, got.dtype)
        key = f"{dtype}-{units}x{rows}x{channels}-{name}"
        errors[key] = ((got.double() - want).abs().max() / want.abs().max()).item()
print(json.dumps(errors))
"""


@checks.needs_interpreter
def test_triton_kernels_equal_the_reference_under_the_interpreter() -> None:
    """The CUDA kernels, run by Triton's interpreter on CPU tensors, against float64 products of the same inputs.

    float32 products are exact here (the interpreter has no TF32), summed in float32 up to 1,920 at a time (``dh``:
    ``P C`` terms), whose round-off grows as the square root of the count (6e-8 a term): 2e-6 relative to the largest
    value; float16 inputs (``R`` rounded to them, as the reference's product is), float32 sums: 1e-3.
    """
    errors = checks.run_interpreted(INTERPRETED)
    assert len(errors) == 20
    for key, error in errors.items():
        assert error <= (1e-3 if "float16" in key else 2e-6), (key, error)


ALL_PRECISIONS = (("fp16", False), ("bf16", False), ("fp32", True), ("fp32", False))  # (dtype, exact float32)


@checks.needs_triton
@pytest.mark.parametrize(("arch", "precisions"), [(90, ALL_PRECISIONS), (80, (("fp16", False), ("fp32", True)))])
def test_triton_kernels_compile_for_gpus_without_one(arch: int, precisions: tuple) -> None:
    """Each kernel, with its tile of ``triton_edge_weights.TILES``, compiles for ``sm_{arch}`` within the block's
    shared memory, with tensor-core products (``mma``) in half precision: what the interpreter cannot show. The
    A100 (sm_80) in float16 and exact float32 only, the largest tiles in shared memory (its limit is the lower)."""
    from se3pyg.nn import triton_edge_weights, triton_radial

    kernels = {
        "contract": triton_edge_weights._forward_kernel,
        "grad_t_h": triton_edge_weights._grad_t_h_kernel,
        "grad_w": triton_edge_weights._grad_w_kernel,
    }
    for name, kernel in kernels.items():
        tile = triton_edge_weights.TILES[name]
        options = {"num_warps": tile.num_warps, "num_stages": tile.num_stages, **triton_radial.COMPILE_OPTIONS}
        for dtype, ieee in precisions:
            constexprs = dict(M=32, BU=tile.units, BJ=16, BP=tile.p, BC=tile.channels, IEEE=ieee)
            checks.assert_compiles_for_gpu(kernel, constexprs, options, arch, dtype)


@checks.needs_cuda_and_triton
def test_triton_kernels_on_cuda_equal_the_reference() -> None:
    """The compiled kernels (no TF32) against float64 products of the same float32 inputs, through the operators."""
    checks.assert_cuda_kernels_match(
        edge_weights_contract,
        contract_reference,
        _inputs(3001, 14, p=512, channels=32),
        14,
        _strided_gradient(3001 * 14, channels=32),
    )
