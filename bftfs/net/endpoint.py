"""The calling side of a principal: one connection per node, calls, and quorum calls.

Requests carry a ``req_id`` chosen by the caller; a resent request keeps its id, so a reply
to any copy completes the call.  The transport does not deduplicate: protocols are
idempotent (PASIS writes by timestamp, Q/U by stored answers), as their channel models
require (Q/U channels may drop and duplicate, L2115-2119).

:meth:`Endpoint.quorum_call` is the primitive both protocols are built on; its decisions
are the pure :class:`~bftfs.net.quorum.QuorumEngine`'s, run by
:class:`~bftfs.net.driver.QuorumDriver`.  The way to the nodes is a
:class:`~bftfs.net.fanout.Fanout` per quorum call (fanout.py): on an open connection a
request is sent directly and the connection's reader task reports the reply (no task per
target); otherwise a task runs :meth:`Endpoint.call`, which connects and resends.  The
connections, one per node, are the endpoint's :class:`~bftfs.net.pool.Pool` (pool.py).

**Batching** (``quorum_call(..., batch=BatchKind(...))``, the Q/U client's rounds): the
first transmissions of concurrent quorum calls to a node share a frame, a batch of the
request batcher (batch.py) written by the endpoint's coalescer (coalesce.py).  The
connections themselves are connection.py's.

**Pushes** (issue 33): a node may send a connected principal a message unasked
(``Server.push``); an endpoint opened with ``on_push`` receives them from its connections'
reader tasks.  A node reaches only principals connected to it, so a client that must hear
from nodes it has not called lately keeps connections to them with
:meth:`Endpoint.stay_connected`.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from bftfs.crypto import KeyRing
from bftfs.ids import NodeId, PrincipalId
from bftfs.net.batch import BatchKind
from bftfs.net.coalesce import Coalescer
from bftfs.net.connection import Connection, PushHandler, Waiter
from bftfs.net.driver import QuorumDriver
from bftfs.net.errors import TransportError
from bftfs.net.fanout import Fanout
from bftfs.net.frames import DEFAULT_MAX_FRAME, REQUEST
from bftfs.net.liveness import Liveness
from bftfs.net.pool import Pool
from bftfs.net.quorum import Linger, QuorumEngine, QuorumResult, live_first
from bftfs.net.rtt import CALL_K, QUORUM_K, RESEND_K, RttTable, bandwidth_delay
from bftfs.net.session import SessionRefused
from bftfs.net.suspects import suspects_last
from bftfs.net.viewcheck import Admit
from bftfs.outcome import Patience, bounded, current_patience, progressed

log = logging.getLogger(__name__)


class Endpoint:
    """The calling side of one principal: connections to nodes, calls, quorum calls.

    Create with :func:`open_endpoint`; calls may run concurrently from many tasks and share
    one connection per node (requests are multiplexed by id).
    """

    def __init__(
        self,
        keyring: KeyRing,
        addresses: Mapping[NodeId, tuple[str, int]],
        nursery: trio.Nursery,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        timeout: float = 10.0,
        resend_after: float = 1.0,
        connect_timeout: float = 2.0,
        coalesce_window: float = 0.001,
        on_push: PushHandler | None = None,
    ) -> None:
        self.keyring = keyring
        #: Receives each authenticated push with the node that sent it (connection.py); may
        #: be set or replaced later, and then applies to the open connections too.
        self.on_push = on_push
        #: The number of the view this principal holds, sent in every handshake, and who
        #: hears of each node's (docs/membership.md; 0 and None: no views).
        self.view_number = 0
        self.on_peer_view: Callable[[NodeId, int], None] | None = None
        #: Checks each new session before any request uses it (``net/viewcheck.py``); with
        #: it set, a handshake's view number goes to it, not to ``on_peer_view``.
        self.admit: Admit | None = None
        #: Told ``(node, why)`` when a node refuses this principal's handshake
        #: (:class:`SessionRefused`: revoked or rekeyed by a view); the client's view
        #: tracker judges whether this client is revoked (``membership/client.py``).
        self.on_refused: Callable[[NodeId, str], None] | None = None
        self.addresses = dict(addresses)
        self.max_frame = max_frame
        self.timeout = timeout
        self.resend_after = resend_after
        self.connect_timeout = connect_timeout
        self._nursery = nursery
        #: The connections to the nodes, one each (``net/pool.py``).
        self.pool = Pool(self, nursery)
        #: Which nodes are alive and making progress (``net/liveness.py``), and how many
        #: must be for the cluster to be available (a quorum: ``n - t``; None: all).
        self.liveness = Liveness()
        #: Measured round trips (``net/rtt.py``): stretched timeouts, far nodes asked last.
        self.rtt = RttTable()
        self.needed: int | None = None
        #: Nodes with a heartbeat outstanding (at most one each: :meth:`_heartbeat`).
        self._pinging: set[NodeId] = set()
        #: Heartbeats sent.
        self.heartbeats = 0
        #: Request ids, one sequence for every request of this principal's connections.
        self.ids = itertools.count(1)
        self.sent = 0
        self.resent = 0
        #: Resends not made because the connection still held unsent bytes
        #: (``Connection.resend_nowait``).
        self.resends_held = 0
        #: The outboxes of coalesced first transmissions and their flusher (coalesce.py).
        self.coalescer = Coalescer(nursery, self.ids, coalesce_window)
        #: Faults seen per node: ``(node, kind)`` -> count, kind ``timeout`` (a request not
        #: answered in time), ``unreachable`` (a request given up because no connection
        #: could be made), ``push_handler_failed`` (``on_push`` raised), ``frame_unexpected``
        #: (a message neither reply nor push) or ``frame_<reason>``, a frame rejected
        #: (``frame_bad_mac``,
        #: ``frame_replay``, ...).
        self.faults: Counter[tuple[int, str]] = Counter()

    @property
    def pid(self) -> PrincipalId:
        return self.keyring.me.pid

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` in the background for the endpoint's lifetime (a view
        tracker's fetch, started from a synchronous callback)."""
        self._nursery.start_soon(fn, *args)

    @property
    def coalesce_window(self) -> float:
        """Longest a coalesced request waits for the loop to go idle before it is written
        anyway (a loop that never idles must not hold requests back)."""
        return self.coalescer.window

    @coalesce_window.setter
    def coalesce_window(self, window: float) -> None:
        self.coalescer.window = window

    @property
    def batches(self) -> int:
        """Frames written carrying several coalesced requests."""
        return self.coalescer.batches

    @property
    def batched(self) -> int:
        """Requests written in those frames."""
        return self.coalescer.batched

    async def call(
        self,
        node: NodeId,
        kind: str,
        payload: Any,
        *,
        timeout: float | None = None,
        on_trouble: Callable[[], None] | None = None,
        keep: Callable[[], bool] | None = None,
    ) -> Any:
        """Send one request to ``node`` and return its reply, resending on loss.

        Args:
            on_trouble: called once when the node cannot be reached, is slow to connect
                or does not answer within the resend interval (quorum calls probe another).
            keep: past ``timeout``, the call goes on waiting (resending) while ``keep()``
                holds and the node is live (:meth:`node_live`): a quorum call that still
                wants the answer.  By default, while the current operation's patience
                would (:meth:`linger`): slow is not unavailable (issue 60).

        Raises:
            TransportError: no reply within ``timeout`` (default: the endpoint's).
            RemoteError: the node's handler refused the request.
        """
        now = started = trio.current_time()
        on_trouble = _once(on_trouble)  # the connect's timer may report it too
        p = self._attach()
        floor = self.timeout if timeout is None else timeout
        deadline = now + (timeout := bounded(self.rtt.timeout(node, floor, CALL_K), now))
        req_id = next(self.ids)
        r = _Request([REQUEST, req_id, kind, payload], Waiter())
        interval = self.rtt.timeout(node, self.resend_after, RESEND_K)
        last_error, first = "no reply", True
        try:
            while True:
                now = trio.current_time()
                if now >= deadline:  # a round trip measured since (the connection's)?
                    deadline = _stretched(self.rtt, node, floor, started, deadline)
                if now >= deadline and self._keeps(node, now, keep, p):
                    deadline = now + max(timeout, self.resend_after)
                if now >= deadline:
                    unreachable = r.conn is None or r.conn.closed
                    self.faults[(int(node), "unreachable" if unreachable else "timeout")] += 1
                    raise TransportError(f"node {node}: {last_error} within {timeout:g}s")
                if not first and on_trouble is not None:
                    on_trouble()
                    on_trouble = None
                try:
                    went = await _transmit(self, node, req_id, r, on_trouble)
                except SessionRefused:
                    raise  # revoked by a view: resending cannot help (a TransportError too)
                except (TransportError, trio.ClosedResourceError) as e:
                    last_error = str(e) if isinstance(e, TransportError) else "connection closed"
                    first = False
                    if on_trouble is not None:  # unreachable: let a quorum call probe now
                        on_trouble()
                        on_trouble = None
                    await trio.sleep(min(interval, max(0.0, deadline - now)))
                    interval = min(interval * 2, max(5.0, interval))
                    continue
                if went and first:
                    self.sent += 1
                elif went:
                    self.resent += 1
                first = False
                waiter = r.waiter
                if deadline < now + interval:  # connected since: its round trip measured
                    deadline = _stretched(self.rtt, node, floor, started, deadline)
                await _wait_reply(r.conn, waiter, now + interval, deadline, interval)
                if waiter.event.is_set() and not waiter.lost:
                    progressed(trio.current_time())  # an answer, even a refusal
                    return waiter.answer()
                last_error = "connection lost" if waiter.lost else "no reply"
                if waiter.lost and self.pool.suspected([node]):  # a new copy costs as much
                    raise TransportError(f"node {node}: connection lost, and it is suspect")
                interval = min(interval * 2, max(5.0, interval))
        finally:
            if r.conn is not None:
                r.conn.pending.pop(req_id, None)

    # Liveness: slow is not unavailable (issue 60) ------------------------------------------

    def node_live(self, node: NodeId, now: float) -> bool:
        """Whether ``node`` is alive and making progress (``net/liveness.py``): not
        refusing connections, and not silent since it was asked something for several of
        its own response times - answering the heartbeat it is sent when silent while
        asked something counts (``net/liveness.py``)."""
        liveness = self.liveness
        if node not in self._pinging and liveness.needs_ping(node, now):
            self._heartbeat(node)
        return liveness.live(node, now)

    def usual_wait(self, node: NodeId) -> float:
        """Several of ``node``'s own response times (``Liveness.usual``)."""
        return self.liveness.usual(node)

    def _heartbeat(self, node: NodeId) -> None:
        """Send ``node`` a ``ping`` on its open connection (none: nothing to do, a call
        is connecting), unless one is outstanding; its answer is heard by the connection
        like any other (``Connection``, ``Liveness.heard``)."""
        conn = self.pool.open_to(node)
        if conn is None:
            return
        req_id = next(self.ids)
        waiter = Waiter()
        waiter.notify = lambda: self._pinging.discard(node)
        conn.pending[req_id] = waiter
        try:
            conn.send_nowait([REQUEST, req_id, "ping", None])
        except trio.ClosedResourceError:
            conn.pending.pop(req_id, None)
            return
        self._pinging.add(node)
        self.heartbeats += 1

    def live_nodes(self, now: float) -> list[NodeId]:
        """The nodes :meth:`node_live` holds for."""
        return [n for n in self.addresses if self.node_live(n, now)]

    def quorum_live(self, now: float) -> bool:
        """Whether at least :attr:`needed` nodes are live: the cluster can make progress,
        so an operation waits for it, however slow (a patience's ``live``)."""
        needed = len(self.addresses) if self.needed is None else self.needed
        live = 0
        for node in self.addresses:
            if self.node_live(node, now):
                live += 1
                if live >= needed:
                    return True
        return False

    def _attach(self) -> Patience | None:
        """The current operation's patience, told how to see this cluster's liveness."""
        p = current_patience()
        if p is not None and p.live is None and not p.soft:
            p.live = self.quorum_live
        return p

    def linger(self, p: Patience | None) -> Linger | None:
        """How a quorum call of the operation ``p`` judges, at its deadline, whether to go
        on waiting for its outstanding targets: while ``p`` (refreshed by the cluster's
        liveness) has time left and one of them is live.  None (no patience, or a soft
        one): the call ends at its deadline, as the transport's timeouts say."""
        if p is None or p.soft:
            return None
        if p.live is None:
            p.live = self.quorum_live

        def linger(outstanding: Collection[NodeId], now: float) -> bool:
            if p.expired(now):
                return False
            return any(self.node_live(n, now) for n in outstanding)

        return linger

    def _keeps(
        self, node: NodeId, now: float, keep: Callable[[], bool] | None, p: Patience | None
    ) -> bool:
        """Whether a call to ``node`` past its deadline goes on waiting (:meth:`call`):
        while the operation would (:meth:`linger`) and, with ``keep``, its caller wants
        the answer."""
        linger = self.linger(p)
        if linger is None or not linger((node,), now):
            return False
        return keep is None or keep()

    def ask_last(self, targets: Sequence[NodeId]) -> set[NodeId]:
        """``targets`` to ask last: refusing connections, far slower or overdue (``net/rtt.py``),
        suspect or stuck connecting (``net/suspects.py``)."""
        return self.pool.ask_last(targets)

    def bandwidth_delay(self, m: int) -> tuple[float, float]:
        """The data rate (bytes/s) and round (s) a read of ``m`` fragments gets over this
        endpoint's open connections (``rtt.bandwidth_delay``: the rate their big replies
        arrive at, their shortest round trips): what read-ahead is sized from."""
        links = [(c.arrival.rate, self.rtt.least(n)) for n, c in self.pool.conns.items()]
        return bandwidth_delay(links, m)

    def refusing(self, targets: Sequence[NodeId]) -> set[NodeId]:
        """``targets`` that recently refused connections (``Pool.down``): a round that waits
        past a quorum for every node need not wait for these, whose calls only retry
        connecting until the round's timeout."""
        return self.pool.down(targets)

    def suspected(self, targets: Sequence[NodeId]) -> set[NodeId]:
        """``targets`` quorum calls hold in reserve (``Pool.suspected``)."""
        return self.pool.suspected(targets)

    def suspect(self, node: NodeId, reason: str) -> None:
        """``node`` sent what no correct node sends (``Pool.suspect``)."""
        self.pool.suspect(node, reason)

    def pardon(self, nodes: Sequence[NodeId]) -> None:
        """``nodes`` answered correctly: no longer suspects (``Pool.pardon``)."""
        self.pool.pardon(nodes)

    async def quorum_call(
        self,
        targets: Sequence[NodeId],
        kind: str,
        payload: Any | Callable[[NodeId], Any],
        *,
        enough: Callable[[Mapping[NodeId, Any]], bool],
        accept: Callable[[NodeId, Any], bool] | None = None,
        initial: int | None = None,
        probe_after: float = 0.5,
        timeout: float | None = None,
        batch: BatchKind | None = None,
        renew_at: int | None = None,
    ) -> QuorumResult:
        """Send to ``targets`` and return once ``enough`` holds over the valid replies.

        Requests go to the first ``initial`` targets (all by default; nodes that recently
        refused connections last, suspects held in reserve: ``net/suspects.py``).  Another
        target is probed whenever one fails, refuses, sends an invalid reply, cannot be
        reached, or ``probe_after`` seconds pass without ``enough`` holding (the rules are
        :class:`~bftfs.net.quorum.QuorumEngine`'s).  Requests still in flight when this
        returns keep running in the background (writes complete at the stragglers; their
        replies are dropped).

        Args:
            payload: the request, or a function giving each node's request.
            batch: let the first transmission to each node share a frame with the other
                requests of this batch kind queued for it in the same scheduler pass
                (module docstring); the decisions are the same either way.
            renew_at: once this many nodes answered, each answer renews the operation's
                patience, also when the caller cuts the call short
                (:class:`~bftfs.net.driver.QuorumDriver`).

        Raises:
            QuorumUnavailable: every target answered or failed, or ``timeout`` passed, and
                ``enough`` never held. The exception carries the partial result.
        """
        now = trio.current_time()
        p = self._attach()
        timeout = self.timeout if timeout is None else timeout
        timeout = bounded(self.rtt.quorum_timeout(targets, timeout, QUORUM_K), now)
        targets = live_first(targets, self.ask_last(targets))
        targets, reserve = suspects_last(targets, self.suspected(targets))
        engine = QuorumEngine(
            targets,
            label=kind,
            enough=enough,
            accept=accept,
            initial=initial,
            reserve=reserve,
            probe_after=probe_after,
            resend_after=self.resend_after,
            timeout=timeout,
            now=now,
            linger=self.linger(p),
        )
        driver = QuorumDriver(engine, renew_at=renew_at)
        make = payload if callable(payload) else (lambda _n: payload)
        fanout = Fanout(self, driver, kind, make, engine.deadline, batch)
        coalesced = int(batch is not None)  # a batch kind's call lets the coalescer wait
        self.coalescer.calls += coalesced
        try:
            result = await driver.run(fanout)
        finally:
            self.coalescer.calls -= coalesced
            self.pardon(engine.reserve_answered)
        progressed(trio.current_time())
        return result

    def pushed(self, node: NodeId, body: Any) -> None:
        """A connection's push, to :attr:`on_push` as it is now (none: ignored); a node's
        ``{"view": N}`` (it took view ``N``: a node of the view was replaced) goes to
        :attr:`on_peer_view` instead, as a handshake's number would."""
        if isinstance(body, dict) and len(body) == 1 and "view" in body:
            number = body["view"]
            valid = isinstance(number, int) and not isinstance(number, bool) and number >= 0
            if valid and self.on_peer_view is not None and number != self.view_number:
                self.on_peer_view(node, number)
            return
        on_push = self.on_push
        if on_push is not None:
            on_push(node, body)

    def stay_connected(self, nodes: Sequence[NodeId]) -> None:
        """Keep a connection open to each of ``nodes`` until the endpoint closes, so that
        their pushes reach us even when we have not called them lately.

        A method, not a task for the caller: one task per node runs in the endpoint's own
        nursery (it ends with the endpoint), reconnecting as ``net/keepalive.py`` says.
        Calling it again for a node already kept does nothing.

        Raises:
            TransportError: a node is not in the endpoint's addresses.
        """
        self.pool.stay_connected(nodes)

    def moved(self, node: NodeId, address: tuple[str, int]) -> None:
        """Node ``node`` is at ``address`` now, or has a new key (a new view replaced it):
        the connection to the old one ends (its waiting calls go on as after any lost
        connection) and the next one is made there, under the key ring's key."""
        self.pool.moved(node, address)

    async def aclose(self) -> None:
        self.pool.close()


@dataclass(slots=True)
class _Request:
    """One :meth:`Endpoint.call`'s request and where it went."""

    msg: list[Any]
    waiter: Waiter
    #: The node's connection when last tried, and the one the request last went out on.
    conn: Connection | None = None
    sent_on: Connection | None = None


async def _transmit(
    ep: Endpoint, node: NodeId, req_id: int, r: _Request, trouble: Callable[[], None] | None
) -> bool:
    """One transmission of :meth:`Endpoint.call`'s request ``r``: on the node's connection
    (made if need be, ``trouble`` reported if that takes long: ``Pool.connect``), written
    on a new connection, resent on the one it went out on (False: not resent, the
    connection still holds unsent bytes).

    Raises:
        SessionRefused: the node refuses this principal (revoked by a view: resending
            cannot help, and the caller is told why).
        TransportError, trio.ClosedResourceError: not sent; the call tries again.
    """
    try:
        r.conn = conn = ep.pool.open_to(node) or await ep.pool.connect(node, trouble)
    except SessionRefused as e:
        ep.faults[(int(node), "refused")] += 1
        if ep.on_refused is not None:
            ep.on_refused(node, str(e))
        raise
    if r.waiter.event.is_set():  # lost with the previous connection
        r.waiter = Waiter()
    conn.pending[req_id] = r.waiter
    if conn is not r.sent_on:
        conn.send_nowait(r.msg)
        r.sent_on = conn
        return True
    if conn.resend_nowait(r.msg):
        return True
    ep.resends_held += 1
    return False


def _once(fn: Callable[[], None] | None) -> Callable[[], None] | None:
    """``fn`` that does something the first time it is called only (None: None)."""
    if fn is None:
        return None
    done = [False]

    def once() -> None:
        if not done[0]:
            done[0] = True
            fn()

    return once


def _stretched(rtt: RttTable, node: NodeId, floor: float, started: float, deadline: float) -> float:
    """The deadline of a call to ``node`` started at ``started`` with the timeout
    ``floor``, by the round trips measured until now (``net/rtt.py``), cut to the
    operation's patience: ``deadline`` unless that is later and still ahead."""
    now = trio.current_time()
    want = started + rtt.timeout(node, floor, CALL_K)
    if want <= max(deadline, now):
        return deadline
    more = bounded(want - now, now)
    return now + more if more > 0 and now + more > deadline else deadline


@asynccontextmanager
async def open_endpoint(
    keyring: KeyRing, addresses: Mapping[NodeId, tuple[str, int]], **kwargs: Any
) -> AsyncIterator[Endpoint]:
    """An :class:`Endpoint` whose connections and stragglers live in their own nursery."""
    async with trio.open_nursery() as nursery:
        ep = Endpoint(keyring, addresses, nursery, **kwargs)
        try:
            yield ep
        finally:
            await ep.aclose()
            nursery.cancel_scope.cancel()


async def _wait_reply(
    conn: Connection | None, waiter: Waiter, resend_at: float, deadline: float, interval: float
) -> None:
    """Wait for ``waiter``'s reply until ``resend_at`` (or ``deadline``), then, up to
    ``deadline``, while ``conn``'s big replies keep arriving (``rtt.Arrival``): the one
    awaited may be among them or behind them, and a resend now would only have the node
    send it again on the same slow link (docs/wan.md)."""
    with trio.move_on_at(min(deadline, resend_at)):
        await waiter.event.wait()
    while conn is not None and not waiter.event.is_set():
        now = trio.current_time()
        hold = conn.arrival.hold(now, interval)
        if hold <= 0 or now >= deadline:
            return
        with trio.move_on_at(min(deadline, now + hold)):
            await waiter.event.wait()
