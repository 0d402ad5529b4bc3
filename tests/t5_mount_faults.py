"""Copy-and-compare on a real mount while nodes fail (issue 5).

* one node is killed with SIGKILL in the middle of a ``cp -a``;
* one node runs the ``corrupt-fragments`` Byzantine profile (every fragment it serves is
  corrupted) for the whole run;
* the data outlives an unmount and a full stop and restart of the cluster.

In each case the programs see no error and the copy is identical to the original.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from mount_helpers import REPO, assert_same_tree, make_tree

from bftfs.testing.mounts import Mount, fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = [
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
    pytest.mark.slow,
]


def source_tree(tmp_path: Path, seed: int) -> Path:
    src = make_tree(tmp_path / "src", seed=seed, files=120)
    shutil.copytree(
        REPO / "bftfs",
        src / "bftfs-source",
        symlinks=True,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return src


def count_files(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file())


def test_copy_survives_a_node_killed_midway(tmp_path: Path) -> None:
    src = source_tree(tmp_path, seed=11)
    total = count_files(src)
    with (
        ProcessCluster(tmp_path / "c", map_size=1 << 30, durable=False) as pc,
        Mount(pc.config, tmp_path / "m") as m,
    ):
        dst = m.mountpoint / "copy"
        cp = subprocess.Popen(["cp", "-a", str(src), str(dst)], stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            # Wait (by condition, not by time) until about a third of the files are there.
            while cp.poll() is None and (not dst.exists() or count_files(dst) < total // 3):
                assert time.monotonic() < deadline, "cp made no progress"
                time.sleep(0.01)
            killed_midway = cp.poll() is None
            pc.kill(3)
            _, err = cp.communicate(timeout=300)
        finally:
            if cp.poll() is None:
                cp.kill()
                cp.wait()
        assert cp.returncode == 0, err
        assert killed_midway, "the copy finished before the node was killed; use a larger tree"
        assert_same_tree(src, dst)


def test_copy_with_a_byzantine_node_corrupting_every_fragment(tmp_path: Path) -> None:
    src = source_tree(tmp_path, seed=12)
    with ProcessCluster(
        tmp_path / "c",
        map_size=1 << 30,
        durable=False,
        node_args={2: ["--byzantine", "corrupt-fragments"]},
    ) as pc:
        with Mount(pc.config, tmp_path / "m") as m:
            subprocess.run(["cp", "-a", str(src), str(m.mountpoint / "copy")], check=True)
        # A fresh mount has no cache: every byte below is read back through the nodes.
        with Mount(pc.config, tmp_path / "m2", client="client1") as m2:
            assert_same_tree(src, m2.mountpoint / "copy")


def test_data_outlives_unmount_and_cluster_restart(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", seed=13, files=40)
    pc = ProcessCluster(tmp_path / "c", map_size=1 << 30)
    with pc, Mount(pc.config, tmp_path / "m") as m:
        subprocess.run(["cp", "-a", str(src), str(m.mountpoint / "copy")], check=True)
    # every node process is gone now
    assert all(pc.pid(i) is None for i in range(pc.config.n))
    with pc, Mount(pc.config, tmp_path / "m") as m:
        assert_same_tree(src, m.mountpoint / "copy")


def test_unmount_is_clean_with_every_node_down(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path / "c", map_size=1 << 28, durable=False) as pc:
        m = Mount(pc.config, tmp_path / "m")
        with m:
            (m.mountpoint / "f").write_bytes(b"data")
            for i in range(pc.config.n):
                pc.kill(i)
            started = time.monotonic()
            code = m.unmount()
            assert not os.path.ismount(m.mountpoint)
            assert code == 0, m.log_text()  # the daemon exited by itself, not killed
            assert time.monotonic() - started < 30
