"""The package layering (issue 20), checked over every module of ``bftfs``.

The rule is the table "The import rule" in ``docs/architecture.md`` (one source of truth,
issue 32): this test parses it from there, so the doc a reader sees is the rule the code
obeys.  Each package may import only the packages its row lists, at module level or inside
a function (imports under ``if TYPE_CHECKING:`` are for annotations only and do not count).
Lower layers never import higher ones.  A new edge is added to that table, with its reason.

The doc is the source rather than a Python table the doc is generated from: the table stays
hand-written prose a reviewer reads in a diff (with its reasons), and no generator step can
be forgotten; the parser is strict, so a malformed row fails instead of allowing less.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from importscan import runtime_imports

ROOT = Path(__file__).resolve().parent.parent / "bftfs"
DOC = ROOT.parent / "docs" / "architecture.md"

_SECTION = "### The import rule"
_BASE_LINE = re.compile(r"\*base\* stands for\s+(.*?);", re.S)
_ROW = re.compile(r"^\| `([\w.]+)` \| ([^|]*) \|([^|]*)\|$")


def _names(cell: str, base: set[str] | None, where: str) -> set[str]:
    """The packages one "may import" cell names: `name`s, ``base`` or "—" (nothing)."""
    cell = cell.strip()
    if cell == "—":
        return set()
    out: set[str] = set()
    for token in (t.strip() for t in cell.split(",")):
        if token == "base" and base is not None:
            out |= base
        elif m := re.fullmatch(r"`([\w.]+)`", token):
            out.add(m.group(1))
        else:
            raise ValueError(f"{where}: cannot read {token!r} (write `name`, base or —)")
    return out


def parse_rule(text: str) -> dict[str, set[str]]:
    """The import rule of ``docs/architecture.md``: package -> the packages it may import.

    Raises:
        ValueError: the section, the *base* definition or its table is missing, a row is
            malformed or repeated.
    """
    if _SECTION not in text:
        raise ValueError(f"no {_SECTION!r} section")
    section = text.split(_SECTION, 1)[1].split("\n#", 1)[0]
    base_def = _BASE_LINE.search(section)
    if base_def is None:
        raise ValueError("no '*base* stands for ...;' definition")
    base = _names(" ".join(base_def.group(1).split()), None, "*base*")
    rule: dict[str, set[str]] = {}
    rows = [ln for ln in section.splitlines() if ln.startswith("| `")]
    for line in rows:
        m = _ROW.match(line)
        if m is None:
            raise ValueError(f"malformed row: {line!r}")
        pkg = m.group(1)
        if pkg in rule:
            raise ValueError(f"{pkg!r} has two rows")
        rule[pkg] = _names(m.group(2), base, pkg)
    if not rule:
        raise ValueError("the import rule has no rows")
    return rule


ALLOWED = parse_rule(DOC.read_text())


def _package(path: Path) -> str:
    """The rule's row for ``path``: its top-level package, or ``fs.WING`` for a module of
    one of the file system's wings (sub-packages of ``fs/``, each a row of its own)."""
    rel = path.relative_to(ROOT)
    if len(rel.parts) == 1:
        return "bftfs" if rel.stem == "__init__" else rel.stem
    if rel.parts[0] == "fs" and len(rel.parts) > 2:
        return f"fs.{rel.parts[1]}"
    return rel.parts[0]


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or path.is_dir()


def _unit(parts: list[str]) -> str:
    """The row a dotted ``bftfs.…`` name (split) belongs to: a wing of ``fs`` is its own."""
    if len(parts) == 1:
        return "bftfs"
    if parts[1] == "fs" and len(parts) > 2 and (ROOT / "fs" / parts[2]).is_dir():
        return f"fs.{parts[2]}"
    return parts[1]


def _imports(path: Path) -> set[str]:
    """Top-level bftfs packages ``path`` imports anywhere outside TYPE_CHECKING blocks."""
    out: set[str] = set()
    for node in runtime_imports(path.read_text()):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "bftfs":  # modules, or names of the package itself
                names = [f"bftfs.{a.name}" if _is_module(a.name) else "bftfs" for a in node.names]
            elif node.module == "bftfs.fs":  # a wing, or a name of fs itself
                names = [f"bftfs.fs.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "bftfs":
                out.add(_unit(parts))
    return out


def violations(allowed: dict[str, set[str]]) -> list[str]:
    """Imports that ``allowed`` does not permit, and packages it has no row for."""
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        pkg = _package(path)
        if pkg not in allowed:
            wrong.append(f"{path.relative_to(ROOT.parent)}: package {pkg!r} has no row")
            continue
        for dep in sorted(_imports(path) - {pkg} - allowed[pkg]):
            wrong.append(f"{path.relative_to(ROOT.parent)} imports bftfs.{dep}")
    return wrong


def test_every_package_imports_only_what_its_layer_allows() -> None:
    assert violations(ALLOWED) == []


def test_every_row_of_the_rule_names_a_package_that_exists() -> None:
    """A stale row (a package renamed or removed) is a disagreement too."""
    assert [p for p in ALLOWED if p != "bftfs" and not _is_module(p)] == []
    assert all(_is_module(dep) or dep == "bftfs" for deps in ALLOWED.values() for dep in deps)


def test_a_doc_missing_an_edge_fails_the_check() -> None:
    """The test of the test: drop `fsobjects` from the node's row and the check finds node/."""
    text = DOC.read_text()
    row = next(ln for ln in text.splitlines() if ln.startswith("| `node` |"))
    fewer = text.replace(row, row.replace(", `fsobjects` |", " |", 1))
    assert fewer != text
    found = violations(parse_rule(fewer))
    assert found and all(
        w.startswith("bftfs/node/") and w.endswith("bftfs.fsobjects") for w in found
    )


def test_a_doc_missing_a_row_or_with_a_bad_row_fails() -> None:
    text = DOC.read_text()
    row = next(ln for ln in text.splitlines() if ln.startswith("| `fuse` |"))
    assert any(
        "package 'fuse' has no row" in w
        for w in violations(parse_rule(text.replace(row + "\n", "")))
    )
    with pytest.raises(ValueError, match="cannot read"):
        parse_rule(text.replace(row, row.replace("`fs`", "fs")))
    with pytest.raises(ValueError, match="no '### The import rule'"):
        parse_rule(text.replace("### The import rule", "### Imports"))


#: The test harness's modules production code may import, each for one option of
#: ``bftfs node`` (in ``bftfs/cli/nodes.py``, only when that option is given).
TESTING_FOR_OPTIONS = {
    "bftfs.testing.byzantine.profiles",  # --byzantine PROFILE
    "bftfs.testing.testobjects",  # --test-objects (the node gets them passed in)
}


def test_production_code_imports_of_testing_are_the_node_options_only() -> None:
    """The allowed uses of the test harness outside it: ``bftfs node --byzantine`` and
    ``--test-objects``, and only from the CLI (the node package never imports it)."""
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        if _package(path) == "testing":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                allowed = name in TESTING_FOR_OPTIONS and _package(path) == "cli"
                if name.startswith("bftfs.testing") and not allowed:
                    wrong.append(f"{path.relative_to(ROOT.parent)} imports {name}")
    assert wrong == []


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from bftfs.fuse import mount\n"
        "def f():\n    from bftfs.fs import filesystem\n    import bftfs.qu.client\n"
        "from bftfs import local\n"
    )
    assert _imports(src) == {"fs", "qu", "local"}


def test_production_code_does_not_import_trio_testing() -> None:
    """trio's test helpers are for tests: the endpoint's idle wait is ``bftfs.net.idle``."""
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        if _package(path) == "testing":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            if any(n == "trio.testing" or n.startswith("trio.testing.") for n in names):
                wrong.append(str(path.relative_to(ROOT.parent)))
    assert wrong == []
