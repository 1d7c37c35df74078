"""QM9 offline: raw files built from the PyPI package ``qm9pack``, processed by PyG's ``QM9``.

``qm9pack`` ships the 130,831 characterized QM9 molecules (coordinates and
properties in atomic units) as CSV files. `prepare_qm9()` perceives bonds
with RDKit, writes the three raw files PyG's ``QM9`` reads (``gdb9.sdf``,
``gdb9.sdf.csv``, ``uncharacterized.txt``) and lets the stock
``torch_geometric.datasets.QM9`` process them. Molecules keep their QM9
position (``idx`` = gdb index - 1, ``name`` = ``gdb_<index>``).

A data folder is complete only once its manifest (``se3pyg-qm9.json``,
holding the molecule count and the processed file's size and SHA-256) is
written, last and atomically; everything is built in a scratch folder first.
"""

from __future__ import annotations

import se3pyg.thirdparty  # noqa: F401  (first: third-party imports without their deprecation warnings)

# isort: split
import ast
import contextlib
import csv
import io
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from importlib.util import find_spec
from pathlib import Path

import torch
from torch_geometric.data import Data
from torch_geometric.data.dataset import files_exist
from torch_geometric.datasets import QM9

from se3pyg.data.errors import DataError
from se3pyg.data.molecules import perceive_bonds
from se3pyg.data.pairs import pair_dataset_edges
from se3pyg.io import atomic_write, exclusive_use, file_sha256
from se3pyg.processes import end_with_parent, pid_alive, raise_if_stopped

NUM_MOLECULES = 130_831
MANIFEST = "se3pyg-qm9.json"
FORMAT_VERSION = 1

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``, called as a build advances."""

HARTREE_TO_KCAL_MOL = 627.509474
# Energies of the free atoms (Ha) at B3LYP/6-31G(2df,p): U0, U(298 K), H(298 K), G(298 K); QM9's atomref.
ATOM_REFERENCE = {
    "H": (-0.500273, -0.498857, -0.497912, -0.510927),
    "C": (-37.846772, -37.845355, -37.844411, -37.861317),
    "N": (-54.583861, -54.582445, -54.581501, -54.598897),
    "O": (-75.064579, -75.063163, -75.062219, -75.079532),
    "F": (-99.718730, -99.717314, -99.716370, -99.733544),
}
_CSV_HEADER = "mol_id,A,B,C,mu,alpha,homo,lumo,gap,r2,zpve,u0,u298,h298,g298,cv,u0_atom,u298_atom,h298_atom,g298_atom"
_ENERGY_COLUMNS = (
    "InternalEnergy_0K_au",
    "InternalEnergy_298K_au",
    "Enthalphy_298K_au",
    "GibbsFreeEnergy_298K_au",
)
# A stand-in for an uncharacterized slot: PyG skips it through uncharacterized.txt.
_PLACEHOLDER = "{name}\n     se3pyg\n\n  1  0  0  0  0  0  0  0  0  0999 V2000\n    0.0000    0.0000    0.0000 H   0  0  0  0  0  0  0  0  0  0  0  0\nM  END\n$$$$\n"  # noqa: E501


class OfflineQM9(QM9):
    """PyG's ``QM9`` over a folder prepared by `prepare_qm9()`; never downloads, and unpickles nothing.

    PyG's own loading reads ``processed/pre_transform.pt`` and ``pre_filter.pt`` with ``weights_only=False``
    (any code in them runs) and falls back to that for the processed file too. Here those two files are neither
    read nor written (se3pyg passes no pre-transform or filter) and the processed file is read with
    ``weights_only=True`` only. A processed build needs no raw files.
    """

    def _download(self) -> None:
        if not files_exist(self.processed_paths):
            super()._download()

    def download(self) -> None:
        raise DataError(f"{self.root}: QM9 raw files are missing; run `se3pyg data prepare --data-dir {self.root}`")

    def _process(self) -> None:
        if not files_exist(self.processed_paths):
            os.makedirs(self.processed_dir, exist_ok=True)
            self.process()

    def load(self, path: str, data_cls: type = Data) -> None:
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            data, self.slices, *rest = stored
            self.data = (rest[0] if rest else data_cls).from_dict(data)
        except Exception as exc:  # whatever it holds, it is not run
            raise DataError(f"{path}: not a QM9 build se3pyg can read ({type(exc).__name__})") from None


def qm9pack_files() -> list[Path]:
    """The CSV files of the installed ``qm9pack``, in QM9 order."""
    spec = find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("qm9pack is not installed: pip install qm9pack")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    files = sorted(folder.glob("qm9_part*.csv"))
    if not files:
        raise DataError(f"{folder}: no qm9_part*.csv files in the qm9pack package")
    return files


def _read_qm9pack(limit: int | None) -> Iterator[dict[str, str]]:
    csv.field_size_limit(sys.maxsize)
    count = 0
    for path in qm9pack_files():
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                if limit is not None and count >= limit:
                    return
                count += 1
                yield row


def _molblock(args: tuple[int, list[str], list[list[float]]]) -> str:
    """A Kekulé SDF record with bonds perceived by RDKit from the coordinates."""
    from rdkit import Chem

    index, elements, coords = args
    mol = perceive_bonds(elements, coords)
    mol.SetProp("_Name", f"gdb_{index}")
    return Chem.MolToMolBlock(mol, kekulize=True) + "$$$$\n"


def _csv_row(index: int, row: dict[str, str]) -> str:
    counts: dict[str, int] = {}
    for element in ast.literal_eval(row["Elements"]):
        counts[element] = counts.get(element, 0) + 1
    atomization = [
        (float(row[column]) - sum(ATOM_REFERENCE[e][k] * n for e, n in counts.items())) * HARTREE_TO_KCAL_MOL
        for k, column in enumerate(_ENERGY_COLUMNS)
    ]
    values = [
        row["RotA_GHz"],
        row["RotB_GHz"],
        row["RotC_GHz"],
        row["Dipole_debye"],
        row["Polarizability_bohr3"],
        row["HOMO_au"],
        row["LUMO_au"],
        row["HOMO_LUMO_gap_au"],
        row["R2_bohr2"],
        row["ZPVE_au"],
        *(row[c] for c in _ENERGY_COLUMNS),
        row["Heatcapacity_Cv_cal_mol_K"],
        *(f"{a:.6f}" for a in atomization),
    ]
    return f"gdb_{index}," + ",".join(str(v) for v in values) + "\n"


def _write_raw(raw_dir: Path, limit: int | None, progress: Progress | None, workers: int) -> int:
    raw_dir.mkdir(parents=True, exist_ok=True)
    rows = list(_read_qm9pack(limit))
    if not rows:
        raise DataError("qm9pack yielded no molecules")
    total = len(rows)
    indices = [int(r["Index"]) for r in rows]
    jobs = [
        (i, ast.literal_eval(r["Elements"]), ast.literal_eval(r["XYZ_Ang"])) for i, r in zip(indices, rows, strict=True)
    ]
    characterized = set(indices)
    uncharacterized = [i for i in range(1, indices[-1] + 1) if i not in characterized]
    by_index = dict(zip(indices, rows, strict=True))
    empty_row = "," + ",".join(["0"] * 19) + "\n"

    pool = ProcessPoolExecutor(max_workers=workers, initializer=end_with_parent)
    try:
        blocks = pool.map(_molblock, jobs, chunksize=256)
        with (raw_dir / "gdb9.sdf").open("w") as sdf, (raw_dir / "gdb9.sdf.csv").open("w") as table:
            table.write(_CSV_HEADER + "\n")
            done = 0
            for index in range(1, indices[-1] + 1):
                raise_if_stopped()
                if index in characterized:
                    sdf.write(next(blocks))
                    table.write(_csv_row(index, by_index[index]))
                    done += 1
                    if progress and (done % 1000 == 0 or done == total):
                        progress("perceiving bonds", done, total)
                else:
                    sdf.write(_PLACEHOLDER.format(name=f"gdb_{index}"))
                    table.write(f"gdb_{index}" + empty_row)
    finally:  # a stopped build waits for the molecules in progress, not for the rest
        pool.shutdown(wait=True, cancel_futures=True)
    with (raw_dir / "uncharacterized.txt").open("w") as handle:
        handle.write("Molecules that failed the geometry consistency check\n" * 9)
        handle.writelines(f"{i} gdb_{i}\n" for i in uncharacterized)
        handle.write("\n")
    return total


def read_manifest(data_dir: str | os.PathLike) -> dict | None:
    """The manifest of a complete data folder, or ``None`` if there is none."""
    path = Path(data_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("version") != FORMAT_VERSION:
        return None
    typed = all(
        isinstance(manifest.get(key), kind) and not isinstance(manifest.get(key), bool)
        for key, kind in _MANIFEST_ENTRIES.items()
    )
    return manifest if typed and Path(manifest["processed_file"]).name == manifest["processed_file"] else None


#: What a manifest holds besides its version: entry -> type (one without them all is no manifest).
_MANIFEST_ENTRIES = {"count": int, "processed_file": str, "processed_size": int, "processed_sha256": str}


def verify(data_dir: str | os.PathLike) -> dict:
    """The manifest, once the processed file is checked against it; `DataError` otherwise."""
    root = Path(data_dir)
    manifest = read_manifest(root)
    if manifest is None:
        raise DataError(f"{root}: no complete QM9 build (missing or unreadable {MANIFEST})")
    processed = root / "processed" / manifest["processed_file"]
    if not processed.is_file() or processed.stat().st_size != manifest["processed_size"]:
        raise DataError(f"{processed}: missing or truncated (expected {manifest['processed_size']} bytes)")
    if file_sha256(processed) != manifest["processed_sha256"]:
        raise DataError(f"{processed}: damaged (SHA-256 does not match the manifest)")
    return manifest


def prepare_qm9(
    data_dir: str | os.PathLike,
    limit: int | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> dict:
    """Build QM9 (the first ``limit`` characterized molecules, or all) into ``data_dir``.

    Idempotent: a complete, verified build of at least ``limit`` molecules is
    kept as it is. Returns the manifest.

    Args:
        data_dir: the folder to build in (an empty one, or one se3pyg built).
        limit: the first ``limit`` characterized molecules (``None``: all 130,831).
        progress: told of the build's stages (``progress(stage, done, total)``).
        workers: processes perceiving bonds (``None``: one a core).

    Raises:
        DataError: a folder that cannot hold the build, or a build that failed (a full disk), named.
    """
    root = Path(data_dir)
    if limit is not None and not 1 <= limit <= NUM_MOLECULES:
        raise DataError(f"--limit must be between 1 and {NUM_MOLECULES}, got {limit}")
    manifest = _complete(root, limit)
    if manifest is not None:
        return manifest
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: is a file, not a folder for the QM9 build")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{root}: cannot create the QM9 folder ({exc.strerror})") from None
    if not os.access(root, os.W_OK):
        raise DataError(f"{root}: not writable, so QM9 cannot be built there")
    with exclusive_use(root / MANIFEST, "--data-dir", waiting="builds QM9 there"):  # one build of a folder at a time
        return _complete(root, limit) or _build(root, limit, progress, workers)


def _complete(root: Path, limit: int | None) -> dict | None:
    """The manifest of a complete, verified build of at least ``limit`` molecules in ``root``, else ``None``."""
    try:
        manifest = verify(root)
    except DataError:
        return None
    return manifest if manifest["count"] >= (limit or NUM_MOLECULES) else None


#: What a QM9 build writes in its folder's ``raw`` and ``processed`` (older builds: PyG's two pickles too).
_BUILD_FILES = {
    "raw": {"gdb9.sdf", "gdb9.sdf.csv", "uncharacterized.txt"},
    "processed": {"data_v3.pt", "pre_transform.pt", "pre_filter.pt"},
}


def _foreign(root: Path) -> list[Path]:
    """What lies in ``root`` that no QM9 build wrote: se3pyg replaces a build, never deletes anything else."""
    found = []
    for entry in root.iterdir():
        if entry.name in _BUILD_FILES and entry.is_dir() and not entry.is_symlink():
            found += [f for f in entry.iterdir() if f.name not in _BUILD_FILES[entry.name]]
        elif entry.name != MANIFEST and not entry.name.startswith((f".{MANIFEST}.", ".build-")):
            found.append(entry)
    return sorted(found)


def _build(root: Path, limit: int | None, progress: Progress | None, workers: int | None) -> dict:
    """Build QM9 in a scratch folder of ``root``, then move it in place of the previous build, manifest last."""
    foreign = _foreign(root)
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise DataError(
            f"--data-dir {root}: holds {foreign[0]}{more}, which no QM9 build wrote; QM9 is built only in an empty "
            "folder or one se3pyg built"
        )
    for stale in root.glob(".build-*"):  # folders of builds whose process was killed
        pid = stale.name.removeprefix(".build-")
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    scratch = root / f".build-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        count = _write_raw(scratch / "raw", limit, progress, workers or os.cpu_count() or 1)
        if progress:
            progress("processing with torch_geometric.datasets.QM9", 0, count)
        previous = os.environ.get("TQDM_DISABLE")
        os.environ["TQDM_DISABLE"] = "1"
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # PyG's "Processing..." lines
                dataset = OfflineQM9(str(scratch))
        finally:
            if previous is None:
                os.environ.pop("TQDM_DISABLE")
            else:
                os.environ["TQDM_DISABLE"] = previous
        raise_if_stopped()  # PyG's processing is not cut: a stop during it is acted on here, before the build is kept
        if len(dataset) != count:
            raise DataError(f"{scratch}: processed {len(dataset)} molecules, expected {count}")
        if progress:
            progress("processing with torch_geometric.datasets.QM9", count, count)
        processed = Path(dataset.processed_paths[0])
        manifest = {
            "version": FORMAT_VERSION,
            "count": count,
            "processed_file": processed.name,
            "processed_size": processed.stat().st_size,
            "processed_sha256": file_sha256(processed),
            "source": "qm9pack + RDKit bond perception",
        }
        (root / MANIFEST).unlink(missing_ok=True)  # the folder is incomplete from here until the rename below
        for name in ("raw", "processed"):
            shutil.rmtree(root / name, ignore_errors=True)
            os.replace(scratch / name, root / name)
        with atomic_write(root / MANIFEST) as tmp:
            tmp.write_text(json.dumps(manifest, indent=2))
        return manifest
    except OSError as exc:  # a full disk, most likely: the build is left out, the folder incomplete
        raise DataError(f"--data-dir {root}: the QM9 build could not be written ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def load_qm9(
    data_dir: str | os.PathLike,
    limit: int | None = None,
    progress: Progress | None = None,
    build: bool = True,
) -> QM9:
    """QM9 as a PyG ``InMemoryDataset`` in ``torch_geometric.datasets.QM9``'s layout.

    ``limit=N`` keeps the first N characterized molecules. A missing, smaller
    or damaged build is (re)built when ``build`` is true, else refused with
    `DataError`. Each molecule's edges come in reverse pairs (each bond's two directions next to each
    other, `pair_dataset_edges()`) instead of PyG's sorted order: the same
    graphs, which
    the model runs faster.

    Args:
        data_dir: the QM9 folder.
        limit: the first ``limit`` molecules (``None``: all).
        progress: told of a build's stages.
        build: build what is missing or damaged (else refuse it).

    Raises:
        DataError: a build missing, smaller or damaged (with ``build`` false), or unreadable.
    """
    root = Path(data_dir)
    want = limit or NUM_MOLECULES
    try:
        manifest = verify(root)
        if manifest["count"] < want:
            raise DataError(f"{root}: holds {manifest['count']} molecules, {want} requested")
    except DataError:
        if not build:
            raise
        manifest = prepare_qm9(root, limit, progress)
    try:
        dataset = OfflineQM9(str(root))
    except DataError:
        raise
    except Exception as exc:  # an unreadable build is one clear error, not a traceback
        raise DataError(f"{root}: QM9 build cannot be loaded ({type(exc).__name__}: {exc})") from None
    if len(dataset) != manifest["count"]:
        raise DataError(f"{root}: {len(dataset)} molecules on disk, manifest says {manifest['count']}")
    pair_dataset_edges(dataset)
    return dataset[:want] if want < len(dataset) else dataset


__all__ = ["NUM_MOLECULES", "OfflineQM9", "load_qm9", "prepare_qm9", "read_manifest", "verify"]
