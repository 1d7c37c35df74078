"""The documentation: every example in README.md and docs/ runs as written (at small sizes), and the API reference
covers every public name."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import GOLDEN, ROOT, TINY_MODEL_ARGS, run_se3pyg

pytestmark = pytest.mark.slow  # starts processes

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
QM9_MOLECULES = 2000  # the examples' QM9 folder: enough for every --limit they type

#: Lines that do not run here, and why (each is run elsewhere, or needs what this machine has not).
NOT_HERE = {
    "git clone": "needs the network: the tests run in a clone already",
    "pip install": "installs packages: .ci/run installs the project as the README says",
    "python -m pytest": "the test command: this test is part of it",
    "mkdocs serve": "a server: CI builds the same site (mkdocs build --strict), and so does a test here",
    "docker ": "needs a Docker daemon",
    "torchrun --nnodes 2": "needs two machines",
    "--gpus 8": "needs 8 GPUs",
    "MLFLOW_TRACKING_URI=sqlite:///mlruns/mlflow.db mlflow models serve": "a server: tests/test_serving.py serves",
    "curl -s 127.0.0.1:5001": "asks that server: tests/test_serving.py does",
    "python benchmarks/cpu_suite.py": "needs NVIDIA's DGL environment ($PYREF)",
    "python benchmarks/gpu_suite.py": "GPU jobs: tests/test_benchmark.py runs the suite's smoke run",
    "python benchmarks/step_counts.py": "counts a published-recipe step: tests/test_layers.py counts one",
}

#: Options the harness adds to a command (after the typed ones: the last occurrence wins) so that it runs in
#: seconds: QM9's first 300 molecules, a tiny model, two epochs, few steps, the CPU.
SMALL = {
    "train": ["--epochs", "2", "--eval-interval", "1", "--batch-size", "16", "--gpus", "0", *TINY_MODEL_ARGS],
    "benchmark": ["--steps", "2", "--warmup", "1", "--batch-size", "16", "--gpus", "0", *TINY_MODEL_ARGS],
    "data prepare": ["--limit", str(QM9_MOLECULES)],
}


def _blocks(page: Path) -> list[tuple[str, str]]:
    """``(language, code)`` of each fenced block, dedented (blocks inside list items too)."""
    found = re.findall(r"^( *)```(\w+)\n(.*?)^\1```", page.read_text(), re.S | re.M)
    return [
        (lang, "".join(line[len(indent) :] for line in code.splitlines(keepends=True))) for indent, lang, code in found
    ]


def _commands(code: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", "", code)
    commands = []
    for line in joined.splitlines():
        line = re.split(r"\s+#\s", " " + line, maxsplit=1)[0].strip()
        if line and not line.startswith("#"):
            commands.append(re.sub(r"\s+", " ", line))
    return commands


def _not_here(command: str) -> str | None:
    return next((why for start, why in NOT_HERE.items() if command.startswith(start) or start in command), None)


def _sized(command: str) -> str:
    """``command`` with the harness's size options after the typed ones (before a redirection)."""
    head, _, redirect = command.partition(" > ")
    words = shlex.split(head)
    if words[0] != "se3pyg":
        return command
    kind = "data prepare" if words[1:3] == ["data", "prepare"] else words[1]
    extra = list(SMALL.get(kind, []))
    if kind in ("train", "benchmark") and "--dataset" not in words:
        extra += ["--limit", "300"]
    if kind in ("train", "benchmark") and "--dataset" in words:  # the examples' datasets are small
        extra[extra.index("16")] = "8" if kind == "train" else "4"
    if kind == "predict":
        extra += ["--gpus", "0"]
    sized = shlex.join(words + extra)
    return f"{sized} > {redirect}" if redirect else sized


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the examples read: a QM9 folder, a trained model tracked in ./mlruns, molecules, an NVIDIA checkpoint."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    from se3pyg.data import prepare_qm9

    root = tmp_path_factory.mktemp("examples")
    prepare_qm9(root / "qm9", limit=QM9_MOLECULES)
    done = run_se3pyg("train", "--data-dir", str(root / "qm9"), "--limit", "300", "--epochs", "1", "--batch-size",
                      "16", "--gpus", "0", *TINY_MODEL_ARGS, "--save-ckpt-path", "model.pt", cwd=root)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (root / "run_id").write_text(re.search(r"MLflow run (\w+)", done.stdout).group(1))
    smiles = ["CCO", "CCN", "CCC", "CO", "CN", "CC=O", "CCCO", "CCCN", "OCCO", "NCCN", "CC(C)O", "CC(C)N"] * 2

    def embedded(smi: str, seed: int) -> Chem.Mol:
        mol = Chem.AddHs(Chem.MolFromSmiles(smi))
        AllChem.EmbedMolecule(mol, randomSeed=seed)
        return mol

    with Chem.SDWriter(str(root / "mols.sdf")) as writer:
        for k, smi in enumerate(smiles):
            mol = embedded(smi, k)
            for key, value in (("energy", k % 5), ("homo", -6 - k % 3), ("split", ("train",) * 8 + ("val", "test"))):
                mol.SetProp(key, str(value if not isinstance(value, tuple) else value[k % 10]))
            writer.write(mol)
    with Chem.SDWriter(str(root / "more.sdf")) as writer:
        for k, smi in enumerate(smiles[:4]):
            mol = embedded(smi, k)
            mol.SetProp("energy", "1.5")
            writer.write(mol)
    for folder in ("xyz_folder", "mols"):
        (root / folder).mkdir()
        rows = ["molecule,energy"]
        for k, smi in enumerate(smiles):
            (root / folder / f"m{k}.xyz").write_text(Chem.MolToXYZBlock(embedded(smi, k)))
            rows.append(f"m{k}.xyz,{k % 5}")
        if folder == "xyz_folder":
            (root / folder / "values.csv").write_text("\n".join(rows) + "\n")
    for name in ("a.xyz", "new.xyz"):
        shutil.copy(root / "mols" / "m0.xyz", root / name)
    nvidia = torch.load(GOLDEN / "nvidia_small_partial.pt", weights_only=True)
    torch.save(nvidia["state_dict"], root / "model_qm9.pth")
    return root


def _workdir(examples: Path, page: Path, tmp_path: Path) -> Path:
    """A folder of the page's own: the examples' files in it, its QM9 folder at data/qm9 (shared: built already)."""
    work = tmp_path / page.stem
    shutil.copytree(examples, work, ignore=shutil.ignore_patterns("qm9", "run_id"))
    (work / "data").mkdir()
    (work / "data" / "qm9").symlink_to(examples / "qm9")
    return work


#: Shell blocks already run on an earlier page (README.md's Quick start is also the getting-started page's).
_RAN_BLOCKS: set[str] = set()


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_example_runs(page: Path, examples: Path, tmp_path: Path) -> None:
    """Each page's blocks in order, in a folder of its own: shell commands at small sizes (``SMALL``), Python
    blocks in one namespace; a line that cannot run here must say why in ``NOT_HERE``. A shell block that an
    earlier page holds word for word ran there."""
    work = _workdir(examples, page, tmp_path)
    run_id = (examples / "run_id").read_text()
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, "PYTHONUNBUFFERED": "1"}
    namespace: dict = {}
    ran = 0
    for lang, code in _blocks(page):
        if lang == "bash" and code in _RAN_BLOCKS:
            ran += 1
            continue
        _RAN_BLOCKS.add(code)
        if lang == "python":
            cwd = os.getcwd()
            os.chdir(work)
            try:
                exec(compile(code, str(page), "exec"), namespace)
            finally:
                os.chdir(cwd)
            ran += 1
            continue
        if lang != "bash":
            continue
        for command in _commands(code.replace("RUN_ID", run_id)):
            if _not_here(command):
                continue
            if command.startswith("se3pyg ui"):
                _serves(command, work, env)
            else:
                done = subprocess.run(["bash", "-c", _sized(command)], cwd=work, env=env, capture_output=True,
                                      text=True, timeout=600)  # fmt: skip
                assert done.returncode == 0, f"{page.name}: {command}\n{done.stderr[-2000:]}"
            ran += 1
    if page.name not in ("index.md",) and page.parent.name != "reference":
        assert ran or not _blocks(page), page


def _serves(command: str, work: Path, env: dict) -> None:
    """``se3pyg ui``: it prints its page once the server answers; then it is stopped."""
    from se3pyg.engine.distributed import free_port

    proc = subprocess.Popen([*shlex.split(command), "--port", str(free_port())], cwd=work, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    try:
        assert proc.stdout.readline().startswith("MLflow UI for "), proc.stderr.read() if proc.poll() else ""
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def test_every_line_that_does_not_run_says_why() -> None:
    """No example is left out silently: the lines the harness does not run are exactly those ``NOT_HERE`` names."""
    skipped = {c: _not_here(c) for p in PAGES for lang, code in _blocks(p) if lang == "bash" for c in _commands(code)}
    skipped = {c: why for c, why in skipped.items() if why}
    assert skipped and all(why for why in skipped.values())
    unused = [start for start in NOT_HERE if not any(start in c for c in skipped)]
    assert unused == [], "NOT_HERE names lines no page has any more"


def _public_names() -> dict[str, list[str]]:
    """The reference's modules and their public names: each package's ``__all__``, each engine module's own
    public functions and classes."""
    names = {}
    compat = [f"se3pyg.compat.{p.stem}" for p in sorted((ROOT / "se3pyg" / "compat").glob("[!_]*.py"))]
    for module in ("se3pyg", "se3pyg.nn", "se3pyg.data", *compat):
        names[module] = [n for n in importlib.import_module(module).__all__ if not n.startswith("__")]
    for path in sorted((ROOT / "se3pyg" / "engine").glob("*.py")):
        tree = ast.parse(path.read_text())
        own = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name[0] != "_"]
        if own:
            names[f"se3pyg.engine.{path.stem}"] = own
    return names


def test_the_reference_covers_every_public_name(tmp_path: Path) -> None:
    """The site built as CI builds it (warnings are errors, an unresolved cross-reference too) has an entry for
    every public name; mkdocstrings shows only documented names (``show_if_no_docstring: false``), so a public
    name without a docstring fails. Its pages hold no reST (which ``--strict`` lets through as text), and their
    math is typeset by MathJax."""
    pytest.importorskip("mkdocs", reason="the docs extra: pip install -e '.[docs]'")
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    reference = "".join(p.read_text() for p in site.rglob("reference/**/*.html"))
    assert re.findall(r":(?:class|func|meth|mod|math|data|attr|exc|obj):`|\.\. [a-z-]+::", reference) == []  # no reST
    assert 'class="arithmatex"' in reference and "tex-mml-chtml.js" in reference  # math, and MathJax to typeset it
    assert "stylesheets/extra.css" in (site / "training" / "index.html").read_text()  # code blocks that wrap
    anchors = set(re.findall(r'id="(se3pyg[\w.]*)"', reference))
    missing = [
        f"{module}.{name}"
        for module, names in _public_names().items()
        for name in names
        if not any(anchor.endswith(f".{name}") for anchor in anchors)
    ]
    assert missing == []


def test_the_nvidia_page_gives_the_statistics_of_every_task() -> None:
    """Every QM9 task's training-split mean and std (``scripts/qm9_target_stats.py`` printed them from a full
    build), and the page's own command uses the homo row."""
    from se3pyg.data import TASKS

    page = (ROOT / "docs" / "nvidia-checkpoints.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| \S+ \| (-?[\d.]+ \| [\d.]+) \|$", page, re.M))
    assert list(rows) == list(TASKS)
    mean, std = rows["homo"].split(" | ")
    assert f"--target-mean {mean} --target-std {std}" in page


@pytest.mark.slow
def test_the_statistics_script_refuses_a_partial_build(qm9_dir: Path) -> None:
    script = ROOT / "scripts" / "qm9_target_stats.py"
    done = subprocess.run([sys.executable, str(script), "--data-dir", str(qm9_dir)], capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.strip().endswith("not a build of all 130,831 QM9 molecules")


#: Public callables whose parameters are documented elsewhere: PyG's message-passing hooks (internal, out of the
#: reference), torch's optimizer step, and the copies that take RoseTTAFold2's arguments (documented there).
_ARGS_ELSEWHERE = {
    "se3pyg.nn.AttentionSE3.message", "se3pyg.nn.AttentionSE3.aggregate", "se3pyg.nn.ConvSE3.message",
    "se3pyg.nn.ConvSE3.edge_update", "se3pyg.engine.optim.Lamb.step", "se3pyg.compat.rf2aa.SE3Transformer",
    "se3pyg.compat.rf2na.SE3Transformer",
}  # fmt: skip


def _documented_parameters(name: str, obj: object) -> list[str]:
    """``name`` (and its public methods') when it takes parameters and its docstring has no ``Args:``."""
    import inspect

    missing = []
    if inspect.isclass(obj):
        methods = [
            (f"{name}.{m}", f)
            for m, f in vars(obj).items()
            if not m.startswith("_") and inspect.isfunction(f) and f.__module__ == obj.__module__  # not PyG's
        ]
        if not dataclasses.is_dataclass(obj):
            methods.append((name, obj))
    else:
        methods = [(name, obj)]
    for full, fn in methods:
        try:
            params = [p for p in inspect.signature(fn).parameters if p not in ("self", "cls")]
        except (TypeError, ValueError):
            continue
        sections = ("Args:", "Attributes:") if fn is obj else ("Args:",)  # a record's fields are its attributes
        if params and not any(s in (fn.__doc__ or "") for s in sections) and full not in _ARGS_ELSEWHERE:
            missing.append(full)
    return missing


def test_every_public_callable_documents_its_parameters() -> None:
    """The reference shows a parameter table for every public function, class and method that takes any."""
    missing = []
    for module, names in _public_names().items():
        loaded = importlib.import_module(module)
        missing += [m for name in names for m in _documented_parameters(f"{module}.{name}", getattr(loaded, name))]
    assert missing == []


def test_the_readme_gives_both_test_commands_and_what_they_take() -> None:
    """A contributor knows what to run and how long it takes before running it."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "python -m pytest -q -n auto --dist loadfile # the test command" in readme
    assert 'python -m pytest -q -m "not slow"' in readme
    assert re.search(r"the whole suite took [\d.]+ minutes on a clean clone with two workers \([\d,]+ tests", readme)
    assert re.search(r"the fast tier \d+ min \d+ s \([\d,]+ tests\)", readme)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest -q -n auto --dist loadfile\n" in ci  # CI runs the README's command
