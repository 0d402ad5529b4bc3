"""``bftfs umount`` of a busy mount (issue 60, item 10).

It used to detach the mount lazily and terminate its daemon: it printed ``unmounted`` and
exited 0, the writer holding a file open got ENOTCONN, and what it had written was lost
everywhere.  Now it refuses as umount(8) does ("target is busy", exit 32) and nothing
changes; once the file is closed it unmounts, and what was written is on the nodes (read
back through a fresh mount).  ``--lazy`` detaches at once and the daemon serves the open
file until it closes, then sends it and exits; ``bftfs down`` refuses a busy mount too and
leaves the nodes running.  Real node processes (a one-node cluster: the subject is the
mount, not the protocols) and real mounts made by the command line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bftfs import proc
from bftfs.fuse import control
from bftfs.testing.mounts import fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")


def bftfs(cluster: ProcessCluster, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "bftfs", *args, "--config", str(cluster.home / "cluster.toml")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


@contextlib.contextmanager
def cluster_and_mount(
    tmp_path: Path, *, options: str | None = None
) -> Iterator[tuple[ProcessCluster, Path]]:
    """A one-node cluster and ``bftfs mount`` of it (with ``-o options``); on exit the
    mount is gone whatever happened (detached, its daemon stopped) and the node stopped."""
    mnt = tmp_path / "m"
    with ProcessCluster(tmp_path / "c", t=0, b=0, n=1, map_size=1 << 28, durable=False) as pc:
        got = bftfs(pc, "mount", str(mnt), *(["-o", options] if options else []))
        assert got.returncode == 0, got.stderr
        try:
            yield pc, mnt
        finally:
            pid = control.daemon_serving(mnt)
            proc.unmount(mnt)
            if pid is not None and proc.process_alive(pid):
                os.kill(pid, signal.SIGTERM)
                proc.wait_gone(pid, 30.0)


def _read_back(pc: ProcessCluster, tmp_path: Path, name: str) -> bytes:
    """``name``'s content through a fresh mount of the cluster (so from the nodes)."""
    fresh = tmp_path / "fresh"
    got = bftfs(pc, "mount", str(fresh))
    assert got.returncode == 0, got.stderr
    try:
        return (fresh / name).read_bytes()
    finally:
        got = bftfs(pc, "umount", str(fresh))
        assert got.returncode == 0, got.stderr


def _wait_gone(pid: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while proc.process_alive(pid):
        assert time.monotonic() < deadline, f"the daemon (pid {pid}) did not exit"
        time.sleep(proc.POLL)


@pytest.mark.slow
def test_a_busy_mount_is_refused_and_unmounts_once_the_file_is_closed(tmp_path: Path) -> None:
    with cluster_and_mount(tmp_path) as (pc, mnt):
        with open(mnt / "log.txt", "w") as writer:
            writer.write("first line\n")
            writer.flush()
            got = bftfs(pc, "umount", str(mnt))
            assert got.returncode == 32, (got.stdout, got.stderr)
            assert "target is busy" in got.stderr and "unmounted" not in got.stdout
            assert control.mounted_fuse(mnt) == "fuse.bftfs"
            # `bftfs down` refuses too, and leaves the nodes running for it.
            got = subprocess.run(
                [sys.executable, "-m", "bftfs", "down", "--dir", str(pc.home)],
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
            assert got.returncode == 32 and "target is busy" in got.stderr, got.stderr
            assert pc.pid(0) is not None and proc.process_alive(pc.pid(0) or 0)
            writer.write("second line\n")  # the mount still serves its writer
        assert (mnt / "log.txt").read_text() == "first line\nsecond line\n"
        pid = control.daemon_serving(mnt)
        got = bftfs(pc, "umount", str(mnt))
        assert got.returncode == 0 and "unmounted" in got.stdout, got.stderr
        assert pid is not None and not proc.process_alive(pid)
        assert control.mounted_fuse(mnt) is None
        assert _read_back(pc, tmp_path, "log.txt") == b"first line\nsecond line\n"


def test_lazy_detaches_and_serves_the_open_file_until_it_closes(tmp_path: Path) -> None:
    with cluster_and_mount(tmp_path) as (pc, mnt):
        pid = control.daemon_serving(mnt)
        assert pid is not None
        with open(mnt / "held.txt", "w") as writer:
            writer.write("before\n")
            writer.flush()
            got = bftfs(pc, "umount", "--lazy", str(mnt))
            assert got.returncode == 0 and "detached" in got.stdout, got.stderr
            assert control.mounted_fuse(mnt) is None  # gone from the name space at once
            writer.write("after\n")  # still served: no ENOTCONN
            writer.flush()
            os.fsync(writer.fileno())
        _wait_gone(pid, 120.0)  # the last file closed: it sends what it holds and exits
        assert _read_back(pc, tmp_path, "held.txt") == b"before\nafter\n"
