"""The engine's pieces, each asserted on what it does: one training step for train and benchmark,
the precision actually used, accumulation, clipping, precomputed harmonics, resume rules."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Batch

from se3pyg.basis import Basis
from se3pyg.data import get_task, qm9_splits
from se3pyg.engine.benchmark import run_benchmark
from se3pyg.engine.checkpoint import load_checkpoint
from se3pyg.engine.config import AMP_DTYPES, BenchmarkConfig, TrainConfig
from se3pyg.engine.distributed import DistInfo
from se3pyg.engine.precision import DTYPES, Precision
from se3pyg.engine.serving import log_trained_model
from se3pyg.engine.state import TrainState
from se3pyg.engine.step import predict_step, train_step
from se3pyg.engine.train import run

from .conftest import QM9_SUBSET, TINY_MODEL

TINY = dict(**TINY_MODEL, batch_size=16, limit=QM9_SUBSET)
CPU = DistInfo()


@contextlib.contextmanager
def calls_to(fn: Callable, outside: Callable | None = None) -> Iterator[list[int]]:
    """Count the calls of ``fn`` made in this thread while the block runs (the real function runs), except
    those made inside ``outside``."""
    code = fn.__code__
    excluded = outside.__code__ if outside is not None else None
    count = [0]

    def inside_excluded(frame) -> bool:
        while frame is not None:
            if frame.f_code is excluded:
                return True
            frame = frame.f_back
        return False

    def profile(frame, event, _arg):
        if event == "call" and frame.f_code is code and not (excluded and inside_excluded(frame)):
            count[0] += 1

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield count
    finally:
        sys.setprofile(previous)


def _config(qm9_dir: Path, tmp_path: Path, **options: object) -> TrainConfig:
    return TrainConfig(**{**TINY, **options}, data_dir=str(qm9_dir), tracking_uri=f"sqlite:///{tmp_path}/m.db")


def _batch(qm9_dir: Path, size: int = 8) -> Batch:
    splits = qm9_splits(qm9_dir, get_task("homo"), limit=QM9_SUBSET)
    return Batch.from_data_list([splits.train[i] for i in range(size)])


def test_train_and_benchmark_time_the_same_train_step(qm9_dir: Path, tmp_path: Path) -> None:
    with calls_to(train_step) as trained:
        result = run(_config(qm9_dir, tmp_path, epochs=1))
    assert result is not None and trained[0] == 229 // 16  # one step per full training batch
    options = {**TINY, "batch_size": 8}
    bench = BenchmarkConfig(**options, data_dir=str(qm9_dir), steps=3, warmup=1, tracking=False, gpus=0)
    with calls_to(train_step) as benchmarked:
        figures = run_benchmark(bench)
    assert figures is not None and benchmarked[0] == 3 + 1  # warm-up and timed steps
    with calls_to(predict_step) as predicted:
        run_benchmark(dataclasses.replace(bench, mode="predict"))
    assert predicted[0] == 4


@pytest.mark.parametrize(
    ("amp", "amp_dtype", "expected"),
    [
        (False, "bf16", torch.float32),
        (True, "bf16", torch.bfloat16),
        (True, "fp16", torch.float16),
        (True, "auto", torch.bfloat16),
    ],
)
def test_the_chosen_precision_is_the_one_computed_in(
    qm9_dir: Path, tmp_path: Path, amp: bool, amp_dtype: str, expected: torch.dtype
) -> None:
    state = TrainState.build(_config(qm9_dir, tmp_path, amp=amp, amp_dtype=amp_dtype), CPU)
    radial = state.model.transformer.graph_modules[0].to_key_value.groups[0].radial_func.net[0]
    seen: list[torch.dtype] = []
    radial.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    batch = _batch(qm9_dir)
    loss = train_step(state, batch)
    with torch.no_grad():
        prediction = predict_step(state.net.eval(), batch, state.precision)
    assert seen == [expected, expected]  # the training step and the prediction step
    assert loss.dtype == prediction.dtype == torch.float32  # loss and outputs stay float32
    assert state.scaler.is_enabled() == (expected == torch.float16)  # loss scaling for fp16 only


def test_auto_precision_is_fp16_on_gpus_and_bf16_on_cpu() -> None:
    assert Precision.choose(True, "auto", torch.device("cuda")).dtype == torch.float16
    assert Precision.choose(True, "auto", torch.device("cpu")).dtype == torch.bfloat16
    assert Precision.choose(False, "auto", torch.device("cuda")).dtype is None
    with pytest.raises(ValueError, match="--amp-dtype must be fp16 or bf16"):
        Precision.choose(True, "fp8", torch.device("cpu"))
    assert ("auto", *DTYPES) == AMP_DTYPES  # the option's names (kept without torch) are the precisions'


def test_gradient_accumulation_steps_the_optimizer_every_k_batches(qm9_dir: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "model.pt"
    run(_config(qm9_dir, tmp_path, epochs=1, accumulate_grad_batches=3, save_ckpt_path=str(ckpt)))
    batches = 229 // 16  # 14 full batches: updates after batches 3, 6, 9, 12 and the last
    steps = {int(s["step"]) for s in load_checkpoint(ckpt)["optimizer"]["state"].values()}
    assert steps == {math.ceil(batches / 3)}


@pytest.mark.parametrize("clip", [None, 1e-3])
def test_clipping_bounds_the_gradient_norm_the_optimizer_sees(qm9_dir: Path, tmp_path: Path, clip: float) -> None:
    state = TrainState.build(_config(qm9_dir, tmp_path, gradient_clip=clip), CPU)
    norms: list[float] = []

    def record(optimizer: torch.optim.Optimizer, *_: object) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())

    state.optimizer.register_step_pre_hook(record)
    train_step(state, _batch(qm9_dir))
    assert len(norms) == 1
    if clip is None:
        assert norms[0] > 10 * 1e-3  # the raw gradient is far above the clip used below
    else:
        assert norms[0] <= clip * (1 + 1e-5)


@pytest.mark.parametrize("precompute", [False, True])
def test_precomputed_harmonics_replace_computing_them(qm9_dir: Path, tmp_path: Path, precompute: bool) -> None:
    # The logged MLflow model is checked on its input example, from coordinates, as served models predict.
    with calls_to(Basis.from_relative_pos.__func__, outside=log_trained_model) as computed:
        result = run(_config(qm9_dir, tmp_path, epochs=1, precompute_bases=precompute))
    assert result is not None and math.isfinite(result.test_mae)
    batches = 229 // 16 + math.ceil(41 / 16) + math.ceil(30 / 16)  # train, validation, test
    assert computed[0] == (0 if precompute else batches)


def test_resume_takes_the_checkpoints_task_and_refuses_another(qm9_dir: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "lumo.pt"
    run(_config(qm9_dir, tmp_path, task="lumo", epochs=1, save_ckpt_path=str(ckpt)))
    assert ckpt.is_file()
    with pytest.raises(ValueError, match=r"--task homo: .*lumo\.pt was trained for 'lumo'"):
        run(_config(qm9_dir, tmp_path, task="homo", epochs=2, load_ckpt_path=str(ckpt)))
    resumed = run(_config(qm9_dir, tmp_path, epochs=2, load_ckpt_path=str(ckpt), save_ckpt_path=str(ckpt)))
    assert resumed is not None and resumed.task == "lumo" and resumed.epochs_run == 1
    saved = load_checkpoint(ckpt)
    assert saved["task"] == saved["config"]["task"] == "lumo" and saved["epoch"] == 1


def test_non_finite_losses_are_caught_between_host_checks(qm9_dir: Path, tmp_path: Path) -> None:
    """Losses are read on the host every ``check_interval`` steps; the first bad step is still named."""
    from se3pyg.engine.train import TrainingError

    config = _config(qm9_dir, tmp_path, epochs=2, optimizer="sgd", learning_rate=1e30, check_interval=4)
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 0 step (\d+)") as caught:
        run(config)
    assert caught.value.code == 3
    first = int(caught.value.args[0].split(" step ")[1].split(";")[0])
    assert first < 4  # noted when it happened, read at the next check
    with pytest.raises(ValueError, match="--check-interval must be >= 1"):
        run(dataclasses.replace(config, check_interval=0))
