"""GPU checks and benchmarks in one go, for a lent GPU machine; writes JSON to $OUT (or --out).

Needs only torch, torch_geometric and e3nn on the GPU machine (no mlflow,
rdkit or qm9pack): molecules come from a file exported beforehand on a
machine with the QM9 build (``--export``), the golden files from
``tests/golden`` or ``--golden`` (DEVELOPERS.md: how a lent GPU runs it).

    python benchmarks/gpu_suite.py --export gpu_carry/qm9_sample.pt --data-dir data/qm9        # here
    python benchmarks/gpu_suite.py --export-qm9 gpu_carry/qm9.tar.gz --data-dir data/qm9       # here
    python benchmarks/gpu_suite.py --molecules gpu_carry/qm9_sample.pt   # on the GPU
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.autograd import DeviceType
from torch_geometric.data import Batch, Data

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from se3pyg.compat.nvidia import load_nvidia  # noqa: E402
from se3pyg.data.pairs import pair_edges  # noqa: E402
from se3pyg.engine.benchmark import run_benchmark  # noqa: E402
from se3pyg.engine.config import BenchmarkConfig  # noqa: E402
from se3pyg.engine.counting import count_training_step  # noqa: E402
from se3pyg.engine.precision import DTYPES  # noqa: E402
from se3pyg.io import atomic_write, refuse_overwrites  # noqa: E402
from se3pyg.model import SE3TransformerPooled  # noqa: E402
from se3pyg.nn.conv import KERNELS, ConvSE3, auto_kernel  # noqa: E402

KEYS = ("x", "pos", "edge_index", "edge_attr")


def export(data_dir: str, path: str, count: int, limit: int | None = None, seed: int = 0) -> None:
    """``count`` random QM9 molecules (training view, standardized homo; of the first ``limit``) as a list of
    tensor dicts."""
    from se3pyg.data import get_task, qm9_splits

    refuse_overwrites([("--data-dir", data_dir)], [("--export", path)])
    splits = qm9_splits(data_dir, get_task("homo"), limit)
    order = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(seed))[:count]
    # clone: a molecule's tensors are views of the whole collated dataset, which torch.save would write each time
    mols = [{k: getattr(splits.train[int(i)], k).clone() for k in (*KEYS, "y")} for i in order]
    with atomic_write(path) as tmp:
        torch.save(mols, tmp)


def export_qm9(data_dir: str, path: str) -> None:
    """The QM9 build in ``data_dir`` (its manifest and processed file: the raw files are not read once processed)
    as a gzipped tar, for :func:`default_command` on a machine without qm9pack or RDKit."""
    import tarfile

    from se3pyg.data.qm9 import MANIFEST, verify

    refuse_overwrites([("--data-dir", data_dir)], [("--export-qm9", path)])  # never its own input
    manifest = verify(data_dir)
    with atomic_write(path) as tmp, tarfile.open(tmp, "w:gz") as tar:
        tar.add(Path(data_dir, MANIFEST), arcname=MANIFEST)
        processed = Path("processed", manifest["processed_file"])
        tar.add(Path(data_dir, processed), arcname=str(processed))


#: ``se3pyg`` as the installed console script runs it (``se3pyg.cli:main``), from this checkout without installing it:
#: the package maps ``se3pyg.cli`` to ``cli/`` (pyproject.toml), which a checkout on ``sys.path`` alone does not.
SE3PYG = (
    "import importlib.util, sys\n"
    f"sys.path.insert(0, {str(ROOT)!r})\n"
    f"spec = importlib.util.spec_from_file_location('se3pyg.cli', {str(ROOT / 'cli' / '__init__.py')!r}, "
    f"submodule_search_locations=[{str(ROOT / 'cli')!r}])\n"
    "cli = importlib.util.module_from_spec(spec)\n"
    "sys.modules['se3pyg.cli'] = cli\n"
    "spec.loader.exec_module(cli)\n"
    "sys.argv[0] = 'se3pyg'\n"
    "cli.main()\n"
)
_EPOCH_LINE = re.compile(r"^epoch (\d+)  train_loss (\S+)(?:  val_mae (\S+))?  ([\d.]+) mol/s  ([\d.]+) s\b", re.M)
_PREDICT_LINE = re.compile(r"^test MAE (\S+) \S+ on (\d+) molecules \(\w+\) in ([\d.]+) s", re.M)


def _se3pyg(*args: str, timeout: float) -> str:
    """The output of ``se3pyg ARGS``; ``RuntimeError`` with the end of it when the command fails."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", SE3PYG, *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"se3pyg {' '.join(args)}: exit {done.returncode}: {(done.stdout + done.stderr)[-1500:]}")
    return done.stdout + done.stderr


def default_command(archive: Path, scratch: Path, smoke: bool) -> dict:
    """``se3pyg train --task homo --amp`` as a user types it (published recipe; CUDA graphs by default on a GPU) for
    two epochs on the carried QM9 build (``archive``, from ``--export-qm9``), tracking off, then ``se3pyg predict
    --amp --batch-size 1600`` on its test split. Throughputs: each epoch's training (data and step; validation
    timed apart), and the prediction pass over the split (loading data and model excluded); the first epoch
    includes the graphs' captures."""
    import tarfile

    with tarfile.open(archive) as tar:
        tar.extractall(scratch / "qm9", filter="data")
    count = json.loads((scratch / "qm9" / "se3pyg-qm9.json").read_text())["count"]
    size = ["--num-layers", "1", "--num-degrees", "2", "--num-channels", "8", "--num-heads", "2", "--batch-size",
            "16", "--gpus", "0"] if smoke else []  # fmt: skip
    ckpt = scratch / "homo.pt"
    train = ["train", "--task", "homo", "--amp", "--no-tracking", "--data-dir", str(scratch / "qm9"), "--limit",
             str(count), "--epochs", "2", "--eval-interval", "1", "--save-ckpt-path", str(ckpt), *size]  # fmt: skip
    trained = _se3pyg(*train, timeout=420)
    epochs = [
        {"epoch": int(e), "train_loss": float(loss), "val_mae": float(val) if val else None,
         "throughput_mol_per_ms": float(rate) / 1000, "epoch_time_s": float(seconds)}
        for e, loss, val, rate, seconds in _EPOCH_LINE.findall(trained)
    ]  # fmt: skip
    predict = ["predict", "--amp", "--batch-size", "32" if smoke else "1600", "--ckpt", str(ckpt), "--no-tracking",
               *(["--gpus", "0"] if smoke else [])]  # fmt: skip
    predicted = _se3pyg(*predict, timeout=300)
    mae, molecules, seconds = _PREDICT_LINE.search(predicted).groups()
    return {
        "device": "cpu (smoke run)" if smoke else torch.cuda.get_device_name(),
        "command": "se3pyg " + " ".join(train),
        "predict_command": "se3pyg " + " ".join(predict),
        "molecules": count,
        "epochs": epochs,
        "throughput_mol_per_ms": epochs[-1]["throughput_mol_per_ms"],  # the second epoch: graphs captured
        "test_mae_ev": float(mae),
        "predict_molecules": int(molecules),
        "predict_throughput_mol_per_ms": int(molecules) / float(seconds) / 1000,
        "cuda_graphs_note": next((line for line in trained.splitlines() if line.startswith("CUDA graphs")), None),
    }


def equivariance(mols: list[dict], device: torch.device, batch_size: int) -> dict:
    """Rotation invariance of the published recipe's pooled prediction on ``device``, per precision: the relative
    change of the prediction when the molecules are rotated (``max |f(R x) - f(x)| / (1 + max |f(x)|)``). Users of
    NVIDIA's code report 0.155 on GPUs (DeepLearningExamples issue 1114)."""
    from se3pyg.engine.precision import Precision

    torch.manual_seed(0)
    model = SE3TransformerPooled(fiber_in={0: 6}).to(device).eval()
    batch = first_batch(mols, batch_size, device)
    rotated = batch.clone()
    q = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64))[0]
    rotated.pos = (batch.pos.double() @ (q * torch.sign(torch.linalg.det(q))).T.to(device)).float()
    limits = {"fp32": 1e-4, "tf32": 2e-2, "fp16": 2e-2, "bf16": 2e-2}
    rows = {}
    for name in ("fp32", "tf32", "fp16", "bf16") if device.type == "cuda" else ("fp32", "bf16"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = name == "tf32"
        precision = Precision.choose(name in ("fp16", "bf16"), name if name in ("fp16", "bf16") else "auto", device)
        with torch.no_grad(), precision.autocast():
            plain, turned = model(batch).float(), model(rotated).float()
        error = float((turned - plain).abs().max() / (1 + plain.abs().max()))
        rows[name] = {"relative_error": error, "limit": limits[name], "pass": error <= limits[name]}
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    return rows


def golden_checks(golden: Path, device: torch.device, kernel: str) -> dict:
    """NVIDIA's golden outputs (the ``nvidia_*.pt`` files in ``golden``) recomputed on ``device`` with ``kernel``:
    float32 error and TF32/fp16/bf16 drift (bf16: against NVIDIA's own, recorded with the golden)."""
    out = {}
    paths = sorted(golden.glob("nvidia_*.pt"))
    if not paths:
        raise FileNotFoundError(f"{golden}: no nvidia_*.pt golden files (pass --golden)")
    for path in paths:
        g = torch.load(path, weights_only=True)
        model = load_nvidia(g["state_dict"], num_heads=g["nvidia_config"]["num_heads"]).to(device)
        for module in model.modules():
            if isinstance(module, ConvSE3):
                module.kernel = kernel
        molecules = Batch.from_data_list([Data(**{k: m[k] for k in KEYS}) for m in g["molecules"]])
        batch, paired = molecules.to(device), pair_edges(molecules).to(device)
        expected = g["expected_prediction"].to(device)
        row = {}
        with torch.no_grad():
            torch.backends.cuda.matmul.allow_tf32 = False
            fp32 = model(batch)
            row["fp32_rel_error"] = ((fp32 - expected).abs().max() / (1 + expected.abs().max())).item()
            row["fp32_paired_rel_error"] = ((model(paired) - expected).abs().max() / (1 + expected.abs().max())).item()
            torch.backends.cuda.matmul.allow_tf32 = True
            row["tf32_rel_to_fp32"] = ((model(batch) - fp32).abs().max() / fp32.abs().max()).item()
            pooled = model.pool(batch)
            for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
                with torch.autocast(device.type, dtype=dtype):
                    mixed, mixed_pooled = model(batch).float(), model.pool(batch).float()
                row[f"{name}_rel_to_fp32"] = ((mixed - fp32).abs().max() / fp32.abs().max()).item()
                row[f"{name}_pooled_rel_to_fp32"] = ((mixed_pooled - pooled).abs().max() / pooled.abs().max()).item()
        # bfloat16: the pooled features within twice NVIDIA's own drift on the same weights (recorded on CPU)
        row["pass"] = (
            max(row["fp32_rel_error"], row["fp32_paired_rel_error"]) <= 1e-4
            and max(row["tf32_rel_to_fp32"], row["fp16_rel_to_fp32"]) <= 2e-2
            and row["bf16_pooled_rel_to_fp32"] <= 2 * g["nvidia_bf16_pooled_error"]
        )
        out[path.stem] = row
    return out


def operator_checks(device: torch.device) -> dict:
    """The fused kernels' operators (Triton on CUDA) and their gradients against float64 products of the same float32
    inputs, no TF32, at a published-recipe shape (degree 3: ``P`` 512, 32 channels, 32 hidden units; edges in
    pairs for ``fused_edge_weights``): the largest error relative to the largest value, at most 1e-5."""
    from se3pyg.nn import edge_weights_contraction, radial_contraction

    generator = torch.Generator(device).manual_seed(0)
    tf32, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, False
    units, rows_per_unit, p, channels, mid = 3001, 14, 512, 32, 32
    t = torch.randn(units * rows_per_unit, p, generator=generator, device=device)
    h = torch.randn(units, mid, generator=generator, device=device)
    dy = torch.randn(units * rows_per_unit, channels + 2, generator=generator, device=device)[:, 1:-1]
    cases = {  # operator, its reference, w, rows a row of h, the gradient of its output (a strided slice)
        "fused": (radial_contraction.radial_contract, radial_contraction.contract_reference,
                  torch.randn(p, channels * mid, generator=generator, device=device) / p**0.5, rows_per_unit,
                  dy.view(units, rows_per_unit, channels)),
        "fused_edge_weights": (edge_weights_contraction.edge_weights_contract,
                               edge_weights_contraction.contract_reference,
                               torch.randn(mid, p * channels, generator=generator, device=device) / mid**0.5,
                               rows_per_unit, dy),
    }  # fmt: skip
    out = {}
    try:
        for name, (operator, reference, w, k, grad) in cases.items():
            inputs = [x.clone().requires_grad_() for x in (t, w, h)]
            got = operator(*inputs, k)
            got_grads = torch.autograd.grad(got, inputs, grad)
            inputs64 = [x.detach().double().requires_grad_() for x in inputs]
            want = reference(*inputs64, k)
            want_grads = torch.autograd.grad(want, inputs64, grad.double())
            pairs = zip([got, *got_grads], [want, *want_grads], strict=True)
            errors = [((a.double() - b).abs().max() / b.abs().max()).item() for a, b in pairs]
            out[name] = {"y_dt_dw_dh_rel_error": errors, "pass": max(errors) <= 1e-5}
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return out


def first_batch(mols: list[dict], batch_size: int, device: torch.device) -> Batch:
    """The sample's first ``batch_size`` molecules as one batch on ``device``, edges in reverse pairs as in training."""
    return pair_edges(Batch.from_data_list([Data(**m) for m in mols[:batch_size]])).to(device)


def step_counts(mols: list[dict], device: torch.device, batch_size: int, kernel: str, amp: str | None = None) -> dict:
    """Host syncs, launches, bytes written and FLOPs of one published-recipe forward + backward on ``device``
    (the forward under autocast to ``amp``, ``"fp16"`` or ``"bf16"``, if given, as ``--amp`` runs it)."""
    batch = first_batch(mols, batch_size, device)
    torch.manual_seed(0)
    model = SE3TransformerPooled(kernel=kernel).to(device)
    counts = count_training_step(model, batch, DTYPES[amp] if amp else None)
    edges = batch.edge_index.shape[1]
    return {
        "kernel": kernel,
        "precision": amp or "fp32",
        "batch_size": batch.num_graphs,
        "directed_bonds": edges,
        "host_syncs": counts.host_syncs,
        "launches": counts.launches,
        "mb_written_per_bond": counts.bytes_written / edges / 1e6,
        "gflop": counts.flops / 1e9,
    }


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


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def ms_per_step(step: Callable[[], object], steps: int, device: torch.device, sync_each: bool = False) -> float:
    """Wall milliseconds a ``step()`` after three untimed ones; ``sync_each``: a synchronize after every step."""
    for _ in range(3):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
        if sync_each:
            synchronize(device)
    synchronize(device)
    return (time.perf_counter() - start) / steps * 1e3


def profiled(step: Callable[[], object], steps: int, device: torch.device) -> list:
    """The profiler's events of ``steps`` steps (host operators, and CUDA kernels on a GPU), averaged by name."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        for _ in range(steps):
            step()
        synchronize(device)
    return profile.key_averages()


def device_busy(mols: list[dict], device: torch.device, batch_size: int, amp: str | None, steps: int) -> dict:
    """Wall time of an eager published-recipe training step against the time its kernels run on ``device``.

    A busy fraction well under 1 means the host (about 1,170 operator launches a step) is what the step waits for,
    which CUDA graphs remove (`--cuda-graphs`). Forward, L1 loss and backward under autocast, no optimizer.
    """
    batch = first_batch(mols, batch_size, device)
    torch.manual_seed(0)
    model = SE3TransformerPooled().to(device)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp or "", torch.float32)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=amp is not None):
            loss = torch.nn.functional.l1_loss(model(batch).float(), batch.y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    wall_ms = ms_per_step(step, steps, device)
    events = profiled(step, steps, device)
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]  # each kernel once
    kernel_ms = sum(e.device_time_total for e in kernels) / steps / 1e3
    operators = [e for e in events if e.device_type == DeviceType.CPU]  # with the time of the kernels they launch
    top = sorted(operators, key=lambda e: e.self_device_time_total, reverse=True)[:10]
    return {
        "precision": amp or "tf32",
        "batch_size": batch.num_graphs,
        "wall_ms_per_step": wall_ms,
        "device_kernel_ms_per_step": kernel_ms,
        "busy_fraction": kernel_ms / wall_ms,
        "top_operators_device_ms_per_step": {e.key: e.self_device_time_total / steps / 1e3 for e in top},
    }


def step_breakdown(mols: list[dict], device: torch.device, batch_size: int, steps: int) -> dict:
    """Where the benchmark's AMP fp16 training step spends its time, milliseconds a step.

    The model's forward + backward alone (AMP fp16, and float32/TF32), the whole step (GradScaler and AdamW) with
    ``make_optimizer``'s AdamW and with the other one (fused / foreach), each also with a synchronize after every
    step (as the benchmark times it); and the whole step's launches and operators by host time.
    """
    from se3pyg.engine.distributed import DistInfo
    from se3pyg.engine.state import TrainState
    from se3pyg.engine.step import train_step

    batch = first_batch(mols, batch_size, device)
    config = BenchmarkConfig(mode="train", batch_size=batch_size, amp=True, amp_dtype="fp16", tracking=False)
    state = TrainState.build(config.training(), DistInfo(device=device))
    state.net.train()

    def forward_backward(amp: bool) -> None:
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss = torch.nn.functional.l1_loss(state.net(batch).float(), batch.y)
        state.scaler.scale(loss).backward() if amp else loss.backward()
        state.optimizer.zero_grad(set_to_none=True)

    fused = bool(state.optimizer.defaults.get("fused"))
    result: dict = {
        "batch_size": batch.num_graphs,
        "forward_backward_amp_fp16": ms_per_step(lambda: forward_backward(True), steps, device),
        "forward_backward_tf32": ms_per_step(lambda: forward_backward(False), steps, device),
    }
    for name in ("fused" if fused else "foreach", "foreach" if fused else "fused"):
        result[f"train_step_adamw_{name}"] = ms_per_step(lambda: train_step(state, batch), steps, device)
        result[f"train_step_adamw_{name}_synced"] = ms_per_step(lambda: train_step(state, batch), steps, device, True)
        lr = state.optimizer.param_groups[0]["lr"]
        state.optimizer = torch.optim.AdamW(
            state.model.parameters(),
            lr=lr,
            weight_decay=0.1,
            fused=name == "foreach" or None,
            foreach=name == "fused" or None,
        )  # the other one, for the second round
    events = profiled(lambda: train_step(state, batch), steps, device)
    result["launches_per_step"] = sum(e.count for e in events if e.device_type == DeviceType.CUDA) / steps
    top = sorted((e for e in events if e.device_type == DeviceType.CPU), key=lambda e: e.self_cpu_time_total)
    result["top_operators_host_ms_per_step"] = {e.key: e.self_cpu_time_total / steps / 1e3 for e in reversed(top[-15:])}
    return result


def graphs_check(mols: list[dict], device: torch.device, batch_size: int, steps: int = 6) -> dict:
    """Eager and CUDA-graph steps from the same weights on the same batches, in float64 (where rounding cannot hide
    a wrong result) and in float32 without TF32 (beside the eager step's run-to-run spread there): each loss, the
    gradients summed over the batches, and the prediction of the graphed prediction step."""
    from se3pyg.engine.distributed import DistInfo
    from se3pyg.engine.graphs import GraphedSteps
    from se3pyg.engine.state import TrainState
    from se3pyg.engine.step import predict_step, train_step

    def errors(dtype: torch.dtype) -> dict:
        config = BenchmarkConfig(mode="train", batch_size=batch_size, tracking=False).training()
        eager, graphed = (
            TrainState.build(config, DistInfo(device=device)),
            TrainState.build(config, DistInfo(device=device)),
        )
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # (building turned it on)
        graphed.model.load_state_dict(eager.model.state_dict())
        eager.model.to(dtype), graphed.model.to(dtype)
        graph_steps = GraphedSteps(graphed, capture=device.type == "cuda")
        batches = [first_batch(mols[i * batch_size :], batch_size, device) for i in range(steps)]
        for batch in batches:
            for name in ("x", "pos", "edge_attr", "y"):
                setattr(batch, name, getattr(batch, name).to(dtype))

        def eager_grads() -> torch.Tensor:
            return torch.cat([p.grad.flatten() for p in eager.model.parameters()])

        loss_error = 0.0
        for batch in batches:  # no update: the gradients add up
            expected = train_step(eager, batch, update=False)
            loss = graph_steps.train(batch, update=False)
            loss_error = max(loss_error, float((loss - expected).abs() / expected.abs()))
        grads = eager_grads()
        eager.optimizer.zero_grad(set_to_none=True)
        for batch in batches:  # the eager step again: its own run-to-run spread
            train_step(eager, batch, update=False)
        with torch.inference_mode():
            expected = predict_step(eager.model, batches[0], eager.precision)
            predict_error = float((graph_steps.predict(batches[0]) - expected).norm() / expected.norm())
        return {
            "graphs_captured": len(graph_steps.graphs),
            "loss_rel_error_max": loss_error,
            "grad_rel_error": float((graph_steps.flat_grad - grads).norm() / grads.norm()),
            "eager_rerun_grad_rel_error": float((eager_grads() - grads).norm() / grads.norm()),
            "predict_rel_error": predict_error,
        }

    result = {"fp64": errors(torch.float64), "fp32": errors(torch.float32)}
    fp64 = result["fp64"]
    result["pass"] = max(fp64["loss_rel_error_max"], fp64["grad_rel_error"], fp64["predict_rel_error"]) < 1e-9
    return result


def throughput(
    mols: list[dict],
    mode: str,
    batch_size: int,
    amp: str | None,
    kernel: str = "auto",
    steps: int = 20,
    gpus: int = 1,
    graphs: bool = False,
) -> dict:
    """se3pyg's benchmark (NVIDIA's method) on the GPU for the published recipe; with ``graphs``, ``--cuda-graphs``
    with a longer warm-up (each batch shape is captured on its first batch)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    config = BenchmarkConfig(
        mode=mode, batch_size=batch_size, steps=2 * steps if graphs else steps, warmup=30 if graphs else 2,
        amp=amp is not None, amp_dtype=amp or "auto", gpus=gpus, tracking=False, kernel=kernel, cuda_graphs=graphs,
    )  # fmt: skip
    data = [Data(**m) for m in mols]
    # the benchmark reads steps + warm-up + 1 batches: the sample is repeated to fill them
    needed = (config.steps + config.warmup + 1) * batch_size
    result = run_benchmark(config, data * -(-needed // len(data)))
    result["precision"] = amp or "tf32"
    return result


#: The issue's figures for one H100/H200, mol/ms: AMP training at batch 240, inference at batch 1600.
FLOORS = {"train": 12.0, "predict": 40.0}
GOALS = {"train": 25.0, "predict": 60.0}


def summary(report: dict, small: int, big: int) -> dict:
    """What the suite's timings decide so far: per mode, graphed AMP fp16 mol/ms of each kernel timed, the fastest
    kernel whose golden checks (and, for the fused ones, operator checks) did not fail (the candidate for
    ``auto_kernel("cuda")``), and whether it reaches the floor and the goal; the checks that failed, by job."""
    checks = [name for name in report if name.startswith(("golden_", "equivariance_")) or name == "operator_checks"]
    failed = [
        name for name in checks if "error" in report[name] or not all(row["pass"] for row in report[name].values())
    ]

    def correct(kernel: str) -> bool:
        if f"golden_{kernel}" in failed:
            return False
        if kernel in ("fused", "fused_edge_weights") and "operator_checks" in report:
            return report["operator_checks"].get(kernel, {}).get("pass", False)  # no row: the job raised
        return True

    decided: dict[str, Any] = {}
    default = auto_kernel("cuda")  # what the jobs without a kernel in their name run
    for mode, batch in (("train", small), ("predict", big)):
        prefix = f"graphs_{mode}_amp_fp16_b{batch}"
        rates = {}
        for kernel in (k for k in KERNELS if k != "auto"):
            job = report.get(f"{prefix}_{kernel}") or (report.get(prefix, {}) if kernel == default else {})
            if "throughput_mol_per_ms" in job:
                rates[kernel] = round(job["throughput_mol_per_ms"], 2)
        candidates = [kernel for kernel in rates if correct(kernel)]
        if candidates:
            fastest = max(candidates, key=rates.get)
            best = rates[fastest]
            decided[mode] = {"mol_per_ms": rates, "fastest": fastest,
                             "floor_met": best >= FLOORS[mode], "goal_met": best >= GOALS[mode]}  # fmt: skip
    command = report.get("default_command", {})
    if "throughput_mol_per_ms" in command:  # the figures of the command users type, against the same floors
        rates = {"train": command["throughput_mol_per_ms"], "predict": command["predict_throughput_mol_per_ms"]}
        decided["default_command"] = {
            mode: {"mol_per_ms": round(rate, 2), "floor_met": rate >= FLOORS[mode], "goal_met": rate >= GOALS[mode]}
            for mode, rate in rates.items()
        }
    decided["failed_checks"] = failed
    return decided


#: The kernels timed and checked, the default (``auto``) first; the golden and count jobs name the default.
KERNELS_TIMED = ("auto", "edge_weights", "fused", "fused_edge_weights")
KERNELS_NAMED = ("reassociated", "fused", "edge_weights", "fused_edge_weights")

Job = tuple[str, Callable[[], dict]]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", help="write a molecule sample to this file and stop")
    parser.add_argument("--export-qm9", help="write the QM9 build of --data-dir to this .tar.gz and stop")
    parser.add_argument("--qm9", default=str(ROOT / "gpu_carry" / "qm9.tar.gz"), help="the default command's QM9")
    parser.add_argument("--data-dir", default="data/qm9")
    parser.add_argument("--count", type=int, default=3200)
    parser.add_argument("--limit", type=int, default=None, help="with --export: draw from the first N molecules")
    parser.add_argument("--molecules", default=str(ROOT / "benchmarks" / "qm9_sample.pt"))
    parser.add_argument("--golden", default=str(ROOT / "tests" / "golden"), help="folder of golden files")
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu_results.json"))
    parser.add_argument("--smoke", action="store_true", help="a short run on this machine's CPU, to check the suite")
    parser.add_argument("--only", default="", help="comma-separated job names: run only those jobs")
    return parser


def _timed(
    mols: list[dict],
    mode: str,
    batch: int,
    amp: str | None,
    kernels: Sequence[str],
    graphs: bool,
    steps: int,
    gpus: int,
) -> list[Job]:
    """Throughput jobs of ``mode`` per kernel, named ``[graphs_]MODE_{amp_DTYPE|tf32}_bBATCH[_KERNEL]``."""
    precision = f"amp_{amp}" if amp else "tf32"
    prefix = f"{'graphs_' if graphs else ''}{mode}_{precision}_b{batch}"
    timed = functools.partial(throughput, mols, mode, batch, amp)
    return [
        (prefix + ("" if k == "auto" else f"_{k}"), functools.partial(timed, k, steps, gpus, graphs)) for k in kernels
    ]


def _jobs(args: argparse.Namespace, mols: list[dict], device: torch.device, scratch: Path) -> list[Job]:
    """The suite's jobs, in order: what decides ``auto_kernel("cuda")`` and the floors first (a machine's time may
    run out mid-suite), then the counts, the tile sweeps and the other precisions."""
    gpus, steps, big, small = _sizes(args.smoke)
    golden, tiles = Path(args.golden), None if not args.smoke else 1  # on CPU's interpreter one tile: seconds a call
    jobs: list[Job] = [("default_command", lambda: default_command(Path(args.qm9), scratch, args.smoke))]
    jobs += [(f"golden_{k}", functools.partial(golden_checks, golden, device, k)) for k in KERNELS_NAMED]
    jobs += [("operator_checks", lambda: operator_checks(device))]
    jobs += [(f"equivariance_b{small}", lambda: equivariance(mols, device, small))]
    jobs += _timed(mols, "train", small, "fp16", KERNELS_TIMED, False, steps, gpus)
    jobs += _timed(mols, "train", small, "fp16", KERNELS_TIMED, True, steps, gpus)
    jobs += _timed(mols, "predict", big, "fp16", KERNELS_TIMED, True, steps, gpus)
    jobs += [(f"graphs_check_b{small}", lambda: graphs_check(mols, device, small))]
    jobs += [(f"step_counts_{k}", functools.partial(step_counts, mols, device, small, k)) for k in KERNELS_NAMED]
    jobs += [("step_counts_amp_fp16_reassociated", lambda: step_counts(mols, device, small, "reassociated", "fp16"))]
    jobs += _timed(mols, "predict", big, "fp16", ["auto"], False, steps, gpus)
    jobs += [(f"device_busy_amp_fp16_b{small}", lambda: device_busy(mols, device, small, "fp16", steps))]
    jobs += [(f"step_breakdown_amp_fp16_b{small}", lambda: step_breakdown(mols, device, small, steps))]
    jobs += [(f"fused_tiles_b{small}", lambda: fused_tiles(mols, device, small, steps, TILE_CANDIDATES[:tiles]))]
    sweep = EDGE_WEIGHTS_TILE_CANDIDATES[:tiles]
    jobs += [(f"fused_edge_weights_tiles_b{small}", lambda: edge_weights_tiles(mols, device, small, steps, sweep))]
    for graphs in (False, True):
        jobs += _timed(mols, "train", small, "bf16", ["auto"], graphs, steps, gpus)
        jobs += _timed(mols, "train", small, None, ["auto"], graphs, steps, gpus)
        jobs += _timed(mols, "predict", big, None, ["auto"], graphs, steps, gpus)
    return jobs


def _sizes(smoke: bool) -> tuple[int, int, int, int]:
    """``(gpus, steps, big batch, small batch)``: the published sizes, or a smoke run's on the CPU."""
    return (0, 2, 32, 8) if smoke else (1, 20, 1600, 240)


def _run(jobs: list[Job], report: dict, out: Path, small: int, big: int) -> None:
    """Each job in turn, its result (or its error: one failing measurement must not lose the others) written to
    ``out`` after it, with the time it took and the summary so far."""
    for name, job in jobs:
        start = time.perf_counter()
        try:
            report[name] = job()
        except Exception:
            report[name] = {"error": traceback.format_exc(limit=3)}
        report["seconds"][name] = round(time.perf_counter() - start, 1)  # what fits in the next machine's minutes
        report["summary"] = summary(report, small, big)
        out.write_text(json.dumps(report, indent=2))
        if name == "default_command" and "error" not in report[name]:  # its own file, as the results keep it
            out.with_name("default-command.json").write_text(json.dumps(report[name], indent=2))
        print(name, json.dumps(report[name]), flush=True)


def main() -> None:
    args = _parser().parse_args()
    if args.export:
        export(args.data_dir, args.export, args.count, args.limit)
        return
    if args.export_qm9:
        export_qm9(args.data_dir, args.export_qm9)
        return
    device = torch.device("cpu" if args.smoke else "cuda")
    _, _, big, small = _sizes(args.smoke)
    name = "cpu (smoke run)" if args.smoke else torch.cuda.get_device_name()
    report: dict = {"device": name, "torch": torch.__version__, "seconds": {}}
    mols = torch.load(args.molecules, weights_only=True)
    scratch = Path(tempfile.mkdtemp(prefix="se3pyg-gpu-suite-"))
    jobs = _jobs(args, mols, device, scratch)
    if args.only:
        jobs = [(name, job) for name, job in jobs if name in args.only.split(",")]
    try:
        _run(jobs, report, Path(args.out), small, big)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("summary", json.dumps(summary(report, small, big)), flush=True)


if __name__ == "__main__":
    main()
