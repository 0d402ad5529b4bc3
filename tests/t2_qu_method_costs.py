"""Tier 2: each node counts what every Q/U method costs it (``node/method_costs.py``):
requests answered, seconds to answer them, CPU seconds of their transaction steps; in
``bftfs status --json`` (``methods``) and the metrics.  On the in-process cluster (real
node services, TCP, LMDB), with a durable store (updates' steps run in the committer's
thread behind a group commit) and without (steps run at once in the read loop).

A method name comes from the client: one no node knows is counted as ``(unknown)``, never
under its own name (a Byzantine client must not grow the table).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from qu_helpers import counting_client

from bftfs.node.method_costs import UNKNOWN
from bftfs.node.nodemetrics import node_metrics
from bftfs.qu.attempt import QUUnavailable
from bftfs.qu.objects import MethodRefused
from bftfs.testing.cluster import open_cluster

OID = 33
UPDATES = 3


@pytest.mark.parametrize("durable", [False, True])
async def test_every_node_counts_each_methods_requests_time_and_steps(
    tmp_path: Path, durable: bool
) -> None:
    async with open_cluster(tmp_path, clients=1, seed=5, durable=durable) as cl:
        c = await counting_client(cl, OID)  # one increment
        for _ in range(UPDATES - 1):
            await c.update(OID, "counter.increment", 1)
        assert await c.query(OID, "counter.fetch") == UPDATES
        with pytest.raises((MethodRefused, QUUnavailable)):
            await c.update(OID, "made.up", 1)
        answered = {"counter.increment": 0, "counter.fetch": 0, UNKNOWN: 0}
        for node in cl.nodes:
            costs = node.statistics()["methods"]
            assert not any(name.startswith("made.up") for name in costs), sorted(costs)
            for method in answered:
                cost = costs.get(method, {"requests": 0})
                answered[method] += cost["requests"]
                if cost["requests"]:
                    # A step is part of the answer's time, and never free.
                    assert 0 < cost["cpu_seconds"] <= cost["seconds"], (method, cost)
                    # A step each at least; a re-run after a sync at most three more
                    # (qu_server._serve's loop).
                    assert cost["requests"] <= cost["steps"] <= 4 * cost["requests"], cost
            families = {f.name: f for f in node_metrics(node)}
            samples = dict(families["bftfs_node_qu_method_requests_total"].samples)
            # A method first seen by a step (the committer's thread, durable) may appear
            # between the two reads with no request answered yet: counted from one.
            answered_now = {k: v for k, v in samples.items() if v}
            assert answered_now == {(m,): c["requests"] for m, c in costs.items() if c["requests"]}
        q = cl.config.n - cl.config.t
        # A quorum at least answered each increment and the query; the made-up method
        # reached the nodes (and was answered there, refused) under (unknown).
        assert answered["counter.increment"] >= UPDATES * q, answered
        assert answered["counter.fetch"] >= q, answered
        assert answered[UNKNOWN] >= 1, answered
