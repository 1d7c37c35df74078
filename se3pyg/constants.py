"""Constant tensors built once per argument set (Clebsch-Gordan tensors, index maps, head masks)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch

P = ParamSpec("P")
R = TypeVar("R")


def cached_constant(build: Callable[P, R]) -> Callable[P, R]:
    """``functools.cache`` for a function that builds constant tensors from hashable arguments.

    The tensors are built outside inference mode: a constant first built under ``torch.inference_mode`` (say, a
    prediction before any training in one process) would be an inference tensor, which autograd refuses to save
    for a later backward pass. ``torch.compile`` calls it as it is instead of tracing it.
    """

    @functools.wraps(build)
    def outside_inference_mode(*args: P.args, **kwargs: P.kwargs) -> R:
        with torch.inference_mode(False):
            return build(*args, **kwargs)

    return torch.compiler.disable(functools.cache(outside_inference_mode))
