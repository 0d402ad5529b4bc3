"""``--json`` on the commands that print data about a running cluster (issue 67): ``bftfs
diff`` and ``bftfs generation show``, through the real command on real node processes
(started, as ``bftfs up`` starts them, by the old form ``bftfs node --config C --id I``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mount_helpers import at

from bftfs.testing.mounts import Mount, fsync_paths, fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")


def bftfs(home: Path, *args: str) -> Any:
    """``bftfs ARGS --dir HOME``, which must exit 0; its output read as JSON."""
    cmd = [sys.executable, "-m", "bftfs", *args, "--dir", str(home)]
    got = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert got.returncode == 0, (cmd, got.stdout, got.stderr)
    return json.loads(got.stdout)


@pytest.fixture(scope="module")
def mounted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProcessCluster, Path]]:
    home, mnt = tmp_path_factory.mktemp("json") / "c", tmp_path_factory.mktemp("mnt") / "m"
    with (
        ProcessCluster(home, map_size=1 << 28, durable=False) as pc,
        Mount(pc.config, mnt) as m,
    ):
        yield pc, m.mountpoint


def test_diff_json(mounted: tuple[ProcessCluster, Path]) -> None:
    cluster, mnt = mounted
    tree = mnt / "diffed"
    tree.mkdir()
    for name in ("a", "b", "c"):
        (tree / name).write_bytes(f"{name} one\n".encode())
    fsync_paths(tree)  # the creates on the nodes (directory write-back holds them)
    first = time.time_ns()
    (tree / "a").write_bytes(b"a two\n")
    os.unlink(tree / "b")
    os.rename(tree / "c", tree / "c2")
    (tree / "d").write_bytes(b"new\n")
    fsync_paths(tree)
    second = time.time_ns()
    got = bftfs(cluster.home, "diff", str(tree), "--from", at(first), "--to", at(second), "--json")
    assert got["path"] == "/diffed"
    assert got["from"]["exact"] == at(first) and got["to"]["exact"] == at(second)
    assert got["changes"] == [
        {"change": "M", "path": "a", "what": ["content"]},
        {"change": "-", "path": "b"},
        {"change": "R", "path": "c", "to": "c2"},
        {"change": "+", "path": "d"},
    ]
    patched = bftfs(cluster.home, "diff", str(tree), "--from", at(first), "-p", "--json")
    [a] = [c for c in patched["changes"] if c["path"] == "a"]
    assert "-a one" in a["patch"] and "+a two" in a["patch"]


def test_generation_show_json(mounted: tuple[ProcessCluster, Path]) -> None:
    cluster, _ = mounted
    got = bftfs(cluster.home, "generation", "show", "--json")
    assert got["generation"] == 1 and got["move"] is None
    [gen] = got["generations"]
    assert (gen["generation"], gen["frozen"], gen["n"], gen["t"], gen["b"]) == (1, False, 6, 1, 1)
    assert [n["id"] for n in gen["nodes"]] == list(range(6))
    assert {n["state"] for n in gen["nodes"]} == {"active"}
    assert {n["view"] for n in gen["nodes"]} == {got["view"]}
