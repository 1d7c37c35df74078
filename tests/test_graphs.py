"""Static-shape steps: padded batches compute what unpadded ones do; the graphed steps equal the eager ones.

The capture itself needs CUDA (the last test, and benchmarks/gpu_suite.py on a GPU); everything around it runs
here with ``capture=False``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Batch

from se3pyg.data import get_task, make_loader, qm9_splits
from se3pyg.data.padding import fits, pad_batch, padded_size, static_shape
from se3pyg.engine import distributed
from se3pyg.engine.config import TrainConfig
from se3pyg.engine.distributed import DistInfo
from se3pyg.engine.graphs import GraphedPredictor, GraphedSteps
from se3pyg.engine.state import TrainState
from se3pyg.engine.step import predict_step, train_step
from se3pyg.model import SE3TransformerPooled

from .conftest import QM9_SUBSET

TINY = dict(num_layers=2, num_degrees=2, num_channels=8, num_heads=2, batch_size=8, limit=QM9_SUBSET)


def _batches(qm9_dir: Path, sizes: list[int]) -> list[Batch]:
    train = qm9_splits(qm9_dir, get_task("homo"), limit=QM9_SUBSET).train
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [Batch.from_data_list([train[i] for i in range(s, s + n)]) for s, n in zip(starts, sizes, strict=True)]


def test_padded_sizes_are_few_and_add_at_most_a_thirty_second() -> None:
    sizes = {padded_size(n) for n in range(4000, 4700)}
    assert len(sizes) <= 7
    for n in (1, 63, 64, 65, 1000, 4330, 9026, 123457):
        assert 0 <= padded_size(n) - n < max(64, n / 32)
    assert padded_size(64, extra=2) == 128


def test_padding_leaves_the_real_graphs_outputs_and_gradients_unchanged(qm9_dir: Path) -> None:
    torch.manual_seed(0)
    model = SE3TransformerPooled(num_layers=2, num_degrees=3, num_channels=8, num_heads=2).double()
    batch = _batches(qm9_dir, [8])[0]
    for name in ("x", "pos", "edge_attr", "y"):
        setattr(batch, name, getattr(batch, name).double())
    graphs, nodes, edges = static_shape(batch)
    padded = pad_batch(batch, nodes, edges)
    assert (padded.num_graphs, padded.num_nodes, padded.edge_index.shape[1]) == (graphs, nodes, edges)
    assert padded.num_nodes >= batch.num_nodes + 2 and padded.edge_index.shape[1] > batch.edge_index.shape[1]

    def output_and_grads(b: Batch, real: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        out = model(b)[:real]
        torch.nn.functional.l1_loss(out, b.y[:real]).backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    out, grads = output_and_grads(batch, batch.num_graphs)
    padded_out, padded_grads = output_and_grads(padded, batch.num_graphs)
    torch.testing.assert_close(padded_out, out, rtol=1e-12, atol=1e-12)
    for g, pg in zip(grads, padded_grads, strict=True):
        torch.testing.assert_close(pg, g, rtol=1e-10, atol=1e-12)


def test_padding_needs_no_targets_and_refuses_what_it_cannot_pad(qm9_dir: Path) -> None:
    batch = _batches(qm9_dir, [8])[0]
    with pytest.raises(ValueError, match="2 padding atoms"):
        pad_batch(batch, batch.num_nodes + 1, batch.edge_index.shape[1])
    del batch.y  # optional: molecules to predict have no targets
    assert "y" not in pad_batch(batch, batch.num_nodes + 2, batch.edge_index.shape[1])
    batch.sh = torch.zeros(batch.edge_index.shape[1], 9)
    with pytest.raises(ValueError, match="also has sh"):
        pad_batch(batch, batch.num_nodes + 2, batch.edge_index.shape[1])


def test_a_batch_takes_a_larger_captured_shape_when_it_adds_little_padding(qm9_dir: Path) -> None:
    """Eight large molecules capture a shape; eight mid-sized ones fit it (fewer than 128 more atoms and bonds) and
    take it; eight small ones do not and get their own. Predictions equal the eager step's throughout."""
    train = qm9_splits(qm9_dir, get_task("homo"), limit=QM9_SUBSET).train
    order = sorted(range(len(train)), key=lambda i: (train[i].num_nodes, train[i].edge_index.shape[1]))
    large, small = order[-8:], order[:8]
    large_batch = Batch.from_data_list([train[i] for i in large])
    mid = next(
        order[s : s + 8]
        for s in range(len(order) - 8)
        if fits(b := Batch.from_data_list([train[i] for i in order[s : s + 8]]), static_shape(large_batch))
        and static_shape(b) != static_shape(large_batch)
    )
    config = TrainConfig(**TINY, data_dir=str(qm9_dir))
    state = TrainState.build(config, DistInfo())
    steps = GraphedSteps(state, capture=False)
    expected_graphs = [1, 1, 2]
    with torch.inference_mode():
        for molecules, count in zip([large, mid, small], expected_graphs, strict=True):
            batch = Batch.from_data_list([train[i] for i in molecules])
            prediction = steps.predict(batch)
            assert len(steps.graphs) == count
            expected = predict_step(state.model, batch, state.precision)
            torch.testing.assert_close(prediction, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_graphed_steps_train_and_predict_as_the_eager_steps(qm9_dir: Path, tmp_path: Path, accumulate: int) -> None:
    """Three updates over batches of different shapes: the same losses, parameters and predictions."""
    config = TrainConfig(**TINY, data_dir=str(qm9_dir), accumulate_grad_batches=accumulate, gradient_clip=1.0)
    eager = TrainState.build(config, DistInfo())
    graphed = TrainState.build(config, DistInfo())
    graphed.model.load_state_dict(eager.model.state_dict())
    steps = GraphedSteps(graphed, capture=False)
    batches = _batches(qm9_dir, [8, 4, 12] * accumulate)
    assert len({static_shape(b) for b in batches}) == 3  # three graphs
    for i, batch in enumerate(batches):
        update = (i + 1) % accumulate == 0
        expected = train_step(eager, copy.copy(batch), update=update)
        torch.testing.assert_close(steps.train(batch, update=update), expected, rtol=1e-5, atol=1e-6)
    for p, q in zip(eager.model.parameters(), graphed.model.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6)
    with torch.inference_mode():
        for batch in batches[:2]:
            expected = predict_step(eager.model, batch, eager.precision)
            torch.testing.assert_close(steps.predict(batch), expected, rtol=1e-5, atol=1e-6)


def _double(batch: Batch) -> Batch:
    for name in ("x", "pos", "edge_attr", "y"):
        setattr(batch, name, getattr(batch, name).double())
    return batch


def _ddp_graphed_against_eager(info: DistInfo, qm9_dir: str) -> float:
    """A rank, in float64: three updates of two accumulated batches each, gradients clipped, by DDP's eager step
    and by the padded static-buffer steps (all-reducing their flat gradient), each rank on its own batches of
    varying shapes; the largest difference of the weights."""
    torch.set_default_dtype(torch.float64)  # the models are built in float64, before DDP wraps them
    config = TrainConfig(**TINY, data_dir=qm9_dir, processes=2, gpus=0, accumulate_grad_batches=2, gradient_clip=0.5)
    eager, graphed = TrainState.build(config, info), TrainState.build(config, info)
    graphed.model.load_state_dict(eager.model.state_dict())
    steps = GraphedSteps(graphed, capture=False)
    for k, batch in enumerate(_batches(Path(qm9_dir), [8, 8, 4, 4, 12, 12, 8, 4, 4, 8, 12, 8])[info.rank :: 2]):
        update = k % 2 == 1
        train_step(eager, _double(copy.copy(batch)), update=update)
        steps.train(_double(batch), update=update)
    pairs = zip(eager.model.parameters(), graphed.model.parameters(), strict=True)
    return max(float((p - q).abs().max()) for p, q in pairs)


def test_graphed_steps_under_ddp_update_as_ddp_does(qm9_dir: Path) -> None:
    """Real processes over gloo: the flat gradient's one all-reduce, with accumulation and clipping, gives DDP's
    update to float64 rounding."""
    difference = distributed.launch(_ddp_graphed_against_eager, 2, False, str(qm9_dir))
    assert difference < 1e-12


def test_padding_is_invisible_in_losses_maes_predictions_and_counts(qm9_dir: Path) -> None:
    """An epoch and an evaluation through the static-buffer steps report what the eager ones do: the padding
    graph adds nothing to the loss, the MAE, the predictions or the molecules counted."""
    from se3pyg.engine.evaluate import mean_absolute_error, predict_split
    from se3pyg.engine.train import _Health, train_epoch

    config = TrainConfig(**TINY, data_dir=str(qm9_dir), gpus=0)
    splits = qm9_splits(qm9_dir, get_task("homo"), limit=QM9_SUBSET)
    loader, val = make_loader(splits.train, 16, False), make_loader(splits.val, 16, False)  # a short last batch each
    eager, graphed = TrainState.build(config, DistInfo()), TrainState.build(config, DistInfo())
    graphed.graphs = GraphedSteps(graphed, capture=False)
    metrics = [train_epoch(s, loader, DistInfo(), _Health(DistInfo(), 1)) for s in (eager, graphed)]
    assert metrics[1]["train_loss"] == pytest.approx(metrics[0]["train_loss"], rel=1e-5)
    molecules = [m["throughput_mol_per_ms"] * m["epoch_time_s"] * 1000 for m in metrics]
    assert molecules == pytest.approx([len(splits.train)] * 2)
    graphed.model.load_state_dict(eager.model.state_dict())
    maes = [mean_absolute_error(s.net, val, DistInfo(), 1.0, s.precision, s.predict) for s in (eager, graphed)]
    assert maes[1] == pytest.approx(maes[0], rel=1e-5)
    predictions = [predict_split(s.net, val, DistInfo(), s.precision, s.predict) for s in (eager, graphed)]
    assert len(predictions[1].pred) == len(splits.val) == len(predictions[0].pred)
    torch.testing.assert_close(predictions[1].pred, predictions[0].pred, rtol=1e-5, atol=1e-6)


def test_cuda_graphs_are_the_default_on_gpus_and_off_where_an_option_needs_the_eager_step(tmp_path: Path) -> None:
    """The resolved configuration of a run that sees GPUs: graphs on unless --no-cuda-graphs, --precompute-bases or
    (benchmark) --compile, which say so; on the CPU off; --cuda-graphs with an option that excludes them refused."""
    from se3pyg.engine.config import BenchmarkConfig, PredictConfig

    assert TrainConfig(task="homo").resolve_gpus(visible=8).cuda_graphs is True
    assert TrainConfig(task="homo", gpus=1).resolve_gpus(visible=8).cuda_graphs is True
    assert TrainConfig(task="homo").resolve_gpus(visible=0).cuda_graphs is False
    assert TrainConfig(task="homo", cuda_graphs=False).resolve_gpus(visible=8).cuda_graphs is False
    eager = TrainConfig(task="homo", precompute_bases=True)
    assert eager.resolve_gpus(visible=8).cuda_graphs is False
    assert (
        eager.graphs_note(eager.resolve_gpus(visible=8)) == "CUDA graphs off: --precompute-bases needs the eager step"
    )
    assert eager.graphs_note(eager.resolve_gpus(visible=0)) is None  # no GPU: nothing was turned off
    compiled = BenchmarkConfig(compile=True)
    assert compiled.resolve_gpus(visible=1).cuda_graphs is False
    assert compiled.graphs_note(compiled.resolve_gpus(visible=1)) == "CUDA graphs off: --compile needs the eager step"
    (ckpt := tmp_path / "m.pt").write_bytes(b"")
    assert PredictConfig(ckpt=str(ckpt)).resolve_gpus(visible=1).cuda_graphs is True
    with pytest.raises(ValueError, match="--cuda-graphs and --precompute-bases"):
        TrainConfig(task="homo", cuda_graphs=True, precompute_bases=True).resolve_gpus(visible=8)
    with pytest.raises(ValueError, match="--cuda-graphs needs a GPU"):
        TrainConfig(task="homo", cuda_graphs=True).resolve_gpus(visible=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_captured_steps_equal_the_eager_steps_on_cuda(qm9_dir: Path) -> None:
    """In float64 (rounding cannot hide a wrong result): losses, gradients summed over batches of three shapes, and
    predictions of the captured steps equal the eager ones. (benchmarks/gpu_suite.py's graphs_check, at the
    published recipe's size, ran this way on an H100.)"""
    config = TrainConfig(**TINY, data_dir=str(qm9_dir), gpus=1)
    device = DistInfo(device=torch.device("cuda"))
    eager, graphed = TrainState.build(config, device), TrainState.build(config, device)
    graphed.model.load_state_dict(eager.model.state_dict())
    eager.model.double(), graphed.model.double()
    steps = GraphedSteps(graphed)
    batches = []
    for batch in _batches(qm9_dir, [8, 8, 4, 12]):
        batch = batch.to("cuda")
        for name in ("x", "pos", "edge_attr", "y"):
            setattr(batch, name, getattr(batch, name).double())
        batches.append(batch)
    for batch in batches:
        expected = train_step(eager, batch, update=False)
        torch.testing.assert_close(steps.train(batch, update=False), expected, rtol=1e-10, atol=1e-12)
    grads = torch.cat([p.grad.flatten() for p in eager.model.parameters()])
    torch.testing.assert_close(steps.flat_grad, grads, rtol=1e-9, atol=1e-12)
    predictor = GraphedPredictor(eager.model.eval(), eager.precision)  # se3pyg predict --cuda-graphs
    with torch.inference_mode():
        for batch in batches:
            expected = predict_step(eager.model, batch, eager.precision)
            torch.testing.assert_close(steps.predict(batch), expected, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(predictor.predict(batch), expected, rtol=1e-10, atol=1e-12)
    assert all(graph.graph is not None for graph in predictor.graphs.values())
