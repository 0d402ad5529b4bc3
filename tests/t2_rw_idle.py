"""Tier 2: what counts as client activity for lazy verification, over real TCP and LMDB
(the in-process cluster).

A node verifies in idle time, and a run of client requests with short gaps is a *stream*
that verification yields to (``rw/lazy.stream_state``).  A status poll (``stats``,
``ping``) is no client work: before, a monitor asking every node for its ``stats`` every
0.2 s (``tests/t4_restarts.py`` waiting for a condition, ``watch bftfs status``) read as
a stream without end, and blocks that had no budget forcing them were never verified,
their old versions never collected nor their given-back blocks forgotten (the CI failure
of ``t4_restarts::test_a_node_away_past_the_retention_window...``).
"""

from __future__ import annotations

import random
from pathlib import Path

import trio
from rw_helpers import rw_cluster

from bftfs.ids import NodeId
from bftfs.policy import RetentionPolicy, VerificationPolicy
from bftfs.rw import replica

#: Verify once idle for 50 ms, a run of requests a stream after 0.5 s.
POLICY = VerificationPolicy(
    settle_seconds=0.0, idle_seconds=0.05, fallback_seconds=3600.0, stream_seconds=0.5
)
KEEP_ALL = RetentionPolicy(keep_seconds=3600.0, keep_versions=2)
#: How often the monitor asks every node (well inside ``stream_idle_seconds``, 0.5 s).
POLL = 0.05


async def test_a_status_poll_does_not_hold_up_lazy_verification(tmp_path: Path) -> None:
    async with rw_cluster(tmp_path, clients=2, verification=POLICY, retention=KEEP_ALL) as (
        cl,
        (writer, _),
    ):
        monitor = cl.client(1)
        polled: list[float] = []  # when each round of asking every node ended

        async def poll() -> None:
            while True:
                for i in range(cl.config.n):
                    await monitor.call(NodeId(i), "stats", None)
                    await monitor.call(NodeId(i), "ping", None)
                polled.append(trio.current_time())
                await trio.sleep(POLL)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            # The poll has lasted longer than a stream takes to be one.
            await trio.sleep(2 * POLICY.stream_seconds)
            ts = await writer.write_block(7, random.Random(7).randbytes(3000))
            with trio.fail_after(10):  # before: never, while the poll went on
                for node in cl.nodes:
                    while not node.store.read(lambda kv: replica.is_verified(kv, 7, ts)):
                        await node.verifier.changed.wait()
            assert not any(n.progress["rw.verify"]["streaming"] for n in cl.nodes)
            # The monitor kept asking all along, for longer than a run of requests takes to
            # be a stream (a count of polls, > 10, failed on a loaded machine: 9).
            assert len(polled) >= 2 and polled[-1] - polled[0] > POLICY.stream_seconds, polled
            nursery.cancel_scope.cancel()
