"""Evaluation: NVIDIA's MAE, summed over all ranks, in the task's unit."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from se3pyg.engine.distributed import DistInfo, all_reduce_sum
from se3pyg.engine.precision import Precision
from se3pyg.engine.step import predict_step


@torch.no_grad()
def mean_absolute_error(
    net: nn.Module, loader: Iterable, info: DistInfo, target_std: float, precision: Precision
) -> float:
    r""":math:`\sigma \cdot \sum |\hat y - y| / n` over every molecule of every rank (standardized targets)."""
    was_training = net.training
    net.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=info.device)
    for batch in loader:
        batch = batch.to(info.device, non_blocking=True)
        totals[0] += (predict_step(net, batch, precision) - batch.y).abs().sum().double()
        totals[1] += batch.num_graphs
    all_reduce_sum(totals, info)
    net.train(was_training)
    return (totals[0] / totals[1].clamp(min=1)).item() * target_std
