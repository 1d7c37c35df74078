"""The error measures the tests and the GPU suite's checks share (no pytest here: the suite runs without it)."""

from __future__ import annotations

import torch


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``max |actual - expected| / (1 + max |expected|)``: relative for large values, absolute for small ones."""
    return ((actual - expected).abs().max() / (1 + expected.abs().max())).item()


def error_of_largest(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``max |actual - expected| / max |expected|``: the largest error against the largest value (a lower
    precision against float32, a kernel against its reference)."""
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()
