"""Evaluation: NVIDIA's MAE, summed over all ranks, in the task's unit."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
from torch import nn

from se3pyg.engine.distributed import DistInfo, all_reduce_sum


@torch.no_grad()
def mean_absolute_error(
    model: nn.Module,
    loader: Iterable,
    info: DistInfo,
    target_std: float,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> float:
    r""":math:`\sigma \cdot \sum |\hat y - y| / n` over every molecule of every rank (standardized targets)."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=info.device)
    for batch in loader:
        batch = batch.to(info.device, non_blocking=True)
        with autocast():
            prediction = model(batch)
        totals[0] += (prediction.float() - batch.y).abs().sum().double()
        totals[1] += batch.num_graphs
    all_reduce_sum(totals, info)
    model.train(was_training)
    return (totals[0] / totals[1].clamp(min=1)).item() * target_std
