"""A FaB replica on the network: the trio shell around :class:`~bftfs.fab.replica.Replica`.

The core decides; this module only moves bytes and time (STYLE.md section 1, raft's
``Ready`` loop).  Each node serves the request kind ``fab`` on a :class:`bftfs.net.server.
Server`: the payload is one encoded FaB message, handed to ``replica.step`` with the
sender the transport authenticated, and the handler answers at once with nothing (FaB's
own retransmissions, not the transport's replies, carry the protocol).  What the core sends
goes out through the node's :class:`bftfs.net.endpoint.Endpoint` to other nodes, straight
into its own core for itself, and as a push to a client (its REPLY).  A ticker calls
``replica.tick()`` every ``tick`` seconds.

Sends are fire-and-forget: a queue per destination of bounded size (a full queue drops,
counted in ``statistics``) and a bounded number of calls in flight per node.  Losing a
message is a case the core handles by retransmitting, so a slow or dead node costs a
bounded amount of memory here and nothing else.

The calling side of a client is :class:`bftfs.fab.metaclient.FabMetaClient`.

:class:`FabShell` is the driver of one replica over a transport it is given: a ``bftfs
node`` of an ``engine = "fab"`` cluster runs one over its own server, endpoint and store
(``bftfs/node/fab_server.py``, with persistence); :class:`FabService` runs one over a
server and endpoint of its own (the loopback test).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import trio

from bftfs.crypto import KeyRing
from bftfs.fab.messages import Message, encode
from bftfs.fab.replica import Replica, Send, Step
from bftfs.ids import NodeId, PrincipalId
from bftfs.net.endpoint import Endpoint, open_endpoint
from bftfs.net.errors import RemoteError, TransportError
from bftfs.net.server import HandlerError, Server

log = logging.getLogger(__name__)

#: The request kind FaB messages travel as, and the tag of a pushed REPLY.
KIND = "fab"
REPLY_TAG = "fab-reply"

#: A Byzantine node's rewriting of one send (tests only): the pairs sent instead, or
#: None to send it as the core said.
Rewrite = Callable[[Send], "list[tuple[int, Message]] | None"]


@runtime_checkable
class FabFaults(Protocol):
    """Fault hooks that can make a node's FaB engine Byzantine (tests only,
    :meth:`bftfs.testing.faults.FaultInjector.fab`): asked once for the node's core,
    they give the rewriting of its sends."""

    def fab_rewrite(self, replica: Replica) -> Rewrite: ...


@dataclass(frozen=True)
class ServiceStatistics:
    sent: int
    dropped: int  # sends dropped because a destination's queue was full
    failed: int  # calls the transport gave up on (the core resends what matters)
    received: int
    unsaved: int = 0  # steps whose messages were held back: the store refused their changes


class FabShell:
    """One node's replica driven over a transport it is given: the handler of the request
    kind ``fab`` (:meth:`handle`), the sends through an endpoint (:meth:`run`), the
    client replies through ``push``.  Used by :class:`FabService` (a server of its own)
    and by a ``bftfs node`` of an ``engine = "fab"`` cluster (``node/fab_server.py``: the
    node's own server, endpoint and store).

    Args:
        replica: the core; its ``me`` is this node's id.
        push: ``Server.push``: a REPLY to a client's open connections.
        tick: seconds between ``replica.tick()`` calls.
        queue: messages queued per destination before new ones are dropped.
        in_flight: calls in flight per destination.
        persist: called after every step, before its messages go out: what the step
            changed is written (``fab/durable.py``); an awaitable to wait for, or None
            when nothing is left to wait for.
        rewrite: tests only: a Byzantine node's rewriting of each send into the
            ``(destination, message)`` pairs that go out instead, or None for the honest
            sends (:mod:`bftfs.testing.byzantine.fab`).
    """

    def __init__(
        self,
        replica: Replica,
        push: Callable[[PrincipalId, Any], int],
        *,
        tick: float = 0.05,
        queue: int = 1024,
        in_flight: int = 8,
        persist: Callable[[], Awaitable[None] | None] | None = None,
        rewrite: Rewrite | None = None,
    ) -> None:
        self.replica = replica
        self.rewrite = rewrite
        self.push = push
        self.tick = tick
        self.in_flight = in_flight
        self.persist = persist
        self._queues = {j: trio.open_memory_channel[bytes](queue) for j in range(replica.nodes)}
        self._sent = self._dropped = self._failed = self._received = 0
        self._unsaved = 0  # steps whose changes the store refused
        #: Messages handed to the transport, by kind (``PROPOSE``: one per destination).
        self.kinds: Counter[str] = Counter()

    def statistics(self) -> ServiceStatistics:
        return ServiceStatistics(
            self._sent, self._dropped, self._failed, self._received, self._unsaved
        )

    async def handle(self, sender: int, payload: Any) -> None:
        """One FaB message from ``sender`` (authenticated by the transport)."""
        if not isinstance(payload, bytes):
            raise HandlerError("malformed", "a FaB message is bytes")
        self._received += 1
        await self.apply(self.replica.step(sender, payload))

    async def apply(self, step: Step) -> None:
        """Make what ``step`` changed durable, then send what it produced."""
        if self.persist is not None:
            try:
                wait = self.persist()
                if wait is not None:
                    await wait
            except Exception as e:  # noqa: BLE001 - the store refused (full, I/O error)
                # Nothing the store does not hold may be said: the step's messages are
                # dropped, as a lossy network would (the core resends, the peers pull).
                self._unsaved += 1
                log.error("fab%d: state not written, messages held back: %s", self.replica.me, e)
                return
        if step.rejection is not None:
            log.debug("fab%d: rejected: %s", self.replica.me, step.rejection)
        for send in step.sends:
            pairs = self.rewrite(send) if self.rewrite is not None else None
            if pairs is None:
                self._send(*send)
            else:
                for to, message in pairs:
                    self._send(to, message)

    def _send(self, to: int | None, message: Message) -> None:
        data = encode(message)
        self.kinds[type(message).__name__.upper()] += self.replica.nodes if to is None else 1
        if to is None:
            for j in range(self.replica.nodes):
                self._enqueue(j, data)
        elif 0 <= to < self.replica.nodes:
            self._enqueue(to, data)
        else:
            self.push(PrincipalId(to), [REPLY_TAG, data])

    def _enqueue(self, node: int, data: bytes) -> None:
        try:
            self._queues[node][0].send_nowait(data)
        except trio.WouldBlock:
            self._dropped += 1

    async def run(
        self, ep: Endpoint, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Send through ``ep`` and tick, until cancelled."""
        async with trio.open_nursery() as nursery:
            for j in range(self.replica.nodes):
                nursery.start_soon(self._drain, ep, j)
            nursery.start_soon(self._ticker)
            task_status.started()

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(self.tick)
            await self.apply(self.replica.tick())

    async def _drain(self, ep: Endpoint, node: int) -> None:
        receive = self._queues[node][1]
        if node == self.replica.me:  # to myself: straight into the core, in order
            async for data in receive:
                await self.apply(self.replica.step(node, data))
            return
        slots = trio.Semaphore(self.in_flight)  # released by the call's own task
        async with trio.open_nursery() as nursery:
            async for data in receive:
                await slots.acquire()
                nursery.start_soon(self._call, ep, node, data, slots)

    async def _call(self, ep: Endpoint, node: int, data: bytes, slots: trio.Semaphore) -> None:
        try:
            await ep.call(NodeId(node), KIND, data, timeout=max(1.0, 20 * self.tick))
            self._sent += 1
        except (TransportError, RemoteError) as e:
            self._failed += 1
            log.debug("fab%d -> %d: %s", self.replica.me, node, e)
        finally:
            slots.release()


class FabService:
    """One node with a server of its own: a :class:`FabShell` answering on its own
    listeners and sending through its own endpoint (the loopback test, t2_fab_tcp).

    Args:
        replica: the core; its ``me`` is this node's id.
        keyring: this node's identity and the keys of every node and client.
        addresses: every node's ``(host, port)``.
        tick, queue, in_flight: as :class:`FabShell`'s.
    """

    def __init__(
        self,
        replica: Replica,
        keyring: KeyRing,
        addresses: Mapping[NodeId, tuple[str, int]],
        *,
        tick: float = 0.05,
        queue: int = 1024,
        in_flight: int = 8,
        endpoint_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.replica = replica
        self.keyring = keyring
        self.addresses = dict(addresses)
        self.endpoint_options = dict(endpoint_options or {})
        self.server: Server[PrincipalId] = Server(
            keyring, context=lambda pid: pid, log=log, name=f"fab{replica.me}"
        )
        self.shell = FabShell(
            replica, self.server.push, tick=tick, queue=queue, in_flight=in_flight
        )
        self.server.register(KIND, self._handle, inline=True)

    def statistics(self) -> ServiceStatistics:
        return self.shell.statistics()

    async def _handle(self, sender: PrincipalId, payload: Any) -> None:
        await self.shell.handle(int(sender), payload)

    async def serve(
        self,
        listeners: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled on ``listeners`` (already bound)."""
        async with (
            open_endpoint(self.keyring, self.addresses, **self.endpoint_options) as ep,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(trio.serve_listeners, self.server.serve, listeners)
            await nursery.start(self.shell.run, ep)
            task_status.started()
