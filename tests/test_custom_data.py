"""Training on the user's molecules (--dataset): QM9 round trip, other elements, bad records, the cache."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem

from se3pyg.data import DataError, DatasetSpec, get_task, load_qm9, prepare_qm9, qm9_splits
from se3pyg.data.custom import build_dataset, cache_dir
from se3pyg.data.molecules import ELEMENTS, read_molecules
from se3pyg.engine.config import TrainConfig
from se3pyg.engine.train import run

from .conftest import TINY_MODEL, TINY_MODEL_ARGS, run_se3pyg

TINY = dict(**TINY_MODEL, batch_size=32, gpus=0)


def _write_sdf(path: Path, molecules: list[tuple[Chem.Mol, dict[str, str]]]) -> None:
    with Chem.SDWriter(str(path)) as writer:
        for mol, fields in molecules:
            for key, value in fields.items():
                mol.SetProp(key, value)
            writer.write(mol)


def _qm9_molecule(data) -> Chem.Mol:
    """A QM9 molecule as an RDKit molecule with its coordinates (no bonds: se3pyg perceives them)."""
    mol = Chem.RWMol()
    for k in data.x[:, :5].argmax(1).tolist():
        mol.AddAtom(Chem.Atom(ELEMENTS[k]))
    conformer = Chem.Conformer(data.num_nodes)
    for k, xyz in enumerate(data.pos.tolist()):
        conformer.SetAtomPosition(k, xyz)
    mol = mol.GetMol()
    mol.AddConformer(conformer)
    mol.SetProp("_Name", data.name)
    return mol


def test_qm9_written_as_sdf_trains_like_the_qm9_build(tmp_path: Path) -> None:
    """The first 2,000 QM9 molecules as one SDF (HOMO and QM9's split as data fields) give the same split sizes
    and validation MAE as training on the QM9 build, with the same seed and options."""
    prepare_qm9(tmp_path / "qm9", limit=2000)
    qm9, splits = load_qm9(tmp_path / "qm9", 2000), qm9_splits(tmp_path / "qm9", get_task("homo"), 2000)
    records = []
    for split, part in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        for i in part.indices():  # each split in QM9's split order
            records.append((_qm9_molecule(qm9[i]), {"homo": repr(float(qm9[i].y[0, 2])), "qm9_split": split}))
    _write_sdf(tmp_path / "qm9_2000.sdf", records)

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = dict(TINY, epochs=2, eval_interval=1, tracking_uri=uri)
    from_qm9 = run(TrainConfig(**common, task="homo", data_dir=str(tmp_path / "qm9"), limit=2000))
    from_sdf = run(
        TrainConfig(**common, dataset=str(tmp_path / "qm9_2000.sdf"), target="homo", split_field="qm9_split")
    )
    client = mlflow.MlflowClient(tracking_uri=uri)
    sizes = [
        [client.get_run(r.run_id).data.params[k] for k in ("n_train", "n_val", "n_test")] for r in (from_qm9, from_sdf)
    ]
    assert sizes[0] == sizes[1] == ["1529", "271", "200"]
    assert from_sdf.history[-1]["val_mae"] == pytest.approx(from_qm9.history[-1]["val_mae"], abs=1e-6)
    assert from_sdf.best_val_mae == pytest.approx(from_qm9.best_val_mae, abs=1e-6)


SULFUR_AND_CHLORINE = [
    "CS", "CCS", "CSC", "CCSC", "CCl", "ClCCl", "CCCl", "OCCCl", "ClC(Cl)Cl", "CSCC", "SCCS", "CC(C)S",
    "ClCC(=O)O", "CSC(C)C", "CCSCC", "ClCCCl", "CC(Cl)C", "OCCS", "NCCS", "NCCCl", "CSSC", "FC(Cl)Cl",
    "c1ccsc1", "Clc1ccccc1", "CC(=O)Cl", "CCC(Cl)CC", "CCCCS", "CCCCCl", "OC(=O)CS", "ClCCOCCCl",
]  # fmt: skip


def _embedded(smiles: str) -> Chem.Mol:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(mol, randomSeed=7)
    AllChem.MMFFOptimizeMolecule(mol)
    mol.SetProp("_Name", smiles)
    return mol


def _xyz(mol: Chem.Mol) -> str:
    conf = mol.GetConformer()
    atoms = [
        f"{a.GetSymbol()} {p.x:.5f} {p.y:.5f} {p.z:.5f}"
        for a in mol.GetAtoms()
        for p in [conf.GetAtomPosition(a.GetIdx())]
    ]
    return f"{len(atoms)}\n{mol.GetProp('_Name')}\n" + "\n".join(atoms) + "\n"


@pytest.fixture(scope="module")
def sulfur_chlorine_sdf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 RDKit-embedded molecules with S or Cl, a made-up target (heavy atoms + S/Cl count), one bad record."""
    folder = tmp_path_factory.mktemp("s_cl")
    records = []
    for smiles in SULFUR_AND_CHLORINE:
        mol = _embedded(smiles)
        heavy = mol.GetNumHeavyAtoms() + sum(a.GetSymbol() in ("S", "Cl") for a in mol.GetAtoms())
        records.append((mol, {"score": f"{heavy / 3:.4f}"}))
    records.append((_embedded("CCO"), {"other": "1"}))  # no 'score' field: a bad record
    _write_sdf(folder / "s_cl.sdf", records)
    return folder / "s_cl.sdf"


@pytest.mark.slow
def test_a_dataset_with_sulfur_and_chlorine_trains_and_predicts(sulfur_chlorine_sdf: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    options = ["--gpus", "0", *TINY_MODEL_ARGS]
    done = run_se3pyg(
        "train", "--dataset", str(sulfur_chlorine_sdf), "--target", "score", "--unit", "au", "--batch-size", "8",
        "--epochs", "2", "--save-ckpt-path", "s_cl.pt", "--tracking-uri", uri, *options, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "skipped 1 bad records of --dataset (first: s_cl.sdf:CCO: no field 'score')" in done.stdout
    run_id = done.stdout.split("MLflow run ")[1].split()[0]
    table = mlflow.MlflowClient(tracking_uri=uri).download_artifacts(run_id, "test_predictions.csv", str(tmp_path))
    names = {row["molecule"] for row in csv.DictReader(io.StringIO(Path(table).read_text()))}
    assert names and names <= {f"s_cl.sdf:{smiles}" for smiles in SULFUR_AND_CHLORINE}  # the dataset's names
    checkpoint = torch.load(tmp_path / "s_cl.pt", weights_only=True)
    assert checkpoint["elements"] == ["H", "C", "N", "O", "F", "S", "Cl"]  # QM9's first, then by atomic number
    assert checkpoint["task"] == "score" and checkpoint["unit"] == "au"
    assert checkpoint["model_config"]["fiber_in"] == {0: 8}  # 7 elements + the atomic number

    (tmp_path / "thiol.xyz").write_text(_xyz(_embedded("CCCS")))
    done = run_se3pyg("predict", "--ckpt", "s_cl.pt", "--input", "thiol.xyz", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (row,) = csv.DictReader(io.StringIO(done.stdout))
    assert row["task"] == "score" and row["unit"] == "au" and math.isfinite(float(row["prediction"]))

    (tmp_path / "bromide.xyz").write_text(_xyz(_embedded("CCBr")))
    done = run_se3pyg("predict", "--ckpt", "s_cl.pt", "--input", "bromide.xyz", cwd=tmp_path)
    assert done.returncode == 2 and "unknown element Br (the model knows H, C, N, O, F, S, Cl)" in done.stderr
    assert "Traceback" not in done.stderr

    done = run_se3pyg("predict", "--ckpt", "s_cl.pt", "--tracking-uri", uri, cwd=tmp_path)  # its dataset's test split
    assert done.returncode == 0, done.stderr
    assert "test MAE" in done.stdout and "on 3 molecules (score)" in done.stdout

    # another file of molecules, featurized as the model was (it has no S: the columns stay)
    _write_sdf(tmp_path / "more.sdf", [(_embedded(smi), {"score": "1.5"}) for smi in ("CCCCl", "CCO", "CSCCC")])
    done = run_se3pyg("predict", "--ckpt", "s_cl.pt", "--dataset", "more.sdf", "--split", "all", "--tracking-uri", uri,
                      cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "all MAE" in done.stdout and "on 3 molecules (score)" in done.stdout

    done = run_se3pyg(
        "benchmark", "train", "--dataset", str(sulfur_chlorine_sdf), "--target", "score", "--batch-size", "4",
        "--steps", "2", "--warmup", "1", "--no-tracking", *options, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["throughput_mol_per_ms"] > 0


@pytest.mark.slow
def test_bad_records_can_be_refused_and_bad_options_are_one_line_errors(
    sulfur_chlorine_sdf: Path, tmp_path: Path
) -> None:
    base = ["train", "--gpus", "0"]
    uri = ["--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
    cases = [
        (["--dataset", str(sulfur_chlorine_sdf), "--target", "score", "--bad-records", "refuse"],
         "s_cl.sdf:CCO: no field 'score' (1 bad records; --bad-records skip)"),
        (["--dataset", str(sulfur_chlorine_sdf)], "name the value to learn with --target"),
        (["--dataset", str(tmp_path / "nope.sdf"), "--target", "x"], "nope.sdf: no such file or folder"),
        (["--dataset", str(sulfur_chlorine_sdf), "--target", "score", "--split-fractions", "0.5,0.1"],
         "--split-fractions must be three fractions"),
        (["--dataset", str(sulfur_chlorine_sdf), "--target", "score", "--split-field", "none"],
         "none = '' is not train, val or test"),
    ]  # fmt: skip
    for args, message in cases:
        done = run_se3pyg(*base, *args, *uri, cwd=tmp_path)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr


def test_the_cache_is_reused_and_rebuilt_when_the_source_changes(sulfur_chlorine_sdf: Path, tmp_path: Path) -> None:
    source = tmp_path / "mols.sdf"
    source.write_bytes(sulfur_chlorine_sdf.read_bytes())
    spec = DatasetSpec(str(source), "score")
    first = build_dataset(spec)
    assert (len(first.dataset), first.skipped) == (30, 1)
    processed = cache_dir(source) / "dataset.pt"
    stamp = processed.stat().st_mtime_ns
    again = build_dataset(spec)
    assert processed.stat().st_mtime_ns == stamp and torch.equal(again.dataset._data.x, first.dataset._data.x)

    _write_sdf(source, [(_embedded("CCl"), {"score": "1.0"}), (_embedded("CCO"), {"score": "2.0"})])
    changed = build_dataset(spec)  # the source changed: rebuilt, with the elements it now holds
    assert len(changed.dataset) == 2 and changed.elements == ("H", "C", "N", "O", "F", "Cl")
    processed.write_bytes(b"damaged")
    assert len(build_dataset(spec).dataset) == 2  # a damaged cache is rebuilt, never read
    processed.unlink()
    assert len(build_dataset(spec).dataset) == 2  # and a missing one
    manifest = json.loads((cache_dir(source) / "manifest.json").read_text())
    assert manifest["molecules"] == 2 and manifest["sources"][0]["name"] == "mols.sdf"
    with pytest.raises(DataError, match="no field 'nope'"):
        build_dataset(DatasetSpec(str(source), "nope", bad_records="refuse"))


def test_a_folder_of_xyz_files_with_a_csv(tmp_path: Path) -> None:
    folder = tmp_path / "mols"
    folder.mkdir()
    rows = ["molecule,energy"]
    for k, smiles in enumerate(["CCO", "CCN", "CCCl", "CS"]):
        (folder / f"m{k}.xyz").write_text(_xyz(_embedded(smiles)))
        rows.append(f"m{k}.xyz,{k * 0.5}")
    rows += ["missing.xyz,1.0", ",2.0"]
    (folder / "values.csv").write_text("\n".join(rows) + "\n")
    built = build_dataset(DatasetSpec(str(folder), "energy"))
    assert len(built.dataset) == 4 and built.skipped == 2 and "missing.xyz" in built.reasons[0]
    assert "values.csv:7: no .xyz, .sdf or .mol file ''" in built.reasons[1]
    assert built.elements == ("H", "C", "N", "O", "F", "S", "Cl")
    assert built.dataset._data.y.view(-1).tolist() == [0.0, 0.5, 1.0, 1.5]


def test_a_long_cell_is_a_bad_record_and_a_column_named_twice_is_refused(tmp_path: Path) -> None:
    """A 200,000-character cell makes its record bad (skipped, quoted short), not the file; two columns of one
    name make the file ambiguous: refused, naming the line and both columns."""
    folder = tmp_path / "mols"
    folder.mkdir()
    for k, smiles in enumerate(["CCO", "CCN", "CCCl"]):
        (folder / f"m{k}.xyz").write_text(_xyz(_embedded(smiles)))
    (folder / "values.csv").write_text("molecule,energy\nm0.xyz,0\n\nm1.xyz,1\nm2.xyz," + "x" * 200_000 + "\n")
    built = build_dataset(DatasetSpec(str(folder), "energy"))
    assert len(built.dataset) == 2 and built.skipped == 1
    assert built.reasons == ["m2.xyz: energy = 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... is not a number"]
    (folder / "values.csv").write_text("molecule,energy,energy\nm0.xyz,0,5\nm1.xyz,1,6\nm2.xyz,2,7\n")
    with pytest.raises(DataError) as refused:
        build_dataset(DatasetSpec(str(folder), "energy"))
    assert str(refused.value) == (
        f"{folder / 'values.csv'}:1: column 'energy' appears twice (columns 2 and 3); which one counts would be a guess"
    )


def test_v3000_and_v2000_molfiles_give_the_same_dataset(tmp_path: Path) -> None:
    molecules = [(_embedded(smiles), {"score": str(k)}) for k, smiles in enumerate(["CCS", "ClCC=O", "c1ccsc1"])]
    _write_sdf(tmp_path / "v2000.sdf", molecules)
    with Chem.SDWriter(str(tmp_path / "v3000.sdf")) as writer:
        writer.SetForceV3000(True)
        for mol, _ in molecules:
            writer.write(mol)
    assert "V3000" in (tmp_path / "v3000.sdf").read_text()
    v2000 = build_dataset(DatasetSpec(str(tmp_path / "v2000.sdf"), "score")).dataset._data
    v3000 = build_dataset(DatasetSpec(str(tmp_path / "v3000.sdf"), "score")).dataset._data
    for key in ("x", "pos", "edge_index", "edge_attr", "y"):
        assert torch.allclose(v2000[key].float(), v3000[key].float(), atol=1e-4), key


def test_a_csv_names_only_files_of_its_folder_and_each_once(tmp_path: Path) -> None:
    """Files outside the folder or in sub-folders would be read without the cache hashing them: bad records, as is
    a molecule listed twice."""
    folder = tmp_path / "mols"
    (folder / "sub").mkdir(parents=True)
    for k, smiles in enumerate(["CCO", "CCN", "CCCl"]):
        (folder / f"m{k}.xyz").write_text(_xyz(_embedded(smiles)))
    (tmp_path / "outside.xyz").write_text(_xyz(_embedded("CS")))
    (folder / "sub" / "inner.xyz").write_text(_xyz(_embedded("CS")))
    rows = ["molecule,energy", "m0.xyz,0", "m1.xyz,1", "m2.xyz,2", "../outside.xyz,3",
            f"{tmp_path / 'outside.xyz'},4", "sub/inner.xyz,5", "m1.xyz,6"]  # fmt: skip
    (folder / "values.csv").write_text("\n".join(rows) + "\n")
    built = build_dataset(DatasetSpec(str(folder), "energy"))
    assert built.dataset._data.y.view(-1).tolist() == [0.0, 1.0, 2.0] and built.skipped == 4
    assert built.reasons[0].endswith(
        "values.csv:5: '../outside.xyz' is not a file name in " + f"{folder} (no folders, paths or hidden files)"
    )
    assert "values.csv:7: 'sub/inner.xyz' is not a file name" in built.reasons[2]
    assert built.reasons[3].endswith("values.csv:8: m1.xyz is listed again (first on line 3)")


def _build_for(source: str, target: str, start: Any) -> None:
    start.wait()
    build_dataset(DatasetSpec(source, target))


@pytest.mark.slow
def test_builds_of_one_cache_for_different_targets_at_once_store_each_targets_values(tmp_path: Path) -> None:
    """Each pair of builds races for one cache; whichever manifest is left describes the values stored with it."""
    import multiprocessing

    source = tmp_path / "mols.sdf"
    _write_sdf(source, [(_embedded(smi), {"a": "1.0", "b": "2.0"}) for smi in ("CCO", "CCN", "CCC", "CO")])
    context = multiprocessing.get_context("spawn")  # a forked torch may hang in its thread pools
    for _ in range(4):
        start = context.Barrier(2)
        pair = [context.Process(target=_build_for, args=(str(source), t, start)) for t in "ab"]
        for process in pair:
            process.start()
        for process in pair:
            process.join(timeout=120)
            assert process.exitcode == 0
        manifest = json.loads((cache_dir(source) / "manifest.json").read_text())
        target = manifest["spec"]["target"]
        stamp = (cache_dir(source) / "dataset.pt").stat().st_mtime_ns
        values = build_dataset(DatasetSpec(str(source), target)).dataset._data.y.view(-1).tolist()
        assert (cache_dir(source) / "dataset.pt").stat().st_mtime_ns == stamp  # read from the cache, not rebuilt
        assert values == [1.0 if target == "a" else 2.0] * 4


def test_links_out_of_a_folder_are_refused_and_hidden_files_left_out(tmp_path: Path) -> None:
    """A link in an input or dataset folder that leads elsewhere is refused by name, before anything of its
    target is read, echoed or cached; a link within the folder is one of its files; hidden files (macOS's ``._``
    companions) are not molecules."""
    secret = tmp_path / "secret.xyz"
    secret.write_text(_xyz(_embedded("CS")).replace("\n\n", "\nTOP-SECRET-TOKEN\n", 1))
    folder = tmp_path / "mols"
    folder.mkdir()
    rows = ["molecule,energy"]
    for k, smiles in enumerate(["CCO", "CCN", "CCCl"]):
        (folder / f"m{k}.xyz").write_text(_xyz(_embedded(smiles)))
        rows.append(f"m{k}.xyz,{k}")
    (folder / "._m0.xyz").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")  # AppleDouble
    (folder / "alias.xyz").symlink_to("m0.xyz")
    (folder / "values.csv").write_text("\n".join([*rows, "alias.xyz,9", "._m0.xyz,5"]) + "\n")
    built = build_dataset(DatasetSpec(str(folder), "energy"))
    assert built.dataset._data.y.view(-1).tolist() == [0.0, 1.0, 2.0, 9.0] and built.skipped == 1
    assert "'._m0.xyz' is not a file name" in built.reasons[0]
    assert len(read_molecules([folder], (*ELEMENTS, "Cl"))) == 4  # m0, m1, m2 and the alias; not the hidden file
    (folder / "m3.xyz").symlink_to(secret)
    (folder / "values.csv").write_text("\n".join([*rows, "m3.xyz,3"]) + "\n")
    for attempt in (lambda: build_dataset(DatasetSpec(str(folder), "energy")), lambda: read_molecules([folder])):
        with pytest.raises(DataError, match=rf"{folder / 'm3.xyz'}: a link out of {folder} \(to {secret}\)") as error:
            attempt()
        assert "TOP-SECRET" not in str(error.value)
    manifest = cache_dir(folder) / "manifest.json"
    assert "TOP-SECRET" not in manifest.read_text()
