"""The file system's parts import downhill (issue 32), in the order ``docs/architecture.md``
shows them.

The table of "The file system in parts" is the parts' layer order, top to bottom: a part
imports only parts listed below it (imports under ``if TYPE_CHECKING:`` are annotations and
do not count); a part that must run code of one above it declares what it needs and is
given it.  Modules the table does not list (``errors.py``, ``attrs.py``, ...) are helpers
any part may import.  A wing (a sub-package, ``fs/leases/``) is one part: the imports of
all its modules count, those within it aside.  A part listed twice, or an import of a
part listed higher, fails.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from importscan import runtime_imports

ROOT = Path(__file__).resolve().parent.parent / "bftfs"
DOC = ROOT.parent / "docs" / "architecture.md"

_SECTION = "## The file system in parts"
_ROW = re.compile(r"^\| `fs/([\w/]+)\.py` \|")


def layer_order(text: str) -> list[str]:
    """The ``fs`` modules of the parts table, top to bottom.

    Raises:
        ValueError: the section or its table is missing, or a module is listed twice.
    """
    if _SECTION not in text:
        raise ValueError(f"no {_SECTION!r} section")
    section = text.split(_SECTION, 1)[1].split("\n## ", 1)[0]
    order: list[str] = []
    for line in section.splitlines():
        m = _ROW.match(line)
        if m is None:
            continue
        if m.group(1) in order:
            raise ValueError(f"fs/{m.group(1)}.py is listed twice")
        order.append(m.group(1))
    if not order:
        raise ValueError("the parts table has no rows")
    return order


def fs_imports(source: str) -> set[str]:
    """The ``bftfs.fs`` modules ``source`` imports outside ``TYPE_CHECKING`` blocks, as
    paths under ``fs/`` without ``.py`` (``files/flush`` for a wing's module,
    ``files/__init__`` for the wing's face)."""
    out: set[str] = set()
    for node in runtime_imports(source):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
            if node.module.startswith("bftfs.fs"):  # modules of a package, or its names
                folder = ROOT.parent.joinpath(*node.module.split("."))
                subs = [a.name for a in node.names if (folder / f"{a.name}.py").exists()]
                names = [f"{node.module}.{a}" for a in subs] or names
        for name in names:
            parts = name.split(".")
            if parts[:2] == ["bftfs", "fs"] and len(parts) > 2:
                face = ROOT.parent.joinpath(*parts, "__init__.py").exists()
                out.add("/".join(parts[2:] + ["__init__"] * face))
    return out


def uphill(order: list[str], imports: dict[str, set[str]]) -> list[str]:
    """Imports of a part listed higher in ``order`` than the importer."""
    rank = {m: i for i, m in enumerate(order)}
    return [
        f"fs/{m}.py imports fs/{up}.py, listed above it"
        for m in order
        for up in sorted(imports.get(m, set()))
        if up in rank and rank[up] <= rank[m] and up != m
    ]


def test_the_checks_find_an_import_up_and_ignore_annotations() -> None:
    order = layer_order(
        "## The file system in parts\n| `fs/handles.py` | H |\n| `fs/meta.py` | M |\n## Next\n"
    )
    assert order == ["handles", "meta"]
    source = (
        "from typing import TYPE_CHECKING\nfrom bftfs.fs.meta import Meta\n"
        "if TYPE_CHECKING:\n    from bftfs.fs.handles import Handles\n"
    )
    assert fs_imports(source) == {"meta"}
    assert uphill(order, {"handles": {"meta"}}) == []
    assert uphill(order, {"meta": {"handles"}}) == [
        "fs/meta.py imports fs/handles.py, listed above it"
    ]


def part_imports(m: str) -> set[str]:
    """The ``bftfs.fs`` modules part ``m`` imports (a wing: all its modules do)."""
    wing = ROOT / "fs" / m
    files = sorted(wing.glob("*.py")) if wing.is_dir() else [ROOT / "fs" / f"{m}.py"]
    return set().union(*(fs_imports(f.read_text()) for f in files))


def test_every_part_imports_only_parts_below_it() -> None:
    order = layer_order(DOC.read_text())
    imports = {m: part_imports(m) for m in order}
    assert not uphill(order, imports)
