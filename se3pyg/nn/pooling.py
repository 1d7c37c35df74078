"""Graph pooling of node features of one degree."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn
from torch_geometric.nn import global_max_pool, global_mean_pool


class GraphPooling(nn.Module):
    """Max or mean over each graph's nodes of the degree-``feat_type`` features.

    Mean pooling is equivariant for any degree; max pooling only for degree 0.
    Returns ``[B, C]`` for degree 0, ``[B, C, 2d + 1]`` otherwise.

    Args:
        pool: ``"max"`` or ``"avg"``.
        feat_type: the degree pooled.

    Shapes:
        ``forward({"d": [N, C, 2d+1]}, batch [N])`` -> ``[B, C]`` or ``[B, C, 2d+1]``.
    """

    def __init__(self, pool: Literal["max", "avg"] = "max", feat_type: int = 0) -> None:
        super().__init__()
        if pool not in ("max", "avg"):
            raise ValueError(f"pooling must be 'max' or 'avg', got {pool!r}")
        if pool == "max" and feat_type != 0:
            raise ValueError("max pooling of degree > 0 features would break equivariance; use 'avg'")
        self.pool = pool
        self.feat_type = feat_type

    def forward(self, features: dict[str, Tensor], batch: Tensor, num_graphs: int | None = None) -> Tensor:
        """One feature vector a graph: the max or mean of its nodes' features of degree ``feat_type``.

        Args:
            features: the nodes' features by degree.
            batch: each node's graph, ``[N]``.
            num_graphs: the graphs in the batch (``None``: counted from ``batch``).

        Returns:
            ``[B, C]`` for degree 0, ``[B, C, 2d + 1]`` otherwise.
        """
        feats = features[str(self.feat_type)]
        pool = global_max_pool if self.pool == "max" else global_mean_pool
        pooled = pool(feats.flatten(1), batch, num_graphs)
        return pooled if self.feat_type == 0 else pooled.view(-1, *feats.shape[1:])

    def extra_repr(self) -> str:
        return f"pool={self.pool}, feat_type={self.feat_type}"
