"""Degree-wise linear map (a 1x1 equivariant convolution)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from se3pyg.constants import cached_constant
from se3pyg.fiber import Fiber, component_rows, degree_to_dim


@cached_constant
def component_degree_index(degrees: tuple[int, ...], device: torch.device) -> Tensor:
    """For each stacked component, the position of its degree in ``degrees`` (cached per device: no copy a call)."""
    return torch.tensor([i for i, d in enumerate(degrees) for _ in range(degree_to_dim(d))], device=device)


def stacked_linear(stacked: Tensor, weights: list[Tensor], degrees: list[int]) -> Tensor:
    r"""``y^d = W^d x^d`` on stacked features: ``[N, D, C]`` -> ``[N, D, C']``, one batched product over components.

    ``weights`` are ``[C', C]`` per degree, in stacked order; one degree is one matrix product.
    """
    if len(weights) == 1:
        return stacked @ weights[0].T
    weight = torch.stack(weights).index_select(0, component_degree_index(tuple(degrees), stacked.device))
    return torch.bmm(stacked.transpose(0, 1), weight.transpose(1, 2)).transpose(0, 1)


class LinearSE3(nn.Module):
    r"""Mixes channels within each degree, never across degrees.

    $$
    y^d = W^d x^d, \qquad W^d \in \mathbb{R}^{C'_d \times C_d}
    $$

    Output degrees are those of ``fiber_out``; each must be in ``fiber_in``.
    Runs in the weights' dtype under autocast (cheap, precision-sensitive).

    Args:
        fiber_in: channels per degree in.
        fiber_out: channels per degree out.

    Shapes:
        ``forward({"d": [N, C_d, 2d+1]})`` -> ``{"d": [N, C'_d, 2d+1]}`` for the degrees of ``fiber_out``;
        stacked features ([`stack()`][se3pyg.fiber.Fiber.stack]) ``[N, D_in, C]`` -> ``[N, D_out, C']`` when
        ``fiber_out`` is uniform (else the dict).
    """

    def __init__(self, fiber_in: Fiber, fiber_out: Fiber) -> None:
        super().__init__()
        self.fiber_in = fiber_in
        self.fiber_out = fiber_out
        self.weights = nn.ParameterDict(
            {str(d): nn.Parameter(torch.empty(c, fiber_in[d])) for d, c in fiber_out.items()}
        )
        self._kept = fiber_in.component_run(fiber_out.degrees)  # fiber_out's stacked input components
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for weight in self.weights.values():
            with torch.no_grad():
                weight.normal_().div_(weight.shape[1] ** 0.5)

    def forward(self, features: dict[str, Tensor] | Tensor) -> dict[str, Tensor] | Tensor:
        """Each degree's channels mixed, $y^d = W^d x^d$ (in the weights' precision under autocast).

        Args:
            features: by degree, or stacked ``[N, D, C]``.
        """
        # Channel mixing is cheap and precision-sensitive: it stays in the weights' dtype under autocast.
        weights = [self.weights[str(d)] for d in self.fiber_out.degrees]
        with torch.autocast(weights[0].device.type, enabled=False):
            stacked = isinstance(features, Tensor)
            if stacked and self.fiber_out.is_uniform and self._kept is not None:
                inputs = component_rows(features, self._kept).to(weights[0].dtype)
                return stacked_linear(inputs, weights, self.fiber_out.degrees)
            if stacked:
                features = self.fiber_in.unstack(features)
            out = {key: weight @ features[key].to(weight.dtype) for key, weight in self.weights.items()}
            return self.fiber_out.stack(out) if stacked and self.fiber_out.is_uniform else out

    def extra_repr(self) -> str:
        return f"{self.fiber_in} -> {self.fiber_out}"
