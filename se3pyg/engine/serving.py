"""Trained models as MLflow models (the ``pyfunc`` flavour), to register, load and serve over HTTP.

The model takes a list of molecules, each as XYZ or SDF (molfile) text (served: ``{"inputs": [TEXT, ...]}``),
and returns one float per molecule, in input order, in the task's unit. It predicts with the same code as
``se3pyg predict``. Its artifacts hold data only: the checkpoint (read with ``weights_only=True``) and MLflow's
descriptions of it. The code comes from the installed se3pyg: the model names this module as its
``loader_module``, and MLflow calls `_load_pyfunc()` on the checkpoint. No pickle and no Python file is
stored with it, so nothing in a run's artifacts runs when the model is loaded or served.
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
    molecule a text; [`DataError`][se3pyg.data.errors.DataError] naming the row (from 0) otherwise.

    Args:
        texts: one molecule a text, XYZ or SDF.
        elements: the elements the model knows.

    Raises:
        DataError: a text that is no usable molecule, named by its row.
    """
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


class MoleculePropertyModel:
    """An se3pyg checkpoint behind MLflow's pyfunc interface: what `_load_pyfunc()` returns.

    Args:
        checkpoint: the logged model's checkpoint file.
    """

    def __init__(self, checkpoint: str | os.PathLike) -> None:
        from se3pyg.engine.predict import load_model

        self.loaded = load_model(checkpoint)

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> list[float]:
        """One prediction per molecule text: ``model_input`` a list of texts, or the one-column table MLflow makes
        of it under the model's signature.

        Args:
            model_input: molecule texts (a list, or a one-column DataFrame as MLflow's server passes them).
            params: MLflow's inference parameters (none are taken).
        """
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from se3pyg.data.errors import DataError
        from se3pyg.engine.precision import Precision
        from se3pyg.engine.predict import predict_molecules

        texts = _texts(model_input)
        if not texts:
            return []
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            molecules = read_molecule_texts(texts, self.loaded.elements)
        except DataError as exc:  # the server answers 400 with this line, no stack trace
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        precision = Precision.choose(False, "auto", device)
        return predict_molecules(self.loaded, molecules, 64, device, precision).tolist()


def _texts(model_input: Any) -> list[str]:
    """The molecule texts of a model input: a list (or array) of texts, or a table's one column of them."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    if hasattr(model_input, "columns"):  # a pandas DataFrame
        if len(model_input.columns) != 1:
            raise MlflowException("send one column of molecule texts", error_code=INVALID_PARAMETER_VALUE)
        model_input = model_input.iloc[:, 0]
    texts = list(model_input)
    if not all(isinstance(text, str) for text in texts):
        raise MlflowException("send molecules as XYZ or SDF text", error_code=INVALID_PARAMETER_VALUE)
    return texts


def _load_pyfunc(data_path: str) -> MoleculePropertyModel:
    """MLflow's entry to a logged se3pyg model (this module is its ``loader_module``): the model of the checkpoint
    at ``data_path``."""
    return MoleculePropertyModel(data_path)


def log_trained_model(
    run_id: str, checkpoint: str | os.PathLike, register_as: str | None = None, alias: str | None = None
) -> str:
    """Log ``checkpoint`` as the pyfunc model of run ``run_id`` (with an input example and signature).

    Args:
        run_id: the MLflow run it belongs to.
        checkpoint: an se3pyg checkpoint file.
        register_as: a registered model's name, to register it as its next version.
        alias: with ``register_as``, the alias that then names this version (``models:/NAME@ALIAS``).

    Returns:
        The logged model's URI.
    """
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    from se3pyg.engine.tracking import no_artifact_progress_bars
    from se3pyg.engine.versions import library_versions

    versions = library_versions()
    requirements = [f"torch=={versions['version_torch'].split('+')[0]}", "torch_geometric", "e3nn", "rdkit", "pandas"]
    no_artifact_progress_bars()  # its check of the input example downloads the model
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            loader_module=__name__,  # the installed se3pyg makes the model: no code or pickle in the artifacts
            data_path=str(checkpoint),
            signature=ModelSignature(inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec("double")])),
            input_example=[EXAMPLE_MOLECULE],
            pip_requirements=requirements,
            registered_model_name=register_as,
        )
    if register_as and alias:
        mlflow.MlflowClient().set_registered_model_alias(register_as, alias, info.registered_model_version)
    return info.model_uri


def register_run_model(run_id: str, name: str, alias: str | None = None, tracking_uri: str | None = None) -> int:
    """Register run ``run_id``'s model as the next version of ``name`` (``alias`` set on it): its logged model, or,
    for a run that logged none (stopped before its end), one logged now from its best checkpoint artifact.

    Args:
        run_id: the run's ID, or its first characters ([`full_run_id()`][se3pyg.engine.tracking.full_run_id]).
        name: the registered model.
        alias: an alias for the new version (``champion``), moved from any version that had it.
        tracking_uri: the store (default ``$MLFLOW_TRACKING_URI`` or ``mlruns/``).

    Returns:
        The new version's number.

    Raises:
        TrackingError: no such run, or a run with no model and no checkpoint artifact.
    """
    from se3pyg.engine.config import check_model_names
    from se3pyg.engine.tracking import TrackingError, full_run_id, resolve_tracking_uri
    from se3pyg.io import first_line

    check_model_names(name, alias, "NAME", "--alias")
    uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    run_id = full_run_id(run_id, uri)
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        raise TrackingError(f"run {run_id}: not in {uri} ({first_line(exc)[:200]})") from None
    logged = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")
    if logged:
        version = mlflow.register_model(f"runs:/{run_id}/{MODEL_NAME}", name).version
    else:
        artifacts = {a.path for a in client.list_artifacts(run_id)}
        best = next((a for a in ("model.best.pt", "model.pt") if a in artifacts), None)
        if best is None:
            raise TrackingError(f"run {run_id}: logged no model and no checkpoint (model.best.pt), nothing to register")
        with tempfile.TemporaryDirectory(prefix="se3pyg-register-") as folder:
            checkpoint = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=best, dst_path=folder)
            log_trained_model(run_id, checkpoint, name)
        version = max(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    if alias:
        client.set_registered_model_alias(name, alias, str(version))
    return int(version)
