"""The code's own rules that a reader relies on."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "se3pyg" / "engine"


def test_every_function_reads_on_one_screen() -> None:
    """At most 60 lines a function in se3pyg/, cli/ and benchmarks/ (the loop that reads top to bottom stays so)."""
    root = ENGINE.parents[1]
    long = [
        f"{path.relative_to(root)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for folder in ("se3pyg", "cli", "benchmarks")
        for path in sorted((root / folder).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60
    ]
    assert long == []


def _engine_imports(path: Path) -> set[str]:
    """The engine modules ``path`` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "se3pyg.engine":
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("se3pyg.engine."):
            found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[2] for a in node.names if a.name.startswith("se3pyg.engine."))
    return found


def test_the_engine_order_in_the_architecture_page_is_the_import_order() -> None:
    """docs/architecture.md lists every engine module, each importing only those listed after it."""
    page = (ENGINE.parents[1] / "docs" / "architecture.md").read_text()
    section = page.split("## The engine, top to bottom")[1].split("\n\n")[2]  # the list after its sentence
    modules = {path.stem for path in ENGINE.glob("*.py")} - {"__init__"}
    order: list[str] = []
    for name in re.findall(r"`(\w+)`", section):
        if name in modules and name not in order:
            order.append(name)
    assert sorted(order) == sorted(modules), "the list names every engine module"
    upward = [
        f"{module} imports {imported}"
        for position, module in enumerate(order)
        for imported in sorted(_engine_imports(ENGINE / f"{module}.py") & modules)
        if order.index(imported) <= position
    ]
    assert upward == []


#: Calls that start a process: se3pyg's command line, subprocesses, spawned or forked workers.
_PROCESS_STARTERS = {"run_se3pyg", "Popen", "check_output", "check_call", "spawn", "start_processes", "Process"}


def _starts_processes(node: ast.AST, local: set[str]) -> bool:
    """Whether ``node`` calls a process starter (``subprocess.run`` too) or a function of ``local``."""
    for call in ast.walk(node):
        if not isinstance(call, ast.Call):
            continue
        func = call.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
        if name in _PROCESS_STARTERS or name in local or (owner == "subprocess" and name == "run"):
            return True
    return False


def _is_slow(node: ast.AST) -> bool:
    return any("slow" in ast.unparse(decorator) for decorator in getattr(node, "decorator_list", []))


def processes_started_by_unmarked_tests(path: Path) -> list[str]:
    """The tests of ``path`` that start processes (themselves, through the module's functions or through its
    fixtures) without the ``slow`` mark, on them or on their module (``pytestmark``)."""
    tree = ast.parse(path.read_text())
    if any(
        isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in n.targets) and _is_slow_mark(n)
        for n in tree.body
    ):
        return []
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    starters: set[str] = set()
    while True:  # the module's functions that start processes, directly or through each other
        more = {name for name, f in functions.items() if name not in starters and _starts_processes(f, starters)}
        if not more:
            break
        starters |= more
    return [
        f"{path.name}::{name}"
        for name, f in functions.items()
        if name.startswith("test_")
        and not _is_slow(f)
        and (name in starters or any(arg.arg in starters for arg in f.args.args))
    ]


def _is_slow_mark(assign: ast.Assign) -> bool:
    return "mark.slow" in ast.unparse(assign.value)


def test_tests_that_start_processes_are_marked_slow() -> None:
    """The fast tier (``-m "not slow"``) starts no process: each test that does is marked ``slow``."""
    tests = Path(__file__).resolve().parent
    unmarked = [name for path in sorted(tests.glob("test_*.py")) for name in processes_started_by_unmarked_tests(path)]
    assert unmarked == []


def test_docstrings_are_markdown_not_rest() -> None:
    """mkdocstrings renders Google-style Markdown: a reST role (``:class:`X```) or directive (``.. math::``) would
    show as raw text in the reference. Cross-references are ``[`X`][se3pyg.module.X]``, math ``$...$``/``$$``."""
    root = Path(__file__).resolve().parents[1]
    found = [
        f"{path.relative_to(root)}:{k}"
        for folder in ("se3pyg", "cli")
        for path in sorted((root / folder).rglob("*.py"))
        for k, line in enumerate(path.read_text().splitlines(), start=1)
        if re.search(r":(class|func|meth|mod|math|data|attr|exc|obj):`|^\s*\.\. [a-z-]+::", line)
    ]
    assert found == []
