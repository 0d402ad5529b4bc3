"""Operator commands that must check before they act (issue 31, item 8), on a real cluster
started the way a user does: the ``bftfs`` console script, from the directory holding a
directory named ``bftfs`` (the clone, seen from its parent)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bftfs import local
from bftfs.testing.mounts import fuse_available

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")

BFTFS = str(Path(sys.executable).parent / "bftfs")


def bftfs(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BFTFS, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory holding ``bftfs/`` (no package: a clone's root has no __init__.py) and
    a cluster in ``nodes/``, started from there."""
    work = tmp_path_factory.mktemp("parent")
    (work / "bftfs" / "docs").mkdir(parents=True)
    try:
        up = bftfs(work, "up", "--dir", "nodes", "--no-mount", "--map-size", "256M")
        assert up.returncode == 0, up.stderr
        yield work
    finally:
        for mnt in ("mnt", "mnt2"):
            if os.path.ismount(work / mnt):
                bftfs(work, "umount", str(work / mnt), "--dir", "nodes")
        bftfs(work, "down", "--dir", "nodes")


def test_nodes_and_mount_start_from_the_directory_holding_the_clone(work: Path) -> None:
    """The daemons ran ``python -m bftfs`` with the working directory on sys.path, so
    ``./bftfs`` shadowed the installed package ("cannot import name '__version__'")."""
    r = bftfs(work, "mount", "mnt", "--dir", "nodes")
    assert r.returncode == 0, r.stderr
    try:
        (work / "mnt" / "f").write_text("hello")
        assert (work / "mnt" / "f").read_text() == "hello"
    finally:
        assert bftfs(work, "umount", "mnt", "--dir", "nodes").returncode == 0


def test_a_missing_client_key_exits_5_before_any_daemon_starts(work: Path) -> None:
    key = work / "nodes" / "clients" / "client1" / "private" / "key"
    key.rename(key.with_suffix(".away"))
    try:
        r = bftfs(work, "mount", "mnt2", "--dir", "nodes", "--client", "client1")
        assert r.returncode == 5, (r.returncode, r.stderr)
        assert str(key) in r.stderr
        assert not os.path.ismount(work / "mnt2")
    finally:
        key.with_suffix(".away").rename(key)


def test_restart_with_an_unknown_byzantine_profile_leaves_the_node_running(work: Path) -> None:
    cfg = local.load_cluster(work / "nodes")
    before = local.running_pid(cfg.node(4))
    assert before is not None
    r = bftfs(work, "node", "restart", "4", "--dir", "nodes", "--byzantine", "corupt-fragments")
    assert r.returncode == 2 and "unknown Byzantine profile 'corupt-fragments'" in r.stderr
    assert "stopped" not in r.stdout
    assert local.running_pid(cfg.node(4)) == before
