from __future__ import annotations

import se3pyg.thirdparty  # noqa: F401  (first, as in se3pyg: PyG imported without its deprecation warnings)

# isort: split
import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch_geometric.data import Batch, Data

from .numerics import relative_error  # noqa: F401  (the tests import it from here)

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"  # recorded by the scripts beside them (tests/golden/README.md)
GOLDEN_FILES = sorted(GOLDEN.glob("nvidia_*.pt"))  # NVIDIA's SE3TransformerPooled goldens


def golden_batch(golden: dict) -> Batch:
    """The golden molecules as one PyG batch, in order."""
    return Batch.from_data_list([Data(**{k: v for k, v in mol.items() if k != "index"}) for mol in golden["molecules"]])


def wigner_D(degree: int, R: torch.Tensor) -> torch.Tensor:
    """``D^degree(R)`` in e3nn's real basis, float64-exact: ``Y(R x) = D Y(x)`` solved on many points.

    (``e3nn.o3.wigner_D`` builds its generators in float32, so it is exact only to ~1e-7.)
    """
    import e3nn.o3 as o3

    points = torch.randn(4 * (2 * degree + 1) + 8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    Y = o3.spherical_harmonics(degree, points, normalize=True)
    Y_rot = o3.spherical_harmonics(degree, points @ R.double().T, normalize=True)
    return torch.linalg.lstsq(Y, Y_rot).solution.T


def chain_molecule(n: int = 5, seed: int = 0) -> Data:
    """A random chain of ``n`` atoms with QM9's feature sizes (6 node, 4 edge features), bonds both ways."""
    gen = torch.Generator().manual_seed(seed)
    src = torch.arange(n - 1)
    edge_index = torch.cat([torch.stack([src, src + 1]), torch.stack([src + 1, src])], dim=1)
    return Data(
        x=torch.randn(n, 6, generator=gen),
        pos=torch.randn(n, 3, generator=gen),
        edge_index=edge_index,
        edge_attr=torch.randn(edge_index.shape[1], 4, generator=gen),
    )


@pytest.fixture(scope="session", params=GOLDEN_FILES, ids=[p.stem for p in GOLDEN_FILES])
def golden(request: pytest.FixtureRequest) -> dict:
    return torch.load(request.param, weights_only=True)


QM9_SUBSET = 300
#: The model the tests train: one layer, degrees 0 and 1, 8 channels, 2 heads (an epoch of the subset in seconds).
TINY_MODEL = {"num_layers": 1, "num_degrees": 2, "num_channels": 8, "num_heads": 2}
#: :data:`TINY_MODEL` as command-line options.
TINY_MODEL_ARGS = [arg for key, value in TINY_MODEL.items() for arg in (f"--{key.replace('_', '-')}", str(value))]


@pytest.fixture(scope="session")
def qm9_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real QM9 build (qm9pack + RDKit + PyG) of the first molecules, shared by the session."""
    from se3pyg.data import prepare_qm9

    root = tmp_path_factory.mktemp("qm9")
    prepare_qm9(root, limit=QM9_SUBSET)
    return root


def invoke_se3pyg(*args: str, cwd: Path) -> Any:
    """``se3pyg ARGS`` run in this process by Click's test runner, from ``cwd``: for what a command decides before
    it starts any work (``.exit_code``, ``.stdout``, ``.stderr``); a command that runs starts real processes with
    :func:`run_se3pyg`."""
    from typer.testing import CliRunner

    from se3pyg.cli.app import app

    with contextlib.chdir(cwd):
        return CliRunner().invoke(app, list(args))


def run_se3pyg(
    *args: str, cwd: Path, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python -m se3pyg ARGS`` in a real process, without the caller's MLFLOW_TRACKING_URI (``env`` added)."""
    env = {**{k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "COLUMNS")}, **(env or {})}
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "se3pyg", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
