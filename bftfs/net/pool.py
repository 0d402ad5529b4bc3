"""An endpoint's connections: one per node, opened on demand (TCP, the handshake, the view
check when the endpoint has one), the record of nodes that recently refused them, and the
connections :meth:`Pool.stay_connected` keeps open for pushes.

The :class:`~bftfs.net.endpoint.Endpoint` holds one :class:`Pool`; calls, quorum calls and
heartbeats take their connections from it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import trio

from bftfs.ids import NodeId
from bftfs.net.connection import Connection
from bftfs.net.errors import TransportError
from bftfs.net.keepalive import keep_connected
from bftfs.net.moved import announce as announce_moved
from bftfs.net.rtt import CONNECT_K
from bftfs.net.session import SessionRefused
from bftfs.net.suspects import Suspects, connect_patience
from bftfs.net.viewcheck import admitted
from bftfs.net.wires import open_session

if TYPE_CHECKING:
    from bftfs.net.endpoint import Endpoint


class Pool:
    """The connections of one endpoint, one per node (requests are multiplexed by id).

    The handshake's settings (key ring, view number, ``admit``, ``on_peer_view``) and the
    record of each node's liveness and faults are the endpoint's, read at each connect.
    """

    def __init__(self, ep: Endpoint, nursery: trio.Nursery) -> None:
        self.ep = ep
        self._nursery = nursery
        self.conns: dict[NodeId, Connection] = {}
        self._locks: dict[NodeId, trio.Lock] = {}
        self.down_until: dict[NodeId, float] = {}
        self._down_backoff: dict[NodeId, float] = {}
        #: Nodes whose last connection attempt failed (cleared by the next success); quorum
        #: calls try them last.
        self._dead: set[NodeId] = set()
        #: Nodes :meth:`stay_connected` keeps a connection to; set once :meth:`close` ran.
        self._kept: set[NodeId] = set()
        self._closing = False
        #: Nodes whose frames proved them faulty, and connection attempts under way: asked
        #: last, suspects not at once (``net/suspects.py``).
        self.suspects = Suspects()

    def open_to(self, node: NodeId) -> Connection | None:
        """The open connection to ``node``, if there is one (nothing is connected)."""
        conn = self.conns.get(node)
        return None if conn is None or conn.closed else conn

    async def get(self, node: NodeId) -> Connection:
        """The connection to ``node``, opened if there is none.

        Raises:
            TransportError: an unknown node, or one unreachable (recently, or now).
            SessionRefused: the node refuses this principal.
        """
        conn = self.open_to(node)
        if conn is not None:
            return conn
        ep = self.ep
        if node not in ep.addresses:
            raise TransportError(f"unknown node {node}")
        if trio.current_time() < self.down_until.get(node, 0.0):
            raise TransportError(f"node {node} unreachable (recently refused)")
        lock = self._locks.setdefault(node, trio.Lock())
        async with lock:
            conn = self.open_to(node)
            if conn is not None:
                return conn
            if ep.admit is not None:
                conn = await admitted(self._open, node, ep.admit, ep.ids, ep.timeout)
            else:
                conn = await self._open(node)
                if ep.on_peer_view is not None and conn.session.peer_view != ep.view_number:
                    ep.on_peer_view(node, conn.session.peer_view)
            self.conns[node] = conn
            return conn

    async def connect(self, node: NodeId, trouble: Callable[[], None] | None) -> Connection:
        """:meth:`get`, with ``trouble()`` called if the connection is not made within
        ``connect_patience`` of the node's round trip (a node that accepts TCP and never
        answers the handshake: the quorum call waiting asks another at once,
        ``net/suspects.py``)."""
        if trouble is None:
            return await self.get(node)
        scope = trio.CancelScope()

        async def report() -> None:
            with scope:
                await trio.sleep(connect_patience(self.ep.rtt.rto(node)))
                self.suspects.connect_overdue(node)
                trouble()

        self._nursery.start_soon(report)  # the endpoint's: the errors of get stay ours
        try:
            return await self.get(node)
        finally:
            scope.cancel()

    async def _open(self, node: NodeId) -> Connection:
        """A new connection to ``node``, its handshake done and its tasks running."""
        ep = self.ep
        host, port = ep.addresses[node]
        rtt = ep.rtt

        async def tcp() -> trio.SocketStream:
            """The TCP connection, its set-up (one round trip) sampled; the handshake
            (one more, and the keys' work) gets ``CONNECT_K`` RTOs from here if its
            floor is shorter (``net/rtt.py``: a node far away is not unreachable)."""
            start = trio.current_time()
            stream = await trio.open_tcp_stream(host, port)
            now = trio.current_time()
            rtt.sample(node, now - start, now)
            scope.deadline = max(scope.deadline, now + rtt.timeout(node, 0.0, CONNECT_K))
            return stream

        self.suspects.connect_started(node, trio.current_time())
        try:
            with trio.fail_after(rtt.timeout(node, ep.connect_timeout, CONNECT_K)) as scope:
                stream, reader, session = await open_session(
                    tcp,
                    ep.keyring,
                    node,
                    ep.view_number,
                    ep.max_frame,
                )
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as e:
            backoff = min(1.0, self._down_backoff.get(node, 0.01) * 2)
            self._down_backoff[node] = backoff
            self.down_until[node] = trio.current_time() + backoff
            self._dead.add(node)
            ep.liveness.unreachable(node)
            raise TransportError(f"node {node} at {host}:{port} unreachable: {e}") from None
        except SessionRefused:
            # It will not serve this principal (revoked or rekeyed by a view): not a node
            # an operation may wait for, whatever it answers to others.
            self.down_until[node] = trio.current_time() + 0.05
            ep.liveness.unreachable(node)
            raise
        except TransportError:
            self.down_until[node] = trio.current_time() + 0.05
            raise
        finally:
            self.suspects.connect_ended(node)
        self._down_backoff.pop(node, None)
        self.down_until.pop(node, None)
        self._dead.discard(node)
        ep.liveness.connected(node, trio.current_time())
        conn = Connection(node, stream, reader, session, ep.faults, ep.pushed, ep.liveness, ep.rtt)
        conn.on_fault = self.suspect
        self._nursery.start_soon(conn.run)
        return conn

    def down(self, targets: Sequence[NodeId]) -> set[NodeId]:
        """Those of ``targets`` that recently refused connections (quorum calls try them last)."""
        now = trio.current_time()
        down_until = self.down_until
        return {n for n in targets if down_until.get(n, 0.0) > now or n in self._dead}

    def ask_last(self, targets: Sequence[NodeId]) -> set[NodeId]:
        """:meth:`down`, those the endpoint's round trips say are far slower than the
        rest or overdue (``RttTable.ask_last``), suspects and those whose connection
        attempt is stuck (``net/suspects.py``)."""
        ep, now = self.ep, trio.current_time()
        last = self.down(targets) | ep.rtt.ask_last(targets, ep.liveness.asked_at, now)
        suspects = self.suspects
        return last | suspects.suspected(targets, now) | suspects.stuck(targets, now, ep.rtt.rto)

    def suspected(self, targets: Sequence[NodeId]) -> set[NodeId]:
        """Those of ``targets`` whose frames proved them faulty lately: a quorum call asks
        them only when the others do not do (``net/suspects.py``)."""
        return self.suspects.suspected(targets, trio.current_time())

    def suspect(self, node: NodeId, reason: str) -> None:
        """``node`` sent what no correct node sends (``reason``): a suspect from now."""
        self.suspects.suspect(node, reason, trio.current_time())

    def pardon(self, nodes: Sequence[NodeId]) -> None:
        """``nodes``, suspects, answered a quorum call correctly (``Suspects.pardon``)."""
        if nodes:
            self.suspects.pardon(nodes)

    def stay_connected(self, nodes: Sequence[NodeId]) -> None:
        """:meth:`Endpoint.stay_connected <bftfs.net.endpoint.Endpoint.stay_connected>`:
        one task per node in the endpoint's nursery (``net/keepalive.py``)."""
        unknown = [n for n in nodes if n not in self.ep.addresses]
        if unknown:
            raise TransportError(f"unknown nodes {unknown}")
        for node in nodes:
            if node not in self._kept:
                self._kept.add(node)
                self._nursery.start_soon(self._keep_connected, node)

    async def _keep_connected(self, node: NodeId) -> None:
        """:meth:`stay_connected`'s task for one node (``net/keepalive.py``)."""
        await keep_connected(
            functools.partial(self.get, node),
            lambda: self._closing,
            lambda: self.down_until.get(node, 0.0),
        )

    def moved(self, node: NodeId, address: tuple[str, int]) -> None:
        """:meth:`Endpoint.moved <bftfs.net.endpoint.Endpoint.moved>`: the connection to
        the old ``node`` ends, the next one is made to ``address``."""
        self.ep.addresses[node] = address
        self.down_until.pop(node, None)
        conn = self.conns.pop(node, None)
        if conn is not None:
            conn._close()
        announce_moved(self.ep, int(node))

    def close(self) -> None:
        """Close every connection; kept connections are not opened again."""
        self._closing = True
        for conn in list(self.conns.values()):
            conn._close()
        self.conns.clear()
