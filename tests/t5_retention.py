"""Tier 5: the thinning schedule through real nodes (in-process cluster, real transport and
LMDB, eager lazy verification; issue 36).

A block is written at moments spread over a simulated week (the writer's clock is
injected, the nodes' is real, so the versions are days old when the nodes collect them):
after verification every node holds exactly the versions the default schedule keeps, a
read of the past at a kept moment returns that moment's bytes, and one at a thinned moment
says it was reclaimed instead of answering with an older version.

Waiting is on the verifiers' ``settled`` events, never on sleeps.
"""

from __future__ import annotations

import os
import random
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from fs_helpers import RW_OPTIONS
from rw_helpers import rw_cluster
from t5_rw_lazy import EAGER, hosted, settled

from bftfs.fs.filesystem import open_file_system
from bftfs.fs.past import NotThen, Past, Reclaimed
from bftfs.fsobjects import ROOT
from bftfs.node.qu_server import replica_retention
from bftfs.policy import RetentionPolicy
from bftfs.qu import schema
from bftfs.qu.classify import QUThresholds
from bftfs.qu.objects import Registry
from bftfs.qu.pastread import PastReader
from bftfs.qu.retention import thin_step
from bftfs.qu.serverconfig import ReplicaConfig
from bftfs.rw import collect
from bftfs.rw.client import HistoryReclaimed, open_rw_client
from bftfs.testing.cluster import Cluster, open_cluster, qu_client
from bftfs.thinning import DAY_NS, HOUR_NS, kept

MIN_NS = 60 * 10**9


async def test_nodes_keep_what_the_schedule_says_and_reads_of_thinned_moments_fail(
    tmp_path: Path,
) -> None:
    policy = RetentionPolicy()  # the defaults: 15 min, 48 hours, 7 days
    start = time.time_ns()
    # Hours and days ago: bursts of saves, as a user's week of edits.
    ages = [
        6 * DAY_NS + 2 * HOUR_NS,
        6 * DAY_NS + 1 * HOUR_NS,
        4 * DAY_NS + 30 * MIN_NS,
        4 * DAY_NS + 20 * MIN_NS,
        4 * DAY_NS + 10 * MIN_NS,
        30 * HOUR_NS + 40 * MIN_NS,
        30 * HOUR_NS + 35 * MIN_NS,
        5 * HOUR_NS,
        2 * MIN_NS,
        1 * MIN_NS,
    ]
    moments = iter([start - age for age in ages])
    async with rw_cluster(
        tmp_path,
        clients=1,
        verification=EAGER,
        retention=policy,
        client_options={"clock_ns": lambda: next(moments)},
    ) as (cl, (writer,)):
        stamps = [await writer.write_block(3, f"save {k}".encode()) for k in range(len(ages))]
        await settled(cl)
        times = [s.time for s in stamps]
        assert times == [start - age for age in ages]  # the writer used the injected clock
        want = kept(times, time.time_ns(), policy.schedule())
        assert 0 < len(want) < len(times)
        # bftfs status's history figure: the kept versions below the newest, in bytes.
        old = [stamps[k] for k in want if k != len(ages) - 1]
        for i in range(cl.config.n):
            assert hosted(cl, i, 3) == [stamps[k] for k in sorted(want, reverse=True)], i
            size = cl.nodes[i].store.read(lambda kv: collect._bytes_of(kv, 3, old))
            assert cl.nodes[i].progress["rw.verify"]["history_bytes"] == size > 0
        # The newest (verified complete) version reads as always.
        assert await writer.read_block(3) == f"save {len(ages) - 1}".encode()
        for k in range(len(ages) - 1):
            moment = times[k] + 1  # k is the version current then
            if k in want:
                assert await writer.read_as_of(3, moment) == f"save {k}".encode()
            else:
                with pytest.raises(HistoryReclaimed):
                    await writer.read_as_of(3, moment)


def _thin_everything(cl: Cluster, now_ns: int) -> int:
    """Each node's Q/U thinning step (``qu.retention.thin_step``, what its pruner runs
    after ``keep_seconds`` and at each period's end) over every object it holds, at the
    injected moment ``now_ns``; how many versions it thinned."""
    retention = replica_retention(cl.config.retention)
    cfg = ReplicaConfig(0, QUThresholds.from_config(cl.config), bytes, Registry([]), retention)

    def step(kv: Any) -> int:
        oids = [int.from_bytes(k, "big") for k, _ in kv.scan(schema.DB_RH, b"", schema.OID_END)]
        return sum(thin_step(kv, cfg, oid, now_ns).thinned for oid in oids)

    return sum(cl.nodes[i].store.write_now(step) for i in range(cl.config.n))


async def test_a_file_removed_three_days_ago_restores_and_a_snapshot_pins_only_its_moment(
    tmp_path: Path,
) -> None:
    """Q/U history thinned by the schedule through real nodes (in-process cluster, TCP,
    LMDB), the nodes' and the client's clock moved over simulated days (never waited):
    a small (inline) file written five times on day 0, hourly, a snapshot at 09:30
    between the first two writes, the file removed on day 1 and another file made in its directory.
    Three days after the removal, under the default policy: the file as it was at the end
    of day 0 resolves by path and reads back (restorable), the snapshot's moment reads its
    first contents, and the moment of the second write, after the snapshot, is reclaimed
    (the snapshot pins its moment, not every later version).  Without Q/U thinning the
    last read returns the second contents; without the walk stepping over thinned versions
    the end of day 0 cannot be reached."""
    offset = [0]

    def clock() -> int:
        return time.time_ns() + offset[0]

    real = time.time_ns()
    day0 = (real // DAY_NS + 1) * DAY_NS  # the next UTC midnight, so offsets are >= 0

    def at(ns: int) -> None:
        offset[0] = ns - time.time_ns()

    async with (
        open_cluster(tmp_path, clients=2, node_clock_ns=clock) as cl,
        AsyncExitStack() as stack,
    ):
        cfg = cl.config
        rw = await stack.enter_async_context(open_rw_client(cl.client(0), cfg, **RW_OPTIONS))
        at(day0 + 9 * HOUR_NS)
        fs = await stack.enter_async_context(
            open_file_system(qu_client(cl, 0), rw, cfg, rng=random.Random(1), clock_ns=clock)
        )
        d = await fs.mkdir(ROOT, b"d", 0o755, 0, 0)

        async def save(text: bytes) -> None:
            fh = await fs.open(f.ino, os.O_RDWR)
            await fs.write(fh, 0, text)
            await fs.release(fh)

        fh, f = await fs.create(d.ino, b"f", 0o644, 0, 0, os.O_RDWR)
        await fs.write(fh, 0, b"first")
        await fs.release(fh)
        past = Past(
            qu_client(cl, 1), PastReader(cl.client(1), QUThresholds.from_config(cfg)), rw, 0
        )
        await past.snapshot_create("morning", day0 + 9 * HOUR_NS + 30 * MIN_NS)
        at(day0 + 10 * HOUR_NS)
        await save(b"secnd")
        for hour, text in ((11, b"third"), (12, b"forth"), (13, b"fifth")):
            at(day0 + hour * HOUR_NS)
            await save(text)
        at(day0 + DAY_NS + 10 * HOUR_NS)
        await fs.unlink(d.ino, b"f")
        at(day0 + DAY_NS + 11 * HOUR_NS)
        fh, _ = await fs.create(d.ino, b"g", 0o644, 0, 0, os.O_RDWR)
        await fs.write(fh, 0, b"other")
        await fs.release(fh)

        now = day0 + 4 * DAY_NS + 11 * HOUR_NS  # three days after the removal
        at(now)
        assert _thin_everything(cl, now) > 0
        reader = Past(
            qu_client(cl, 1), PastReader(cl.client(1), QUThresholds.from_config(cfg)), rw, 0
        )
        end_of_day0 = await reader.resolve("/d/f", day0 + 23 * HOUR_NS)
        assert await reader.content(end_of_day0) == b"fifth"  # restorable
        snaps = await reader.snapshots()
        pinned = await reader.resolve("/d/f", snaps["morning"])
        assert await reader.content(pinned) == b"first"
        with pytest.raises(Reclaimed):
            await reader.resolve("/d/f", day0 + 10 * HOUR_NS + 30 * MIN_NS)
        with pytest.raises(NotThen):  # gone at the end of day 1, as it was
            await reader.resolve("/d/f", day0 + DAY_NS + 23 * HOUR_NS)
        hist = await reader.history(f.ino)
        assert hist.thinned > 0 and hist.complete
