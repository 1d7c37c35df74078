"""Training, evaluation, prediction and benchmarks around the model.

Importing the package imports nothing else: the command line reads its options
([`se3pyg.engine.config`][se3pyg.engine.config])
and MLflow stores ([`se3pyg.engine.tracking`][se3pyg.engine.tracking]) without torch or PyG. Modules that use PyG import
it through
[`se3pyg.data`][se3pyg.data]'s modules or [`se3pyg.model`][se3pyg.model], which import
[`se3pyg.thirdparty`][se3pyg.thirdparty] first.
"""
