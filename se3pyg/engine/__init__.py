"""Training, evaluation, prediction and benchmarks around the model."""

import se3pyg.thirdparty  # noqa: F401  (first: third-party imports without their deprecation warnings)
