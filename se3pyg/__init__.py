"""se3pyg: NVIDIA's SE(3)-Transformer on PyTorch Geometric."""

from se3pyg.basis import Basis
from se3pyg.fiber import Fiber
from se3pyg.model import SE3Transformer, SE3TransformerPooled

__version__ = "0.1.0"

__all__ = ["Basis", "Fiber", "SE3Transformer", "SE3TransformerPooled", "__version__"]
