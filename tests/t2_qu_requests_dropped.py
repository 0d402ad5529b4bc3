"""Tier 2: a node drops the stored requests of Q/U versions past ``keep_seconds`` and thins
the versions to the schedule, leaving a record of each thinned one
(``Retention.request_seconds``, ``qu.retention.thin_step``, ``node/qu_pruner.py``), on the
in-process cluster (real node services, TCP, LMDB).  Waits are conditions polled under a
deadline."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import trio

from bftfs.ids import client_id
from bftfs.node import qu_pruner
from bftfs.policy import RetentionPolicy
from bftfs.qu import schema
from bftfs.qu.classify import QUThresholds
from bftfs.qu.client import QUClient
from bftfs.testing.cluster import open_cluster

OID = 13
UPDATES = 6


def qu_client(cl: Any, seed: int) -> QUClient:
    """Client 0's Q/U client on ``cl``."""
    return QUClient(
        cl.client(0),
        QUThresholds.from_config(cl.config),
        client_id=int(client_id(0)),
        rng=random.Random(seed),
    )


async def test_a_node_drops_old_requests_and_thins_the_hours_older_versions(
    tmp_path: Path,
) -> None:
    # Every version for 2 s, then the hour's newest for an hour; requests for 2 s.  Long
    # enough that the six updates are all still kept when counted on a busy CI machine (at
    # 0.2 s the pruner had thinned two before the first count).
    retention = RetentionPolicy(keep_seconds=2.0, keep_hourly=1, keep_daily=0)
    async with open_cluster(tmp_path, clients=1, seed=9, retention=retention) as cl:
        c = qu_client(cl, seed=0)
        for _ in range(UPDATES):
            await c.update(OID, "counter.increment", 1)
        node = cl.nodes[0]

        def requests_left() -> int:
            def count(kv):  # noqa: ANN001, ANN202
                lts = [v.lt for v in schema.iter_versions(kv, OID)]
                thin = len(schema.thinned_records(kv, OID))
                return len(lts), sum(schema.load_request(kv, lt) is not None for lt in lts), thin

            return node.store.read(count)

        versions, stored, thinned = requests_left()
        assert versions == stored == UPDATES and thinned == 0
        with trio.fail_after(20):  # the node's background step (no event to wait on)
            while True:
                if node.stats["qu.requests_dropped"]:
                    break
                await trio.sleep(0.05)
        versions, stored, thinned = requests_left()
        # The candidates, what they condition on and the newest keep_versions stay; the
        # older versions of the hour are thinned (one record each): the hour's newest
        # stands for it.
        assert versions + thinned == UPDATES and 0 < thinned < UPDATES - 1
        assert node.stats["qu.thinned"] == thinned
        assert stored < UPDATES  # the old ones' requests went (the candidates' stay)
        assert await c.query(OID, "counter.fetch") == UPDATES


async def test_the_looks_due_together_go_in_few_store_transactions(tmp_path: Path) -> None:
    """Objects whose looks are due together are looked at, up to ``LOOKS_PER_STEP``, in one
    store transaction: a look apiece was a commit apiece, and the first looks of an ageing
    cluster took the nodes' CPU a PostMark transaction from 0.0 to 3.2 ms."""
    retention = RetentionPolicy(keep_seconds=0.2, keep_hourly=1, keep_daily=0)
    objects = range(100, 100 + 6 * qu_pruner.LOOKS_PER_STEP)
    async with open_cluster(tmp_path, clients=1, seed=10, retention=retention) as cl:
        c = qu_client(cl, seed=1)
        for oid in objects:
            for _ in range(2):
                await c.update(oid, "counter.increment", 1)
        node = cl.nodes[0]
        with trio.fail_after(20):  # the node's background step (no event to wait on)
            while True:
                if node.stats["qu.looks"] >= len(objects):
                    break
                await trio.sleep(0.05)
        # Looks come due as their updates were made, a few milliseconds apart, so how many
        # go together depends on the machine (32 transactions for 96 looks on a quiet one);
        # one each (the step before) makes as many transactions as looks.
        steps, looks = node.stats["qu.look_steps"], node.stats["qu.looks"]
        assert steps < looks, (steps, looks)
