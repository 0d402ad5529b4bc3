"""``bftfs umount`` says when its daemon could not send what it held back (issue 62's
threat of a silent loss; docs/fs.md "Unmount").

A mount's end sends what directory write-back held back for as long as that delivers, and
gives up only after ``6 x timeo`` without progress (``fs/session.py``).  It used to give up
after a fixed 60 s and the unmount still printed ``unmounted`` and exited 0: a user's
answered creates were gone without a word anywhere but the daemon's log.  Here the only
node of a one-node cluster is stopped with creates held back: the unmount must fail with
exit 6 and say how many changes were lost.  Real node process, real mount, the command
line.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from t4_umount_busy import bftfs, cluster_and_mount

from bftfs.cli.common import EXIT_MOUNT
from bftfs.fuse import control
from bftfs.testing.mounts import fuse_available

pytestmark = [
    pytest.mark.slow,  # (17 s: the daemon's end waits out its 6 s stall by design)
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
]

#: Held back for a minute (nothing is sent before the node stops); the end gives up
#: after 6 x timeo = 6 s without progress.
OPTIONS = "commit=60,timeo=1"


def test_an_unmount_whose_daemon_lost_held_back_changes_says_so(tmp_path: Path) -> None:
    with cluster_and_mount(tmp_path, options=OPTIONS) as (pc, mnt):
        (mnt / "d").mkdir()
        for k in range(5):  # new files in a new directory: their creates held back
            (mnt / "d" / f"f{k}").write_bytes(b"x" * (k + 1))
        pc.kill(0)  # no quorum: nothing of it can be sent any more
        got = bftfs(pc, "umount", str(mnt))
        assert got.returncode == EXIT_MOUNT, (got.stdout, got.stderr)
        assert "could not be sent" in got.stderr and "are lost" in got.stderr, got.stderr
        assert not control.lost_file(pc.config, mnt).exists()  # said once
