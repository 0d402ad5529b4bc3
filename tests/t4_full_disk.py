"""A full file system (issue 16): real node processes with a 64 MiB LMDB map each, one FUSE
mount.  Filling it gives ENOSPC (not EIO), ``df`` shows the space used, nothing already
written is lost, metadata operations still work when block writes are refused, and
deleting files gives the space back (the removed files' blocks are overwritten empty, the
nodes verify and collect them at once because the history pool is short) so that writes
succeed again.

Waiting for the nodes to collect crosses process boundaries, so it is a condition polled
under a deadline (a write that succeeds), never a fixed sleep.
"""

from __future__ import annotations

import errno
import os
import random
import time
from pathlib import Path

import pytest

from bftfs.policy import LimitsPolicy, RetentionPolicy, VerificationPolicy
from bftfs.testing.mounts import Mount, fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = [
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
    pytest.mark.slow,
]

MIB = 1024 * 1024
FILE = 4 * MIB


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:  # ENOSPC may come at write, flush or close
        f.write(data)


def test_filling_gives_enospc_and_deleting_gives_the_space_back(tmp_path: Path) -> None:
    rng = random.Random(16)
    with (
        ProcessCluster(
            tmp_path / "c",
            map_size=64 * MIB,
            durable=False,
            verification=VerificationPolicy(settle_seconds=0.2, fallback_seconds=2.0),
            retention=RetentionPolicy(),  # 15 minutes: only the short pool lets GC collect
            # One client fills the store: no quota (the default half of the map would
            # answer EDQUOT first; t5_limits.py tests quotas).
            limits=LimitsPolicy(quota_fraction=1.0),
        ) as pc,
        Mount(pc.config, tmp_path / "m", client="client0") as mnt,
    ):
        root = mnt.mountpoint
        before = os.statvfs(root)
        assert before.f_bfree > 0.8 * before.f_blocks
        # The share kept for metadata (1 - data_fraction) is free but not available, as
        # ext4's reserve: df shows it neither as used nor as available.
        reserve = before.f_bfree - before.f_bavail
        assert 0.09 * before.f_blocks <= reserve <= 0.11 * before.f_blocks, before
        written: dict[str, bytes] = {}
        full_at = None
        for i in range(100):
            data = rng.randbytes(FILE)
            try:
                _write(root / f"f{i}", data)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                full_at = i
                break
            written[f"f{i}"] = data
        assert full_at is not None, "100 files of 4 MiB fit in 6 x 64 MiB"
        assert len(written) >= 10
        st = os.statvfs(root)
        assert st.f_bfree < 0.25 * st.f_blocks, (st.f_bfree, st.f_blocks)
        assert st.f_bavail < 0.15 * st.f_blocks, (st.f_bavail, st.f_blocks)
        # Nothing written before is lost, and metadata still changes.
        for name, data in written.items():
            assert (root / name).read_bytes() == data, name
        (root / f"f{full_at}").unlink(missing_ok=True)
        (root / "still-works").mkdir()
        (root / "still-works" / "small").write_bytes(b"x")  # inline: metadata only
        # Delete half; once the nodes collect, a big write succeeds again.
        for name in sorted(written)[: len(written) // 2]:
            (root / name).unlink()
            del written[name]
        deadline = time.monotonic() + 120
        while True:
            try:
                _write(root / "again", b"z" * FILE)
                break
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                assert time.monotonic() < deadline, "deleting files never gave space back"
                time.sleep(0.5)
        assert (root / "again").read_bytes() == b"z" * FILE
        # The write succeeded once enough nodes had collected; df (the (b + 1)-th largest
        # node's figure) follows when the slower nodes have collected too.
        while os.statvfs(root).f_bfree <= st.f_bfree:
            assert time.monotonic() < deadline, "df never showed the space given back"
            time.sleep(0.5)
        for name, data in written.items():
            assert (root / name).read_bytes() == data, name
