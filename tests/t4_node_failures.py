"""A second failure after the first (issue 22 item 4): ``t = 1`` means any one node, at any
time, including after an earlier one came back.

All objects of one tree share a preferred quorum (``Meta.new_oid``), so the node
outside it received none of their updates; standing in for a failed quorum node it turned
every read of the tree into a repair too large to run (EIO on every file, a new mount
failing on the root).  Here two mounts write a tree, a quorum node is killed, everything is
read back through both mounts and a fresh one; the node comes back and catches up in the
background (``bftfs/node/qu_catchup.py``, progress in ``bftfs status``), more is written, and
another quorum node is killed: everything still reads back.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import trio

from bftfs.fsobjects import ROOT
from bftfs.local import query_status
from bftfs.qu.core import preferred_order
from bftfs.testing.mounts import Mount, fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")


def _write_tree(root: Path, tag: str, count: int) -> dict[str, bytes]:
    (root / tag).mkdir()
    made = {}
    for i in range(count):
        data = f"{tag} file {i}\n".encode() * (1 + i * 37 % 400)
        (root / tag / f"f{i}").write_bytes(data)
        made[f"{tag}/f{i}"] = data
    # On the servers before a node restarts: its catch-up must find them (write-back holds
    # the creates up to ``commit=`` seconds; the directory's fsync sends them).
    fd = os.open(root / tag, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return made


def _check(root: Path, files: dict[str, bytes]) -> None:
    for tag in sorted({k.split("/")[0] for k in files}):
        assert sorted(os.listdir(root / tag)) == sorted(
            k.split("/")[1] for k in files if k.startswith(tag + "/")
        )
    for rel, data in files.items():
        assert (root / rel).read_bytes() == data, rel


def _caught_up(pc: ProcessCluster, node: int, timeout: float = 60.0) -> dict:
    """Node ``node``'s Q/U catch-up progress (its ``stats`` answer, as ``bftfs status``
    shows it) once finished; a condition polled under a deadline, across processes."""
    deadline = time.monotonic() + timeout
    while True:
        statuses = trio.run(query_status, pc.config)
        got = (statuses[node].stats or {}).get("progress", {}).get("qu.catchup")
        if got is not None and got["state"] in ("done", "failed"):
            return got
        assert time.monotonic() < deadline, f"catch-up of node {node} did not finish: {got}"
        time.sleep(0.05)


@pytest.mark.slow
def test_reads_survive_a_node_killed_restarted_and_another_killed(tmp_path: Path) -> None:
    quorum = preferred_order(ROOT, 6)[:5]  # the tree's preferred quorum; one node is outside
    with (
        ProcessCluster(tmp_path / "c", map_size=1 << 30, durable=False) as pc,
        Mount(pc.config, tmp_path / "a", client="client0") as a,
        Mount(pc.config, tmp_path / "b", client="client1") as b,
    ):
        files = _write_tree(a.mountpoint, "one", 40)
        _check(b.mountpoint, files)
        first, second = quorum[2], quorum[1]
        pc.kill(first)
        _check(a.mountpoint, files)
        _check(b.mountpoint, files)
        with Mount(pc.config, tmp_path / "fresh", client="client1") as fresh:
            _check(fresh.mountpoint, files)
        files |= _write_tree(b.mountpoint, "two", 20)
        pc.start(first)
        progress = _caught_up(pc, first)
        # The directory, its 20 files and the root changed while the node was down.
        assert progress["state"] == "done" and progress["done"] >= 22, progress
        assert progress["failed"] == 0, progress
        files |= _write_tree(a.mountpoint, "three", 20)
        pc.kill(second)
        _check(a.mountpoint, files)
        _check(b.mountpoint, files)
        with Mount(pc.config, tmp_path / "fresh2", client="client0") as fresh:
            _check(fresh.mountpoint, files)
