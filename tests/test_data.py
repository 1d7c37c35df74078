"""QM9 offline through PyG: content, units, splits, standardization, damaged builds."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch_geometric.datasets import QM9

from se3pyg.data import (
    TASKS,
    DataError,
    get_task,
    load_qm9,
    make_loader,
    prepare_qm9,
    qm9_splits,
    split_indices,
    split_sizes,
)
from se3pyg.data.qm9 import MANIFEST, verify
from se3pyg.io import file_sha256

from .conftest import QM9_SUBSET

HARTREE_TO_EV = 27.211386246


def test_layout_of_torch_geometric_qm9(qm9_dir) -> None:
    dataset = load_qm9(qm9_dir, limit=QM9_SUBSET)
    assert isinstance(dataset, QM9) and len(dataset) == QM9_SUBSET
    mol = dataset[0]
    assert mol.x.shape == (5, 11) and mol.edge_attr.shape == (8, 4) and mol.y.shape == (1, 19)
    assert mol.name == "gdb_1" and int(mol.idx) == 0
    assert mol.z.tolist() == [6, 1, 1, 1, 1]  # CH4
    assert mol.x[:, :6].tolist()[0] == [0, 1, 0, 0, 0, 6]  # one-hot H,C,N,O,F + atomic number
    # Molecules keep their QM9 position: idx = gdb index - 1, increasing.
    idx = torch.cat([d.idx for d in dataset])
    assert (idx[1:] > idx[:-1]).all()
    assert all(d.name == f"gdb_{int(d.idx) + 1}" for d in dataset)


def test_targets_order_and_units(qm9_dir) -> None:
    y = load_qm9(qm9_dir, limit=QM9_SUBSET)[0].y[0]
    assert y[TASKS["homo"].column].item() == pytest.approx(-0.3877 * HARTREE_TO_EV, abs=1e-4)
    assert y[TASKS["homo"].column].item() == pytest.approx(-10.5499, abs=1e-4)
    assert y[TASKS["lumo"].column].item() == pytest.approx(0.1171 * HARTREE_TO_EV, abs=1e-4)
    assert y[TASKS["gap"].column].item() == pytest.approx(0.5048 * HARTREE_TO_EV, abs=1e-4)
    assert y[TASKS["alpha"].column].item() == pytest.approx(13.21)
    assert y[TASKS["r2"].column].item() == pytest.approx(35.3641)
    assert y[TASKS["U0"].column].item() == pytest.approx(-40.47893 * HARTREE_TO_EV, rel=1e-6)
    assert y[TASKS["Cv"].column].item() == pytest.approx(6.469)
    assert y[TASKS["A"].column].item() == pytest.approx(157.7118)
    assert y[TASKS["U0_atom"].column].item() == pytest.approx(-17.17, abs=0.01)  # eV, atomization energy
    assert list(TASKS) == [
        "mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G", "Cv",
        "U0_atom", "U_atom", "H_atom", "G_atom", "A", "B", "C",
    ]  # fmt: skip


def test_unknown_task_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown task 'homos'; valid tasks: mu, alpha, homo"):
        get_task("homos")


def test_split_sizes_are_nvidias() -> None:
    assert split_sizes(130_831) == (100_000, 17_748, 13_083)
    assert split_sizes(1000) == (764, 136, 100)
    assert split_sizes(300) == (229, 41, 30)
    train, val, test = split_indices(1000)
    assert sorted(train + val + test) == list(range(1000))
    assert split_indices(1000) == (train, val, test)  # seed 0, reproducible
    generator = torch.Generator().manual_seed(0)
    expected = torch.utils.data.random_split(range(1000), [764, 136, 100], generator=generator)
    assert train == list(expected[0].indices)


def test_training_view_standardizes_with_train_statistics(qm9_dir) -> None:
    task = get_task("homo")
    splits = qm9_splits(qm9_dir, task, limit=QM9_SUBSET)
    raw = load_qm9(qm9_dir, limit=QM9_SUBSET)
    train_idx, _, _ = split_indices(len(raw))
    homo = raw.y[torch.tensor(train_idx), task.column]
    assert splits.stats.mean == pytest.approx(homo.mean().item(), rel=1e-6)
    assert splits.stats.std == pytest.approx(homo.std().item(), rel=1e-6)
    mol = splits.train[0]
    assert mol.x.shape[1] == 6 and mol.edge_attr.shape[1] == 4 and mol.y.shape == (1,)
    ys = torch.cat([d.y for d in splits.train])
    assert ys.mean().abs().item() < 1e-5 and ys.std().item() == pytest.approx(1.0, rel=1e-5)
    batch = next(iter(make_loader(splits.val, 8, shuffle=False)))
    assert batch.num_graphs == 8 and batch.y.shape == (8,)


def test_precomputed_harmonics_match_the_direct_computation(qm9_dir) -> None:
    from se3pyg.basis import spherical_harmonics

    splits = qm9_splits(qm9_dir, get_task("homo"), limit=50, precompute_degree=3)
    assert splits.sh_bytes == sum(d.edge_index.shape[1] for d in load_qm9(qm9_dir, limit=50)) * 49 * 4
    for mol in (splits.train[0], splits.test[3]):
        rel = mol.pos[mol.edge_index[1]] - mol.pos[mol.edge_index[0]]
        assert torch.allclose(mol.sh, spherical_harmonics(rel, 3), atol=1e-6)


def test_limit_is_served_without_rebuilding(qm9_dir) -> None:
    before = (qm9_dir / "processed" / "data_v3.pt").stat().st_mtime_ns
    small = load_qm9(qm9_dir, limit=40, build=False)
    assert len(small) == 40 and small[39].name == load_qm9(qm9_dir, limit=QM9_SUBSET)[39].name
    assert (qm9_dir / "processed" / "data_v3.pt").stat().st_mtime_ns == before
    with pytest.raises(DataError, match="holds 300 molecules, 400 requested"):
        load_qm9(qm9_dir, limit=400, build=False)


def test_prepare_is_idempotent_and_extends(qm9_dir, tmp_path) -> None:
    root = tmp_path / "qm9"
    shutil.copytree(qm9_dir, root)
    manifest = prepare_qm9(root, limit=100)  # already holds 300: kept
    assert manifest["count"] == QM9_SUBSET
    assert len(load_qm9(root, limit=320)) == 320  # more requested: extended
    assert verify(root)["count"] == 320


@pytest.mark.parametrize("damage", ["truncate", "flip", "manifest"])
def test_damaged_builds_are_detected_and_rebuilt(qm9_dir, tmp_path, damage: str) -> None:
    root = tmp_path / "qm9"
    shutil.copytree(qm9_dir, root)
    processed = root / "processed" / "data_v3.pt"
    if damage == "truncate":
        processed.write_bytes(processed.read_bytes()[:1000])
    elif damage == "flip":
        data = bytearray(processed.read_bytes())
        data[len(data) // 2] ^= 0xFF
        processed.write_bytes(bytes(data))
    else:
        (root / MANIFEST).write_text("{not json")
    with pytest.raises(DataError, match="qm9"):
        load_qm9(root, build=False)
    rebuilt = load_qm9(root, limit=QM9_SUBSET)
    assert len(rebuilt) == QM9_SUBSET and rebuilt[0].name == "gdb_1"
    assert json.loads((root / MANIFEST).read_text())["count"] == QM9_SUBSET


def test_interrupted_build_leaves_no_complete_folder(tmp_path) -> None:
    root = tmp_path / "qm9"
    root.mkdir()
    (root / "processed").mkdir()
    (root / "processed" / "data_v3.pt").write_bytes(b"half written")
    with pytest.raises(DataError, match="no complete QM9 build"):
        load_qm9(root, build=False)


def test_a_folder_holding_files_no_build_wrote_is_refused_and_kept(tmp_path) -> None:
    """se3pyg replaces its own build, never the user's files: a folder with others is refused by name."""
    measurements, results = tmp_path / "raw" / "measurements.csv", tmp_path / "processed" / "results.csv"
    for path in (measurements, results):
        path.parent.mkdir(exist_ok=True)
        path.write_text("mine\n")
    with pytest.raises(DataError, match=rf"--data-dir {tmp_path}: holds {results} and 1 more, which no QM9 build"):
        prepare_qm9(tmp_path, limit=20)
    assert measurements.read_text() == results.read_text() == "mine\n"


class _RunsCode:
    """A pickle that, once unpickled, writes a file: what a planted data file would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_loading_qm9_unpickles_nothing(qm9_dir, tmp_path) -> None:
    """PyG reads processed/pre_transform.pt with weights_only=False; se3pyg reads neither it nor pre_filter.pt, and
    reads the processed file (even one a manifest vouches for) with weights_only=True only."""
    root = tmp_path / "qm9"
    shutil.copytree(qm9_dir, root)
    marker = tmp_path / "ran"
    for name in ("pre_transform.pt", "pre_filter.pt"):
        torch.save(_RunsCode(str(marker)), root / "processed" / name)
    assert len(load_qm9(root, limit=QM9_SUBSET, build=False)) == QM9_SUBSET
    assert not marker.exists()
    manifest = json.loads((root / MANIFEST).read_text())
    processed = root / "processed" / manifest["processed_file"]
    torch.save((_RunsCode(str(marker)), {}, None), processed)
    manifest.update(processed_size=processed.stat().st_size, processed_sha256=file_sha256(processed))
    (root / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=rf"{processed}: not a QM9 build se3pyg can read"):
        load_qm9(root, limit=QM9_SUBSET, build=False)
    assert not marker.exists()


def test_a_build_without_its_raw_files_loads(qm9_dir, tmp_path) -> None:
    """Only the processed file and the manifest are read: a build whose raw/ was deleted loads, and `data prepare`
    rightly calls it ready."""
    root = tmp_path / "qm9"
    shutil.copytree(qm9_dir, root)
    shutil.rmtree(root / "raw")
    assert len(load_qm9(root, limit=QM9_SUBSET, build=False)) == QM9_SUBSET
    assert prepare_qm9(root, limit=QM9_SUBSET)["count"] == QM9_SUBSET and not (root / "raw").exists()
