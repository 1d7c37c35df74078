r"""Triton kernels of the fused edge-weights contraction
(`se3pyg.nn.edge_weights_contraction`), for CUDA.

Units ``u`` (an edge, or a pair of edges sharing radial weights), each with ``J`` consecutive rows ``(u, j)`` of
``T [U J, P]``, the radial network's last hidden layer ``h [U, M]`` and its last weight as a map
``W [M, P C]`` (columns ``(p, o)``):

$$
y_{(u j) o} = \sum_p T_{(u j) p} R_{u p o}, \qquad R_{u p o} = \sum_m h_{u m} W_{m (p o)}.
$$

Each kernel forms its tiles of $R$ (``[units, P tile, C tile]``, one product with ``h``) in registers and
contracts them at once with ``T`` or ``dy`` (batched products, a unit a batch), so $R$ and $dR$ are
never written. Inputs are float16, bfloat16 or float32; products accumulate in float32, without TF32 unless
``torch.backends.cuda.matmul.allow_tf32`` allows it; $R$ is rounded to the inputs' dtype before its product,
as the reference's ``h @ W`` is. Importing this module needs Triton; with ``TRITON_INTERPRET=1`` set first, the
kernels run on CPU tensors (slowly), which is how the tests check them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from se3pyg.nn import triton_radial
from se3pyg.nn.triton_radial import _dot


class Tile(NamedTuple):
    """A kernel's tile: units, reduction (``P``) and output channels (rows of a unit are padded to 16 or more), and
    its launch: ``num_stages`` 1 (loads not pipelined) keeps float32's shared memory within an A100's (67-117 KB for
    these tiles, 2-3x that pipelined)."""

    units: int = 16
    p: int = 16
    channels: int = 32
    num_warps: int = 4
    num_stages: int = 1


#: Each kernel's tile; not yet tuned on a GPU.
TILES: dict[str, Tile] = {name: Tile() for name in ("contract", "grad_t_h", "grad_w")}


@triton.jit
def _columns(ps, outs, P, C, BP: tl.constexpr, BC: tl.constexpr):
    """Columns ``p C + o`` of ``W`` for ``ps`` and ``outs``, as ``[BP * BC]``, and whether each is in range."""
    cols = tl.reshape(ps[:, None] * C + outs[None, :], (BP * BC,))
    return cols, tl.reshape((ps[:, None] < P) & (outs[None, :] < C), (BP * BC,))


@triton.jit
def _weights_tile(h, w_ptr, s_m, ps, outs, P, C, M: tl.constexpr, BU: tl.constexpr, BP: tl.constexpr,
                  BC: tl.constexpr, IEEE: tl.constexpr):  # fmt: skip
    """``R[units, ps, outs] = h[units] W[:, (ps, outs)]``, ``[BU, BP, BC]`` in the inputs' dtype (float32 sums)."""
    cols, ok = _columns(ps, outs, P, C, BP, BC)
    ms = tl.arange(0, M)
    w = tl.load(w_ptr + ms[:, None].to(tl.int64) * s_m + cols[None, :], mask=ok[None, :], other=0.0)
    r = _dot(h, w, tl.zeros((BU, BP * BC), tl.float32), IEEE)
    return tl.reshape(r, (BU, BP, BC)).to(h.dtype)


@triton.jit
def _unit_rows(units, unit_ok, J, BJ: tl.constexpr):
    """Rows ``u J + j`` of the ``units`` (``[BU, BJ]``, ``j`` padded to ``BJ``) and whether each is in range."""
    js = tl.arange(0, BJ)
    return units[:, None] * J + js[None, :], unit_ok[:, None] & (js < J)[None, :]


@triton.jit
def _load_rows(ptr, rows, row_ok, cols, n_cols, s_r, s_c):
    """``x[rows, cols]`` of a matrix of strides ``(s_r, s_c)``, ``[BU, BJ, len(cols)]``, zero out of range."""
    mask = row_ok[:, :, None] & (cols < n_cols)[None, None, :]
    return tl.load(ptr + rows[:, :, None] * s_r + cols[None, None, :] * s_c, mask=mask, other=0.0)


@triton.jit
def _hidden(h_ptr, units, unit_ok, M: tl.constexpr):
    """``h[units, :]``, ``[BU, M]``."""
    return tl.load(h_ptr + units[:, None] * M + tl.arange(0, M)[None, :], mask=unit_ok[:, None], other=0.0)


@triton.jit
def _forward_kernel(
    t_ptr, w_ptr, h_ptr, y_ptr, U, J, P, C, s_m,
    M: tl.constexpr, BU: tl.constexpr, BJ: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """``y[rows of units, outs]``: tiles of ``R`` over ``P``, each contracted with its tile of ``T`` at once."""
    units = (tl.program_id(0) * BU + tl.arange(0, BU)).to(tl.int64)
    outs = tl.program_id(1) * BC + tl.arange(0, BC)
    unit_ok = units < U
    rows, row_ok = _unit_rows(units, unit_ok, J, BJ)
    h = _hidden(h_ptr, units, unit_ok, M)
    acc = tl.zeros((BU, BJ, BC), tl.float32)
    for p0 in range(0, P, BP):
        ps = p0 + tl.arange(0, BP)
        r = _weights_tile(h, w_ptr, s_m, ps, outs, P, C, M, BU, BP, BC, IEEE)
        acc = _dot(_load_rows(t_ptr, rows, row_ok, ps, P, P, 1), r, acc, IEEE)
    mask = row_ok[:, :, None] & (outs < C)[None, None, :]
    tl.store(y_ptr + rows[:, :, None] * C + outs[None, None, :], acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_t_h_kernel(
    dy_ptr, t_ptr, w_ptr, h_ptr, dt_ptr, dh_ptr, U, J, P, C, s_m, s_r, s_c,
    M: tl.constexpr, BU: tl.constexpr, BJ: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """``dT = dy R^T`` and ``dh = dR W^T`` (``dR_u = T_u^T dy_u``) of the program's units, over ``P`` and ``C``."""
    units = (tl.program_id(0) * BU + tl.arange(0, BU)).to(tl.int64)
    unit_ok = units < U
    rows, row_ok = _unit_rows(units, unit_ok, J, BJ)
    h = _hidden(h_ptr, units, unit_ok, M)
    ms = tl.arange(0, M)
    dh = tl.zeros((BU, M), tl.float32)
    for p0 in range(0, P, BP):
        ps = p0 + tl.arange(0, BP)
        t = _load_rows(t_ptr, rows, row_ok, ps, P, P, 1)
        dt = tl.zeros((BU, BJ, BP), tl.float32)
        for o0 in range(0, C, BC):
            outs = o0 + tl.arange(0, BC)
            dy = _load_rows(dy_ptr, rows, row_ok, outs, C, s_r, s_c)
            r = _weights_tile(h, w_ptr, s_m, ps, outs, P, C, M, BU, BP, BC, IEEE)
            dt = _dot(dy, tl.permute(r, (0, 2, 1)), dt, IEEE)
            dr = _dot(tl.permute(t, (0, 2, 1)), dy, tl.zeros((BU, BP, BC), tl.float32), IEEE)
            cols, ok = _columns(ps, outs, P, C, BP, BC)
            wt = tl.load(w_ptr + cols[:, None] + ms[None, :].to(tl.int64) * s_m, mask=ok[:, None], other=0.0)
            dh = _dot(tl.reshape(dr, (BU, BP * BC)).to(wt.dtype), wt, dh, IEEE)
        mask = row_ok[:, :, None] & (ps < P)[None, None, :]
        tl.store(dt_ptr + rows[:, :, None] * P + ps[None, None, :], dt.to(dt_ptr.dtype.element_ty), mask=mask)
    tl.store(dh_ptr + units[:, None] * M + ms[None, :], dh.to(dh_ptr.dtype.element_ty), mask=unit_ok[:, None])


@triton.jit
def _grad_w_kernel(
    t_ptr, dy_ptr, h_ptr, dw_ptr, U, J, P, C, s_r, s_c, units_per_split,
    M: tl.constexpr, BU: tl.constexpr, BJ: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """Partial sum ``s`` of ``dW[:, (ps, outs)] = sum_u h_u^T dR_u`` over its run of ``units_per_split`` units."""
    ps = tl.program_id(0) * BP + tl.arange(0, BP)
    outs = tl.program_id(1) * BC + tl.arange(0, BC)
    split = tl.program_id(2).to(tl.int64)
    start = split * units_per_split
    stop = tl.minimum(start + units_per_split, U)
    acc = tl.zeros((M, BP * BC), tl.float32)
    for u0 in range(start, stop, BU):
        units = u0 + tl.arange(0, BU)
        unit_ok = units < stop
        rows, row_ok = _unit_rows(units, unit_ok, J, BJ)
        t = _load_rows(t_ptr, rows, row_ok, ps, P, P, 1)
        dy = _load_rows(dy_ptr, rows, row_ok, outs, C, s_r, s_c)
        dr = _dot(tl.permute(t, (0, 2, 1)), dy, tl.zeros((BU, BP, BC), tl.float32), IEEE)
        h = _hidden(h_ptr, units, unit_ok, M)
        acc = _dot(tl.trans(h), tl.reshape(dr, (BU, BP * BC)).to(h.dtype), acc, IEEE)
    cols, ok = _columns(ps, outs, P, C, BP, BC)
    out = dw_ptr + split * M * P * C + tl.arange(0, M)[:, None].to(tl.int64) * (P * C) + cols[None, :]
    tl.store(out, acc, mask=ok[None, :])


def _options(x: Tensor, rows_per_unit: int, channels: int, tile: Tile) -> dict:
    """The launch of a kernel on inputs like ``x``: its tile's block sizes, rows a unit padded to a power of two (16 or
    more), and the float32 precision rule of the radial kernels (``triton_radial._options``)."""
    return dict(
        **triton_radial._options(x),
        BU=tile.units,
        BJ=max(16, triton.next_power_of_2(rows_per_unit)),
        BP=tile.p,
        BC=max(16, min(tile.channels, triton.next_power_of_2(channels))),
        num_warps=tile.num_warps,
        num_stages=tile.num_stages,
    )


def contract(t: Tensor, w: Tensor, h: Tensor, rows_per_unit: int) -> Tensor:
    """``y [U J, C]`` (module docstring); ``t`` and ``h`` contiguous, ``w`` with unit column stride."""
    (U, M), P = h.shape, t.shape[1]
    C = w.shape[1] // P
    y = t.new_empty(U * rows_per_unit, C)
    options = _options(t, rows_per_unit, C, TILES["contract"])
    grid = (triton.cdiv(U, options["BU"]), triton.cdiv(C, options["BC"]))
    _forward_kernel[grid](t, w, h, y, U, rows_per_unit, P, C, w.stride(0), M, **options)
    return y


def grad_t_h(dy: Tensor, t: Tensor, w: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """``(dT [U J, P], dh [U, M])`` for ``dy [U J, C]`` of any strides."""
    (U, M), (R, P), C = h.shape, t.shape, dy.shape[1]
    dt, dh = t.new_empty(R, P), h.new_empty(U, M)
    options = _options(t, R // U, C, TILES["grad_t_h"])
    grid = (triton.cdiv(U, options["BU"]),)
    _grad_t_h_kernel[grid](dy, t, w, h, dt, dh, U, R // U, P, C, w.stride(0), *dy.stride(), M, **options)
    return dt, dh


def grad_w(t: Tensor, dy: Tensor, h: Tensor, splits: int) -> Tensor:
    """``dW`` as ``splits`` partial sums over runs of units, ``[splits, M, P C]``, float32."""
    (U, M), (R, P), C = h.shape, t.shape, dy.shape[1]
    dw = t.new_empty(splits, M, P * C, dtype=torch.float32)
    options = _options(t, R // U, C, TILES["grad_w"])
    grid = (triton.cdiv(P, options["BP"]), triton.cdiv(C, options["BC"]), splits)
    _grad_w_kernel[grid](t, dy, h, dw, U, R // U, P, C, *dy.stride(), triton.cdiv(U, splits), M, **options)
    return dw
