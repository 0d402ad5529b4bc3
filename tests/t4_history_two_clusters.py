"""History commands on a machine with two clusters mounted (issue 60, item 11).

Every ``fuse.bftfs`` mount used to count as the commanded cluster's: ``bftfs cat
OTHER/hello.txt --at now`` printed this cluster's ``/hello.txt``, and ``restore`` wrote into
this cluster what was asked of the other.  A mount's source is its configuration's path
(``fsname``), and only mounts whose source is a configuration of this cluster count
(``fuse/control.py`` ``cluster_mountpoints``): a path under the other cluster's mount is
refused as outside every mount of this one, and the other cluster's configuration acts on
its own tree.  Two small clusters (one node each, no fault tolerance: the subject is the
command line, not the protocols), one mount each.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mount_helpers import at
from mount_helpers import write_fsynced as write

from bftfs.fuse import control
from bftfs.testing.mounts import Mount, fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")


def bftfs(cluster: ProcessCluster, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command line against ``cluster``, its output captured."""
    cmd = [sys.executable, "-m", "bftfs", *args, "--config", str(cluster.home / "cluster.toml")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def two(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ProcessCluster, Path, ProcessCluster, Path]]:
    base = tmp_path_factory.mktemp("two")
    options = {"t": 0, "b": 0, "n": 1, "map_size": 1 << 28, "durable": False}
    with (
        ProcessCluster(base / "one", **options) as one,
        ProcessCluster(base / "other", **options) as other,
        Mount(one.config, base / "m1") as m1,
        Mount(other.config, base / "m2") as m2,
    ):
        yield one, m1.mountpoint, other, m2.mountpoint


def test_each_mounts_source_is_its_configuration(
    two: tuple[ProcessCluster, Path, ProcessCluster, Path],
) -> None:
    one, m1, other, m2 = two
    sources = dict(control.bftfs_mounts())
    assert sources[m1] == str((one.home / "cluster.toml").resolve())
    assert sources[m2] == str((other.home / "cluster.toml").resolve())
    assert m1 in control.cluster_mountpoints(one.config)
    assert m2 not in control.cluster_mountpoints(one.config)
    assert control.cluster_mountpoints(other.config) == [m2]


def test_cat_at_now_answers_about_the_cluster_the_path_is_in(
    two: tuple[ProcessCluster, Path, ProcessCluster, Path],
) -> None:
    one, m1, other, m2 = two
    write(m1 / "hello.txt", b"from the first cluster\n")
    write(m2 / "hello.txt", b"from the other cluster\n")
    # The other cluster's file, asked of this cluster: refused, never this one's /hello.txt.
    got = bftfs(one, "cat", str(m2 / "hello.txt"), "--at", "now")
    assert got.returncode != 0, got.stdout
    assert "first cluster" not in got.stdout
    assert "outside every mount of this cluster" in got.stderr, got.stderr
    # Each cluster answers about its own.
    got = bftfs(other, "cat", str(m2 / "hello.txt"), "--at", "now")
    assert got.returncode == 0 and got.stdout == "from the other cluster\n", got
    got = bftfs(one, "cat", str(m1 / "hello.txt"), "--at", "now")
    assert got.returncode == 0 and got.stdout == "from the first cluster\n", got


def test_restore_writes_into_the_cluster_the_path_is_in(
    two: tuple[ProcessCluster, Path, ProcessCluster, Path],
) -> None:
    one, m1, other, m2 = two
    write(m1 / "doc.txt", b"first cluster, version 1\n")
    moment = write(m2 / "doc.txt", b"other cluster, version 1\n")
    write(m1 / "doc.txt", b"first cluster, version 2\n")
    write(m2 / "doc.txt", b"other cluster, version 2\n")
    # Asked of the wrong cluster: refused, and neither tree changes.
    got = bftfs(one, "restore", str(m2 / "doc.txt"), "--at", at(moment))
    assert got.returncode != 0, got.stdout
    assert (m1 / "doc.txt").read_bytes() == b"first cluster, version 2\n"
    assert (m2 / "doc.txt").read_bytes() == b"other cluster, version 2\n"
    # Asked of its own: the other cluster's file comes back; the first's is left alone.
    got = bftfs(other, "restore", str(m2 / "doc.txt"), "--at", at(moment))
    assert got.returncode == 0, got.stderr
    assert (m2 / "doc.txt").read_bytes() == b"other cluster, version 1\n"
    assert (m1 / "doc.txt").read_bytes() == b"first cluster, version 2\n"
