"""Training, evaluation, prediction and benchmarks around the model.

Importing the package imports nothing else: the command line reads its options (:mod:`se3pyg.engine.config`)
and MLflow stores (:mod:`se3pyg.engine.tracking`) without torch or PyG. Modules that use PyG import it through
:mod:`se3pyg.data`'s modules or :mod:`se3pyg.model`, which import :mod:`se3pyg.thirdparty` first.
"""
