"""The import statements a module runs, for the layering tests (``t1_layering.py``,
``t1_fs_layers.py``): imports under ``if TYPE_CHECKING:`` are for annotations only and do
not count; imports inside functions do."""

from __future__ import annotations

import ast


def runtime_imports(source: str) -> list[ast.Import | ast.ImportFrom]:
    """The ``import`` and ``from ... import`` statements of ``source``, at any depth,
    outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(source)
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in skip
    ]
