"""NVIDIA's QM9 split: 100,000 train, int(0.1 n) test, the rest validation; seed 0."""

from __future__ import annotations

import torch

QM9_FULL = 130_831
QM9_TRAIN = 100_000


def split_sizes(n: int) -> tuple[int, int, int]:
    """``(train, val, test)`` for ``n`` molecules; subsets keep the full set's proportions.

    Args:
        n: molecules in the dataset.
    """
    train = QM9_TRAIN if n == QM9_FULL else round(n * QM9_TRAIN / QM9_FULL)
    test = int(0.1 * n)
    return train, n - train - test, test


def split_indices(n: int, seed: int = 0) -> tuple[list[int], list[int], list[int]]:
    """Indices of ``(train, val, test)`` as ``torch.utils.data.random_split`` draws them.

    Args:
        n: molecules in the dataset.
        seed: the generator's seed (NVIDIA's: 0).
    """
    subsets = torch.utils.data.random_split(range(n), split_sizes(n), generator=torch.Generator().manual_seed(seed))
    return tuple(list(s.indices) for s in subsets)  # type: ignore[return-value]
