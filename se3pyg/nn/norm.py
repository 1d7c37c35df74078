"""Norm-based equivariant nonlinearity."""

from __future__ import annotations

from torch import Tensor, nn

from se3pyg.fiber import Fiber
from se3pyg.nn.linear import component_degree_index


class NormSE3(nn.Module):
    r"""Rescales each feature by a nonlinear function of its norm.

    $$
    y^d_c = \mathrm{ReLU}(\mathrm{LN}(\lVert x^d \rVert))_c \, \frac{x^d_c}{\lVert x^d_c \rVert}
    $$

    The layer norm runs over the channels of each degree. When all degrees
    have the same channels the per-degree norms are one ``GroupNorm``.
    Norms are clamped at ``2^-24`` (fp16's smallest subnormal). Stacked
    features ``[N, D, C]`` take one segment sum over components for all the
    norms, $\lVert x^d_c \rVert = \sqrt{\max(\sum_{k \in d} x_{kc}^2, 2^{-48})}$
    (squared norms need float32's exponent range: autocast keeps them there).

    Args:
        fiber: the degrees and channels normalized.
        nonlinearity: applied to the normalized norms (default ReLU).

    Shapes:
        ``forward({"d": [N, C_d, 2d+1]})`` -> the same shapes; stacked ``[N, D, C]`` -> ``[N, D, C]``.
    """

    NORM_CLAMP = 2**-24

    def __init__(self, fiber: Fiber, nonlinearity: nn.Module | None = None) -> None:
        super().__init__()
        self.fiber = fiber
        self.nonlinearity = nonlinearity if nonlinearity is not None else nn.ReLU()
        if fiber.is_uniform:
            self.group_norm = nn.GroupNorm(num_groups=len(fiber), num_channels=sum(fiber.channels))
        else:
            self.layer_norms = nn.ModuleDict({str(d): nn.LayerNorm(c) for d, c in fiber.items()})

    def reset_parameters(self) -> None:
        for norm in [self.group_norm] if hasattr(self, "group_norm") else self.layer_norms.values():
            norm.reset_parameters()

    def forward(
        self, features: dict[str, Tensor] | Tensor, *args: object, **kwargs: object
    ) -> dict[str, Tensor] | Tensor:
        """The features with their norms normalized and gated, their directions kept.

        Args:
            features: by degree, or stacked ``[N, D, C]``.
            *args: ignored (a block's other inputs, as NVIDIA's ``NormSE3`` takes them).
            **kwargs: ignored, likewise.
        """
        if isinstance(features, Tensor):
            return self._stacked(features)
        if self.fiber.is_uniform:
            return self.fiber.unstack(self._stacked(self.fiber.stack(features)))
        keys = [str(d) for d in self.fiber.degrees]
        norms = [features[k].norm(dim=-1, keepdim=True).clamp(min=self.NORM_CLAMP) for k in keys]
        new_norms = [
            self.nonlinearity(self.layer_norms[k](n.squeeze(-1)).unsqueeze(-1))
            for k, n in zip(keys, norms, strict=True)
        ]
        return {k: features[k] / n * m for k, n, m in zip(keys, norms, new_norms, strict=True)}

    def _stacked(self, features: Tensor) -> Tensor:
        """``[N, D, C]`` -> ``[N, D, C]``: all norms by one segment sum, one group norm, one rescale."""
        num_nodes, _, channels = features.shape
        component_degree = component_degree_index(tuple(self.fiber.degrees), features.device)
        squares = features.new_zeros(num_nodes, len(self.fiber), channels)
        squares = squares.index_add(1, component_degree, features.square())
        norms = squares.clamp(min=self.NORM_CLAMP**2).sqrt()  # [N, degrees, C]
        new_norms = self.nonlinearity(self.group_norm(norms.view(num_nodes, -1))).view_as(norms)
        return features * (new_norms / norms).index_select(1, component_degree)

    def extra_repr(self) -> str:
        return str(self.fiber)
