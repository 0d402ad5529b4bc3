"""Tier 2: a node restarted before a block's age revisit still thins what the retention
schedule kept only for its hour, with no further write (``GcPlan.revisit_ns``, found again
by the start-up scan, ``node/rw_verifier.py`` ``_rebuild``): on the in-process cluster
(real node services, TCP, LMDB reopened by the restarted node), the nodes' and the
writer's clock moved over simulated hours, never waited.  Waits are on the verifiers'
events (``settled``, ``changed``), never on sleeps."""

from __future__ import annotations

import time
from pathlib import Path

import trio
from rw_helpers import rw_cluster
from t5_rw_lazy import EAGER, hosted, settled

from bftfs.policy import RetentionPolicy
from bftfs.thinning import DAY_NS, HOUR_NS

BLOCK = 3
MIN_NS = 60 * 10**9


async def test_a_restarted_node_still_thins_a_block_version_kept_for_its_hour(
    tmp_path: Path,
) -> None:
    """Versions written at 00:10, 00:50 and 01:10: verification thins 00:10 at once and
    keeps 00:50, its hour's newest, for two hours (a revisit at 02:50).  Node 0 is stopped,
    the clock moved past 02:50, node 0 started again on its LMDB: with no further write,
    it lets 00:50 go.  A restart that forgot the revisit would keep it until the block's
    next write, which a removed file's block never gets."""
    offset = [0]

    def clock() -> int:
        return time.time_ns() + offset[0]

    def at(ns: int) -> None:
        offset[0] = ns - time.time_ns()

    midnight = (time.time_ns() // DAY_NS + 1) * DAY_NS  # tomorrow 00:00 (UTC)
    retention = RetentionPolicy(keep_seconds=0.2, keep_versions=1, keep_hourly=2, keep_daily=0)
    async with rw_cluster(
        tmp_path,
        clients=1,
        seed=7,
        verification=EAGER,
        retention=retention,
        node_clock_ns=clock,
        client_options={"clock_ns": clock},
    ) as (cl, (writer,)):
        stamps = []
        for minute in (10, 50, 70):
            at(midnight + minute * MIN_NS)
            stamps.append(await writer.write_block(BLOCK, f"at {minute}".encode()))
        await settled(cl)
        for i in range(cl.config.n):
            assert hosted(cl, i, BLOCK) == [stamps[2], stamps[1]], i  # 00:10 thinned

        cl.crash(0)
        await cl.wait_stopped(0)
        at(stamps[1].time + 2 * HOUR_NS + MIN_NS)  # 02:51: 00:50's hour tier is over
        await cl.recover(0)
        verifier = cl.nodes[0].verifier
        assert verifier is not None
        with trio.fail_after(10):  # the restarted node's revisit (a background step)
            while True:
                changed = verifier.changed  # set after each of its steps
                if hosted(cl, 0, BLOCK) == [stamps[2]]:
                    break
                await changed.wait()


async def test_a_block_verified_again_and_again_waits_for_one_revisit(tmp_path: Path) -> None:
    """Twenty writes of one block, each verified (and NOTIFYed) before the next: every
    node holds one revisit of the block, when its oldest version ages out.  Before, each
    verification and applied NOTIFY pushed another (up to 37 for these 20 writes), each a
    collection step in the store when it came due."""
    retention = RetentionPolicy(keep_seconds=3600, keep_versions=1, keep_hourly=0, keep_daily=0)
    async with rw_cluster(tmp_path, clients=1, seed=7, verification=EAGER, retention=retention) as (
        cl,
        (writer,),
    ):
        stamps = []
        for k in range(20):
            stamps.append(await writer.write_block(BLOCK, f"v{k}".encode()))
            await settled(cl)
        for i in range(cl.config.n):
            assert len(hosted(cl, i, BLOCK)) == 20, i  # every version kept for its age
            revisits = cl.nodes[i].verifier.collection.revisits
            due = stamps[0].time + 3600 * 10**9 + 1  # its kept_until (bftfs/thinning.py)
            assert revisits == [(due, BLOCK)], (i, len(revisits))
