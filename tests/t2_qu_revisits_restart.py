"""Tier 2: a node restarted between two looks at an object's history still thins what the
schedule lets go later (``qu.revisit``, ``node/qu_pruner.py``): on the in-process cluster
(real node services, TCP, LMDB reopened by the restarted node), the nodes' clock moved
over simulated hours, never waited.  Waits are conditions polled under a deadline."""

from __future__ import annotations

import time
from pathlib import Path

import trio

from bftfs.policy import RetentionPolicy
from bftfs.qu import schema
from bftfs.qu.retention import load_revisits
from bftfs.testing.cluster import open_cluster, qu_client

OID = 17
HOUR_NS = 3600 * 10**9


async def test_a_restarted_node_still_thins_what_its_schedule_kept_for_the_hour(
    tmp_path: Path,
) -> None:
    """Three updates in one hour and three in the next: the first look thins the first
    hour's older versions and keeps the first hour's newest for two hours (a revisit
    then).  Node 0 is stopped, the clock moved past
    the revisit, node 0 started again on its LMDB: with no further update, it thins that
    version.  Before, a restart forgot the revisit and kept the version until the
    object's next update (never, for a removed file)."""
    offset = [0]

    def clock() -> int:
        return time.time_ns() + offset[0]

    def at(ns: int) -> None:
        offset[0] = ns - time.time_ns()

    day = 24 * HOUR_NS
    start = (time.time_ns() // day + 1) * day + 10 * HOUR_NS  # 10:00 tomorrow (UTC)
    # Every version for 0.2 s, then each hour's newest for two hours and each day's for a
    # day (the horizon: a version past it goes at the node's start, revisit or not);
    # requests for 0.2 s.
    retention = RetentionPolicy(keep_seconds=0.2, keep_hourly=2, keep_daily=1)
    async with open_cluster(
        tmp_path, clients=1, seed=5, retention=retention, node_clock_ns=clock
    ) as cl:
        c = qu_client(cl, 0)
        at(start + 10 * 60 * 10**9)
        for _ in range(3):
            await c.update(OID, "counter.increment", 1)
        at(start + HOUR_NS + 10 * 60 * 10**9)
        for _ in range(3):
            await c.update(OID, "counter.increment", 1)

        def state(i: int) -> tuple[int, int, int | None]:
            """Node ``i``'s versions of OID, its thinned records, its revisit (ns)."""

            def read(kv):  # noqa: ANN001, ANN202
                due = dict((oid, ns) for ns, oid in load_revisits(kv)).get(OID)
                versions = len(schema.iter_versions(kv, OID))
                return versions, len(schema.thinned_records(kv, OID)), due

            return cl.nodes[i].store.read(read)

        with trio.fail_after(20):  # node 0's first look (a background step: polled)
            while True:
                versions, thinned, revisit = state(0)
                if thinned and revisit is not None:
                    break
                await trio.sleep(0.05)
        got = (versions, thinned, revisit)
        assert versions + thinned == 6, got
        assert revisit is not None and revisit > clock(), got

        cl.crash(0)
        await cl.wait_stopped(0)
        at(revisit + 10**9)
        await cl.recover(0)
        with trio.fail_after(20):  # the restarted node's look at the revisit it stored
            while True:
                if state(0)[0] < versions:
                    break
                await trio.sleep(0.05)
        # (The records of the first hour's thinned versions went too: past the horizon.)
        assert state(0)[0] == versions - 1
        assert cl.nodes[0].stats["qu.revisits_loaded"] >= 1
