"""The GPU suite's Triton tile sweeps: the fused kernels' times per tile shape."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.gpu_data import first_batch  # noqa: E402
from benchmarks.timing import ms_per_step  # noqa: E402

TILE_CANDIDATES = [(64, 4, 32, 4), (128, 4, 32, 4), (128, 4, 64, 8), (64, 8, 32, 4), (64, 2, 64, 4),
                   (32, 4, 32, 4), (128, 2, 32, 4), (64, 4, 64, 4), (128, 8, 32, 8)]  # fmt: skip


def fused_tiles(
    mols: list[dict], device: torch.device, batch_size: int, steps: int, candidates: list[tuple] = TILE_CANDIDATES
) -> dict:
    """Milliseconds of each fused-kernel operator per tile (``se3pyg.nn.triton_radial.TILES``), float16 (float32 on
    CPU, where Triton's interpreter runs float16 products slowly), on the published recipe's shapes at
    ``batch_size`` (output degrees 3 and 1 of a full kernel group), beside the reassociated products (cuBLAS: ``G``
    written) for the same contraction, forward and forward + backward."""
    edges = first_batch(mols, batch_size, device).edge_index.shape[1]
    generator = torch.Generator(device).manual_seed(0)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    result: dict = {"directed_bonds": edges, "dtype": str(dtype), "candidates": candidates}
    for degree, freq in ((3, 16), (1, 10)):
        rows, p, channels, mid = edges * (2 * degree + 1), freq * 32, 32, 32
        t = torch.randn(rows, p, generator=generator, device=device).to(dtype).requires_grad_()
        w = torch.randn(p, channels * mid, generator=generator, device=device) / p**0.5
        w = w.to(dtype).requires_grad_()
        h = torch.randn(edges, mid, generator=generator, device=device).to(dtype).requires_grad_()
        wide = torch.randn(edges, 16, channels, generator=generator, device=device).to(dtype)
        dy = wide[:, 1 : 2 * degree + 2]  # a slice, as torch.cat's backward gives it
        times = _contraction_times(t, w, h, dy, steps, device, candidates)
        result[f"degree_{degree}"] = {"rows": rows, "p": p, **times}
    return result


def _contraction_times(t: torch.Tensor, w: torch.Tensor, h: torch.Tensor, dy: torch.Tensor, steps: int,
                       device: torch.device, candidates: list[tuple]) -> dict:  # fmt: skip
    from se3pyg.nn import triton_radial
    from se3pyg.nn.radial_contraction import contract_reference, radial_contract, row_splits

    k, mid = dy.shape[1], h.shape[1]
    operators = {
        "contract": lambda: triton_radial.contract(t, w, h, k),
        "grad_t": lambda: triton_radial.grad_t(dy, w, h),
        "grad_w": lambda: triton_radial.grad_w(t, dy, h, row_splits(t.shape[0])),
        "grad_h": lambda: triton_radial.grad_h(t, w, dy, mid),
    }
    products = ("reassociated", contract_reference, radial_contract)
    return _kernel_times(products, (t, w, h, k), dy, triton_radial, operators, steps, device, candidates)


#: ``triton_edge_weights.Tile``s: units, p, channels, num_warps, num_stages.
EDGE_WEIGHTS_TILE_CANDIDATES = [(16, 16, 32, 4, 1), (32, 16, 32, 4, 1), (16, 32, 32, 4, 1), (16, 16, 32, 8, 1),
                                (32, 32, 32, 8, 1), (64, 16, 32, 8, 1), (16, 16, 16, 4, 1), (16, 16, 32, 4, 2),
                                (32, 16, 32, 8, 2)]  # fmt: skip


def edge_weights_tiles(
    mols: list[dict], device: torch.device, batch_size: int, steps: int,
    candidates: list[tuple] = EDGE_WEIGHTS_TILE_CANDIDATES,
) -> dict:  # fmt: skip
    """Milliseconds of each fused-edge-weights operator per tile (``se3pyg.nn.triton_edge_weights.TILES``), float16
    (float32 on CPU), on the published recipe's shapes at ``batch_size`` with edges in pairs (output degrees 3 and 1
    of a full kernel group: ``2 (2d + 1)`` rows a pair), beside the edge-weights products (cuBLAS: ``R`` written) for
    the same contraction, forward and forward + backward."""
    units = first_batch(mols, batch_size, device).edge_index.shape[1] // 2
    generator = torch.Generator(device).manual_seed(0)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    result: dict = {"pairs": units, "dtype": str(dtype), "candidates": candidates}
    for degree, freq in ((3, 16), (1, 10)):
        rows_per_unit, p, channels, mid = 2 * (2 * degree + 1), freq * 32, 32, 32
        t = torch.randn(units * rows_per_unit, p, generator=generator, device=device).to(dtype).requires_grad_()
        w = (torch.randn(mid, p * channels, generator=generator, device=device) / mid**0.5).to(dtype).requires_grad_()
        h = torch.randn(units, mid, generator=generator, device=device).to(dtype).requires_grad_()
        wide = torch.randn(units * rows_per_unit, channels + 16, generator=generator, device=device).to(dtype)
        dy = wide[:, 1 : channels + 1]  # a slice, as torch.cat's backward gives it
        times = _edge_weights_times(t, w, h, dy, rows_per_unit, steps, device, candidates)
        result[f"degree_{degree}"] = {"rows": units * rows_per_unit, "p": p, **times}
    return result


def _edge_weights_times(t: torch.Tensor, w: torch.Tensor, h: torch.Tensor, dy: torch.Tensor, rows_per_unit: int,
                        steps: int, device: torch.device, candidates: list[tuple]) -> dict:  # fmt: skip
    from se3pyg.nn import triton_edge_weights
    from se3pyg.nn.edge_weights_contraction import contract_reference, edge_weights_contract, weight_splits

    splits = weight_splits(h.shape[0], t.shape[1], dy.shape[1])
    operators = {
        "contract": lambda: triton_edge_weights.contract(t, w, h, rows_per_unit),
        "grad_t_h": lambda: triton_edge_weights.grad_t_h(dy, t, w, h),
        "grad_w": lambda: triton_edge_weights.grad_w(t, dy, h, splits),
    }
    products = ("edge_weights", contract_reference, edge_weights_contract)
    args = (t, w, h, rows_per_unit)
    return _kernel_times(products, args, dy, triton_edge_weights, operators, steps, device, candidates)


def _kernel_times(
    products: tuple[str, Callable, Callable],
    args: tuple,
    dy: torch.Tensor,
    module: Any,
    operators: dict[str, Callable],
    steps: int,
    device: torch.device,
    candidates: list[tuple],
) -> dict:
    """The unfused products (``name``, ``reference``) and the fused operator (``fused``) of ``products``, forward and
    forward + backward on ``args`` (``t, w, h, k``; output gradient ``dy``), and the fused kernel's Triton ``operators``
    per tile of ``module``."""
    name, reference, fused = products

    def both(contract: Callable) -> None:
        torch.autograd.grad(contract(*args), args[:3], dy)

    return {
        f"{name}_forward_ms": ms_per_step(lambda: reference(*args), steps, device),
        f"{name}_forward_backward_ms": ms_per_step(lambda: both(reference), steps, device),
        **_times_by_tile(module, operators, candidates, steps, device),
        "fused_forward_ms": ms_per_step(lambda: fused(*args), steps, device),
        "fused_forward_backward_ms": ms_per_step(lambda: both(fused), steps, device),
    }


def _times_by_tile(module: Any, operators: dict[str, Callable], candidates: list[tuple], steps: int,
                   device: torch.device) -> dict:  # fmt: skip
    """``{name}_ms_by_tile``: milliseconds of each operator of a Triton module with each candidate of its ``Tile``
    (an error's first words where a tile cannot run); its ``TILES`` restored after."""
    timing = {}
    for name, run in operators.items():
        default, times = module.TILES[name], []
        for tile in candidates:
            module.TILES[name] = module.Tile(*tile)
            try:
                times.append(ms_per_step(run, steps, device))
            except Exception as error:  # a tile this GPU cannot run (shared memory, registers)
                times.append(f"{type(error).__name__}: {str(error)[:120]}")
        module.TILES[name] = default
        timing[f"{name}_ms_by_tile"] = times
    return timing
