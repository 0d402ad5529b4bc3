"""A path under a mount names its file system (issue 67): ``bftfs cat MOUNT/f --at ...``
needed ``--dir`` and took every ``fuse.bftfs`` mount on the machine for the one cluster it
found; now the mount's source (``/proc/self/mountinfo``) picks the cluster, as ``zfs
diff`` finds the dataset, and a path of another cluster's mount is refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bftfs.testing.mounts import Mount, fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")


def _bftfs(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BFTFS")}
    env["HOME"] = env["XDG_CONFIG_HOME"] = str(cwd)  # no ~/.config/bftfs to fall back on
    return subprocess.run(
        [sys.executable, "-m", "bftfs", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_a_path_under_a_mount_picks_that_mounts_cluster(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"  # no nodes/ here, nothing found without the path
    elsewhere.mkdir()
    with (
        ProcessCluster(tmp_path / "a", map_size=1 << 28, durable=False) as a,
        ProcessCluster(tmp_path / "b", map_size=1 << 28, durable=False) as b,
        Mount(a.config, tmp_path / "ma") as ma,
        Mount(b.config, tmp_path / "mb") as mb,
    ):
        for mount, text in ((ma, "in a\n"), (mb, "in b\n")):
            with open(mount.mountpoint / "f", "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        got_a = _bftfs(elsewhere, "cat", str(ma.mountpoint / "f"), "--at", "now")
        got_b = _bftfs(elsewhere, "cat", str(mb.mountpoint / "f"), "--at", "now")
        assert (got_a.returncode, got_a.stdout) == (0, "in a\n"), got_a.stderr
        assert (got_b.returncode, got_b.stdout) == (0, "in b\n"), got_b.stderr
        log = _bftfs(elsewhere, "log", str(mb.mountpoint / "f"))
        assert log.returncode == 0 and "created" in log.stdout, log.stderr
        # Told cluster a, a path in b's mount is refused, not read as a's /f.
        wrong = _bftfs(
            elsewhere, "cat", str(mb.mountpoint / "f"), "--at", "now", "--dir", str(tmp_path / "a")
        )
        assert wrong.returncode == 2 and wrong.stdout == "", (wrong.stdout, wrong.stderr)
