r"""Triton kernels of the fused radial contraction (`se3pyg.nn.radial_contraction`), for
CUDA.

Rows ``r = (e, k)`` (an edge and one of its ``K`` output components), ``T [R, P]``, ``W [P, C M]`` (``C`` output
channels ``o``; columns ``(o, m)``), the radial network's last hidden layer ``h [E, M]`` and ``e(r) = r // K``:

$$
y_{r o} = \sum_m h_{e(r) m} G_{r (o m)}, \qquad G = T W.
$$

Each kernel forms its tile of $G$ (or of $dG_{r (o m)} = dy_{r o} h_{e(r) m}$) in registers and contracts
it at once, so neither is written to memory. Inputs are float16, bfloat16 or float32; products accumulate in
float32, without TF32 unless ``torch.backends.cuda.matmul.allow_tf32`` allows it. Importing this module needs
Triton; with ``TRITON_INTERPRET=1`` set first, the kernels run on CPU tensors (slowly), which is how the tests check
them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor


class Tile(NamedTuple):
    """A kernel's tile: rows ``r`` (edges for ``grad_h``), output channels (times ``M`` columns of ``G``), ``P``."""

    rows: int = 64
    channels: int = 4
    p: int = 32
    num_warps: int = 4


#: Each kernel's tile; not yet tuned on a GPU (``benchmarks/gpu_suite.py``'s ``fused_tiles`` job times others).
TILES: dict[str, Tile] = {name: Tile() for name in ("contract", "grad_t", "grad_w", "grad_h")}


@triton.jit
def _dot(a, b, acc, IEEE: tl.constexpr):
    """``acc + a b``; ``IEEE``: float32 products exact (no TF32)."""
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def _columns(outs, C, M: tl.constexpr, BC: tl.constexpr):
    """Columns ``o M + m`` of ``G`` for the channels ``outs`` and whether each is in range, as ``[BC * M]``."""
    ms = tl.arange(0, M)
    cols = tl.reshape(outs[:, None] * M + ms[None, :], (BC * M,))
    valid = tl.reshape(tl.broadcast_to(outs[:, None] < C, (BC, M)), (BC * M,))
    return cols, valid


@triton.jit
def _g_step(t_ptr, w_ptr, rows, row_ok, cols, col_ok, ps, P, N, acc, IEEE: tl.constexpr):
    """``acc + T[rows, ps] W[ps, cols]``: one step of a ``G`` tile ``[BR, BC * M]`` over ``P``."""
    p_ok = ps < P
    a = tl.load(t_ptr + rows[:, None] * P + ps[None, :], mask=row_ok[:, None] & p_ok[None, :], other=0.0)
    b = tl.load(w_ptr + ps[:, None].to(tl.int64) * N + cols[None, :], mask=p_ok[:, None] & col_ok[None, :], other=0.0)
    return _dot(a, b, acc, IEEE)


@triton.jit
def _hidden_rows(h_ptr, rows, row_ok, K, M: tl.constexpr):
    """``h[e(rows), :]``, ``[BR, M]``, in the inputs' dtype."""
    return tl.load(h_ptr + (rows // K)[:, None] * M + tl.arange(0, M)[None, :], mask=row_ok[:, None], other=0.0)


@triton.jit
def _dy_offsets(rows, outs, K, s_e, s_k, s_c):
    """Offsets of ``dy[e(r), k(r), o]`` in a ``[E, K, C]`` gradient of any strides."""
    edges = rows // K
    return (edges * s_e + (rows - edges * K) * s_k)[:, None] + (outs * s_c)[None, :]


@triton.jit
def _forward_kernel(
    t_ptr, w_ptr, h_ptr, y_ptr, R, P, C, K,
    M: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr, BP: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """``y[rows, outs]``: a ``G`` tile over ``P``, contracted with ``h`` over ``m``."""
    rows = (tl.program_id(0) * BR + tl.arange(0, BR)).to(tl.int64)
    outs = tl.program_id(1) * BC + tl.arange(0, BC)
    row_ok = rows < R
    cols, col_ok = _columns(outs, C, M, BC)
    g = tl.zeros((BR, BC * M), tl.float32)
    for p0 in range(0, P, BP):
        g = _g_step(t_ptr, w_ptr, rows, row_ok, cols, col_ok, p0 + tl.arange(0, BP), P, C * M, g, IEEE)
    h = _hidden_rows(h_ptr, rows, row_ok, K, M).to(tl.float32)
    y = tl.sum(tl.reshape(g, (BR, BC, M)) * h[:, None, :], axis=2)
    mask = row_ok[:, None] & (outs[None, :] < C)
    tl.store(y_ptr + rows[:, None] * C + outs[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dg_tile(dy_ptr, h, rows, row_ok, outs, C, K, s_e, s_k, s_c, BR: tl.constexpr, BC: tl.constexpr, M: tl.constexpr):
    """``dG[rows, (outs, m)] = dy[rows, outs] h[e(rows), m]``, ``[BR, BC * M]``, in the inputs' dtype."""
    mask = row_ok[:, None] & (outs[None, :] < C)
    dy = tl.load(dy_ptr + _dy_offsets(rows, outs, K, s_e, s_k, s_c), mask=mask, other=0.0)
    return tl.reshape(dy[:, :, None] * h[:, None, :], (BR, BC * M))


@triton.jit
def _grad_t_kernel(
    dy_ptr, w_ptr, h_ptr, dt_ptr, R, P, C, K, s_e, s_k, s_c,
    M: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr, BP: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """``dT[rows, ps] = dG[rows] W[ps]^T``, over the output channels in steps of ``BC``."""
    rows = (tl.program_id(0) * BR + tl.arange(0, BR)).to(tl.int64)
    ps = tl.program_id(1) * BP + tl.arange(0, BP)
    row_ok, p_ok = rows < R, ps < P
    h = _hidden_rows(h_ptr, rows, row_ok, K, M)
    acc = tl.zeros((BR, BP), tl.float32)
    for o0 in range(0, C, BC):
        outs = o0 + tl.arange(0, BC)
        cols, col_ok = _columns(outs, C, M, BC)
        dg = _dg_tile(dy_ptr, h, rows, row_ok, outs, C, K, s_e, s_k, s_c, BR, BC, M)
        w_offsets = ps[None, :].to(tl.int64) * (C * M) + cols[:, None]
        wt = tl.load(w_ptr + w_offsets, mask=col_ok[:, None] & p_ok[None, :], other=0.0)
        acc = _dot(dg, wt, acc, IEEE)
    mask = row_ok[:, None] & p_ok[None, :]
    tl.store(dt_ptr + rows[:, None] * P + ps[None, :], acc.to(dt_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_w_kernel(
    t_ptr, dy_ptr, h_ptr, dw_ptr, R, P, C, K, s_e, s_k, s_c, rows_per_split,
    M: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr, BP: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """Partial sum ``s`` of ``dW[ps, cols] = T[rows]^T dG[rows]``, over its run of ``rows_per_split`` rows."""
    ps = tl.program_id(0) * BP + tl.arange(0, BP)
    outs = tl.program_id(1) * BC + tl.arange(0, BC)
    split = tl.program_id(2).to(tl.int64)
    p_ok = ps < P
    cols, col_ok = _columns(outs, C, M, BC)
    start = split * rows_per_split
    stop = tl.minimum(start + rows_per_split, R)
    acc = tl.zeros((BP, BC * M), tl.float32)
    for r0 in range(start, stop, BR):
        rows = r0 + tl.arange(0, BR)
        row_ok = rows < stop
        at = tl.load(t_ptr + rows[None, :] * P + ps[:, None], mask=p_ok[:, None] & row_ok[None, :], other=0.0)
        h = _hidden_rows(h_ptr, rows, row_ok, K, M)
        dg = _dg_tile(dy_ptr, h, rows, row_ok, outs, C, K, s_e, s_k, s_c, BR, BC, M)
        acc = _dot(at, dg, acc, IEEE)
    out = dw_ptr + split * P * C * M + ps[:, None].to(tl.int64) * (C * M) + cols[None, :]
    tl.store(out, acc.to(dw_ptr.dtype.element_ty), mask=p_ok[:, None] & col_ok[None, :])


@triton.jit
def _grad_h_kernel(
    t_ptr, w_ptr, dy_ptr, dh_ptr, E, P, C, K, s_e, s_k, s_c,
    M: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr, BP: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """``dh[edges, m] = sum_{k, o} dy[(e, k), o] G[(e, k), (o, m)]``, the ``K`` rows of an edge one after another."""
    edges = (tl.program_id(0) * BR + tl.arange(0, BR)).to(tl.int64)
    edge_ok = edges < E
    ms = tl.arange(0, M)
    acc = tl.zeros((BR, M), tl.float32)
    for k in range(0, K):
        rows = edges * K + k
        for o0 in range(0, C, BC):
            outs = o0 + tl.arange(0, BC)
            cols, col_ok = _columns(outs, C, M, BC)
            g = tl.zeros((BR, BC * M), tl.float32)
            for p0 in range(0, P, BP):
                g = _g_step(t_ptr, w_ptr, rows, edge_ok, cols, col_ok, p0 + tl.arange(0, BP), P, C * M, g, IEEE)
            mask = edge_ok[:, None] & (outs[None, :] < C)
            dy = tl.load(dy_ptr + _dy_offsets(rows, outs, K, s_e, s_k, s_c), mask=mask, other=0.0).to(tl.float32)
            acc += tl.sum(tl.reshape(g, (BR, BC, M)) * dy[:, :, None], axis=1)
    tl.store(dh_ptr + edges[:, None] * M + ms[None, :], acc.to(dh_ptr.dtype.element_ty), mask=edge_ok[:, None])


#: Compile options of every Triton contraction: multiplies and adds fused (FMA), stated rather than left to Triton's
#: default, which is on through Triton 3.9 (the versions tested) and turns off in 3.10.
COMPILE_OPTIONS = {"enable_fp_fusion": True}


def _options(t: Tensor) -> dict:
    """Every Triton contraction's precision on inputs like ``t``: exact float32 products unless TF32 is allowed; and
    `COMPILE_OPTIONS`."""
    if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"the Triton contractions take float16, bfloat16 or float32, got {t.dtype}")
    return dict(IEEE=t.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32, **COMPILE_OPTIONS)


def contract(t: Tensor, w: Tensor, h: Tensor, components: int) -> Tensor:
    """``y [E, K, C]`` (see the module docstring); contiguous inputs of one dtype."""
    (R, P), (E, M) = t.shape, h.shape
    C = w.shape[1] // M
    y = t.new_empty(E, components, C)
    tile = TILES["contract"]
    grid = (triton.cdiv(R, tile.rows), triton.cdiv(C, tile.channels))
    _forward_kernel[grid](t, w, h, y, R, P, C, components, M, *tile[:3], num_warps=tile.num_warps, **_options(t))
    return y


def grad_t(dy: Tensor, w: Tensor, h: Tensor) -> Tensor:
    """``dT [R, P]`` for ``dy [E, K, C]`` of any strides."""
    E, K, C = dy.shape
    P, M = w.shape[0], h.shape[1]
    dt = dy.new_empty(E * K, P)
    tile = TILES["grad_t"]
    grid = (triton.cdiv(E * K, tile.rows), triton.cdiv(P, tile.p))
    args = (E * K, P, C, K, *dy.stride(), M, *tile[:3])
    _grad_t_kernel[grid](dy, w, h, dt, *args, num_warps=tile.num_warps, **_options(dy))
    return dt


def grad_w(t: Tensor, dy: Tensor, h: Tensor, splits: int) -> Tensor:
    """``dW`` as ``splits`` partial sums over runs of rows, ``[splits, P, C M]``, float32."""
    (R, P), (K, C), M = t.shape, dy.shape[1:], h.shape[1]
    dw = t.new_empty(splits, P, C * M, dtype=torch.float32)
    tile = TILES["grad_w"]
    grid = (triton.cdiv(P, tile.p), triton.cdiv(C, tile.channels), splits)
    args = (R, P, C, K, *dy.stride(), triton.cdiv(R, splits), M, *tile[:3])
    _grad_w_kernel[grid](t, dy, h, dw, *args, num_warps=tile.num_warps, **_options(t))
    return dw


def grad_h(t: Tensor, w: Tensor, dy: Tensor, mid: int) -> Tensor:
    """``dh [E, M]``, in the inputs' dtype."""
    P, (E, K, C) = t.shape[1], dy.shape
    dh = t.new_empty(E, mid)
    tile = TILES["grad_h"]
    grid = (triton.cdiv(E, tile.rows),)
    args = (E, P, C, K, *dy.stride(), mid, *tile[:3])
    _grad_h_kernel[grid](t, w, dy, dh, *args, num_warps=tile.num_warps, **_options(t))
    return dh
