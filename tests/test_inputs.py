"""What se3pyg reads from users: regular files within limits, UTF-8, 3D neutral molecules, complete checkpoints and
manifests; what it writes for people: CSV cells a spreadsheet will not run. Each refusal is one line naming the file."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem

from se3pyg.data import DataError, DatasetSpec, load_qm9
from se3pyg.data.custom import build_dataset
from se3pyg.data.molecules import ELEMENTS, MAX_ATOMS, MAX_FILE_BYTES, read_molecules
from se3pyg.data.qm9 import MANIFEST, read_manifest
from se3pyg.data.tasks import Task
from se3pyg.engine.checkpoint import CheckpointError, check_trained
from se3pyg.engine.config import PredictConfig, TrainConfig
from se3pyg.engine.predict import write_predictions_csv

from .conftest import QM9_SUBSET

WATER = "3\nwater\nO 0.0 0.0 0.117\nH 0.0 0.757 -0.467\nH 0.0 -0.757 -0.467\n"


def _refused(paths: list[Path], reason: str) -> None:
    with pytest.raises(DataError, match=reason):
        read_molecules(paths)


def test_only_regular_files_are_read(tmp_path: Path) -> None:
    """A FIFO would hang, /dev/zero never end; folders, dangling links and loops of links cannot be read."""
    cases = {
        "fifo.xyz": lambda p: os.mkfifo(p),
        "zero.xyz": lambda p: p.symlink_to("/dev/zero"),
        "dangling.xyz": lambda p: p.symlink_to("nowhere.xyz"),
        "loop.xyz": lambda p: p.symlink_to(p),
        "folder.xyz": lambda p: p.mkdir(),
    }
    reasons = {"fifo.xyz": "not a regular file", "zero.xyz": "not a regular file", "dangling.xyz": "No such file",
               "loop.xyz": "Too many levels of symbolic links", "folder.xyz": "is a folder, not a file"}  # fmt: skip
    for name, make in cases.items():
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        (folder / "water.xyz").write_text(WATER)
        make(folder / name)
        in_folder = "a link out of" if name == "zero.xyz" else reasons[name]  # a folder's files are its own
        _refused([folder], rf"{folder / name}: {in_folder}")  # found in an input folder
        if name != "folder.xyz":
            _refused([folder / name], rf"{folder / name}: {reasons[name]}")  # given
    os.mkfifo(tmp_path / "fifo.sdf")
    with pytest.raises(DataError, match=r"--dataset .*fifo\.sdf: not a regular file"):
        DatasetSpec(str(tmp_path / "fifo.sdf"), "y").validate()


def test_molecules_and_files_have_size_limits(tmp_path: Path) -> None:
    huge = tmp_path / "huge.xyz"
    huge.write_text("999998\nmany\nC 0 0 0\n")
    _refused([huge], rf"huge\.xyz:1: 999,998 atoms, more than the {MAX_ATOMS:,} se3pyg takes in a molecule")
    big = tmp_path / "big.sdf"
    with big.open("wb") as handle:  # sparse: no disk used
        handle.truncate(MAX_FILE_BYTES + 1)
    _refused([big], rf"big\.sdf: {MAX_FILE_BYTES + 1:,} bytes, more than the {MAX_FILE_BYTES:,} se3pyg reads")


def test_text_that_is_not_utf8_is_named_and_skipped_as_a_bad_record(tmp_path: Path) -> None:
    bad = tmp_path / "mols" / "bad.xyz"
    bad.parent.mkdir()
    bad.write_bytes(WATER.replace("water", "w\xe4ter").encode("latin-1"))
    _refused([bad], r"bad\.xyz: not UTF-8 text \(byte 3\)")
    for k in range(3):
        (bad.parent / f"m{k}.xyz").write_text(WATER)
    table = "molecule,energy\nbad.xyz,1\n" + "".join(f"m{k}.xyz,{k}\n" for k in range(3))
    (bad.parent / "values.csv").write_bytes(b"\xef\xbb\xbf" + table.encode())  # Excel's "CSV UTF-8": a BOM first
    built = build_dataset(DatasetSpec(str(bad.parent), "energy"))
    assert built.skipped == 1 and "not UTF-8 text" in built.reasons[0]
    assert built.dataset._data.y.view(-1).tolist() == [0.0, 1.0, 2.0]


def _sdf(path: Path, smiles: str, flat: bool = False) -> Path:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    if flat:
        AllChem.Compute2DCoords(mol)
    else:
        AllChem.EmbedMolecule(mol, randomSeed=3)
    Chem.MolToMolFile(mol, str(path))
    return path


def test_2d_drawings_and_charged_or_radical_molecules_are_refused(tmp_path: Path) -> None:
    assert len(read_molecules([_sdf(tmp_path / "ethanol.sdf", "CCO")])) == 1
    _refused(
        [_sdf(tmp_path / "flat.sdf", "CCO", flat=True)], r"flat\.sdf: record 1: a 2D drawing \(its header says 2D\)"
    )
    _refused([_sdf(tmp_path / "ammonium.sdf", "[NH4+]")], r"record 1: atom 1 \(N\) has charge \+1; se3pyg predicts")
    _refused([_sdf(tmp_path / "methyl.sdf", "[CH3]")], r"record 1: atom 1 \(C\) has a radical")
    from se3pyg.data.qm9 import _PLACEHOLDER

    (tmp_path / "gdb9.sdf").write_text(_PLACEHOLDER.format(name="gdb_58"))  # as the QM9 build writes them
    _refused([tmp_path / "gdb9.sdf"], r"gdb9\.sdf: record 1: a placeholder, not a molecule \(a single atom at the")


def test_what_is_not_one_molecule_is_refused_by_name(tmp_path: Path) -> None:
    """An atom far from the rest, atoms packed closer than any bond, two molecules in one record, an atom with
    more bonds than any molecule has, a frame without atoms: each refused naming the molecule and the atom."""
    water, far = WATER.splitlines()[2:], "H 50.0 0.0 0.0"
    grid = [f"C {0.5 * (k % 4)} {0.5 * (k // 4 % 4)} {0.5 * (k // 16)}" for k in range(60)]
    crowded = ["S 0 0 0"] + [f"F {x} {y} {z}" for x, y, z in [(1.6, 0, 0), (-1.6, 0, 0), (0, 1.6, 0), (0, -1.6, 0),
                                                              (0, 0, 1.6), (0, 0, -1.6), (1.1, 1.1, 0)]]  # fmt: skip
    cases = {
        "far.xyz": ([*water, far], r"far\.xyz:0: atom 4 has no bond \(50\.0 Å from the nearest atom\)"),
        "dense.xyz": (grid, r"dense\.xyz:0: atoms 1 and 2 are 0\.50 Å apart, closer than the 0\.6 Å of any bond"),
        "two.xyz": ([*water, *(f"{a} {float(x) + 50} {y} {z}" for a, x, y, z in map(str.split, water))],
                    r"two\.xyz:0: 2 fragments not bonded to each other"),
    }  # fmt: skip
    for name, (atoms, reason) in cases.items():
        (tmp_path / name).write_text(f"{len(atoms)}\n{name}\n" + "\n".join(atoms) + "\n")
        _refused([tmp_path / name], reason)
    (tmp_path / "zero.xyz").write_text(WATER + "0\nempty\n")
    _refused([tmp_path / "zero.xyz"], r"zero\.xyz:6: a frame of 0 atoms$")
    with_sulfur = (*ELEMENTS, "S")
    (tmp_path / "sf6.xyz").write_text("7\nsf6\n" + "\n".join(crowded[:7]) + "\n")  # six bonds: a molecule's
    assert len(read_molecules([tmp_path / "sf6.xyz"], with_sulfur)) == 1
    (tmp_path / "crowded.xyz").write_text("8\ncrowded\n" + "\n".join(crowded) + "\n")
    with pytest.raises(DataError, match=r"crowded\.xyz:0: atom 1 has 7 bonds, more than the 6 of any molecule"):
        read_molecules([tmp_path / "crowded.xyz"], with_sulfur)


def test_csv_text_cells_never_start_a_formula() -> None:
    handle = io.StringIO()
    names = ["=cmd|' /C calc'!A0.xyz:0", "+1.xyz:0", "@sum.xyz:0", "water.xyz:0"]
    write_predictions_csv(handle, names, Task("homo", 2, "eV"), torch.tensor([-7.0, 1.0, 2.0, -3.5]))
    rows = handle.getvalue().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == ["'=cmd|' /C calc'!A0.xyz:0", "'+1.xyz:0", "'@sum.xyz:0",
                                                    "water.xyz:0"]  # fmt: skip
    assert rows[0].endswith("-7.000000,eV")  # numbers stay numbers


def test_incomplete_checkpoints_and_unusable_statistics_are_refused(tmp_path: Path) -> None:
    whole = {"model_config": {}, "state_dict": {}, "task": "homo", "config": {}, "epoch": 3, "target_mean": -6.5,
             "target_std": 0.6}  # fmt: skip
    assert check_trained(whole, "m.pt") is whole
    for change, reason in [
        ({"task": None}, "task is missing"), ({"config": None}, "config is missing"),
        ({"epoch": "3"}, "epoch is of type str"), ({"target_std": math.nan}, "std nan"),
        ({"target_std": -1.0}, "std -1.0"), ({"epoch": True}, "epoch is of type bool"),
        ({"epoch": -5}, "epoch -5 or best_val_mae below 0"), ({"best_val_mae": "0.1"}, "best_val_mae is of type str"),
        ({"best_val_mae": -1.0}, "best_val_mae below 0"), ({"elements": 5}, "elements is of type int"),
        ({"elements": []}, r"elements \[\] are not distinct"), ({"elements": ["H", "C", "H"]}, "are not distinct"),
        ({"optimizer": [1]}, "optimizer is of type list"), ({"unit": 3}, "unit is of type int"),
        ({"model_config": {"num_layers": 100_000}}, r"model_config.num_layers is 100000 \(expected an integer from 1"),
        ({"model_config": {"num_channels": 0}}, "model_config.num_channels is 0"),
        ({"model_config": {"num_degrees": 2.5}}, "model_config.num_degrees is 2.5"),
        ({"model_config": {"fiber_in": {"0": 10**9}}}, "model_config.fiber_in is"),
    ]:  # fmt: skip
        with pytest.raises(CheckpointError, match=rf"m\.pt: .*{reason}"):
            check_trained({**whole, **change}, "m.pt")
    with pytest.raises(CheckpointError, match=r"m\.pt: not a usable checkpoint: optimizer is missing"):
        check_trained(whole, "m.pt", resuming=True)  # a resume needs the optimizer, schedule and loss scale
    resumable = {**whole, "optimizer": {}, "scheduler": {}, "scaler": {}, "elements": ["H", "C"], "best_val_mae": 0.2}
    assert check_trained(resumable, "m.pt", resuming=True) is resumable
    (ckpt := tmp_path / "m.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"--target-std must be a finite number \(std: > 0\), got -1\.0"):
        PredictConfig(ckpt=str(ckpt), target_std=-1.0).validate()
    with pytest.raises(ValueError, match=r"--num-degrees must be at most 7 .* degree 38; e3nn computes them up to 12"):
        TrainConfig(num_degrees=20).validate()


def test_a_manifest_with_missing_or_mistyped_entries_is_no_build(qm9_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "qm9"
    shutil.copytree(qm9_dir, root)
    manifest = json.loads((root / MANIFEST).read_text())
    for change in ({"count": "300"}, {"processed_file": None}, {"processed_file": "../../etc/passwd"}):
        (root / MANIFEST).write_text(json.dumps({**manifest, **change}))
        assert read_manifest(root) is None
        with pytest.raises(DataError, match=r"no complete QM9 build"):
            load_qm9(root, QM9_SUBSET, build=False)
    del manifest["processed_sha256"]
    (root / MANIFEST).write_text(json.dumps(manifest))
    assert read_manifest(root) is None


def test_predictions_that_are_not_finite_are_refused_not_written(tmp_path: Path) -> None:
    from se3pyg.engine.precision import Precision
    from se3pyg.engine.predict import LoadedModel, predict_molecules
    from se3pyg.model import SE3TransformerPooled

    model = SE3TransformerPooled(fiber_in={0: 6}, num_layers=1, num_degrees=2, num_channels=4, num_heads=2)
    with torch.no_grad():
        next(model.parameters()).fill_(math.nan)  # weights a diverged run might have saved
    (tmp_path / "water.xyz").write_text(WATER)
    loaded = LoadedModel(model, Task("homo", 2, "eV"), -6.5, 0.6, "se3pyg")
    cpu = torch.device("cpu")
    with pytest.raises(CheckpointError, match=r"water\.xyz:0: the prediction is nan \(1 of 1 not finite\)"):
        predict_molecules(
            loaded, read_molecules([tmp_path / "water.xyz"]), 8, cpu, Precision.choose(False, "auto", cpu)
        )


def test_text_is_read_as_chemists_tools_write_it_and_ambiguous_numbers_are_refused(tmp_path: Path) -> None:
    """A UTF-8 byte-order mark and Windows line ends are taken; a form feed or U+2028 in a title ends no line;
    ``0_3`` (Python reads 3.0) and ``1_0`` atoms are refused by line, and a CSV value ``0.1_17`` is a bad record."""
    windows = tmp_path / "windows.xyz"
    windows.write_bytes(b"\xef\xbb\xbf" + WATER.replace("\n", "\r\n").encode())
    titled = tmp_path / "titled.xyz"
    titled.write_text(WATER.replace("water", "water\x0cfrom\u2028a tool"))
    assert [m.num_nodes for m in read_molecules([windows, titled])] == [3, 3]
    for name, text, line in [("underscore.xyz", WATER.replace("0.117", "0_3"), 3),
                             ("count.xyz", WATER.replace("3\n", "1_0\n", 1), 1)]:  # fmt: skip
        (tmp_path / name).write_text(text)
        _refused([tmp_path / name], rf"{name}:{line}: expected")
    folder = tmp_path / "mols"
    folder.mkdir()
    for k in range(3):
        (folder / f"m{k}.xyz").write_text(WATER)
    (folder / "values.csv").write_text("molecule,y\nm0.xyz,0.1\nm1.xyz,0.1_17\nm2.xyz,0.2\n")
    built = build_dataset(DatasetSpec(str(folder), "y"))
    assert built.dataset._data.y.view(-1).tolist() == pytest.approx([0.1, 0.2]) and built.skipped == 1
    assert "y = '0.1_17' is not a number" in built.reasons[0]
