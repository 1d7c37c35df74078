"""Radial profile: the MLP that turns invariant edge features into kernel weights."""

from __future__ import annotations

from torch import Tensor, nn


class RadialProfile(nn.Module):
    r"""Radial weights $\phi(r, e)$ of a TFN kernel (TFN's $R^{l,k}$).

    An MLP shared by all edges, ``Linear -> [LayerNorm] -> ReLU -> Linear ->
    [LayerNorm] -> ReLU -> Linear(bias=False)``:

    $$
    R_e = W_{\text{last}}\, h_e, \qquad h_e = \mathrm{hidden}(e) \in \mathbb{R}^{\text{mid}}
    $$

    with ``W_last`` of shape ``[C_out * C_in * F, mid]``, rows ordered
    ``(c_out, c_in, f)`` (NVIDIA's parameter layout). The kernels
    ([`se3pyg.nn.conv.KernelGroup`][se3pyg.nn.conv.KernelGroup]) call `hidden()` and apply
    `last` themselves, in the row order and edge chunks their
    contraction reads fastest, so the ``[E, C_out * C_in * F]`` weights are
    never formed in NVIDIA's order.

    Args:
        num_freq: basis frequencies $F$ the weights multiply.
        channels_in: channels of the kernel's input.
        channels_out: channels of the kernel's output.
        edge_dim: invariant edge features (edge length included).
        mid_dim: width of the hidden layers.
        use_layer_norm: LayerNorm after each hidden linear layer.

    Shapes:
        `hidden()`: ``[E, edge_dim]`` -> ``[E, mid_dim]``; `last`: weight ``[C_out * C_in * F, mid_dim]``.
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

    @property
    def last(self) -> nn.Linear:
        """The last linear layer (no bias), which the kernels apply themselves."""
        return self.net[-1]

    def hidden(self, edge_scalars: Tensor) -> Tensor:
        """The MLP up to its last layer: ``[E, edge_dim]`` -> ``[E, mid_dim]``.

        Args:
            edge_scalars: ``[E, edge_dim]``.
        """
        for layer in self.net[:-1]:
            edge_scalars = layer(edge_scalars)
        return edge_scalars

    def reset_parameters(self) -> None:
        for layer in self.net:
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()

    def extra_repr(self) -> str:
        return f"num_freq={self.num_freq}, channels_in={self.channels_in}, channels_out={self.channels_out}"
