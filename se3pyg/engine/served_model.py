"""The code of a logged se3pyg MLflow model ("models from code"): MLflow runs this file to make the model, instead
of unpickling a pickled object."""

from mlflow.models import set_model

from se3pyg.engine.serving import MoleculePropertyModel

set_model(MoleculePropertyModel())
