"""Fibers: which degrees a feature set holds and with how many channels.

A feature of degree ``d`` has ``2d + 1`` components and transforms under a
rotation ``R`` with the Wigner matrix ``D^d(R)``. Feature dicts follow
NVIDIA's convention: ``{"0": [N, C_0, 1], "1": [N, C_1, 3], ...}``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import Tensor


def degree_to_dim(degree: int) -> int:
    """Number of components of a degree-``degree`` feature: ``2d + 1``."""
    return 2 * degree + 1


class Fiber(Mapping[int, int]):
    """An immutable map degree -> channels, ordered by degree.

    ``fiber[d]`` is 0 for a degree the fiber does not hold, as in NVIDIA's ``Fiber``.
    """

    def __init__(self, structure: Mapping[int, int] | list[tuple[int, int]] | None = None) -> None:
        items = dict(structure or {})
        clean: dict[int, int] = {}
        for degree, channels in items.items():
            degree, channels = int(degree), int(channels)
            if degree < 0 or channels < 0:
                raise ValueError(f"Fiber: degree and channels must be >= 0, got {degree}: {channels}")
            if channels > 0:
                clean[degree] = channels
        self._structure = dict(sorted(clean.items()))

    @staticmethod
    def create(num_degrees: int, num_channels: int) -> Fiber:
        """Degrees ``0 .. num_degrees - 1``, each with ``num_channels`` channels."""
        return Fiber({d: num_channels for d in range(num_degrees)})

    def __getitem__(self, degree: int) -> int:
        return self._structure.get(int(degree), 0)

    def __iter__(self) -> Iterator[int]:
        return iter(self._structure)

    def __len__(self) -> int:
        return len(self._structure)

    def __contains__(self, degree: object) -> bool:
        return degree in self._structure

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._structure == {int(k): int(v) for k, v in other.items() if int(v) > 0}
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self._structure.items()))

    def __repr__(self) -> str:
        return f"Fiber({self._structure})"

    @property
    def degrees(self) -> list[int]:
        return list(self._structure)

    @property
    def channels(self) -> list[int]:
        return list(self._structure.values())

    @property
    def max_degree(self) -> int:
        return max(self._structure, default=0)

    @property
    def num_features(self) -> int:
        """Length of all features flattened together: ``sum_d C_d (2d + 1)``."""
        return sum(c * degree_to_dim(d) for d, c in self._structure.items())

    def to_dict(self) -> dict[int, int]:
        return dict(self._structure)

    def pack(self, features: Mapping[str, Tensor]) -> Tensor:
        """``{"d": [..., C_d, 2d+1]}`` -> ``[..., num_features]`` (degrees in order)."""
        return torch.cat([features[str(d)].flatten(-2) for d in self.degrees], dim=-1)

    def unpack(self, packed: Tensor) -> dict[str, Tensor]:
        """Inverse of :meth:`pack`."""
        sizes = [c * degree_to_dim(d) for d, c in self._structure.items()]
        parts = packed.split(sizes, dim=-1)
        return {
            str(d): p.unflatten(-1, (c, degree_to_dim(d)))
            for (d, c), p in zip(self._structure.items(), parts, strict=True)
        }


def unfuse_features(features: Tensor, degrees: list[int]) -> dict[str, Tensor]:
    """Split ``[..., C, sum_d (2d+1)]`` along the last axis into a feature dict."""
    parts = features.split([degree_to_dim(d) for d in degrees], dim=-1)
    return {str(d): p for d, p in zip(degrees, parts, strict=True)}
