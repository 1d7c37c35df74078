"""Evaluation: a model's predictions on a split, NVIDIA's MAE over all ranks, in the task's unit."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from se3pyg.engine.distributed import DistInfo, all_reduce_sum, gather_on_main
from se3pyg.engine.precision import Precision
from se3pyg.engine.step import predict_step
from se3pyg.processes import raise_if_stopped

if TYPE_CHECKING:
    from torch_geometric.data import Batch


@dataclass
class Predictions:
    """Standardized predictions and targets of the molecules a loader served, in its order, with their QM9
    indices (``-1`` where the data carries none)."""

    idx: Tensor
    pred: Tensor
    target: Tensor

    def to(self, device: torch.device | str) -> Predictions:
        """The same predictions on ``device``.

        Args:
            device: where to move them.
        """
        return Predictions(self.idx.to(device), self.pred.to(device), self.target.to(device))


@torch.no_grad()
def predict_split(
    net: nn.Module,
    loader: Iterable,
    info: DistInfo,
    precision: Precision,
    predict: Callable[[Batch], Tensor] | None = None,
) -> Predictions:
    """This rank's predictions for every batch of ``loader`` (kept on the device: nothing is read back), by
    ``predict`` (e.g. a [`GraphedPredictor`][se3pyg.engine.graphs.GraphedPredictor]'s) or `predict_step()` of ``net``; a
    stop
    signal ends it between batches.

    Args:
        net: the model.
        loader: the split's batches for this rank.
        info: this rank's place in the run.
        precision: the precision policy.
        predict: the prediction step, when not `predict_step` of ``net``.
    """
    was_training = net.training
    net.eval()
    idx, pred, target = [], [], []
    for batch in loader:
        raise_if_stopped()
        batch = batch.to(info.device, non_blocking=True)
        pred.append(predict(batch) if predict is not None else predict_step(net, batch, precision).float())
        target.append(batch.y.float())
        idx.append(batch.idx if "idx" in batch else torch.full_like(batch.y, -1, dtype=torch.long))
    net.train(was_training)
    if not pred:
        empty = torch.zeros(0, device=info.device)
        return Predictions(empty.long(), empty, empty)
    return Predictions(torch.cat(idx), torch.cat(pred), torch.cat(target))


def split_mae(predictions: Predictions, info: DistInfo, target_std: float) -> float:
    r"""$\sigma \cdot \sum |\hat y - y| / n$ over every molecule of every rank (standardized targets).

    Args:
        predictions: this rank's predictions (standardized).
        info: this rank's place in the run.
        target_std: the target's training-split standard deviation.
    """
    errors = (predictions.pred - predictions.target).abs().double()
    totals = torch.stack([errors.sum(), torch.tensor(float(len(errors)), dtype=torch.float64, device=errors.device)])
    all_reduce_sum(totals, info)
    return (totals[0] / totals[1].clamp(min=1)).item() * target_std


def mean_absolute_error(
    net: nn.Module,
    loader: Iterable,
    info: DistInfo,
    target_std: float,
    precision: Precision,
    predict: Callable[[Batch], Tensor] | None = None,
) -> float:
    """`split_mae()` of `predict_split()`.

    Args:
        net: the model.
        loader: the split's batches for this rank.
        info: this rank's place in the run.
        target_std: the target's training-split standard deviation.
        precision: the precision policy.
        predict: the prediction step, when not `predict_step` of ``net``.
    """
    return split_mae(predict_split(net, loader, info, precision, predict), info, target_std)


def gather_predictions(predictions: Predictions, info: DistInfo) -> Predictions | None:
    """All ranks' predictions on rank 0 (``None`` elsewhere), one per molecule, ordered by QM9 index: the
    molecules a distributed sampler repeats to even out the shares are kept once.

    Args:
        predictions: this rank's predictions.
        info: this rank's place in the run.
    """
    shares = gather_on_main(predictions.to("cpu"), info)
    if shares is None:
        return None
    idx = torch.cat([s.idx for s in shares])
    pred, target = torch.cat([s.pred for s in shares]), torch.cat([s.target for s in shares])
    if (idx < 0).any():
        return Predictions(idx, pred, target)
    order = torch.argsort(idx, stable=True)
    idx, pred, target = idx[order], pred[order], target[order]
    first = torch.ones_like(idx, dtype=torch.bool)
    first[1:] = idx[1:] != idx[:-1]
    return Predictions(idx[first], pred[first], target[first])
