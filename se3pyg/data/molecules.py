"""Molecules from coordinates: RDKit bond perception and se3pyg's model inputs.

Used both to build QM9 and to read a user's XYZ and SDF files, so that
predictions see bonds perceived exactly as in training (Kekulé bond types:
single, double, triple; bonds are perceived from coordinates even when an
SDF lists its own).
"""

from __future__ import annotations

import se3pyg.thirdparty  # noqa: F401  (first: third-party imports without their deprecation warnings)

# isort: split
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch_geometric.data import Data

from se3pyg.data.errors import DataError

ELEMENTS = ("H", "C", "N", "O", "F")  # QM9's: every model knows these, first and in this order
ATOMIC_NUMBERS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
INPUT_SUFFIXES = (".xyz", ".sdf", ".mol")
MAX_COORDINATE = 1e4  # Å: far beyond any molecule
MIN_DISTANCE = 0.6  # Å: no two atoms of a molecule are closer (the shortest bond, H2's, is 0.74 Å)
MAX_BONDS_PER_ATOM = 6  # bonds of one atom: beyond sulfur hexafluoride's six, atoms are packed, not bonded
MAX_ATOMS = 1_000  # atoms a molecule: bond perception and the model's graphs grow with it
MAX_FILE_BYTES = 100 * 2**20  # a molecule file (an SDF of many records too) is read whole


def checked_file(path: Path, what: str = "") -> Path:
    """``path`` when it is a regular file of at most `MAX_FILE_BYTES` (links followed), else
    `DataError` naming it: a FIFO would block, a device never end, a folder, a dangling link or a loop of
    links cannot be read."""
    import stat

    name = f"{what} {path}".strip()
    try:
        info = path.stat()
    except OSError as exc:
        raise DataError(f"{name}: {exc.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise DataError(f"{name}: is a folder, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{name}: not a regular file (a FIFO, socket or device is not read)")
    if info.st_size > MAX_FILE_BYTES:
        raise DataError(f"{name}: {info.st_size:,} bytes, more than the {MAX_FILE_BYTES:,} se3pyg reads from a file")
    return path


def folder_files(folder: Path, suffixes: Sequence[str], what: str = "") -> list[Path]:
    """The files of ``folder`` whose suffix is one of ``suffixes`` (any case), sorted by name. Hidden files (names
    starting with ``.``, such as macOS's ``._NAME`` companions) are left out; a link that leads out of the folder
    is refused (`check_inside()`)."""
    found = sorted(f for f in folder.iterdir() if not f.name.startswith(".") and f.suffix.lower() in suffixes)
    for f in found:
        check_inside(f, folder, what)
    return found


def check_inside(path: Path, folder: Path, what: str = "") -> None:
    """`DataError` when ``path``, a name in ``folder``, is a link to something outside it: a folder's
    molecules are its own files, never what a link brings in from elsewhere."""
    if path.is_symlink():
        target, root = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
        if not target.is_relative_to(root):
            name = f"{what} {path}".strip()
            raise DataError(f"{name}: a link out of {folder} (to {target}); se3pyg reads only the folder's own files")


def strict_float(text: str) -> float:
    """``float(text)`` for a number as chemists' tools write it; ``ValueError`` for Python's own literal forms that no
    such tool writes and that would read as another number (``0_3`` is 3.0, ``0.1_17`` is 0.117)."""
    if "_" in text:
        raise ValueError(f"not a number: {text!r}")
    return float(text)


def _text(path: Path) -> str:
    """A molecule file's text, without a UTF-8 byte-order mark and with Windows' or old Macs' line ends as ``\\n``;
    `DataError` naming it when it is not UTF-8."""
    try:
        return checked_file(path).read_text(encoding="utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def perceive_bonds(elements: Sequence[str], coords: Sequence[Sequence[float]]):  # returns an rdkit.Chem.Mol
    """An RDKit molecule with bonds and Kekulé bond orders perceived from the coordinates (neutral charge).

    Where bond orders cannot be assigned, connectivity is kept with single bonds.
    """
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdDetermineBonds

    RDLogger.DisableLog("rdApp.*")
    xyz = f"{len(elements)}\n\n" + "".join(
        f"{e} {x:.10f} {y:.10f} {z:.10f}\n" for e, (x, y, z) in zip(elements, coords, strict=True)
    )
    mol = Chem.MolFromXYZBlock(xyz)
    try:
        rdDetermineBonds.DetermineBonds(mol, charge=0)
        Chem.Kekulize(mol, clearAromaticFlags=True)
    except Exception:  # bond orders not determinable: keep connectivity, single bonds
        mol = Chem.MolFromXYZBlock(xyz)
        rdDetermineBonds.DetermineConnectivity(mol)
    return mol


def atomic_number(element: str) -> int:
    """The atomic number of an element symbol (``DataError`` for a symbol that is none)."""
    from rdkit import Chem

    try:
        number = Chem.GetPeriodicTable().GetAtomicNumber(element)
    except RuntimeError:
        number = 0
    if number < 1:
        raise DataError(f"{element!r} is not an element symbol")
    return number


def element_order(found: set[str] | Sequence[str]) -> tuple[str, ...]:
    """H, C, N, O, F first and in that order (QM9's features), then the other ``found`` elements by atomic
    number."""
    return ELEMENTS + tuple(sorted(set(found) - set(ELEMENTS), key=atomic_number))


def to_data(
    name: str, elements: Sequence[str], coords: Sequence[Sequence[float]], vocabulary: Sequence[str] = ELEMENTS
) -> Data:
    """Model inputs of one molecule: ``x`` [N, V + 1] (one-hot over ``vocabulary``, then the atomic number;
    QM9's 6 features for H, C, N, O, F), ``pos``, ``edge_index``, ``edge_attr`` [E, 4]; ``name``."""
    from rdkit.Chem import BondType

    unknown = sorted(set(elements) - set(vocabulary))
    if unknown:
        raise DataError(f"{name}: unknown element {', '.join(unknown)} (the model knows {', '.join(vocabulary)})")
    mol = perceive_bonds(elements, coords)
    bond_types = {BondType.SINGLE: 0, BondType.DOUBLE: 1, BondType.TRIPLE: 2, BondType.AROMATIC: 3}
    rows, cols, types = [], [], []
    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        rows += [i, j]
        cols += [j, i]
        types += 2 * [bond_types.get(bond.GetBondType(), 0)]
    n = len(elements)
    edge_index = torch.tensor([rows, cols], dtype=torch.long).view(2, -1)
    perm = (edge_index[0] * n + edge_index[1]).argsort()
    x = torch.zeros(n, len(vocabulary) + 1)
    for k, e in enumerate(elements):
        x[k, vocabulary.index(e)] = 1.0
        x[k, -1] = ATOMIC_NUMBERS[e] if e in ATOMIC_NUMBERS else atomic_number(e)
    return Data(
        x=x,
        pos=torch.tensor(coords, dtype=torch.float32).view(n, 3),
        edge_index=edge_index[:, perm],
        edge_attr=torch.nn.functional.one_hot(torch.tensor(types, dtype=torch.long), 4).float()[perm],
        name=name,
    )


def read_xyz_frames(path: Path) -> Iterator[tuple[str, list[str], list[list[float]]]]:
    """``(name, elements, coordinates)`` of each frame of an XYZ file (``FILE:FRAME``)."""
    lines = _text(path).split("\n")  # only newlines end lines: a form feed or U+2028 in a title does not
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataError(f"{path}: empty file")
    i, frame = 0, 0
    while i < len(lines):
        count = lines[i].strip()
        if not (count.isascii() and count.isdigit()):  # no sign, no 1_0
            raise DataError(f"{path}:{i + 1}: expected an atom count, got {count[:40]!r}")
        n = int(count)
        if n > MAX_ATOMS:
            raise DataError(f"{path}:{i + 1}: {n:,} atoms, more than the {MAX_ATOMS:,} se3pyg takes in a molecule")
        if n < 1:
            raise DataError(f"{path}:{i + 1}: a frame of 0 atoms")
        if i + 2 + n > len(lines):
            raise DataError(f"{path}:{i + 1}: frame of {n} atoms runs past the end of the file")
        elements, coords = [], []
        for k in range(i + 2, i + 2 + n):
            parts = lines[k].split()
            try:
                elements.append(parts[0].capitalize())
                coords.append([strict_float(v) for v in parts[1:4]])
            except (IndexError, ValueError):
                raise DataError(f"{path}:{k + 1}: expected 'element x y z', got {lines[k].strip()[:40]!r}") from None
            if len(coords[-1]) != 3:
                raise DataError(f"{path}:{k + 1}: expected 'element x y z', got {lines[k].strip()[:40]!r}")
            if not all(math.isfinite(v) and abs(v) < MAX_COORDINATE for v in coords[-1]):
                raise DataError(f"{path}:{k + 1}: coordinates must be finite Å below {MAX_COORDINATE:g} in size")
        yield f"{path.name}:{frame}", elements, coords
        i += 2 + n
        frame += 1


def _read_sdf(path: Path) -> Iterator[tuple[str, list[str], list[list[float]]]]:
    for name, elements, coords, _fields in read_sdf_records(path):
        yield name, elements, coords


def read_sdf_records(
    path: Path, errors: list[DataError] | None = None
) -> Iterator[tuple[str, list[str], list[list[float]], dict[str, str]]]:
    """``(name, elements, coordinates, data fields)`` of each record of an SDF or MOL file (V2000 or V3000).

    A record that cannot be read raises `DataError`, or is appended to ``errors`` and skipped.
    """
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    if not _text(path).strip():
        raise DataError(f"{path}: empty file")
    supplier = Chem.SDMolSupplier(str(path), removeHs=False, sanitize=False)
    count = 0
    for k, mol in enumerate(supplier):
        try:
            if mol is None or mol.GetNumConformers() == 0:
                raise DataError(f"{path}: record {k + 1} is not a valid molfile with coordinates")
            _check_record(mol, f"{path}: record {k + 1}", supplier.GetItemText(k))
            conf = mol.GetConformer()
            elements = [a.GetSymbol() for a in mol.GetAtoms()]
            coords = [list(conf.GetAtomPosition(a.GetIdx())) for a in mol.GetAtoms()]
            if not all(math.isfinite(v) and abs(v) < MAX_COORDINATE for xyz in coords for v in xyz):
                raise DataError(
                    f"{path}: record {k + 1} has coordinates that are not finite Å below {MAX_COORDINATE:g}"
                )
        except DataError as exc:
            if errors is None:
                raise
            errors.append(exc)
            continue
        title = mol.GetProp("_Name").strip() if mol.HasProp("_Name") else ""
        fields = {key: str(value) for key, value in mol.GetPropsAsDict(includePrivate=False).items()}
        yield f"{path.name}:{title or k}", elements, coords, fields
        count += 1
    if count == 0 and not errors:
        raise DataError(f"{path}: no molecules")


def _check_record(mol, name: str, text: str) -> None:  # mol: an rdkit.Chem.Mol
    """`DataError` for an SDF record the model cannot take as it is: too many atoms, a placeholder (one atom at the
    origin, as QM9's uncharacterized molecules in gdb9.sdf), a 2D drawing (its
    header's dimension code says ``2D``; flat coordinates without it may be a planar molecule, and are taken), or
    charged or radical atoms (the model knows neutral closed-shell molecules, whose bonds are perceived with
    charge 0)."""
    if mol.GetNumAtoms() > MAX_ATOMS:
        raise DataError(f"{name}: {mol.GetNumAtoms():,} atoms, more than the {MAX_ATOMS:,} se3pyg takes in a molecule")
    conformer = mol.GetConformer()
    if mol.GetNumAtoms() == 1 and not any(conformer.GetAtomPosition(0)):
        raise DataError(
            f"{name}: a placeholder, not a molecule (a single atom at the origin, as gdb9.sdf holds for "
            "the molecules QM9 leaves uncharacterized)"
        )
    header = text.splitlines()[1] if text.count("\n") > 1 else ""
    if not conformer.Is3D() and header[20:22] == "2D":
        raise DataError(f"{name}: a 2D drawing (its header says 2D); se3pyg needs 3D coordinates")
    for atom in mol.GetAtoms():
        if atom.GetFormalCharge() or atom.GetNumRadicalElectrons():
            state = f"charge {atom.GetFormalCharge():+d}" if atom.GetFormalCharge() else "a radical"
            raise DataError(
                f"{name}: atom {atom.GetIdx() + 1} ({atom.GetSymbol()}) has {state}; se3pyg predicts for neutral "
                "closed-shell molecules"
            )


def read_molecules(paths: Sequence[str | os.PathLike], vocabulary: Sequence[str] = ELEMENTS) -> list[Data]:
    """Every molecule of the given XYZ (multi-frame too), SDF or MOL files and folders of them, in order, with
    the node features of a model that knows the elements of ``vocabulary``."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = folder_files(p, INPUT_SUFFIXES)
            if not found:
                raise DataError(f"{p}: no .xyz, .sdf or .mol files in this folder")
            files += found  # each checked as it is read
        elif p.exists() or p.is_symlink():
            if p.suffix.lower() not in INPUT_SUFFIXES:
                raise DataError(f"{p}: unsupported file type (expected .xyz, .sdf or .mol)")
            files.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    molecules = []
    for f in files:
        reader = read_xyz_frames if f.suffix.lower() == ".xyz" else _read_sdf
        molecules += [checked(to_data(n, elements, coords, vocabulary)) for n, elements, coords in reader(f)]
    return molecules


def checked(molecule: Data) -> Data:
    """A molecule the model can predict for, else `DataError` naming it and what is wrong: at least one
    atom; no two atoms closer than `MIN_DISTANCE`; every atom bonded (an atom far from the rest has no bond,
    and the model reads bonds), at most `MAX_BONDS_PER_ATOM` bonds an atom; one molecule, not fragments
    apart (its targets are a molecule's)."""
    n = molecule.num_nodes
    if n == 0:
        raise DataError(f"{molecule.name}: no atoms")
    if n > 1:
        distances = torch.cdist(molecule.pos, molecule.pos) + torch.eye(n) * 1e9
        if distances.min() < MIN_DISTANCE:
            i, j = divmod(int(distances.argmin()), n)
            raise DataError(
                f"{molecule.name}: atoms {i + 1} and {j + 1} are {distances.min():.2f} Å apart, closer "
                f"than the {MIN_DISTANCE} Å of any bond"
            )
    if molecule.edge_index.shape[1] == 0:
        raise DataError(
            f"{molecule.name}: no bonds perceived (a single atom, or atoms too far apart); "
            "the model predicts from bonds"
        )
    bonds = torch.bincount(molecule.edge_index[0], minlength=n)
    if (bonds == 0).any():
        k = int((bonds == 0).nonzero()[0])
        nearest = float(distances[k].min())
        raise DataError(
            f"{molecule.name}: atom {k + 1} has no bond ({nearest:.1f} Å from the nearest atom); the "
            "model predicts from bonds"
        )
    if bonds.max() > MAX_BONDS_PER_ATOM:
        k = int(bonds.argmax())
        raise DataError(
            f"{molecule.name}: atom {k + 1} has {int(bonds[k])} bonds, more than the "
            f"{MAX_BONDS_PER_ATOM} of any molecule"
        )
    fragments = _fragments(molecule.edge_index, n)
    if fragments > 1:
        raise DataError(
            f"{molecule.name}: {fragments} fragments not bonded to each other; se3pyg predicts for one "
            "molecule at a time"
        )
    return molecule


def _fragments(edge_index: torch.Tensor, n: int) -> int:
    """How many connected parts the bonds ``edge_index`` make of ``n`` atoms."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in edge_index.t().tolist():
        parent[root(i)] = root(j)
    return len({root(i) for i in range(n)})
