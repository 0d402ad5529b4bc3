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

import time
from pathlib import Path

import pytest
from rw_helpers import rw_cluster
from t5_rw_lazy import EAGER, hosted, settled

from bftfs.policy import RetentionPolicy
from bftfs.rw import collect
from bftfs.rw.client import HistoryReclaimed
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
