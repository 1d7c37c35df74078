"""The fused kernel's radial contraction: its operators, and its Triton kernels run by Triton's interpreter on CPU."""

from __future__ import annotations

import pytest
import torch

from se3pyg.engine.counting import count_ops
from se3pyg.nn.radial_contraction import OPERATORS, contract_reference, radial_contract, row_splits

from . import triton_checks as checks


def _inputs(edges: int, components: int, p: int, channels: int, mid: int = 32, dtype=torch.float64) -> tuple:
    generator = torch.Generator().manual_seed(0)
    t = torch.randn(edges * components, p, generator=generator, dtype=dtype, requires_grad=True)
    w = torch.randn(p, channels * mid, generator=generator, dtype=dtype, requires_grad=True)
    h = torch.randn(edges, mid, generator=generator, dtype=dtype, requires_grad=True)
    return t, w, h


def _strided_gradient(edges: int, components: int, channels: int, dtype=torch.float64) -> torch.Tensor:
    """A ``[E, K, C]`` gradient that is a slice of a wider one, as ``torch.cat``'s backward gives."""
    wider = torch.randn(edges, components + 3, channels, generator=torch.Generator().manual_seed(1), dtype=dtype)
    return wider[:, 1 : components + 1]


@pytest.mark.parametrize("components", [1, 7])
def test_operators_equal_autograd_of_the_reference(components: int) -> None:
    """Forward and all three gradients equal PyTorch's products with autograd, float64; dW in several partial sums."""
    edges = 40_000 // components  # 40,000 rows: three partial sums of dW
    assert row_splits(edges * components) == 3
    t, w, h = _inputs(edges, components, p=48, channels=6)
    dy = _strided_gradient(edges, components, channels=6)
    expected = contract_reference(t, w, h, components)
    expected_grads = torch.autograd.grad(expected, (t, w, h), dy)
    actual = radial_contract(t, w, h, components)
    assert actual.shape == (edges, components, 6)
    assert torch.allclose(actual, expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(torch.autograd.grad(actual, (t, w, h), dy), expected_grads, strict=True):
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-11)


def test_operators_pass_torch_library_checks() -> None:
    """Schemas, fake (meta) implementations and autograd registration, as ``torch.library.opcheck`` tests them."""
    t, w, h = _inputs(6, 3, p=20, channels=4, mid=8)
    torch.library.opcheck(torch.ops.se3pyg.radial_contract.default, (t, w, h, 3))
    dy = _strided_gradient(6, 3, channels=4)
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.se3pyg.radial_contract_grad_t.default, (dy, w, h), test_utils=utils)
    torch.library.opcheck(torch.ops.se3pyg.radial_contract_grad_w.default, (t, dy, h, 2), test_utils=utils)
    torch.library.opcheck(torch.ops.se3pyg.radial_contract_grad_h.default, (t, w, dy, 8), test_utils=utils)


def test_autocast_contracts_in_its_dtype_as_the_reference_does() -> None:
    checks.assert_autocast_rule(radial_contract, contract_reference, *_inputs(30, 5, p=64, channels=8), 5)


INTERPRETED = """
import json, torch
from se3pyg.nn import triton_radial
from se3pyg.nn.radial_contraction import contract_reference

errors = {}
generator = torch.Generator().manual_seed(0)
# rows, reduction and channels off the tile sizes (64, 32, 4); dW in three partial sums; dy a strided slice
for dtype, (edges, components, p, channels) in [
    (torch.float32, (37, 5, 48, 10)), (torch.float32, (70, 1, 128, 32)), (torch.float16, (19, 3, 40, 6)),
]:
    mid = 32
    t = torch.randn(edges * components, p, generator=generator).to(dtype).requires_grad_()
    w = (torch.randn(p, channels * mid, generator=generator) / p**0.5).to(dtype).requires_grad_()
    h = torch.randn(edges, mid, generator=generator).to(dtype).requires_grad_()
    dy = torch.randn(edges, components + 2, channels, generator=generator).to(dtype)[:, 1:-1]
    # the reference in float64 from the same (rounded) inputs
    t64, w64, h64 = (x.detach().double().requires_grad_() for x in (t, w, h))
    y64 = contract_reference(t64, w64, h64, components)
    grads64 = torch.autograd.grad(y64, (t64, w64, h64), dy.double())
    actual = [
        triton_radial.contract(t.detach(), w.detach(), h.detach(), components),
        triton_radial.grad_t(dy, w.detach(), h.detach()),
        triton_radial.grad_w(t.detach(), dy, h.detach(), 3).sum(0),
        triton_radial.grad_h(t.detach(), w.detach(), dy, mid),
    ]
    for name, got, want in zip(["y", "dT", "dW", "dh"], actual, [y64, *grads64]):
        assert got.dtype == (torch.float32 if name == "dW" else dtype), (name, got.dtype)
        key = f"{dtype}-{edges}x{components}-{name}"
        errors[key] = ((got.double() - want).abs().max() / want.abs().max()).item()
print(json.dumps(errors))
"""


@checks.needs_interpreter
def test_triton_kernels_equal_the_reference_under_the_interpreter() -> None:
    """The CUDA kernels, run by Triton's interpreter on CPU tensors, against float64 products of the same inputs.

    float32 products are exact here (the interpreter has no TF32): 1e-6 relative; float16 inputs, float32 sums: 1e-3.
    """
    errors = checks.run_interpreted(INTERPRETED)
    assert len(errors) == 12
    for key, error in errors.items():
        assert error <= (1e-3 if "float16" in key else 1e-6), (key, error)


@checks.needs_triton
@pytest.mark.parametrize("arch", sorted(checks.SHARED_MEMORY))
def test_triton_kernels_compile_for_gpus_without_one(arch: int) -> None:
    """Each kernel, with its tile of ``triton_radial.TILES``, compiles for ``sm_{arch}`` in float16, bfloat16 and
    float32 (exact and TF32) within the block's shared memory, with tensor-core products (``mma``) in half
    precision: what the interpreter cannot show."""
    from se3pyg.nn import triton_radial

    kernels = {
        "contract": triton_radial._forward_kernel,
        "grad_t": triton_radial._grad_t_kernel,
        "grad_w": triton_radial._grad_w_kernel,
        "grad_h": triton_radial._grad_h_kernel,
    }
    for name, kernel in kernels.items():
        tile = triton_radial.TILES[name]
        for dtype, ieee in (("fp16", False), ("bf16", False), ("fp32", True), ("fp32", False)):
            constexprs = dict(M=32, BR=tile.rows, BC=tile.channels, BP=tile.p, IEEE=ieee)
            options = {"num_warps": tile.num_warps, **triton_radial.COMPILE_OPTIONS}
            checks.assert_compiles_for_gpu(kernel, constexprs, options, arch, dtype)


@checks.needs_cuda_and_triton
def test_triton_kernels_on_cuda_equal_the_reference() -> None:
    """The compiled kernels (no TF32) against float64 products of the same float32 inputs, through the operators."""
    checks.assert_cuda_kernels_match(
        radial_contract,
        contract_reference,
        _inputs(3001, 7, p=512, channels=32),
        7,
        _strided_gradient(3001, 7, channels=32),
    )


def test_no_edges() -> None:
    t, w, h = _inputs(0, 3, p=20, channels=4, mid=8)
    y = radial_contract(t, w, h, 3)
    assert y.shape == (0, 3, 4)
    dt, dw, dh = torch.autograd.grad(y, (t, w, h), torch.ones_like(y))
    assert dt.shape == t.shape and dh.shape == h.shape and torch.equal(dw, torch.zeros_like(w))


def test_counted_flops_of_the_operators_are_the_reference_products_and_one_more_forward() -> None:
    """FLOPs counted for forward + backward: the fused operators' (:func:`operator_flops`) are PyTorch's count of the
    reference products plus one forward's worth, the backward pass forming ``G`` again for ``dh``."""
    t, w, h = _inputs(50, 7, p=48, channels=6)
    dy = _strided_gradient(50, 7, channels=6)
    totals = {}
    for name, contract in (("reference", contract_reference), ("fused", radial_contract)):
        totals[name] = count_ops(lambda contract=contract: torch.autograd.grad(contract(t, w, h, 7), (t, w, h), dy))
    rows, cm, p = 50 * 7, 6 * 32, 48
    forward = 2 * rows * cm * (p + 1)
    assert totals["reference"].flops == 3 * forward
    assert totals["fused"].flops == 4 * forward
    assert set(totals["fused"].flops_by_op) == set(OPERATORS)
