"""Degree-wise linear map (a 1x1 equivariant convolution)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from se3pyg.fiber import Fiber


class LinearSE3(nn.Module):
    r"""Mixes channels within each degree, never across degrees.

    .. math:: y^d = W^d x^d, \qquad W^d \in \mathbb{R}^{C'_d \times C_d}

    Output degrees are those of ``fiber_out``; each must be in ``fiber_in``.
    Runs in the weights' dtype under autocast (cheap, precision-sensitive).

    Args:
        fiber_in, fiber_out: channels per degree in and out.

    Shapes:
        ``forward({"d": [N, C_d, 2d+1]})`` -> ``{"d": [N, C'_d, 2d+1]}`` for the degrees of ``fiber_out``.
    """

    def __init__(self, fiber_in: Fiber, fiber_out: Fiber) -> None:
        super().__init__()
        self.fiber_in = fiber_in
        self.fiber_out = fiber_out
        self.weights = nn.ParameterDict(
            {str(d): nn.Parameter(torch.empty(c, fiber_in[d])) for d, c in fiber_out.items()}
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for weight in self.weights.values():
            with torch.no_grad():
                weight.normal_().div_(weight.shape[1] ** 0.5)

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        # Channel mixing is cheap and precision-sensitive: it stays in the weights' dtype under autocast.
        with torch.autocast(features[next(iter(self.weights))].device.type, enabled=False):
            return {key: weight @ features[key].to(weight.dtype) for key, weight in self.weights.items()}

    def extra_repr(self) -> str:
        return f"{self.fiber_in} -> {self.fiber_out}"
