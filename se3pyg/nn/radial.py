"""Radial profile: the MLP that turns invariant edge features into kernel weights."""

from __future__ import annotations

from torch import Tensor, nn


class RadialProfile(nn.Module):
    r"""Radial weights :math:`\phi(r, e)` of a TFN kernel (TFN's :math:`R^{l,k}`).

    An MLP shared by all edges, ``Linear -> [LayerNorm] -> ReLU -> Linear ->
    [LayerNorm] -> ReLU -> Linear(bias=False)``, from the invariant edge
    features (edge length included) to ``num_freq * channels_in * channels_out``
    weights per edge.
    """

    def __init__(
        self,
        num_freq: int,
        channels_in: int,
        channels_out: int,
        edge_dim: int = 1,
        mid_dim: int = 32,
        use_layer_norm: bool = False,
    ) -> None:
        super().__init__()
        self.num_freq = num_freq
        self.channels_in = channels_in
        self.channels_out = channels_out
        layers: list[nn.Module] = [nn.Linear(edge_dim, mid_dim)]
        if use_layer_norm:
            layers.append(nn.LayerNorm(mid_dim))
        layers += [nn.ReLU(), nn.Linear(mid_dim, mid_dim)]
        if use_layer_norm:
            layers.append(nn.LayerNorm(mid_dim))
        layers += [nn.ReLU(), nn.Linear(mid_dim, num_freq * channels_in * channels_out, bias=False)]
        self.net = nn.Sequential(*layers)

    def hidden(self, edge_scalars: Tensor) -> Tensor:
        """The MLP up to its last layer: ``[E, mid_dim]``."""
        for layer in self.net[:-1]:
            edge_scalars = layer(edge_scalars)
        return edge_scalars

    def forward(self, edge_scalars: Tensor) -> Tensor:
        """``[E, edge_dim]`` -> ``[E, channels_out, channels_in * num_freq]``."""
        return self.net(edge_scalars).view(-1, self.channels_out, self.channels_in * self.num_freq)

    def reset_parameters(self) -> None:
        for layer in self.net:
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()

    def extra_repr(self) -> str:
        return f"num_freq={self.num_freq}, channels_in={self.channels_in}, channels_out={self.channels_out}"
