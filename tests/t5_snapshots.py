"""Tier 5: snapshots are never reclaimed by retention (issue 17), on the in-process cluster
with eager lazy verification and a retention that keeps nothing old.

A file written before a snapshot reads back as it was at the snapshot after many later
writes, verification and collection; a file whose versions no snapshot pins has its old
versions reclaimed, and asking for them says so (``Reclaimed``, a clear message).
"""

from __future__ import annotations

import os
import random
import time
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from fs_helpers import RW_OPTIONS, qu_client
from t5_rw_lazy import EAGER, settled

from bftfs.fs.filesystem import FileSystem, open_file_system
from bftfs.fs.past import Past, Reclaimed
from bftfs.fsobjects import ROOT
from bftfs.policy import RetentionPolicy
from bftfs.qu.classify import QUThresholds
from bftfs.qu.pastread import PastReader
from bftfs.rw.client import open_rw_client
from bftfs.testing.cluster import open_cluster

BS = 4096
NOTHING_OLD = RetentionPolicy(keep_hourly=0, keep_daily=0, keep_seconds=0.0, keep_versions=1)


async def save(fs: FileSystem, ino: int, data: bytes) -> int:
    """Overwrite the file's first bytes; the moment after the close."""
    fh = await fs.open(ino, os.O_RDWR)
    await fs.write(fh, 0, data)
    await fs.release(fh)
    return time.time_ns()


async def test_a_snapshot_keeps_what_retention_reclaims_otherwise(tmp_path: Path) -> None:
    async with (
        open_cluster(
            tmp_path,
            clients=2,
            block_size=BS,
            inline_limit=0,
            verification=EAGER,
            retention=NOTHING_OLD,
        ) as cluster,
        AsyncExitStack() as stack,
    ):
        cfg = cluster.config
        rw = await stack.enter_async_context(open_rw_client(cluster.client(0), cfg, **RW_OPTIONS))
        rw_r = await stack.enter_async_context(open_rw_client(cluster.client(1), cfg, **RW_OPTIONS))
        fs = await stack.enter_async_context(
            open_file_system(qu_client(cluster, 0), rw, cfg, rng=random.Random(1))
        )
        th = QUThresholds.from_config(cfg)
        past = Past(qu_client(cluster, 1), PastReader(cluster.client(1), th), rw_r, BS)

        _, f = await fs.create(ROOT, b"kept", 0o644, 0, 0, os.O_RDWR)
        await save(fs, f.ino, b"1" * (2 * BS))
        await past.snapshot_create("before", time.time_ns())
        assert set(await past.snapshots()) == {"before"}
        _, g = await fs.create(ROOT, b"unpinned", 0o644, 0, 0, os.O_RDWR)
        first_g = await save(fs, g.ino, b"a" * (2 * BS))
        for i in range(2, 6):
            await save(fs, f.ino, str(i).encode() * (2 * BS))
            await save(fs, g.ino, b"bcde"[i - 2 : i - 1] * (2 * BS))
        await settled(cluster)

        t = (await past.snapshots())["before"]
        v = await past.resolve("/kept", t)
        assert await past.content(v) == b"1" * (2 * BS)
        with pytest.raises(Reclaimed, match="reclaimed by retention"):
            old = await past.resolve("/unpinned", first_g)
            await past.content(old)
        # Deleting the snapshot lets retention take what only it kept (at the next update).
        await past.snapshot_delete("before")
        assert await past.snapshots() == {}
