"""What the tests of the fused contractions share: Triton's presence, its interpreter, compiling for GPUs without one,
and the operators' autocast rule."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest
import torch


def triton_version() -> tuple[int, ...]:
    """Triton's (major, minor), or ``()`` without Triton."""
    if importlib.util.find_spec("triton") is None:
        return ()
    from importlib.metadata import version

    return tuple(int(part) for part in version("triton").split(".")[:2])


needs_triton = pytest.mark.skipif(not triton_version(), reason="Triton is not installed")
needs_interpreter = pytest.mark.skipif(
    not triton_version() or triton_version() < (3, 8),
    reason="Triton is not installed, or its interpreter (before 3.8) fails on loops with runtime bounds",
)

needs_cuda_and_triton = pytest.mark.skipif(
    not torch.cuda.is_available() or not triton_version(), reason="needs CUDA and Triton"
)


def assert_cuda_kernels_match(contract: Callable, reference: Callable, inputs: tuple, k: int,
                              dy: torch.Tensor) -> None:  # fmt: skip
    """``contract`` on CUDA (its Triton kernels, no TF32) and its three gradients, from the float32 ``inputs``
    (``t, w, h``) and output gradient ``dy``, within 1e-5 of ``reference``'s float64 products of the same values."""
    torch.backends.cuda.matmul.allow_tf32 = False
    t, w, h = (x.detach().float().cuda().requires_grad_() for x in inputs)
    dy = dy.float().cuda()
    actual = contract(t, w, h, k)
    grads = torch.autograd.grad(actual, (t, w, h), dy)
    t64, w64, h64 = (x.detach().double().requires_grad_() for x in (t, w, h))
    expected = reference(t64, w64, h64, k)
    expected_grads = torch.autograd.grad(expected, (t64, w64, h64), dy.double())
    for got, want in zip([actual, *grads], [expected, *expected_grads], strict=True):
        assert ((got.double() - want).abs().max() / want.abs().max()).item() <= 1e-5


#: The largest shared memory a block may use (opt-in), by compute capability: A100, H100/H200.
SHARED_MEMORY = {80: 163 * 1024, 90: 227 * 1024}


def run_interpreted(code: str) -> dict[str, float]:
    """``code`` in a Python with ``TRITON_INTERPRET=1`` (set before Triton loads); the JSON of its last line."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def assert_compiles_for_gpu(kernel: Any, constexprs: dict, options: dict, arch: int, dtype: str) -> None:
    """``kernel`` compiles for ``sm_{arch}`` with pointers to ``dtype`` (``dw_ptr``, partial sums, to float32) within
    the block's shared memory, with tensor-core products (``mma``) in half precision."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    def argument_type(name: str) -> str:
        if name in constexprs:
            return "constexpr"
        if name == "dw_ptr":  # dW's partial sums are float32 whatever the inputs
            return "*fp32"
        return f"*{dtype}" if name.endswith("_ptr") else "i32"

    signature = {param.name: argument_type(param.name) for param in kernel.params}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    assert compiled.metadata.shared <= SHARED_MEMORY[arch], (kernel.fn.__name__, dtype, compiled.metadata.shared)
    if dtype != "fp32":
        assert "mma" in compiled.asm["ptx"], (kernel.fn.__name__, dtype, arch)


def assert_autocast_rule(contract: Callable, reference: Callable, t: torch.Tensor, w: torch.Tensor, h: torch.Tensor,
                         k: int) -> None:  # fmt: skip
    """Under autocast, ``contract`` computes in autocast's dtype exactly as ``reference`` does on inputs cast to it;
    inputs of different dtypes are refused; float64 inputs stay float64, as autocast leaves a matmul's."""
    t, w, h = (x.detach().float() for x in (t, w, h))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actual = contract(t, w, h, k)
        expected = reference(t.bfloat16(), w.bfloat16(), h.bfloat16(), k)
    assert actual.dtype == torch.bfloat16
    torch.testing.assert_close(actual, expected)  # bf16 products, maybe summed in another order: bf16's tolerance
    with pytest.raises(TypeError, match="one dtype"):
        contract(t, w.double(), h, k)
    t, w, h = (x.double() for x in (t, w, h))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(contract(t, w, h, k), reference(t, w, h, k), rtol=1e-12, atol=1e-12)  # float64
