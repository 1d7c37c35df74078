"""The code's own rules that a reader relies on."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "se3pyg" / "engine"


def test_every_engine_function_reads_on_one_screen() -> None:
    """At most 60 lines a function in se3pyg.engine (the loop that reads top to bottom stays so)."""
    long = [
        f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in sorted(ENGINE.glob("*.py"))
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
