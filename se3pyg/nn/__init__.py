"""Equivariant layers, one per module."""

import se3pyg.thirdparty  # noqa: F401  (first: third-party imports without their deprecation warnings)
from se3pyg.nn.attention import AttentionBlockSE3, AttentionSE3
from se3pyg.nn.conv import KERNELS, LAYOUTS, ConvSE3, KernelGroup, auto_kernel
from se3pyg.nn.linear import LinearSE3
from se3pyg.nn.norm import NormSE3
from se3pyg.nn.pooling import GraphPooling
from se3pyg.nn.radial import RadialProfile

__all__ = [
    "KERNELS",
    "LAYOUTS",
    "AttentionBlockSE3",
    "AttentionSE3",
    "ConvSE3",
    "GraphPooling",
    "KernelGroup",
    "LinearSE3",
    "NormSE3",
    "RadialProfile",
    "auto_kernel",
]
