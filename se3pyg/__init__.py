"""se3pyg: NVIDIA's SE(3)-Transformer on PyTorch Geometric.

The classes below are imported on first use, so that ``import se3pyg.cli`` (the command's entry point) starts
without torch and can restart the process under glibc's allocator settings at no cost
([`se3pyg.allocator.exec_keeping_freed_memory()`][se3pyg.allocator.exec_keeping_freed_memory]).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from se3pyg.basis import Basis
    from se3pyg.fiber import Fiber
    from se3pyg.model import SE3Transformer, SE3TransformerPooled

__version__ = "0.1.0"

__all__ = ["Basis", "Fiber", "SE3Transformer", "SE3TransformerPooled", "__version__"]

_HOMES = {  # each class -> the module that defines it
    "Basis": "se3pyg.basis",
    "Fiber": "se3pyg.fiber",
    "SE3Transformer": "se3pyg.model",
    "SE3TransformerPooled": "se3pyg.model",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'se3pyg' has no attribute {name!r}")
    importlib.import_module("se3pyg.thirdparty")  # first: third-party imports without their deprecation warnings
    return getattr(importlib.import_module(_HOMES[name]), name)


def __dir__() -> list[str]:
    return sorted(__all__)
