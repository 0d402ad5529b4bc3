"""FaB replicas over the real transport (bftfs/fab/service.py): six nodes on loopback TCP,
authenticated sessions, a client's requests ordered and answered; the leader's service is
stopped mid-run and the others elect a new one and go on.

Waits are on conditions under deadlines; the only time that passes is the ticker's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio

from bftfs.crypto import Identity, KeyRing
from bftfs.fab.metaclient import FabMetaClient
from bftfs.fab.replica import Replica, Settings
from bftfs.fab.service import FabService
from bftfs.ids import NodeId, PrincipalId, client_id
from bftfs.net.endpoint import open_endpoint
from bftfs.net.errors import RemoteError
from bftfs.quorums.fab import FabQuorums
from bftfs.testing.cluster import TEST_ENDPOINT
from bftfs.testing.testobjects import registry

Q = FabQuorums.standard(1)
TICK = 0.02


async def until(cond: Callable[[], bool], within: float = 10.0) -> None:
    """Return once ``cond()`` holds; fail after ``within`` seconds."""
    with trio.fail_after(within):
        while True:
            if cond():
                return
            await trio.sleep(0.01)


class Cluster:
    def __init__(self) -> None:
        self.nodes = [Identity.generate(NodeId(i)) for i in range(Q.a)]
        self.client = Identity.generate(client_id(0))
        self.public = {i.pid: i.public for i in [*self.nodes, self.client]}
        self.services: list[FabService] = []
        self.scopes: list[trio.CancelScope] = []

    def ring(self, ident: Identity) -> KeyRing:
        return KeyRing(ident, self.public)

    async def listen(self) -> None:
        """A loopback listener per node, and the addresses they make."""
        self.listeners = [await trio.open_tcp_listeners(0, host="127.0.0.1") for _ in self.nodes]
        self.addresses = {
            NodeId(i): ("127.0.0.1", ls[0].socket.getsockname()[1])
            for i, ls in enumerate(self.listeners)
        }

    def start(self, nursery: trio.Nursery, i: int, settings: Settings) -> None:
        """Serve node ``i`` in ``nursery``; cancelling ``scopes[-1]`` stops it."""
        ring = self.ring(self.nodes[i])
        replica = Replica(i, Q, lambda p: ring.key(PrincipalId(p)), registry(), settings)
        service = FabService(
            replica, ring, self.addresses, tick=TICK, endpoint_options=TEST_ENDPOINT
        )
        scope = trio.CancelScope()
        self.services.append(service)
        self.scopes.append(scope)

        async def run() -> None:
            with scope:
                await service.serve(self.listeners[i])

        nursery.start_soon(run)


@asynccontextmanager
async def open_fab_cluster() -> AsyncIterator[tuple[Cluster, dict[NodeId, tuple[str, int]]]]:
    cluster = Cluster()
    await cluster.listen()
    async with trio.open_nursery() as nursery:
        for i in range(len(cluster.nodes)):
            cluster.start(nursery, i, Settings(window=32, interval=8, timeout=10))
        yield cluster, cluster.addresses
        nursery.cancel_scope.cancel()


async def test_operations_are_ordered_over_tcp_and_survive_the_leader_stopping() -> None:
    with trio.fail_after(60):
        async with open_fab_cluster() as (cluster, addresses):
            ring = cluster.ring(cluster.client)
            async with open_endpoint(ring, addresses, **TEST_ENDPOINT) as ep:
                client = FabMetaClient(ep, range(Q.a), Q.f, resend=0.2)
                for k in range(1, 11):
                    assert await client.update([1], "counter.increment", 1) == k
                cluster.scopes[0].cancel()  # node 0, the leader of regency 0, stops
                for k in range(11, 21):
                    assert await client.update([1], "counter.increment", 1) == k
                # every live node (not only the f + 1 that answered) moves on: a new
                # regency, and a stable checkpoint, while the cluster is still up
                live = cluster.services[1:]
                await until(
                    lambda: all(
                        s.replica.election.regency >= 1 and s.replica.statistics().stable >= 8
                        for s in live
                    )
                )


async def test_garbage_over_tcp_is_refused_and_the_cluster_goes_on() -> None:
    """A client sending non-bytes gets the transport's refusal; bytes that are no FaB
    message are rejected by the core (counted) and change nothing."""
    with trio.fail_after(30):
        async with open_fab_cluster() as (cluster, addresses):
            ring = cluster.ring(cluster.client)
            async with open_endpoint(ring, addresses, **TEST_ENDPOINT) as ep:
                client = FabMetaClient(ep, range(Q.a), Q.f)
                with pytest.raises(RemoteError, match="malformed"):
                    await ep.call(NodeId(1), "fab", {"not": "bytes"})
                assert await ep.call(NodeId(1), "fab", b"\x93garbage") is None
                await until(lambda: cluster.services[1].replica.statistics().rejected >= 1)
                assert await client.update([1], "counter.increment", 5) == 5
