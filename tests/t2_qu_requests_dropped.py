"""Tier 2: a node drops the stored requests of Q/U versions past ``keep_seconds`` while
history keeps the versions (``Retention.request_seconds``, ``node/qu_pruner.py``), on the
in-process cluster (real node services, TCP, LMDB).  Waits are conditions polled under a
deadline."""

from __future__ import annotations

import random
from pathlib import Path

import trio

from bftfs.ids import client_id
from bftfs.policy import RetentionPolicy
from bftfs.qu import schema
from bftfs.qu.classify import QUThresholds
from bftfs.qu.client import QUClient
from bftfs.testing.cluster import open_cluster

OID = 13
UPDATES = 6


async def test_a_node_drops_old_requests_and_keeps_every_version(tmp_path: Path) -> None:
    # Every version for an hour (the hourly tier), requests for 0.2 s.
    retention = RetentionPolicy(keep_seconds=0.2, keep_hourly=1, keep_daily=0)
    async with open_cluster(tmp_path, clients=1, seed=9, retention=retention) as cl:
        c = QUClient(
            cl.client(0),
            QUThresholds.from_config(cl.config),
            client_id=int(client_id(0)),
            rng=random.Random(0),
        )
        for _ in range(UPDATES):
            await c.update(OID, "counter.increment", 1)
        node = cl.nodes[0]

        def requests_left() -> int:
            def count(kv):  # noqa: ANN001, ANN202
                lts = [v.lt for v in schema.iter_versions(kv, OID)]
                return len(lts), sum(schema.load_request(kv, lt) is not None for lt in lts)

            return node.store.read(count)

        versions, stored = requests_left()
        assert versions == stored == UPDATES
        with trio.fail_after(20):  # the node's background step (no event to wait on)
            while True:
                if node.stats["qu.requests_dropped"]:
                    break
                await trio.sleep(0.05)
        versions, stored = requests_left()
        assert versions == UPDATES  # history keeps them all
        assert stored < UPDATES  # the old ones' requests went (the candidates' stay)
        assert await c.query(OID, "counter.fetch") == UPDATES
