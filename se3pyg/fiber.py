"""Fibers: which degrees a feature set holds and with how many channels.

A feature of degree ``d`` has ``2d + 1`` components and transforms under a
rotation ``R`` with the Wigner matrix ``D^d(R)``. Feature dicts follow
NVIDIA's convention: ``{"0": [N, C_0, 1], "1": [N, C_1, 3], ...}``.

When every degree has the same channels ``C`` (a *uniform* fiber), the
features also fit one *stacked* tensor ``[N, D, C]``: the components of all
degrees in order along ``D = sum_d (2d + 1)``, channels last. The layers take
either form; the stacked one lets a linear map run as one batched product over
components and a norm as one segment sum, instead of one operator per degree.
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

    Args:
        structure: ``{degree: channels}`` or ``[(degree, channels), ...]``; degrees with 0 channels are left out.

    Raises:
        ValueError: a negative degree or channel count.
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
        """Degrees ``0 .. num_degrees - 1``, each with ``num_channels`` channels.

        Args:
            num_degrees: degrees ``0 .. num_degrees - 1``.
            num_channels: channels of each.
        """
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

    @property
    def is_uniform(self) -> bool:
        """Whether every degree has the same channels (the fibers whose features stack)."""
        return len(set(self._structure.values())) == 1

    def component_degrees(self) -> list[int]:
        """The degree of each of the ``D`` components, in stacked order."""
        return [d for d in self._structure for _ in range(degree_to_dim(d))]

    def component_run(self, degrees: list[int]) -> tuple[int, int] | None:
        """``(start, length)`` of the stacked components of ``degrees`` when they are one run, else ``None``.

        Args:
            degrees: some of the fiber's degrees.
        """
        kept = [i for i, d in enumerate(self.component_degrees()) if d in degrees]
        return (kept[0], len(kept)) if kept and kept == list(range(kept[0], kept[0] + len(kept))) else None

    def to_dict(self) -> dict[int, int]:
        return dict(self._structure)

    def pack(self, features: Mapping[str, Tensor]) -> Tensor:
        """``{"d": [..., C_d, 2d+1]}`` -> ``[..., num_features]`` (degrees in order).

        Args:
            features: features by degree, as the fiber says.
        """
        return torch.cat([features[str(d)].flatten(-2) for d in self.degrees], dim=-1)

    def unpack(self, packed: Tensor) -> dict[str, Tensor]:
        """Inverse of `pack()`.

        Args:
            packed: ``[..., num_features]``.
        """
        sizes = [c * degree_to_dim(d) for d, c in self._structure.items()]
        parts = packed.split(sizes, dim=-1)
        return {
            str(d): p.unflatten(-1, (c, degree_to_dim(d)))
            for (d, c), p in zip(self._structure.items(), parts, strict=True)
        }

    def stack(self, features: Mapping[str, Tensor]) -> Tensor:
        """``{"d": [N, C, 2d+1]}`` -> ``[N, D, C]`` for a uniform fiber (a view for one degree).

        Args:
            features: features by degree, as the (uniform) fiber says.
        """
        if not self.is_uniform:
            raise ValueError(f"only a fiber with equal channels per degree stacks, got {self}")
        parts = [features[str(d)].transpose(-1, -2) for d in self.degrees]
        return torch.cat(parts, dim=-2) if len(parts) > 1 else parts[0]

    def unstack(self, stacked: Tensor) -> dict[str, Tensor]:
        """Inverse of `stack()`: views ``{"d": [N, C, 2d+1]}`` of ``[N, D, C]``.

        Args:
            stacked: ``[N, D, C]``.
        """
        parts = stacked.split([degree_to_dim(d) for d in self.degrees], dim=-2)
        return {str(d): p.transpose(-1, -2) for d, p in zip(self.degrees, parts, strict=True)}


def component_rows(stacked: Tensor, run: tuple[int, int]) -> Tensor:
    """The ``(start, length)`` run of stacked components ``[..., D, C]`` (`Fiber.component_run()`); the tensor
    itself when the run is all of them, so that autograd has no slice to undo."""
    start, length = run
    return stacked if length == stacked.shape[-2] else stacked.narrow(-2, start, length)
