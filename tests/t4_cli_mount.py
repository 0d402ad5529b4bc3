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


@pytest.mark.slow
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


@pytest.mark.slow
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


def _mount_flags(mnt: Path) -> set[str]:
    """The kernel's options of the mount at ``mnt``, from /proc/self/mounts."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[1] == str(mnt):
            return set(fields[3].split(","))
    raise AssertionError(f"{mnt} is not mounted")


def test_a_non_empty_mount_point_is_refused_and_the_kernels_flags_are_honoured(
    tmp_path: Path,
) -> None:
    """A mount over a directory with files hid them silently, and ``noatime`` was
    accepted and dropped (the mount showed ``relatime``: issue 67).  Now the first is
    refused unless ``-o nonempty``, and the kernel's flags reach the kernel."""
    home, mnt = tmp_path / "nodes", tmp_path / "mount"
    mnt.mkdir()
    (mnt / "mine.txt").write_text("the user's own file\n")
    try:
        bftfs("up", "--dir", str(home), "--no-mount", "--map-size", "256M")
        r = bftfs("mount", str(mnt), "--dir", str(home), check=False)
        assert r.returncode == 6 and "not empty" in r.stderr and "nonempty" in r.stderr, r
        assert not os.path.ismount(mnt)
        r = bftfs(
            "mount", str(mnt), "--dir", str(home), "-o", "nonempty,noatime,nosuid,nodev,noexec"
        )
        assert os.path.ismount(mnt) and not (mnt / "mine.txt").exists()  # hidden, as asked
        assert {"noatime", "nosuid", "nodev", "noexec"} <= _mount_flags(mnt)
        assert "relatime" not in _mount_flags(mnt)
        bftfs("umount", str(mnt), "--dir", str(home))
        assert (mnt / "mine.txt").read_text() == "the user's own file\n"
    finally:
        bftfs("down", "--dir", str(home), check=False)
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
