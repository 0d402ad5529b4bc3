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
