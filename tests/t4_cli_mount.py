"""The user's path: `bftfs up` mounts, `bftfs down` unmounts and stops, data persists."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bftfs.testing.mounts import fuse_available

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")


def bftfs(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bftfs", *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=180,
    )


def test_up_mounts_down_unmounts_and_data_persists(tmp_path: Path) -> None:
    home, mnt = tmp_path / "nodes", tmp_path / "mount"
    up = ["up", "--dir", str(home), "--mount", str(mnt), "--map-size", "256M"]
    try:
        out = bftfs(*up).stdout
        assert f"mounted {mnt}" in out
        assert os.path.ismount(mnt)
        (mnt / "docs").mkdir()
        (mnt / "docs" / "note.txt").write_text("kept across restarts\n")
        os.symlink("docs/note.txt", mnt / "shortcut")
        out = bftfs("down", "--dir", str(home)).stdout
        assert f"unmounted {mnt}" in out and "stopped 6 node(s)" in out
        assert not os.path.ismount(mnt)
        assert not (mnt / "docs").exists()  # the data lives in the cluster, not here
        bftfs(*up)
        assert (mnt / "docs" / "note.txt").read_text() == "kept across restarts\n"
        assert (mnt / "shortcut").read_text() == "kept across restarts\n"
        r = bftfs("umount", str(mnt), "--dir", str(home))
        assert r.returncode == 0 and not os.path.ismount(mnt)
        r = bftfs("umount", str(mnt), "--dir", str(home), check=False)
        assert r.returncode == 6 and "is not mounted" in r.stderr
    finally:
        bftfs("down", "--dir", str(home), check=False)
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)


def test_umount_without_the_cluster_directory_waits_for_the_daemon(tmp_path: Path) -> None:
    """``bftfs umount DIR`` run without ``--dir``/``--config`` cannot read the cluster's
    pid files; it found no daemon and returned while the daemon still sent the creates
    and mkdirs it held back under its leases (a laptop shut then would lose them; seen in
    ``t4_machines``).  It finds the daemon by its command line now and returns only once
    it exited, with everything on the nodes."""
    from bftfs import proc
    from bftfs.fuse import control

    home, mnt, elsewhere = tmp_path / "nodes", tmp_path / "mount", tmp_path / "elsewhere"
    elsewhere.mkdir()
    up = ["up", "--dir", str(home), "--mount", str(mnt), "--map-size", "256M"]
    try:
        bftfs(*up)
        pid = control.daemon_serving(mnt)
        assert pid is not None and proc.process_alive(pid)
        tree = {mnt / f"d{i}" / f"f{j}": f"{i}.{j}\n".encode() for i in range(4) for j in range(5)}
        for path, data in tree.items():
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(data)
        r = subprocess.run(
            [sys.executable, "-m", "bftfs", "umount", str(mnt)],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=elsewhere,
            env={k: v for k, v in os.environ.items() if not k.startswith("BFTFS")},
        )
        assert r.returncode == 0, r.stderr
        assert not proc.process_alive(pid), "umount returned while the daemon still ran"
        assert control.daemon_serving(mnt) is None and not os.path.ismount(mnt)
        bftfs("mount", "--dir", str(home), str(mnt))
        for path, data in tree.items():
            assert path.read_bytes() == data, path
    finally:
        bftfs("down", "--dir", str(home), check=False)
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
