"""Norm-based equivariant nonlinearity."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from se3pyg.fiber import Fiber


class NormSE3(nn.Module):
    r"""Rescales each feature by a nonlinear function of its norm.

    .. math:: y^d_c = \mathrm{ReLU}(\mathrm{LN}(\lVert x^d \rVert))_c \, \frac{x^d_c}{\lVert x^d_c \rVert}

    The layer norm runs over the channels of each degree. When all degrees
    have the same channels the per-degree norms are one ``GroupNorm``.
    Norms are clamped at ``2^-24`` (fp16's smallest subnormal).

    Args:
        fiber: the degrees and channels normalized.
        nonlinearity: applied to the normalized norms (default ReLU).

    Shapes:
        ``forward({"d": [N, C_d, 2d+1]})`` -> the same shapes.
    """

    NORM_CLAMP = 2**-24

    def __init__(self, fiber: Fiber, nonlinearity: nn.Module | None = None) -> None:
        super().__init__()
        self.fiber = fiber
        self.nonlinearity = nonlinearity if nonlinearity is not None else nn.ReLU()
        if len(set(fiber.channels)) == 1:
            self.group_norm = nn.GroupNorm(num_groups=len(fiber), num_channels=sum(fiber.channels))
        else:
            self.layer_norms = nn.ModuleDict({str(d): nn.LayerNorm(c) for d, c in fiber.items()})

    def reset_parameters(self) -> None:
        for norm in [self.group_norm] if hasattr(self, "group_norm") else self.layer_norms.values():
            norm.reset_parameters()

    def forward(self, features: dict[str, Tensor], *args: object, **kwargs: object) -> dict[str, Tensor]:
        keys = [str(d) for d in self.fiber.degrees]
        norms = [features[k].norm(dim=-1, keepdim=True).clamp(min=self.NORM_CLAMP) for k in keys]
        if hasattr(self, "group_norm"):
            fused = self.group_norm(torch.cat(norms, dim=-2).squeeze(-1))
            new_norms = self.nonlinearity(fused).unsqueeze(-1).chunk(len(keys), dim=-2)
        else:
            new_norms = [
                self.nonlinearity(self.layer_norms[k](n.squeeze(-1)).unsqueeze(-1))
                for k, n in zip(keys, norms, strict=True)
            ]
        return {k: features[k] / n * m for k, n, m in zip(keys, norms, new_norms, strict=True)}

    def extra_repr(self) -> str:
        return str(self.fiber)
