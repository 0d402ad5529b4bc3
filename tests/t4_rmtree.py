"""Tier 4: ``rm -rf`` of a tree just made under directory write-back (issue 62), through real
mounts of node processes.

A directory whose mkdir waits in write-back, emptied of the files made in it (their creates
and removals cancel: ``fs/writeback/unlinks.py``), is removed in the mount: the mkdir and
the rmdir cancel too (``HeldBack.rmdir_here``).  git's ``objects/xx`` directories and a
build's scratch trees made and removed within the commit window reach no server.  Checked:
the rounds (the mount's metrics), what the mount and a second mount see after the
directory's ``fsync``, and that a directory with something in it still says ENOTEMPTY.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from mount_helpers import suite_cluster
from t4_leases import _lease_exclusively
from t4_stat_leases import _metrics, _rounds

from bftfs.testing.mounts import Mount, fsync_paths, fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")

#: Lease term and commit window: long enough that nothing is sent by time alone meanwhile.
OPTIONS = "allow_other,metrics_port=0,lease=60,commit=60"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    with suite_cluster(tmp_path_factory.mktemp("cluster") / "c") as pc:
        yield pc


def _held_directory(pc: ProcessCluster, m: Mount, name: str) -> tuple[Path, list[str]]:
    """Directory ``name`` leased exclusively to ``m``, its warm-up files sent."""
    d = m.mountpoint / name
    d.mkdir()
    warm = _lease_exclusively(pc, m, d, "warm")
    fsync_paths(d)
    return d, warm


def test_rm_rf_of_a_tree_made_within_the_commit_window_sends_nothing(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    """Sixteen directories, two levels, three small files each, then ``rm -rf`` of them:
    no Q/U update for either, at most one query (before: every mkdir, then every rmdir
    and the directories' times); the parent keeps its link count and the second mount,
    after the parent's ``fsync``, sees only the warm-up files."""
    with (
        Mount(cluster.config, tmp_path / "a", client="client0", options=OPTIONS) as a,
        Mount(cluster.config, tmp_path / "b", client="client1", options=OPTIONS) as b,
    ):
        d, warm = _held_directory(cluster, a, "tree")
        links = os.stat(d).st_nlink
        before = _metrics(cluster, a)
        for i in range(16):
            sub = d / f"{i:02x}" / "inner"
            sub.mkdir(parents=True)
            for j in range(3):
                (sub / f"f{j}").write_bytes(b"x" * (i + j + 1))
        assert os.stat(d).st_nlink == links + 16
        for i in range(16):
            shutil.rmtree(d / f"{i:02x}")
        during = _rounds(before, _metrics(cluster, a))
        assert set(during) <= {"fs.stat"} and sum(during.values()) <= 1, during  # no update
        assert sorted(os.listdir(d)) == sorted(warm)
        assert os.stat(d).st_nlink == links
        fsync_paths(d)
        sent = _rounds(before, _metrics(cluster, a))
        assert "fs.mkdir" not in sent and "fs.rmdir" not in sent, sent
        assert sum(sent.values()) <= 2, sent  # that query, the parent's times
        assert sorted(os.listdir(b.mountpoint / "tree")) == sorted(warm)
        assert os.stat(b.mountpoint / "tree").st_nlink == links


def test_a_held_directory_with_a_file_is_not_empty(cluster: ProcessCluster, tmp_path: Path) -> None:
    """``rmdir`` of a directory whose mkdir waits but that holds a file: ENOTEMPTY, and
    after the parent's ``fsync`` the second mount finds the directory and the file."""
    with (
        Mount(cluster.config, tmp_path / "a", client="client0", options=OPTIONS) as a,
        Mount(cluster.config, tmp_path / "b", client="client1", options=OPTIONS) as b,
    ):
        d, _ = _held_directory(cluster, a, "full")
        (d / "sub").mkdir()
        (d / "sub" / "kept").write_bytes(b"kept")
        with pytest.raises(OSError) as e:
            os.rmdir(d / "sub")
        assert e.value.errno == errno.ENOTEMPTY
        fsync_paths(d / "sub", d)
        assert (b.mountpoint / "full" / "sub" / "kept").read_bytes() == b"kept"


def test_an_emptied_directory_made_again_is_made_once(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    """mkdir, rmdir and mkdir of one name, a file in the second: the second mount sees one
    directory with the file; the first one's directory lists the file alone."""
    with (
        Mount(cluster.config, tmp_path / "a", client="client0", options=OPTIONS) as a,
        Mount(cluster.config, tmp_path / "b", client="client1", options=OPTIONS) as b,
    ):
        d, warm = _held_directory(cluster, a, "again")
        (d / "sub").mkdir()
        os.rmdir(d / "sub")
        assert not (d / "sub").exists()
        (d / "sub").mkdir()
        (d / "sub" / "f").write_bytes(b"second")
        assert os.listdir(d / "sub") == ["f"]
        fsync_paths(d / "sub", d)
        e = b.mountpoint / "again"
        assert sorted(os.listdir(e)) == sorted([*warm, "sub"])
        assert os.listdir(e / "sub") == ["f"]
        assert (e / "sub" / "f").read_bytes() == b"second"
