"""Clebsch-Gordan convention (NVIDIA's e3nn 0.3) and basis construction."""

from __future__ import annotations

import itertools

import e3nn.o3 as o3
import pytest
import torch

from se3pyg.basis import Basis, clebsch_gordan, spherical_harmonics, wigner_3j

from .conftest import wigner_D

# (J, d_in, d_out) blocks whose sign differs between e3nn 0.3 (NVIDIA) and e3nn >= 0.5, degrees <= 3.
FLIPPED = {(1, 2, 2), (1, 3, 3), (2, 1, 2), (2, 2, 1), (3, 1, 3), (3, 3, 1)}


def _triples(max_degree: int):
    for d_in, d_out in itertools.product(range(max_degree + 1), repeat=2):
        for J in range(abs(d_in - d_out), d_in + d_out + 1):
            yield J, d_in, d_out


def test_sign_convention_is_nvidias() -> None:
    flipped = set()
    for J, d_in, d_out in _triples(3):
        ours = wigner_3j(J, d_in, d_out)
        current = o3.wigner_3j(J, d_in, d_out, dtype=torch.float64)
        if torch.allclose(ours, -current, atol=1e-12):
            flipped.add((J, d_in, d_out))
        else:
            assert torch.allclose(ours, current, atol=1e-12), (J, d_in, d_out)
    assert flipped == FLIPPED


def test_known_values_of_e3nn_03() -> None:
    # e3nn 0.3's table: sorted triples positive at their centre entry.
    assert wigner_3j(1, 1, 1)[1, 1, 1] == 0  # centre zero: first non-zero entry positive
    assert wigner_3j(1, 1, 1).flatten()[wigner_3j(1, 1, 1).flatten().nonzero()[0, 0]] > 0
    assert wigner_3j(1, 2, 2)[1, 2, 2] == 0
    assert wigner_3j(0, 2, 2)[0, 2, 2] > 0


@pytest.mark.parametrize(("J", "d_in", "d_out"), list(_triples(3)))
def test_wigner_3j_is_invariant(J: int, d_in: int, d_out: int) -> None:
    torch.manual_seed(J * 16 + d_in * 4 + d_out)
    R = o3.rand_matrix(dtype=torch.float64)
    D = [wigner_D(degree, R) for degree in (J, d_in, d_out)]
    w = wigner_3j(J, d_in, d_out)
    rotated = torch.einsum("ia,jb,kc,abc->ijk", *D, w)
    assert torch.allclose(rotated, w, atol=1e-12)
    assert abs(w.norm().item() - 1) < 1e-12


def test_fused_basis_matches_pairwise_blocks() -> None:
    gen = torch.Generator().manual_seed(0)
    rel = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    basis = Basis.from_relative_pos(rel, 2)
    sh = spherical_harmonics(rel, 2)
    full = basis.fused([0, 1, 2], [0, 1, 2])
    f = 0
    out_off = 0
    for d_out in range(3):
        in_off = 0
        for d_in in range(3):
            for J in range(abs(d_in - d_out), d_in + d_out + 1):
                block = torch.einsum("nm,klm->nkl", sh[:, J * J : (J + 1) ** 2], clebsch_gordan(J, d_in, d_out))
                got = full[:, out_off : out_off + 2 * d_out + 1, f, in_off : in_off + 2 * d_in + 1]
                assert torch.allclose(got, block, atol=1e-12)
                f += 1
            in_off += 2 * d_in + 1
        out_off += 2 * d_out + 1
    assert f == full.shape[2] == 19


def test_basis_rejects_too_few_harmonics() -> None:
    with pytest.raises(ValueError, match="spherical harmonics"):
        Basis(torch.zeros(3, 9), max_degree=2)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_spherical_harmonics_are_e3nns(dtype: torch.dtype, tol: float) -> None:
    import e3nn.o3 as o3

    from se3pyg.basis import spherical_harmonics

    x = torch.randn(500, 3, dtype=dtype, generator=torch.Generator().manual_seed(1))
    x[0] = 0  # a self-loop: Y_0 only, as e3nn
    ours = spherical_harmonics(x, 3)
    assert ours.shape == (500, 49)
    assert (ours - o3.spherical_harmonics(list(range(7)), x, normalize=True)).abs().max() <= tol
