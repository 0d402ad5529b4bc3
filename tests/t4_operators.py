"""Operating a local cluster (issue 21): stopping, starting and restarting one node with
the command line while a mount stays usable, a node restarted as a Byzantine profile, and
mounts whose daemon died cleaned up by ``bftfs umount`` and by mounting again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bftfs import local, proc
from bftfs.testing.mounts import Mount, fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = [
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
    pytest.mark.slow,
]


def bftfs(cluster: ProcessCluster, *args: str, check: bool = True) -> str:
    cmd = [sys.executable, "-m", "bftfs", *args]
    got = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check and got.returncode != 0:
        raise AssertionError(f"{cmd} -> {got.returncode}: {got.stderr}")
    return got.stdout + got.stderr


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcessCluster]:
    with ProcessCluster(tmp_path / "c", durable=False) as pc:
        yield pc


def test_node_stop_start_restart_keep_the_mount_usable(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    home = str(cluster.home)
    with Mount(cluster.config, tmp_path / "m") as m:
        f = m.mountpoint / "survives"
        f.write_bytes(b"one")
        assert "node 2 stopped" in bftfs(cluster, "node", "stop", "2", "--dir", home)
        assert local.running_pid(cluster.config.node(2)) is None
        f.write_bytes(b"two")  # one node down: still writable
        assert "node 2 started" in bftfs(cluster, "node", "start", "2", "--dir", home)
        assert local.running_pid(cluster.config.node(2)) is not None
        assert "running already" in bftfs(cluster, "node", "start", "2", "--dir", home)
        out = bftfs(
            cluster, "node", "restart", "2", "--dir", home, "--byzantine", "corrupt-fragments"
        )
        assert "Byzantine profile 'corrupt-fragments'" in out
        f.write_bytes(b"three" * 20_000)  # blocks, with node 2 corrupting its fragments
        assert f.read_bytes() == b"three" * 20_000
        assert "no node 9" in bftfs(cluster, "node", "stop", "9", "--dir", home, check=False)


def test_a_mount_whose_daemon_died_is_cleaned_up(cluster: ProcessCluster, tmp_path: Path) -> None:
    mp = tmp_path / "dead"
    config = str(cluster.home / "cluster.toml")
    bftfs(cluster, "mount", str(mp), "--config", config)
    (mp / "x").write_bytes(b"kept")

    def kill_daemon() -> None:
        from bftfs.fuse.control import known_mounts

        pid = next(p for p, point in known_mounts(cluster.config) if point == mp.resolve())
        os.kill(pid, signal.SIGKILL)
        proc.wait_gone(pid, 10)
        assert proc.is_dead_mount(mp)

    try:
        kill_daemon()
        out = bftfs(cluster, "umount", str(mp), "--config", config)
        assert "its mount daemon had died" in out and not proc.is_mounted(mp)
        bftfs(cluster, "mount", str(mp), "--config", config)
        kill_daemon()
        bftfs(cluster, "mount", str(mp), "--config", config)  # onto the dead mount
        assert (mp / "x").read_bytes() == b"kept"
        bftfs(cluster, "umount", str(mp), "--config", config)
    finally:
        proc.unmount(mp)  # whatever happened, no mount is left behind
