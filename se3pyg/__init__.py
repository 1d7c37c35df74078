"""se3pyg: NVIDIA's SE(3)-Transformer on PyTorch Geometric."""

import se3pyg.thirdparty  # noqa: F401  (first: third-party imports without their deprecation warnings)
from se3pyg.basis import Basis
from se3pyg.fiber import Fiber
from se3pyg.model import SE3Transformer, SE3TransformerPooled

__version__ = "0.1.0"

__all__ = ["Basis", "Fiber", "SE3Transformer", "SE3TransformerPooled", "__version__"]
