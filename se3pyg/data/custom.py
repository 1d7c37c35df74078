"""The user's molecules as a training set: an SDF whose data fields hold the target, or a folder of XYZ/SDF
files with a CSV of values (``molecule,NAME,...``).

Molecules get QM9's model inputs ([`to_data()`][se3pyg.data.molecules.to_data]: bonds perceived from the
coordinates, the same checks as prediction); node features are one-hot over H, C, N, O, F and then the
other elements found, by atomic number, then the atomic number. The processed dataset is cached beside the
source (``SOURCE.se3pyg/``) and complete only once its manifest is written, last and atomically; the
manifest records the size and SHA-256 of every source file and of the processed file, so a changed
source or a damaged cache is rebuilt.
"""

from __future__ import annotations

import se3pyg.thirdparty  # noqa: F401  (first: third-party imports without their deprecation warnings)

# isort: split
import csv
import hashlib
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch_geometric.data import Data, InMemoryDataset

from se3pyg.data.errors import DataError
from se3pyg.data.molecules import (
    INPUT_SUFFIXES,
    MAX_FILE_BYTES,
    checked,
    checked_file,
    element_order,
    folder_files,
    read_sdf_records,
    read_xyz_frames,
    strict_float,
    to_data,
)
from se3pyg.data.pairs import pair_dataset_edges
from se3pyg.data.tasks import Task
from se3pyg.io import cache_dir, file_sha256
from se3pyg.processes import raise_if_stopped

FORMAT = 2
MANIFEST, PROCESSED = "manifest.json", "dataset.pt"
_SPLIT_NAMES = {"train": 0, "training": 0, "val": 1, "valid": 1, "validation": 1, "test": 2}
BAD_RECORDS = ("skip", "refuse")


@dataclass(frozen=True)
class DatasetSpec:
    """Where the molecules are, which value to learn, how to split them and what to do with bad records."""

    source: str
    target: str
    unit: str = ""
    split_field: str | None = None
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    bad_records: str = "skip"
    elements: tuple[str, ...] | None = None  # the one-hot elements (a trained model's); None: those found

    def validate(self) -> None:
        if not Path(self.source).exists():
            raise DataError(f"--dataset {self.source}: no such file or folder")
        if not Path(self.source).is_dir():
            checked_file(Path(self.source), "--dataset")
        if self.bad_records not in BAD_RECORDS:
            raise ValueError(f"--bad-records must be skip or refuse, got {self.bad_records!r}")
        fractions = self.split_fractions
        if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
            raise ValueError(f"--split-fractions must be three fractions >= 0 that sum to 1, got {fractions}")

    @property
    def task(self) -> Task:
        return Task(self.target, 0, self.unit)


@dataclass
class BuiltDataset:
    """A processed dataset: every molecule (``y`` [1, 1], ``split`` 0/1/2 or -1) and what the build found."""

    dataset: InMemoryDataset
    elements: tuple[str, ...]
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)


def _source_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    return [f for f in folder_files(source, (*INPUT_SUFFIXES, ".csv"), "--dataset") if f.is_file()]


def _file_digest(path: Path, name: str | None = None) -> dict[str, object]:
    """Name (``name``, else the file's), size and SHA-256 of a file (read once while it is unchanged)."""
    return {"name": name or path.name, "size": path.stat().st_size, "sha256": file_sha256(path)}


def _raw_records(spec: DatasetSpec, errors: list[DataError]) -> list[tuple[str, list[str], list, dict[str, str]]]:
    """``(name, elements, coordinates, values)`` of every molecule the source describes."""
    source = Path(spec.source)
    if source.is_file():
        if source.suffix.lower() not in (".sdf", ".mol"):
            raise DataError(f"--dataset {source}: expected an .sdf file or a folder of .xyz/.sdf files with a .csv")
        return list(read_sdf_records(source, errors))
    tables = folder_files(source, (".csv",), "--dataset")
    if len(tables) != 1:
        raise DataError(f"--dataset {source}: expected one .csv of values in the folder, found {len(tables)}")
    rows = _csv_rows(tables[0], spec.target)
    records, first_line_of = [], {}
    for line, row in rows:
        try:
            name = (row.get("molecule") or "").strip()
            path = source / name
            if name != Path(name).name or name.startswith("."):  # the manifest hashes the folder's own files only
                raise DataError(
                    f"{tables[0]}:{line}: {_short(name)} is not a file name in {source} (no folders, paths "
                    "or hidden files)"
                )
            if not name or not (path.exists() or path.is_symlink()) or path.suffix.lower() not in INPUT_SUFFIXES:
                raise DataError(f"{tables[0]}:{line}: no .xyz, .sdf or .mol file {_short(name)} in {source}")
            if name in first_line_of:
                raise DataError(f"{tables[0]}:{line}: {name} is listed again (first on line {first_line_of[name]})")
            first_line_of[name] = line
            if path.suffix.lower() == ".xyz":
                _, elements, coords = next(read_xyz_frames(path))
            else:
                _, elements, coords, _ = next(read_sdf_records(path))
            records.append((name, elements, coords, dict(row)))
        except DataError as exc:
            errors.append(exc)
    return records


def _csv_rows(table: Path, target: str) -> list[tuple[int, dict[str, str]]]:
    """The rows of a ``--dataset`` folder's CSV as ``(line, column -> cell)``; `DataError` naming the file
    when it cannot be read, has no ``molecule`` column, or names a column twice (which one counts would be a
    guess). A cell may be as long as the file (a bad one makes its record bad, not the file)."""
    csv.field_size_limit(MAX_FILE_BYTES)
    try:
        with checked_file(table).open(newline="", encoding="utf-8-sig") as handle:  # Excel's "CSV UTF-8" too
            reader = csv.reader(handle)
            lines = [(reader.line_num, row) for row in reader if row]  # blank lines are no records
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{table}: not a readable CSV ({exc})") from None
    header = [column.strip() for column in lines[0][1]] if lines else []
    if len(lines) < 2 or "molecule" not in header:
        raise DataError(f"{table}: expected a header 'molecule,{target},...' and rows")
    for k, column in enumerate(header):
        if column and column in header[:k]:
            raise DataError(
                f"{table}:{lines[0][0]}: column {column!r} appears twice (columns "
                f"{header.index(column) + 1} and {k + 1}); which one counts would be a guess"
            )
    return [(line, dict(zip(header, row, strict=False))) for line, row in lines[1:]]


def _short(text: str) -> str:
    """A cell as a message quotes it: escaped, its first 40 characters."""
    return repr(text[:40]) + ("..." if len(text) > 40 else "")


def _value(values: dict[str, str], spec: DatasetSpec, name: str) -> tuple[float, int]:
    """The target value and split code (``-1`` without a split field) of one record."""
    if spec.target not in values:
        raise DataError(f"{name}: no field {spec.target!r}")
    try:
        value = strict_float(str(values[spec.target]))
    except ValueError:
        raise DataError(f"{name}: {spec.target} = {_short(str(values[spec.target]))} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{name}: {spec.target} = {value} is not finite")
    if spec.split_field is None:
        return value, -1
    split = str(values.get(spec.split_field, "")).strip().lower()
    if split not in _SPLIT_NAMES:
        raise DataError(f"{name}: {spec.split_field} = {_short(split)} is not train, val or test")
    return value, _SPLIT_NAMES[split]


def _process(spec: DatasetSpec) -> BuiltDataset:
    """Read, check and featurize every record; bad ones skipped (with reasons) or refused, as ``spec`` says."""
    errors: list[DataError] = []
    raw = _raw_records(spec, errors)
    elements = spec.elements or element_order({e for _, symbols, _, _ in raw for e in symbols})
    molecules = []
    for name, symbols, coords, values in raw:
        raise_if_stopped()
        try:
            value, split = _value(values, spec, name)
            molecule = checked(to_data(name, symbols, coords, elements))
        except DataError as exc:
            errors.append(exc)
            continue
        molecule.y = torch.tensor([[value]], dtype=torch.float32)
        molecule.split = torch.tensor([split])
        molecule.idx = torch.tensor([len(molecules)])
        molecules.append(molecule)
    if errors and spec.bad_records == "refuse":
        raise DataError(f"--dataset {spec.source}: {errors[0]} ({len(errors)} bad records; --bad-records skip)")
    if not molecules:
        raise DataError(f"--dataset {spec.source}: no usable molecules ({len(errors)} bad records, first: {errors[0]})")
    used = elements  # a model's features (spec.elements), whatever this data holds
    if spec.elements is None:
        used = element_order(
            {e for m in molecules for e, on in zip(elements, m.x[:, :-1].any(0).tolist(), strict=True) if on}
        )
        if used != elements:  # elements only the skipped records had: featurize again without them
            molecules = [_refeaturized(m, elements, used) for m in molecules]
    dataset = InMemoryDataset()
    dataset.data, dataset.slices = InMemoryDataset.collate(molecules)
    pair_dataset_edges(dataset)
    return BuiltDataset(dataset, used, len(errors), [str(e) for e in errors[:5]])


def _refeaturized(molecule: Data, old: tuple[str, ...], new: tuple[str, ...]) -> Data:
    columns = [old.index(e) for e in new] + [len(old)]
    molecule.x = molecule.x[:, columns]
    return molecule


def source_digests(source: str | Path) -> list[dict[str, object]]:
    """Name, size and SHA-256 of every file of a dataset that a build reads: the SDF, or the folder's CSV and
    molecule files."""
    return [_file_digest(f) for f in _source_files(Path(source))]


def dataset_digest(source: str | Path) -> str:
    """One SHA-256 over `source_digests()`: what identifies a dataset's content."""
    return hashlib.sha256(json.dumps(source_digests(source)).encode()).hexdigest()


def build_dataset(spec: DatasetSpec) -> BuiltDataset:
    """The processed dataset of ``spec``: read from its cache when the manifest matches the source files and
    the processed file, otherwise built (and cached, manifest last). Builds of one cache take turns, so that
    each manifest describes the processed file written with it."""
    from se3pyg.io import atomic_write, exclusive_use

    spec.validate()
    folder = cache_dir(spec.source)
    key = {"format": FORMAT, "spec": {**asdict(spec), "source": None}, "sources": source_digests(spec.source)}
    cached = _load_cached(folder, key)
    if cached is not None:
        return cached
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with exclusive_use(folder / MANIFEST, f"the cache of --dataset {spec.source}", waiting="builds it"):
            cached = _load_cached(folder, key)  # built by another process meanwhile
            if cached is not None:
                return cached
            built = _process(spec)
            (folder / MANIFEST).unlink(missing_ok=True)  # incomplete from here until the manifest is written again
            with atomic_write(folder / PROCESSED) as tmp:
                torch.save({"data": built.dataset._data.to_dict(), "slices": built.dataset.slices}, tmp)
                processed = _file_digest(tmp, PROCESSED)
            manifest = {
                **key,
                "processed": processed,
                "elements": list(built.elements),
                "molecules": len(built.dataset),
                "skipped": built.skipped,
                "reasons": built.reasons,
            }
            with atomic_write(folder / MANIFEST) as tmp:
                tmp.write_text(json.dumps(manifest, indent=1))
    except OSError as exc:
        raise DataError(f"--dataset {spec.source}: its cache {folder} cannot be written ({exc.strerror})") from None
    return built


def _load_cached(folder: Path, key: dict) -> BuiltDataset | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if {k: manifest.get(k) for k in key} != json.loads(json.dumps(key)):
        return None
    try:
        content = (folder / PROCESSED).read_bytes()  # read once: what is checked is what is loaded
    except OSError:
        return None
    if {"name": PROCESSED, "size": len(content), "sha256": hashlib.sha256(content).hexdigest()} != manifest.get(
        "processed"
    ):
        return None
    try:  # a manifest whose digests match but whose other entries are damaged is no cache either
        stored = torch.load(io.BytesIO(content), weights_only=True)
        dataset = InMemoryDataset()
        dataset.data, dataset.slices = Data.from_dict(stored["data"]), stored["slices"]
        return BuiltDataset(dataset, tuple(manifest["elements"]), int(manifest["skipped"]), list(manifest["reasons"]))
    except Exception:
        return None


def split_positions(built: BuiltDataset, spec: DatasetSpec) -> tuple[list[int], list[int], list[int]]:
    """Indices of ``(train, val, test)``: from the split field, in file order, or a random split with the
    stated fractions and seed (``int`` of test and validation sizes, the rest training)."""
    n = len(built.dataset)
    if spec.split_field is not None:
        codes = built.dataset._data.split.tolist()
        return tuple([i for i in range(n) if codes[i] == s] for s in range(3))  # type: ignore[return-value]
    test, val = int(spec.split_fractions[2] * n), int(spec.split_fractions[1] * n)
    sizes = (n - val - test, val, test)
    parts = torch.utils.data.random_split(range(n), sizes, generator=torch.Generator().manual_seed(spec.seed))
    return tuple(list(p.indices) for p in parts)  # type: ignore[return-value]
