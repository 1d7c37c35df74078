r"""The ``"fused_edge_weights"`` kernel's contraction as operators that write only their outputs.

For units ``u`` (an edge, or a pair of edges that share radial weights), each with ``J`` consecutive rows
``(u, j)`` of the basis product ``T [U J, P]``, the radial network's last hidden layer ``h [U, M]`` and its last
weight as a map ``W [M, P C]`` (columns ``(p, o)``), the radial weights are $R_u = h_u W$ (``[P, C]``) and

$$
y_{(u j) o} = \sum_p T_{(u j) p} R_{u p o},
$$

with the gradients ($dR_u = T_u^\top dy_u$)

$$
dT_u = dy_u R_u^\top, \quad dh_{u m} = \sum_{p o} dR_{u p o} W_{m (p o)}, \quad
dW_{m (p o)} = \sum_u h_{u m} dR_{u p o}.
$$

These are the ``"edge_weights"`` kernel's products, the fewest FLOPs of the kernels. On CUDA, in float16, bfloat16 or
float32 with Triton installed (and ``M`` a power of two, at least 16, as the radial networks' 32), each operator is one
Triton kernel that forms its tiles of $R$ and $dR$ in registers
([`se3pyg.nn.triton_edge_weights`][se3pyg.nn.triton_edge_weights]):
neither is written. Elsewhere the operators run `contract_reference()`'s products, which write them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from se3pyg.nn.radial_contraction import (
    TRITON_DTYPES,
    operands_in_one_dtype,
    partial_dtype,
    save_operands,
    triton_available,
)

#: ``dW``'s partial sums: enough for about this many programs of the Triton kernel (tiles of 16 ``P`` columns and
#: 32 channels times partial sums; two waves of an H100's or H200's 132 multiprocessors), each over at least
#: `UNITS_PER_SPLIT` units (so they hold at most ``M / 256``, an eighth, of the values of ``R``), at most
#: `MAX_SPLITS` of them.
TARGET_PROGRAMS, UNITS_PER_SPLIT, MAX_SPLITS = 256, 256, 64


def weight_splits(units: int, p: int, channels: int) -> int:
    """How many partial sums ``dW`` is formed in (`TARGET_PROGRAMS`); 1 for few units."""
    tiles = -(-p // 16) * -(-channels // 32)
    return max(1, min(MAX_SPLITS, -(-TARGET_PROGRAMS // tiles), units // UNITS_PER_SPLIT))


def _runs_triton(t: Tensor, h: Tensor) -> bool:
    """Triton for CUDA tensors of its dtypes, with units to run and a power-of-two hidden width of 16 or more."""
    mid = h.shape[1]
    shape_ok = h.shape[0] > 0 and mid >= 16 and mid & (mid - 1) == 0
    return t.is_cuda and t.dtype in TRITON_DTYPES and shape_ok and triton_available()


def contract_reference(t: Tensor, w: Tensor, h: Tensor, rows_per_unit: int) -> Tensor:
    """``y [U J, C]`` through ``R [U, P, C]`` written to memory (differentiable by autograd)."""
    (units, p), channels = (h.shape[0], t.shape[1]), w.shape[1] // t.shape[1]
    radial = (h @ w).view(units, p, channels)
    return torch.bmm(t.view(units, rows_per_unit, p), radial).view(units * rows_per_unit, channels)


def _by_unit(x: Tensor, units: int) -> Tensor:
    """Rows ``(u, j)`` of ``x [U J, N]`` as ``[U, J, N]``."""
    return x.reshape(units, x.shape[0] // max(units, 1), x.shape[1])


def _grad_reference(dy: Tensor, t: Tensor, h: Tensor) -> Tensor:
    """``dR [U, P, C]`` written to memory."""
    units = h.shape[0]
    return torch.bmm(_by_unit(t, units).transpose(1, 2), _by_unit(dy, units))


@torch.library.custom_op("se3pyg::edge_weights_contract", mutates_args=())
def _contract(t: Tensor, w: Tensor, h: Tensor, rows_per_unit: int) -> Tensor:
    if _runs_triton(t, h):
        from se3pyg.nn import triton_edge_weights

        return triton_edge_weights.contract(t, w, h, rows_per_unit)
    return contract_reference(t, w, h, rows_per_unit)


@_contract.register_fake
def _(t: Tensor, w: Tensor, h: Tensor, rows_per_unit: int) -> Tensor:
    return t.new_empty(h.shape[0] * rows_per_unit, w.shape[1] // t.shape[1])


@torch.library.custom_op("se3pyg::edge_weights_contract_grad_t_h", mutates_args=())
def _grad_t_h(dy: Tensor, t: Tensor, w: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    if _runs_triton(t, h):
        from se3pyg.nn import triton_edge_weights

        return triton_edge_weights.grad_t_h(dy, t, w, h)
    units, p = h.shape[0], t.shape[1]
    radial = (h @ w).view(units, p, dy.shape[1])
    dt = torch.bmm(_by_unit(dy, units), radial.transpose(1, 2)).view(t.shape)
    dh = _grad_reference(dy, t, h).reshape(units, w.shape[1]) @ w.T
    return dt, dh


@_grad_t_h.register_fake
def _(dy: Tensor, t: Tensor, w: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(t), torch.empty_like(h)


@torch.library.custom_op("se3pyg::edge_weights_contract_grad_w", mutates_args=())
def _grad_w(t: Tensor, dy: Tensor, h: Tensor, splits: int) -> Tensor:
    if _runs_triton(t, h):
        from se3pyg.nn import triton_edge_weights

        return triton_edge_weights.grad_w(t, dy, h, splits)
    units = h.shape[0]
    dr = _grad_reference(dy, t, h).reshape(units, t.shape[1] * dy.shape[1])
    step = max(1, -(-units // splits))
    runs = [h[a : a + step].T @ dr[a : a + step] for a in range(0, step * splits, step)]
    return torch.stack(runs).to(partial_dtype(t.dtype))


@_grad_w.register_fake
def _(t: Tensor, dy: Tensor, h: Tensor, splits: int) -> Tensor:
    return t.new_empty(splits, h.shape[1], t.shape[1] * dy.shape[1], dtype=partial_dtype(t.dtype))


def _backward(ctx: torch.autograd.function.FunctionCtx, dy: Tensor) -> tuple[Tensor | None, ...]:
    t, w, h = ctx.saved_tensors
    dt = dw = dh = None
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[2]:
        dt, dh = _grad_t_h(dy, t, w, h)
    if ctx.needs_input_grad[1]:
        dw = _grad_w(t, dy, h, weight_splits(h.shape[0], t.shape[1], dy.shape[1])).sum(0).to(w.dtype)
    return dt, dw, dh, None


_contract.register_autograd(_backward, setup_context=save_operands)


#: The operators' names in ``torch.ops.se3pyg``.
OPERATORS = ("edge_weights_contract", "edge_weights_contract_grad_t_h", "edge_weights_contract_grad_w")


def operator_flops(name: str, args: tuple) -> int:
    """FLOPs (2 a multiply-add) of one call of ``torch.ops.se3pyg.<name>`` (one of `OPERATORS`) on ``args``.

    Forming ``R`` or ``dR`` costs ``2 U P C M`` (``R = h W``) or ``2 R P C`` (``dR = T^T dy``, ``R = U J`` rows),
    a product with ``T``, ``dy`` or ``W`` as much again: the forward pass ``2 U P C M + 2 R P C``; ``grad_t_h`` forms
    ``R`` and ``dR`` and takes ``dT`` and ``dh`` from them, ``4 U P C M + 4 R P C``; ``grad_w`` forms ``dR`` and takes
    ``dW``, ``2 U P C M + 2 R P C``. The reference's products count the same.
    """
    if name not in OPERATORS:
        raise ValueError(f"not an operator of this module: {name!r}")
    if name == "edge_weights_contract":  # (t [R, P], w [M, P C], h [U, M], J)
        (rows, p), (mid, pc), units = args[0].shape, args[1].shape, args[2].shape[0]
    elif name == "edge_weights_contract_grad_t_h":  # (dy [R, C], t, w, h)
        (rows, p), (mid, pc), units = args[1].shape, args[2].shape, args[3].shape[0]
    else:  # (t [R, P], dy [R, C], h [U, M], splits)
        (rows, p), (units, mid) = args[0].shape, args[2].shape
        pc = p * args[1].shape[1]
    once = 2 * units * pc * mid + 2 * rows * pc
    return 2 * once if name == "edge_weights_contract_grad_t_h" else once


def edge_weights_contract(t: Tensor, w: Tensor, h: Tensor, rows_per_unit: int) -> Tensor:
    """``y [U J, C]`` (module docstring) by the operators; under autocast, in autocast's dtype as a matmul would be
    (float64 inputs stay float64).

    Args:
        t: ``[U J, P]``, rows ``(u, j)``.
        w: ``[M, P C]``, columns ``(p, o)``; a view with column stride 1 is read as it is.
        h: ``[U, M]``.
        rows_per_unit: ``J``.
    """
    t, w, h = operands_in_one_dtype("edge_weights_contract", t, w, h)
    return _contract(t.contiguous(), w if w.stride(1) == 1 else w.contiguous(), h.contiguous(), rows_per_unit)
