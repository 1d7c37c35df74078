r"""Equivariant bases of the TFN kernel: spherical harmonics times Clebsch-Gordan.

For an edge with relative position $r$, the kernel mapping degree
$l$ (input, $2l+1$ components) to degree $k$ (output) is a
sum over $J = |k - l| .. k + l$ of learned radial weights times

$$
B^{l,k}_J(r)_{a f b} = \sum_m Y_J^m(\hat r)\, Q^{k,l}_{J}[b, a, m],
$$

with $Y_J$ e3nn's real spherical harmonics (``normalize=True``,
integral normalization) and $Q^{k,l}_J$ the Wigner 3j symbol
``wigner_3j(J, l, k).permute(2, 1, 0)``.

The 3j symbols keep the sign convention of e3nn 0.3 (what NVIDIA pinned):
for sorted degrees $l_1 \le l_2 \le l_3$ the tensor is made positive at
its centre entry ``[l1, l2, l3]`` (or, where that is zero, at its first
non-zero entry in row-major order); other orders follow by transposition with
a factor $(-1)^{l_1+l_2+l_3}$ for odd permutations. e3nn 0.5+ flips
six blocks for degrees up to 3 (e.g. ``(J, l, k) = (1, 2, 2)``).

Bases are built directly in the fused layouts the convolutions consume, one
matrix product ``Y @ G`` per layout with a precomputed Clebsch-Gordan tensor
``G`` (cached per device and dtype).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from se3pyg.constants import cached_constant
from se3pyg.fiber import degree_to_dim
from se3pyg.thirdparty import jit_deprecation_silenced

_ZERO = 1e-14


@contextlib.contextmanager
def _e3nn() -> Iterator:
    """e3nn's ``o3``, used only to build cached constants (see [`se3pyg.thirdparty`][se3pyg.thirdparty])."""
    with jit_deprecation_silenced():
        import e3nn.o3

        yield e3nn.o3


@cached_constant
def _wigner_3j_cpu(l1: int, l2: int, l3: int) -> Tensor:
    degrees = (l1, l2, l3)
    order = sorted(range(3), key=lambda i: degrees[i])
    a, b, c = (degrees[i] for i in order)
    with _e3nn() as o3:
        w = o3.wigner_3j(a, b, c, dtype=torch.float64, device="cpu")
    ref = w[a, b, c]
    if abs(ref) < _ZERO:
        flat = w.flatten()
        ref = flat[(flat.abs() >= _ZERO).nonzero()[0, 0]]
    if ref < 0:
        w = -w
    w = w.permute(*[order.index(i) for i in range(3)])
    odd = sum(order[i] > order[j] for i in range(3) for j in range(i + 1, 3)) % 2
    if odd and (l1 + l2 + l3) % 2:
        w = -w
    return w.contiguous()


def wigner_3j(
    l1: int, l2: int, l3: int, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> Tensor:
    """Wigner 3j symbol ``[2l1+1, 2l2+1, 2l3+1]`` in e3nn 0.3's (NVIDIA's) sign convention."""
    if not abs(l2 - l3) <= l1 <= l2 + l3:
        raise ValueError(f"wigner_3j: degrees ({l1}, {l2}, {l3}) violate the triangle inequality")
    return _wigner_3j_cpu(l1, l2, l3).to(dtype=dtype, device=device)


def clebsch_gordan(J: int, d_in: int, d_out: int) -> Tensor:
    """``Q^{d_out, d_in}_J`` as ``[2 d_out + 1, 2 d_in + 1, 2J + 1]`` (float64, CPU)."""
    return _wigner_3j_cpu(J, d_in, d_out).permute(2, 1, 0)


@cached_constant
def _harmonic_recurrence(max_l: int) -> list[Tensor]:
    """Matrices ``A_l`` ``[3 (2l + 1), 2l + 3]`` with $Y_{l+1}(\\hat r) = (Y_l(\\hat r) \\otimes \\hat r)\\, A_l$
    for e3nn's real spherical harmonics (float64).

    $Y_l \\otimes \\hat r$ holds degrees $l - 1$ and $l + 1$ only, and its degree-$(l+1)$
    part is a multiple of $Y_{l+1}$: the relation is linear and exact, and ``A_l`` is its least-squares
    solution on random unit vectors.
    """
    points = torch.nn.functional.normalize(
        torch.randn(512, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    steps = []
    with _e3nn() as o3:
        for degree in range(max_l):
            lower = o3.spherical_harmonics(degree, points, normalize=True)
            products = (lower.unsqueeze(-1) * points.unsqueeze(-2)).flatten(1)
            upper = o3.spherical_harmonics(degree + 1, points, normalize=True)
            steps.append(torch.linalg.pinv(products) @ upper)
    return steps


@cached_constant
def _recurrence_on(max_l: int, dtype: torch.dtype, device: torch.device) -> list[Tensor]:
    return [a.to(dtype=dtype, device=device) for a in _harmonic_recurrence(max_l)]


def spherical_harmonics(relative_pos: Tensor, max_degree: int) -> Tensor:
    r"""Real spherical harmonics of degrees ``0 .. 2 * max_degree``: ``[E, (2L + 1)^2]``, as e3nn's
    (``normalize=True``, integral normalization; a zero vector gives $Y_0$ only).

    Built degree by degree, $Y_{l+1} = (Y_l \otimes \hat r)\, A_l$ (`_harmonic_recurrence()`): two
    operators a degree instead of one per polynomial term (e3nn's generated code: about 380 for degrees 0..6).
    """
    unit = torch.nn.functional.normalize(relative_pos, dim=-1)
    harmonics = [torch.full_like(unit[:, :1], 1 / math.sqrt(4 * math.pi))]
    for step in _recurrence_on(2 * max_degree, unit.dtype, unit.device):
        harmonics.append((harmonics[-1].unsqueeze(-1) * unit.unsqueeze(-2)).flatten(1) @ step)
    return torch.cat(harmonics, dim=-1)


def num_frequencies(d_in: int, d_out: int) -> int:
    """Number of ``J`` in ``|d_in - d_out| .. d_in + d_out``: ``2 min(d_in, d_out) + 1``."""
    return degree_to_dim(min(d_in, d_out))


@cached_constant
def _fused_cg_cpu(degrees_in: tuple[int, ...], degrees_out: tuple[int, ...]) -> Tensor:
    """Clebsch-Gordan tensor ``[M, D_in, F, D_out]`` of a fused basis, float64.

    ``M`` indexes every spherical-harmonic component (degree ``J`` at offset
    ``J^2``); the frequency axis runs over output degrees, then input degrees,
    then ``J``: NVIDIA's fused order.
    """
    max_j = max(degrees_in) + max(degrees_out)
    num_m = (max_j + 1) ** 2
    dim_in = sum(degree_to_dim(d) for d in degrees_in)
    dim_out = sum(degree_to_dim(d) for d in degrees_out)
    num_f = sum(num_frequencies(i, o) for o in degrees_out for i in degrees_in)
    cg = torch.zeros(num_m, dim_in, num_f, dim_out, dtype=torch.float64)
    f = 0
    out_offset = 0
    for d_out in degrees_out:
        in_offset = 0
        for d_in in degrees_in:
            for J in range(abs(d_in - d_out), d_in + d_out + 1):
                q = clebsch_gordan(J, d_in, d_out)  # [k, l, m]
                cg[
                    J * J : (J + 1) ** 2,
                    in_offset : in_offset + degree_to_dim(d_in),
                    f,
                    out_offset : out_offset + degree_to_dim(d_out),
                ] = q.permute(2, 1, 0)
                f += 1
            in_offset += degree_to_dim(d_in)
        out_offset += degree_to_dim(d_out)
    return cg


@cached_constant
def fused_clebsch_gordan(
    degrees_in: tuple[int, ...], degrees_out: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> Tensor:
    """`_fused_cg_cpu()` output-major, flattened to ``[M, D_out * F * D_in]`` on ``device``, cached."""
    return _fused_cg_cpu(degrees_in, degrees_out).permute(0, 3, 2, 1).flatten(1).to(dtype=dtype, device=device)


class Basis:
    """The bases of one graph, built on demand per fused layout and cached.

    Construct from relative positions (``[E, 3]``) or from precomputed
    spherical harmonics (``[E, (2L + 1)^2]``, see `spherical_harmonics()`).

    Args:
        sh: spherical harmonics ``[E, >= (2 max_degree + 1)^2]``.
        max_degree: the highest degree of the harmonics used.

    Raises:
        ValueError: harmonics of the wrong shape.
    """

    def __init__(self, sh: Tensor, max_degree: int) -> None:
        expected = (2 * max_degree + 1) ** 2
        if sh.dim() != 2 or sh.shape[1] < expected:
            raise ValueError(
                f"basis: spherical harmonics must be [E, >= {expected}] for max degree {max_degree}, "
                f"got {list(sh.shape)}"
            )
        self.sh = sh
        self.max_degree = max_degree
        self._cache: dict[tuple[tuple[int, ...], tuple[int, ...]], Tensor] = {}

    @classmethod
    def from_relative_pos(cls, relative_pos: Tensor, max_degree: int) -> Basis:
        return cls(spherical_harmonics(relative_pos, max_degree), max_degree)

    @property
    def num_edges(self) -> int:
        return self.sh.shape[0]

    def fused(self, degrees_in: Sequence[int], degrees_out: Sequence[int]) -> Tensor:
        """Basis ``[E, D_out, F, D_in]`` for the given input and output degrees (output-major: the layout the
        kernels read, a row of ``F * D_in`` values per output component).

        Args:
            degrees_in: the input fiber's degrees.
            degrees_out: the output fiber's degrees.
        """
        key = (tuple(degrees_in), tuple(degrees_out))
        if key not in self._cache:
            cg = fused_clebsch_gordan(*key, self.sh.dtype, self.sh.device)
            num_m = (max(key[0]) + max(key[1]) + 1) ** 2
            basis = self.sh[:, :num_m] @ cg
            dim_in = sum(degree_to_dim(d) for d in key[0])
            dim_out = sum(degree_to_dim(d) for d in key[1])
            self._cache[key] = basis.view(self.num_edges, dim_out, basis.shape[-1] // (dim_out * dim_in), dim_in)
        return self._cache[key]
