"""Operating a local cluster (issue 21): stopping, starting and restarting one node with
the command line while a mount stays usable, a node restarted as a Byzantine profile, and
mounts whose daemon died cleaned up by ``bftfs umount`` and by mounting again."""

from __future__ import annotations

import contextlib
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


def test_init_force_replaces_a_running_cluster_and_up_says_what_it_ignores(
    tmp_path: Path,
) -> None:
    home = tmp_path / "c"
    try:
        out = bftfs_plain("up", "--dir", str(home), "--no-mount", "--no-durable")
        assert f"bftfs down --dir {home}" in out
        old = local.load_cluster(home)
        pids = [local.running_pid(s) for s in old.nodes]
        assert all(pids)
        again = bftfs_plain("up", "--dir", str(home), "--no-mount", "--t", "2")
        assert "ignoring --t" in again
        out = bftfs_plain("init", "--dir", str(home), "--force", "--clients", "3")
        assert "removed the old cluster" in out
        assert not any(proc.process_alive(p) for p in pids if p is not None)
        new = local.load_cluster(home)
        assert [c.name for c in new.clients] == ["client0", "client1", "client2"]
        assert new.node(0).public_key != old.node(0).public_key
        assert not any((s.data_dir / "lmdb").exists() for s in new.nodes)  # no old data
    finally:
        with contextlib.suppress(Exception):
            local.stop_nodes(local.load_cluster(home), kill=True)


def bftfs_plain(*args: str) -> str:
    got = subprocess.run(
        [sys.executable, "-m", "bftfs", *args], capture_output=True, text=True, timeout=120
    )
    assert got.returncode == 0, got.stderr
    return got.stdout + got.stderr
