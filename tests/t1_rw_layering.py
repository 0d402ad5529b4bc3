"""The PASIS cores stay pure (STYLE.md section 1): importing them pulls in no trio, lmdb or
nacl, and zfec is imported by erasure_kernel.py only (the code's arithmetic)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

CORES = [
    "bftfs.erasure",
    "bftfs.rw.timestamp",
    "bftfs.rw.messages",
    "bftfs.rw.schema",
    "bftfs.rw.classify",
    "bftfs.rw.verify",
    "bftfs.rw.replica",
    "bftfs.rw.repairs",
    "bftfs.rw.collect",
    "bftfs.rw.forget",
    "bftfs.rw.scrubstep",
    "bftfs.rw.behind",
    "bftfs.testing.linearizability",
]


def test_cores_import_no_io_libraries() -> None:
    code = (
        f"import sys; import {', '.join(CORES)}; "
        "print(sorted(m for m in ('trio', 'lmdb', 'nacl', 'msgpack') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_only_the_erasure_kernel_imports_zfec() -> None:
    root = Path(__file__).resolve().parent.parent / "bftfs"
    importers = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] == "zfec" for n in names):
                importers.add(path.name)
    assert importers == {"erasure_kernel.py"}
