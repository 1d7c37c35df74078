r"""The radial contraction of the ``"fused"`` kernel as operators that write only their outputs.

For rows ``r = (e, k)`` (an edge and one of its ``K`` output components), the basis product ``T [R, P]``, the radial
network's last weight ``W [P, C M]`` (columns ``(o, m)``: ``C`` output channels, ``M`` hidden units) and its last
hidden layer ``h [E, M]``:

$$
y_{r o} = \sum_m h_{e(r) m} G_{r (o m)}, \qquad G = T W, \qquad e(r) = \lfloor r / K \rfloor,
$$

with the gradients

$$
dT = dG\, W^\top, \quad dW = T^\top dG, \quad dh_{e m} = \sum_{k o} dy_{(e k) o}\, G_{(e k) (o m)},
\qquad dG_{r (o m)} = dy_{r o} h_{e(r) m}.
$$

Each is one operator (``torch.ops.se3pyg.*``). On CUDA, in float16, bfloat16 or float32 with Triton installed
(and ``M`` a power of two, as the radial networks' 32), each is one Triton kernel that forms its tiles of $G$
or $dG$ in registers ([`se3pyg.nn.triton_radial`][se3pyg.nn.triton_radial]): ``G`` is never written, and the backward
pass forms it
again for ``dh``. Elsewhere (CPU, float64, no Triton, no rows) the operators run `contract_reference()`, the
``"reassociated"`` kernel's products, which write ``G`` and ``dG``.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
from torch import Tensor

#: dtypes the Triton kernels take.
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: Rows a partial sum of ``dW`` covers at most (partial sums run in parallel on a GPU), and the most partial sums.
ROWS_PER_SPLIT, MAX_SPLITS = 16384, 16


@functools.cache
def triton_available() -> bool:
    """Whether Triton is installed (the CUDA kernels of this module need it)."""
    return importlib.util.find_spec("triton") is not None


def row_splits(rows: int) -> int:
    """How many partial sums ``dW`` is formed in: one per `ROWS_PER_SPLIT` rows, 1 to `MAX_SPLITS`."""
    return max(1, min(MAX_SPLITS, -(-rows // ROWS_PER_SPLIT)))


def _runs_triton(t: Tensor, mid: int) -> bool:
    """Triton for CUDA tensors of its dtypes, with rows to run and a power-of-two hidden width (a tile dimension)."""
    shape_ok = t.numel() > 0 and mid > 0 and mid & (mid - 1) == 0
    return t.is_cuda and t.dtype in TRITON_DTYPES and shape_ok and triton_available()


def partial_dtype(dtype: torch.dtype) -> torch.dtype:
    """``dW``'s partial sums: float32, or float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def contract_reference(t: Tensor, w: Tensor, h: Tensor, components: int) -> Tensor:
    """``y [E, K, C]`` through ``G [E, K C, M]`` written to memory (differentiable by autograd)."""
    (edges, mid), channels = h.shape, w.shape[1] // h.shape[1]
    g = (t @ w).view(edges, components * channels, mid)
    return torch.bmm(g, h.unsqueeze(-1)).view(edges, components, channels)


def _dg_reference(dy: Tensor, h: Tensor) -> Tensor:
    """``dG [R, C M]`` written to memory."""
    edges, components, channels = dy.shape
    dg = torch.bmm(dy.reshape(edges, components * channels, 1), h.unsqueeze(1))
    return dg.view(edges * components, channels * h.shape[1])


@torch.library.custom_op("se3pyg::radial_contract", mutates_args=())
def _contract(t: Tensor, w: Tensor, h: Tensor, components: int) -> Tensor:
    if _runs_triton(t, h.shape[1]):
        from se3pyg.nn import triton_radial

        return triton_radial.contract(t, w, h, components)
    return contract_reference(t, w, h, components)


@_contract.register_fake
def _(t: Tensor, w: Tensor, h: Tensor, components: int) -> Tensor:
    return t.new_empty(h.shape[0], components, w.shape[1] // h.shape[1])


@torch.library.custom_op("se3pyg::radial_contract_grad_t", mutates_args=())
def _grad_t(dy: Tensor, w: Tensor, h: Tensor) -> Tensor:
    if _runs_triton(dy, h.shape[1]):
        from se3pyg.nn import triton_radial

        return triton_radial.grad_t(dy, w, h)
    return _dg_reference(dy, h) @ w.T


@_grad_t.register_fake
def _(dy: Tensor, w: Tensor, h: Tensor) -> Tensor:
    return dy.new_empty(dy.shape[0] * dy.shape[1], w.shape[0])


@torch.library.custom_op("se3pyg::radial_contract_grad_w", mutates_args=())
def _grad_w(t: Tensor, dy: Tensor, h: Tensor, splits: int) -> Tensor:
    if _runs_triton(t, h.shape[1]):
        from se3pyg.nn import triton_radial

        return triton_radial.grad_w(t, dy, h, splits)
    dg = _dg_reference(dy, h)
    step = max(1, -(-t.shape[0] // splits))
    runs = [t[a : a + step].T @ dg[a : a + step] for a in range(0, step * splits, step)]
    return torch.stack(runs).to(partial_dtype(t.dtype))


@_grad_w.register_fake
def _(t: Tensor, dy: Tensor, h: Tensor, splits: int) -> Tensor:
    return t.new_empty(splits, t.shape[1], dy.shape[-1] * h.shape[1], dtype=partial_dtype(t.dtype))


@torch.library.custom_op("se3pyg::radial_contract_grad_h", mutates_args=())
def _grad_h(t: Tensor, w: Tensor, dy: Tensor, mid: int) -> Tensor:
    if _runs_triton(t, mid):
        from se3pyg.nn import triton_radial

        return triton_radial.grad_h(t, w, dy, mid)
    edges, components, channels = dy.shape
    g = (t @ w).view(edges, components * channels, mid)
    return torch.bmm(dy.reshape(edges, 1, components * channels), g).view(edges, mid)


@_grad_h.register_fake
def _(t: Tensor, w: Tensor, dy: Tensor, mid: int) -> Tensor:
    return t.new_empty(dy.shape[0], mid)


def save_operands(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: Tensor) -> None:
    """An operator's autograd context: its operands ``t``, ``w`` and ``h`` (the first three inputs) saved."""
    ctx.save_for_backward(*inputs[:3])


def _backward(ctx: torch.autograd.function.FunctionCtx, dy: Tensor) -> tuple[Tensor | None, ...]:
    t, w, h = ctx.saved_tensors
    dt = dw = dh = None
    if ctx.needs_input_grad[0]:
        dt = _grad_t(dy, w, h)
    if ctx.needs_input_grad[1]:
        dw = _grad_w(t, dy, h, row_splits(t.shape[0])).sum(0).to(w.dtype)
    if ctx.needs_input_grad[2]:
        dh = _grad_h(t, w, dy, h.shape[1])
    return dt, dw, dh, None


_contract.register_autograd(_backward, setup_context=save_operands)


#: The operators' names in ``torch.ops.se3pyg``.
OPERATORS = ("radial_contract", "radial_contract_grad_t", "radial_contract_grad_w", "radial_contract_grad_h")


def operator_flops(name: str, args: tuple) -> int:
    """FLOPs (2 a multiply-add) of one call of ``torch.ops.se3pyg.<name>`` (one of `OPERATORS`) on ``args``.

    Each operator forms ``G`` (``R x C M`` values of ``P`` products each) or ``dG`` (one product each) and contracts it
    with ``h`` or ``dy`` (one product a value) or ``W`` (``P``): ``2 R C M (P + 1)`` for every one of them, as
    PyTorch's formulas count the reference products. The backward pass forms ``G`` once more than the reference
    does, for ``dh``, and ``dG`` once per gradient instead of once.
    """
    if name not in OPERATORS:
        raise ValueError(f"not an operator of this module: {name!r}")
    if name == "radial_contract_grad_t":  # (dy [E, K, C], w [P, C M], h)
        rows, (p, cm) = args[0].shape[0] * args[0].shape[1], args[1].shape
    elif name == "radial_contract_grad_w":  # (t [R, P], dy [E, K, C], h [E, M], splits)
        (rows, p), cm = args[0].shape, args[1].shape[2] * args[2].shape[1]
    else:  # (t [R, P], w [P, C M], ...)
        rows, (p, cm) = args[0].shape[0], args[1].shape
    return 2 * rows * cm * (p + 1)


def operands_in_one_dtype(name: str, t: Tensor, w: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``t``, ``w`` and ``h`` in one dtype for the operator ``name``: autocast's, if it is on and none is float64 (as
    a matmul would be), else theirs, which must agree."""
    device = t.device.type
    if torch.is_autocast_enabled(device) and torch.float64 not in (t.dtype, w.dtype, h.dtype):
        dtype = torch.get_autocast_dtype(device)
    elif t.dtype == w.dtype == h.dtype:
        dtype = t.dtype
    else:
        raise TypeError(f"{name} takes inputs of one dtype, got {t.dtype}, {w.dtype}, {h.dtype}")
    return t.to(dtype), w.to(dtype), h.to(dtype)


def radial_contract(t: Tensor, w: Tensor, h: Tensor, components: int) -> Tensor:
    """``y [E, K, C]`` (module docstring) by the operators; under autocast, in autocast's dtype as a matmul would be
    (float64 inputs stay float64).

    Args:
        t: ``[R, P]``, rows ``(e, k)``.
        w: ``[P, C M]``, columns ``(o, m)``.
        h: ``[E, M]`` with ``R = E K``.
        components: ``K``.
    """
    t, w, h = (x.contiguous() for x in operands_in_one_dtype("radial_contract", t, w, h))
    return _contract(t, w, h, components)
