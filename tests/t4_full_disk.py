"""A full file system (issues 16 and 31): real node processes with a 64 MiB LMDB map each,
one FUSE mount.  Filling it with the default limits gives ENOSPC (not EIO, and not EDQUOT:
there is no per-client quota by default), ``df`` shows the space used, nothing already
written is lost, metadata operations still work when block writes are refused, and
deleting files gives the space back within seconds (the removed files' blocks are
overwritten empty, the nodes verify and collect them at once because the history pool is
short) so that writes succeed again.  With a quota set, a client at its quota that removes
files writes again within seconds too: its given-back blocks' old versions are collected
without waiting for ``keep_seconds`` (15 minutes).

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
from mount_helpers import fill_until_enospc, write_whole

from bftfs.policy import LimitsPolicy, RetentionPolicy, VerificationPolicy
from bftfs.testing.mounts import Mount, fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = [
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
    pytest.mark.slow,
]

MIB = 1024 * 1024
FILE = 4 * MIB


#: Seconds within which a write must succeed again after files were removed: the nodes
#: verify the empty versions (``settle_seconds``, NOTIFYs) and collect, where waiting for
#: ``keep_seconds`` took 15 minutes.
AGAIN_WITHIN = 30.0


def _write_again_soon(path: Path, refusal: int) -> None:
    """A 4 MiB write succeeds within :data:`AGAIN_WITHIN` seconds; until then every
    attempt fails with ``refusal`` only (polled, the condition is the nodes' collection).
    Every attempt opens the same name again, as a program retrying would: a refused write
    leaves the file as the servers stored it, and ``open(name, "wb")`` opens or creates
    it (it answered ENOENT after a create refused at close: issue 31)."""
    deadline = time.monotonic() + AGAIN_WITHIN
    while True:
        try:
            write_whole(path, b"z" * FILE)
            break
        except OSError as e:
            assert e.errno == refusal, e
            assert time.monotonic() < deadline, "removing files gave no room back in time"
            time.sleep(0.5)


def test_filling_gives_enospc_and_deleting_gives_the_space_back(tmp_path: Path) -> None:
    rng = random.Random(16)
    with (
        ProcessCluster(
            tmp_path / "c",
            map_size=64 * MIB,
            durable=False,
            verification=VerificationPolicy(settle_seconds=0.2, fallback_seconds=2.0),
            retention=RetentionPolicy(),  # 15 minutes: only the short pool lets GC collect
            # The default limits: one client may fill the store (issue 31: a default quota
            # of half the map answered EDQUOT at 58 % use).
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
        written, full_at = fill_until_enospc(root, rng, FILE, 100)
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
        _write_again_soon(root / "again", errno.ENOSPC)
        deadline = time.monotonic() + 120
        assert (root / "again").read_bytes() == b"z" * FILE
        # The write succeeded once enough nodes had collected; df (the (b + 1)-th largest
        # node's figure) follows when the slower nodes have collected too.
        while os.statvfs(root).f_bfree <= st.f_bfree:
            assert time.monotonic() < deadline, "df never showed the space given back"
            time.sleep(0.5)
        for name, data in written.items():
            assert (root / name).read_bytes() == data, name


def test_a_client_at_its_quota_writes_again_within_seconds_of_rm(tmp_path: Path) -> None:
    """A quota of 30 % of each node: the client gets EDQUOT long before the store is full
    (no node is short of space, so retention would keep the removed files' blocks for
    ``keep_seconds``); removing half of its files lets it write again within seconds, and
    the files it kept read back intact."""
    rng = random.Random(31)
    with (
        ProcessCluster(
            tmp_path / "c",
            map_size=64 * MIB,
            durable=False,
            limits=LimitsPolicy(quota_fraction=0.3),
        ) as pc,
        Mount(pc.config, tmp_path / "m", client="client0") as mnt,
    ):
        root = mnt.mountpoint
        written: dict[str, bytes] = {}
        for i in range(100):
            data = rng.randbytes(FILE)
            try:
                write_whole(root / f"f{i}", data)
            except OSError as e:
                assert e.errno == errno.EDQUOT, e
                (root / f"f{i}").unlink(missing_ok=True)
                break
            written[f"f{i}"] = data
        assert 4 <= len(written) < 100, len(written)
        st = os.statvfs(root)
        assert st.f_bavail > 0.4 * st.f_blocks, "the store itself is far from full"
        for name in sorted(written)[: len(written) // 2]:
            (root / name).unlink()
            del written[name]
        _write_again_soon(root / "again", errno.EDQUOT)
        assert (root / "again").read_bytes() == b"z" * FILE
        for name, data in written.items():
            assert (root / name).read_bytes() == data, name
