"""Trained models as MLflow models (the ``pyfunc`` flavour), to register, load and serve over HTTP.

The model takes a list of molecules, each as XYZ or SDF (molfile) text (served: ``{"inputs": [TEXT, ...]}``),
and returns one float per molecule, in input order, in the task's unit; its signature comes from the type
hints of :meth:`MoleculePropertyModel.predict`. It wraps an se3pyg checkpoint
(its ``checkpoint`` artifact) and predicts with the same code as ``se3pyg predict``; it is logged as code
(``served_model.py``), so loading it unpickles nothing.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
import torch

MODEL_NAME = "model"  # the logged model's name in its run: runs:/RUN_ID/model
EXAMPLE_MOLECULE = "3\nwater\nO 0.0 0.0 0.117\nH 0.0 0.757 -0.467\nH 0.0 -0.757 -0.467\n"


def read_molecule_texts(texts: Sequence[str], elements: Sequence[str]) -> list[Any]:
    """Model inputs of molecules given as XYZ or SDF text (SDF when the text holds a molfile's ``M  END``), one
    molecule a text; :class:`~se3pyg.data.errors.DataError` naming the row (from 0) otherwise."""
    from se3pyg.data.errors import DataError
    from se3pyg.data.molecules import read_molecules

    molecules = []
    with tempfile.TemporaryDirectory(prefix="se3pyg-serve-") as folder:
        for k, text in enumerate(texts):
            path = Path(folder, f"row {k}{'.sdf' if 'M  END' in text else '.xyz'}")
            path.write_text(text)
            try:
                found = read_molecules([path], elements)
            except DataError as exc:  # named by its row, not by the scratch file
                reason = str(exc).replace(f"{folder}/", "").replace(f"{path.name}:0:", f"{path.name}:")  # frame 0
                raise DataError(reason.replace(path.name, f"row {k}")) from None
            if len(found) != 1:
                raise DataError(f"row {k}: holds {len(found)} molecules (SDF records or XYZ frames); send one a row")
            found[0].name = f"row {k}"
            molecules += found
    return molecules


class MoleculePropertyModel(mlflow.pyfunc.PythonModel):
    """An se3pyg checkpoint behind MLflow's pyfunc interface (loaded from the ``checkpoint`` artifact)."""

    def load_context(self, context: Any) -> None:
        from se3pyg.engine.predict import load_model

        self.loaded = load_model(context.artifacts["checkpoint"])

    def predict(self, model_input: list[str], params: dict[str, Any] | None = None) -> list[float]:
        """One prediction per molecule text (MLflow reads these type hints as the model's schema)."""
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from se3pyg.data.errors import DataError
        from se3pyg.engine.precision import Precision
        from se3pyg.engine.predict import predict_molecules

        if not model_input:
            return []
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            molecules = read_molecule_texts(model_input, self.loaded.elements)
        except DataError as exc:  # the server answers 400 with this line, no stack trace
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        precision = Precision.choose(False, "auto", device)
        return predict_molecules(self.loaded, molecules, 64, device, precision).tolist()


def log_trained_model(run_id: str, checkpoint: str | os.PathLike, register_as: str | None = None) -> str:
    """Log ``checkpoint`` as the pyfunc model of run ``run_id`` (with an input example and signature), and
    register it as ``register_as`` when given. Returns the logged model's URI."""
    from se3pyg.engine.tracking import no_artifact_progress_bars
    from se3pyg.engine.versions import library_versions

    versions = library_versions()
    requirements = [f"torch=={versions['version_torch'].split('+')[0]}", "torch_geometric", "e3nn", "rdkit", "pandas"]
    no_artifact_progress_bars()  # its check of the input example downloads the model
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=str(Path(__file__).with_name("served_model.py")),  # code, not a pickle, makes the model
            artifacts={"checkpoint": str(checkpoint)},
            input_example=[EXAMPLE_MOLECULE],
            pip_requirements=requirements,
            registered_model_name=register_as,
        )
    return info.model_uri
