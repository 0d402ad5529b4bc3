"""The package layering (issue 20), checked over every module of ``bftfs``.

Each package may import only the packages listed for it below, at module level or inside
a function (imports under ``if TYPE_CHECKING:`` are for annotations only and do not count).
Lower layers never import higher ones: the protocol cores and clients know nothing of the
file system, the file system nothing of FUSE, FUSE only the file system.  A new edge must
be added here on purpose, with its reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "bftfs"

# "bftfs": the package itself (__version__, WIRE_VERSION).
BASE = {
    *("ids", "crypto", "config", "erasure", "logsetup", "proc", "kv", "outcome", "thresholds"),
    "policy",
    "metrics",
    "bftfs",
    "accounting",
    "health",
}
ALLOWED: dict[str, set[str]] = {
    "ids": set(),
    "crypto": {"ids"},
    "config": {"ids", "thresholds", "policy"},
    "policy": set(),
    "erasure": set(),
    "logsetup": set(),
    "proc": set(),
    "kv": set(),
    "outcome": set(),
    "metrics": set(),
    "thresholds": set(),
    # health: findings against nodes kept in the cluster directory (bftfs status, verify).
    "health": set(),
    "bftfs": set(),
    # accounting: the per-principal charges both protocols' stores keep (one quota per
    # client over block versions and Q/U records), as steps over a kv transaction.
    "accounting": {"kv"},
    # net: both halves of a connection (endpoint, server) and the quorum engine.
    # net -> outcome: the transport cuts its timeouts to the running operation's patience
    # (outcome.patience, set per system call by a mount: its ``timeo``).
    "net": {"ids", "crypto", "bftfs", "outcome"},
    "connect": {"config", "crypto", "net"},
    "local": BASE | {"connect", "net"},
    # bundle: a cluster's configuration and one private key, for one machine.
    "bundle": {"config"},
    # node: the protocol servers live in the node (node/qu_server.py, node/rw_server.py)
    # and serve the file system's object types (fsobjects/), not the client (fs/).
    "node": BASE | {"net", "qu", "rw", "fsobjects"},
    "qu": BASE | {"net"},
    "rw": BASE | {"net"},
    # fsobjects: the file system's replicated state machine (the methods every node runs),
    # built on the Q/U object-method types alone: no configuration, no transport.
    "fsobjects": {"qu"},
    "fs": BASE | {"connect", "qu", "rw", "fsobjects"},
    "fuse": BASE | {"fs", "local"},
    "testing": BASE | {"connect", "local", "net", "node", "qu", "rw", "fsobjects", "fs", "fuse"},
    # cli -> testing: `bftfs node --byzantine PROFILE` runs the Byzantine behaviours the
    # tests use (bftfs.testing.byzantine.profiles), and `bftfs node --test-objects` serves the
    # test object types (bftfs.testing.testobjects): nothing else of testing, checked below.
    # cli -> fs: the history commands (`bftfs log`, `cat --at`, ...) over fs/past.py.
    "cli": BASE | {"connect", "local", "node", "fuse", "testing", "fs", "fsobjects", "bundle"},
    "__main__": {"cli"},
}


def _package(path: Path) -> str:
    rel = path.relative_to(ROOT)
    if len(rel.parts) == 1:
        return "bftfs" if rel.stem == "__init__" else rel.stem
    return rel.parts[0]


def _is_module(name: str) -> bool:
    return (ROOT / f"{name}.py").exists() or (ROOT / name).is_dir()


def _imports(path: Path) -> set[str]:
    """Top-level bftfs packages ``path`` imports anywhere outside TYPE_CHECKING blocks."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "bftfs":  # modules, or names of the package itself
                names = [f"bftfs.{a.name}" if _is_module(a.name) else "bftfs" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "bftfs":
                out.add(parts[1] if len(parts) > 1 else "bftfs")
    return out


def test_every_package_imports_only_what_its_layer_allows() -> None:
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        pkg = _package(path)
        assert pkg in ALLOWED, f"{path}: package {pkg!r} has no layering entry"
        for dep in sorted(_imports(path) - {pkg} - ALLOWED[pkg]):
            wrong.append(f"{path.relative_to(ROOT.parent)} imports bftfs.{dep}")
    assert wrong == []


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
