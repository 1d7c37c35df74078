"""Interoperability with other SE(3)-Transformer implementations."""

import se3pyg.thirdparty  # noqa: F401  (first: third-party imports without their deprecation warnings)
