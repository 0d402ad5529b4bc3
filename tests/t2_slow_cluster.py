"""Slow is not unavailable (issue 60, items 5 and 6), on the real transport: an in-process
cluster over TCP whose nodes answer late, and an operation under a mount's patience.

Before the fix an operation's patience (``timeo``) ran down whenever no call completed for
that long, so nodes slower than ``timeo`` - every node up - failed it ("quorum not reached
within 0s", EIO).  Now it runs down only while fewer than a quorum of nodes are live
(``net/liveness.py``): slow nodes keep it waiting, absent ones (more than ``t`` silent for
their liveness window) still fail it, and ``soft`` keeps the meaning before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from bftfs.net.liveness import LIVE_FLOOR
from bftfs.net.quorum import QuorumUnavailable
from bftfs.outcome import patience
from bftfs.testing.cluster import Cluster, open_cluster

#: The operation's patience in these tests (a mount's ``timeo``, scaled down).
TIMEO = 0.5
#: How late every node answers: three times the patience.
SLOW = 1.5


def _run(tmp_path: Path, body: Any) -> None:
    async def main() -> None:
        async with open_cluster(tmp_path) as cluster:
            await body(cluster)

    trio.run(main)


async def _connected(cluster: Cluster) -> Any:
    ep = cluster.client(0)
    ep.needed = cluster.config.q
    ids = cluster.config.node_ids
    await ep.quorum_call(ids, "ping", None, enough=lambda rs: len(rs) == len(ids))
    return ep


@pytest.mark.slow
def test_an_operation_waits_for_a_cluster_slower_than_its_patience(tmp_path: Path) -> None:
    """Every node up, every answer three patiences late: quorum calls and single calls
    complete (before: "ping: quorum not reached within 0.5s", then "within 0s")."""

    async def body(cluster: Cluster) -> None:
        ep = await _connected(cluster)
        ids = cluster.config.node_ids
        q = cluster.config.q
        for f in cluster.faults:
            f.delay(SLOW)
        failures = 0
        with patience(TIMEO, trio.current_time()):
            for _ in range(3):
                try:
                    res = await ep.quorum_call(ids, "ping", None, enough=lambda rs: len(rs) >= q)
                    assert len(res.replies) >= q
                    assert (await ep.call(ids[0], "ping", 7))["echo"] == 7
                except QuorumUnavailable:
                    failures += 1
        assert failures == 0

    _run(tmp_path, body)


def test_a_soft_patience_keeps_the_meaning_before(tmp_path: Path) -> None:
    async def body(cluster: Cluster) -> None:
        ep = await _connected(cluster)
        ids = cluster.config.node_ids
        for f in cluster.faults:
            f.delay(SLOW)
        soft = patience(TIMEO, trio.current_time(), soft=True)
        with soft, pytest.raises(QuorumUnavailable, match="within"):
            await ep.quorum_call(ids, "ping", None, enough=lambda rs: len(rs) >= 5)

    _run(tmp_path, body)


@pytest.mark.slow
def test_more_than_t_silent_nodes_still_fail_an_operation(tmp_path: Path) -> None:
    """Two of six silent (more than ``t``): once they have been silent for their liveness
    window, fewer than a quorum are live and the operation fails within its patience."""

    async def body(cluster: Cluster) -> None:
        ep = await _connected(cluster)
        ids = cluster.config.node_ids
        n = len(ids)
        for i in (n - 2, n - 1):
            cluster.faults[i].delay(60)
        start = trio.current_time()
        with patience(TIMEO, start) as p:
            assert p is not None
            with trio.fail_after(LIVE_FLOOR + 20 * TIMEO):
                while True:
                    try:
                        await ep.quorum_call(ids, "ping", None, enough=lambda rs: len(rs) >= n - 1)
                    except QuorumUnavailable:
                        if p.expired(trio.current_time()):
                            break
        assert trio.current_time() - start >= LIVE_FLOOR  # slow, until their window passed

    _run(tmp_path, body)


def test_a_crashed_node_costs_an_operation_no_wait(tmp_path: Path) -> None:
    """``n = 6``, one node crashed (connections refused): every call needs the five
    others, and none waits for the crashed one - its refusal is known, it is asked last
    and never lingered for (``live_first``, ``Endpoint.node_live``)."""

    async def body(cluster: Cluster) -> None:
        ep = await _connected(cluster)
        ids = cluster.config.node_ids
        q = cluster.config.q
        cluster.crash(len(ids) - 1)
        with patience(TIMEO, trio.current_time()):
            start = trio.current_time()
            for _ in range(20):
                res = await ep.quorum_call(ids, "ping", None, enough=lambda rs: len(rs) >= q)
                assert len(res.replies) == q
            took = (trio.current_time() - start) / 20
        assert not ep.node_live(ids[-1], trio.current_time())
        assert took < 0.25, took  # each call as fast as its five answers

    _run(tmp_path, body)
