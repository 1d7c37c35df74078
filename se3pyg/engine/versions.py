"""Versions of the libraries a run depends on (logged and stored in checkpoints)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def library_versions() -> dict[str, str]:
    """The versions a run depends on, as ``{"version_NAME": VERSION}`` (se3pyg, torch, PyG, e3nn, MLflow), logged
    with every run and stored in its checkpoints."""
    out = {}
    for name in ("se3pyg", "torch", "torch_geometric", "e3nn", "mlflow"):
        try:
            out[f"version_{name}"] = version(name)
        except PackageNotFoundError:
            out[f"version_{name}"] = "not installed"
    return out
