"""Every module of ``bftfs`` is listed in ``docs/architecture.md`` with its job (issue 32).

A newcomer finds where things are from that file alone, so a module added without a line
there fails here, naming it.  A module counts as listed when its path below ``bftfs/``
appears in backticks (`` `node/background.py` ``), or as the first cell of a table row
(`` | `idle.py` | ``) whose table follows a line naming its package (`` `bftfs/net/` ``),
as the network layer's and the file-system objects' tables are written.  Package
``__init__.py`` files are not required.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "bftfs"
DOC = ROOT.parent / "docs" / "architecture.md"

_PACKAGE = re.compile(r"`bftfs/((?:\w+/)*)`")
_ROW = re.compile(r"^\| `(\w+\.py)` \|")


def listed(text: str) -> set[str]:
    """Module paths (relative to ``bftfs/``) that ``text`` lists, by the rules above."""
    out = set(re.findall(r"`((?:\w+/)+\w+\.py)`", text))
    package = ""
    for line in text.splitlines():
        row = _ROW.match(line)
        if row is not None:
            out.add(package + row.group(1))
            continue
        if line.startswith("|"):
            continue
        named = _PACKAGE.findall(line)
        if named:
            package = named[-1]
    return out


def modules() -> list[str]:
    """Every module of the package but ``__init__.py`` files, relative to ``bftfs/``."""
    return sorted(
        p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.py") if p.name != "__init__.py"
    )


def test_the_rules_read_paths_and_rows_under_their_package() -> None:
    text = "\n".join(
        [
            "`bftfs/net/` is the transport:",
            "| module | job |",
            "| `idle.py` | waiting |",
            "Root (`bftfs/`):",
            "| `ids.py` | ids |",
            "and `node/parts.py`, and a mention of `errors.py` that names no package.",
        ]
    )
    assert listed(text) == {"net/idle.py", "ids.py", "node/parts.py"}


def test_every_module_is_listed_in_the_architecture_doc() -> None:
    known = listed(DOC.read_text())
    missing = [m for m in modules() if m not in known]
    assert not missing, f"modules with no line in docs/architecture.md: {missing}"
