"""The package's shape (issue 61): sizes a reader takes in at once, no forwarding or
unowned tasks in the file-system layer, private names kept private, and ``fs/`` in wings.

Each bar is a number a newcomer feels: a module over 600 lines, a class over 400 or a
function over 80 no longer fits in one reading; a ``__getattr__`` forwarder stops every
walk of a call at the seam; a private name imported elsewhere is a public one in disguise;
a trio system task has no owner to stop it (``fs/background.py`` owns the file system's).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "bftfs"
MODULE_LINES, CLASS_LINES, FUNCTION_LINES = 600, 400, 80
FS_TOP_FILES = 12


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text())) for p in sorted(ROOT.rglob("*.py"))]


def _span(node: ast.AST) -> int:
    return int(getattr(node, "end_lineno", 0)) - int(getattr(node, "lineno", 0)) + 1


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_no_module_class_or_function_over_its_bar() -> None:
    over: list[str] = []
    for path, tree in _modules():
        lines = path.read_text().count("\n")
        if lines > MODULE_LINES:
            over.append(f"{_name(path)}: {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and _span(node) > CLASS_LINES:
                over.append(f"{_name(path)}: class {node.name} {_span(node)} lines")
            is_function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            if is_function and _span(node) > FUNCTION_LINES:
                over.append(f"{_name(path)}: {node.name} {_span(node)} lines")
    assert not over, over


def test_no_private_name_is_imported_from_another_module() -> None:
    found = [
        f"{_name(path)}: {node.module}.{alias.name}"
        for path, tree in _modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    ]
    assert not found, found


def test_the_file_system_layer_neither_forwards_nor_spawns_unowned_tasks() -> None:
    found: list[str] = []
    for path, tree in _modules():
        if not _name(path).startswith("fs/"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
                found.append(f"{_name(path)}:{node.lineno} __getattr__")
            if isinstance(node, ast.Attribute) and node.attr == "spawn_system_task":
                found.append(f"{_name(path)}:{node.lineno} spawn_system_task")
    assert not found, found


def test_fs_keeps_its_top_level_small_and_the_rest_in_wings() -> None:
    top = sorted(p.name for p in (ROOT / "fs").glob("*.py"))
    assert len(top) <= FS_TOP_FILES, top


def test_the_docs_stay_a_reference_and_results_stay_few() -> None:
    """``docs/performance.md`` the current figures and their arithmetic, the README a
    page, ``benchmarks/results/`` the latest run of each benchmark (git keeps the rest)."""
    repo = ROOT.parent
    assert (repo / "docs" / "performance.md").read_text().count("\n") < 400
    assert (repo / "README.md").read_text().count("\n") < 250
    assert len(list((repo / "benchmarks" / "results").iterdir())) < 40
