"""The calling side of a principal: one connection per node, calls, and quorum calls.

Requests carry a ``req_id`` chosen by the caller; a resent request keeps its id, so a reply
to any copy completes the call.  The transport does not deduplicate: protocols are
idempotent (PASIS writes by timestamp, Q/U by stored answers), as their channel models
require (Q/U channels may drop and duplicate, L2115-2119).

:meth:`Endpoint.quorum_call` is the primitive both protocols are built on; its decisions
are the pure :class:`~bftfs.net.quorum.QuorumEngine`'s, run by
:class:`~bftfs.net.driver.QuorumDriver`.  What this module adds is the way to the nodes
(:class:`_Fanout`): on an open connection a request is sent directly and the connection's
reader task reports the reply (no task per target); otherwise a task runs :meth:`call`,
which connects and resends.  Requests still in flight when a call returns finish in the
background (:meth:`Endpoint._finish`).

**Coalescing** (``quorum_call(..., batch=BatchKind(...))``, the Q/U client's rounds): while
another such call runs, a direct request is not written at once but put in the node's
outbox (a call running alone writes at once: it has nothing to share a frame with, and
waiting would cost it a task switch and a poll); the endpoint's flusher
task, woken by the first request queued, waits until no other task can run (at most
``coalesce_window``) and writes each node's outbox as one frame: a lone request as itself,
several as one request of the batch kind whose reply is split back onto the requests' own
waiters.  Each request keeps its own id
and waiter, so resends (of the request alone, under its own id), stragglers and lost
connections are handled exactly as without coalescing; only the first transmission shares a
frame.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio
import trio.testing

from bftfs.crypto import KeyRing
from bftfs.ids import NodeId, PrincipalId
from bftfs.net.driver import QuorumDriver
from bftfs.net.errors import FrameError, RemoteError, TransportError
from bftfs.net.frames import (
    DEFAULT_MAX_FRAME,
    REPLY,
    REQUEST,
    STATUS_ERROR,
    STATUS_OK,
    FrameReader,
    FrameWriter,
)
from bftfs.net.quorum import QuorumEngine, QuorumResult, Verdict, live_first
from bftfs.net.session import Session, client_handshake
from bftfs.outcome import bounded, progressed

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchKind:
    """How requests to one node may share a frame: the request kind that carries them
    (the node runs its items, ``node/batching.py``) and the most items one may hold."""

    kind: str
    max_items: int
    #: A request of more (payload bytes, when the payload is bytes) goes in a frame of its
    #: own, and a batch is closed before it would pass this: frames stay far below the
    #: frame limit however large single requests are.
    max_bytes: int = 1 << 20


class _Waiter:
    """Where a reply for one request id lands."""

    __slots__ = ("event", "status", "body", "lost", "notify")

    def __init__(self, notify: Callable[[], None] | None = None) -> None:
        self.event = trio.Event()
        self.status: int | None = None
        self.body: Any = None
        self.lost = False
        #: Called when the waiter resolves (quorum calls collect replies this way).
        self.notify = notify

    def resolve(self, status: int | None, body: Any, *, lost: bool = False) -> None:
        if self.event.is_set():
            return
        self.status, self.body, self.lost = status, body, lost
        self.event.set()
        if self.notify is not None:
            self.notify()

    def outcome(self) -> tuple[bool, Any]:
        """``(True, reply)`` or ``(False, reason)`` once resolved."""
        if self.lost:
            return False, "connection lost"
        if self.status == STATUS_OK:
            return True, self.body
        body = self.body
        if isinstance(body, list) and len(body) == 2:
            return False, f"refused: {body[0]}: {body[1]}"
        return False, "refused: malformed error reply"


class _Connection:
    """A client connection to one node: a writer task batching frames, a reader task."""

    def __init__(
        self,
        node: NodeId,
        stream: trio.SocketStream,
        reader: FrameReader,
        session: Session,
        faults: Counter[tuple[int, str]],
    ) -> None:
        self.node = node
        self.faults = faults
        self.stream = stream
        self.reader = reader
        self.session = session
        self.pending: dict[int, _Waiter] = {}
        self.closed = False
        self._writer = FrameWriter(stream)

    def send_nowait(self, msg: list[Any]) -> None:
        """Send (or queue) a message without blocking."""
        if self.closed:
            raise trio.ClosedResourceError
        try:
            self._writer.write(self.session.seal(msg))
        except trio.ClosedResourceError:
            self._close()
            raise

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer.run)
                await self._reader()
                nursery.cancel_scope.cancel()
        finally:
            self._close()

    async def _reader(self) -> None:
        try:
            while True:
                frame = await self.reader.read()
                if frame is None:
                    return
                try:
                    seq, kind, req_id, status, body = self.session.open(frame)
                except FrameError as e:
                    log.warning("node %s: dropped reply frame (%s)", self.node, e)
                    self.faults[(int(self.node), f"frame_{e.reason}")] += 1
                    if e.reason == "bad_mac":
                        continue
                    return
                waiter = self.pending.pop(req_id, None)
                if kind == REPLY and waiter is not None:
                    waiter.resolve(status, body)
        except (FrameError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._writer.close()
        pending = list(self.pending.values())
        self.pending.clear()
        for w in pending:
            w.resolve(None, None, lost=True)
        self.stream.socket.close()


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
    ) -> None:
        self.keyring = keyring
        #: Longest a coalesced request waits for the loop to go idle before it is written
        #: anyway (a loop that never idles must not hold requests back).
        self.coalesce_window = coalesce_window
        self.addresses = dict(addresses)
        self.max_frame = max_frame
        self.timeout = timeout
        self.resend_after = resend_after
        self.connect_timeout = connect_timeout
        self._nursery = nursery
        self._conns: dict[NodeId, _Connection] = {}
        self._locks: dict[NodeId, trio.Lock] = {}
        self._down_until: dict[NodeId, float] = {}
        self._down_backoff: dict[NodeId, float] = {}
        #: Nodes whose last connection attempt failed (cleared by the next success); quorum
        #: calls try them last.
        self._dead: set[NodeId] = set()
        self._ids = itertools.count(1)
        self.sent = 0
        self.resent = 0
        #: Coalesced requests waiting for the flusher: node -> (connection, batch kind,
        #: request id, waiter, kind, payload), in submission order.
        self._outbox: dict[NodeId, list[_Queued]] = {}
        self._flush_wanted: trio.Event | None = None
        #: Batch requests sent and not yet answered, oldest first: a batch's own waiter is
        #: dropped once its requests are over even if the node never answers it (a
        #: withholding node must not make ``pending`` grow; :meth:`_sweep`).
        self._carriers: deque[tuple[_Connection, int, list[_Queued]]] = deque()
        self._flusher_started = False
        #: Frames the flusher wrote carrying several requests, and the requests in them.
        self.batches = 0
        self.batched = 0
        #: Quorum calls with a batch kind running now: a call's requests are coalesced only
        #: while another runs (or requests wait in an outbox); a lone call writes at once.
        self._coalescing = 0
        #: Faults seen per node: ``(node, kind)`` -> count, kind ``timeout`` (a request not
        #: answered in time), ``unreachable`` (a request given up because no connection
        #: could be made) or ``frame_<reason>``, a reply frame rejected (``frame_bad_mac``,
        #: ``frame_replay``, ...).
        self.faults: Counter[tuple[int, str]] = Counter()

    @property
    def pid(self) -> PrincipalId:
        return self.keyring.me.pid

    async def _connection(self, node: NodeId) -> _Connection:
        conn = self._conns.get(node)
        if conn is not None and not conn.closed:
            return conn
        if node not in self.addresses:
            raise TransportError(f"unknown node {node}")
        if trio.current_time() < self._down_until.get(node, 0.0):
            raise TransportError(f"node {node} unreachable (recently refused)")
        lock = self._locks.setdefault(node, trio.Lock())
        async with lock:
            conn = self._conns.get(node)
            if conn is not None and not conn.closed:
                return conn
            host, port = self.addresses[node]
            try:
                with trio.fail_after(self.connect_timeout):
                    stream = await trio.open_tcp_stream(host, port)
                    try:
                        reader = FrameReader(stream, self.max_frame)
                        session = await client_handshake(stream, reader, self.keyring, node)
                    except BaseException:
                        stream.socket.close()
                        raise
            except (OSError, trio.TooSlowError, trio.BrokenResourceError) as e:
                backoff = min(1.0, self._down_backoff.get(node, 0.01) * 2)
                self._down_backoff[node] = backoff
                self._down_until[node] = trio.current_time() + backoff
                self._dead.add(node)
                raise TransportError(f"node {node} at {host}:{port} unreachable: {e}") from None
            except TransportError:
                self._down_until[node] = trio.current_time() + 0.05
                raise
            self._down_backoff.pop(node, None)
            self._down_until.pop(node, None)
            self._dead.discard(node)
            conn = _Connection(node, stream, reader, session, self.faults)
            self._conns[node] = conn
            self._nursery.start_soon(conn.run)
            return conn

    async def call(
        self,
        node: NodeId,
        kind: str,
        payload: Any,
        *,
        timeout: float | None = None,
        on_trouble: Callable[[], None] | None = None,
    ) -> Any:
        """Send one request to ``node`` and return its reply, resending on loss.

        Args:
            on_trouble: called (once) the first time the node cannot be reached or does not
                answer within the resend interval; quorum calls use it to probe another node
                early instead of waiting.

        Raises:
            TransportError: no reply within ``timeout`` (default: the endpoint's).
            RemoteError: the node's handler refused the request.
        """
        now = trio.current_time()
        timeout = bounded(self.timeout if timeout is None else timeout, now)
        deadline = now + timeout
        req_id = next(self._ids)
        interval = self.resend_after
        last_error = "no reply"
        first = True
        conn: _Connection | None = None
        waiter = _Waiter()
        try:
            while True:
                now = trio.current_time()
                if now >= deadline:
                    unreachable = conn is None or conn.closed
                    self.faults[(int(node), "unreachable" if unreachable else "timeout")] += 1
                    raise TransportError(f"node {node}: {last_error} within {timeout:g}s")
                if not first and on_trouble is not None:
                    on_trouble()
                    on_trouble = None
                try:
                    conn = await self._connection(node)
                    if waiter.event.is_set():  # lost with the previous connection
                        waiter = _Waiter()
                    conn.pending[req_id] = waiter
                    conn.send_nowait([REQUEST, req_id, kind, payload])
                except (TransportError, trio.ClosedResourceError) as e:
                    last_error = str(e) if isinstance(e, TransportError) else "connection closed"
                    first = False
                    if on_trouble is not None:  # unreachable: let a quorum call probe now
                        on_trouble()
                        on_trouble = None
                    await trio.sleep(min(interval, max(0.0, deadline - now)))
                    interval = min(interval * 2, 5.0)
                    continue
                if first:
                    self.sent += 1
                else:
                    self.resent += 1
                first = False
                with trio.move_on_at(min(deadline, now + interval)):
                    await waiter.event.wait()
                if waiter.event.is_set() and not waiter.lost:
                    progressed(trio.current_time())  # an answer, even a refusal
                    if waiter.status == STATUS_OK:
                        return waiter.body
                    body = waiter.body
                    if isinstance(body, list) and len(body) == 2:
                        raise RemoteError(str(body[0]), str(body[1]))
                    raise RemoteError("malformed", "error reply of unknown shape")
                last_error = "connection lost" if waiter.lost else "no reply"
                interval = min(interval * 2, 5.0)
        finally:
            if conn is not None:
                conn.pending.pop(req_id, None)

    def unreachable(self, targets: Sequence[NodeId]) -> set[NodeId]:
        """Those of ``targets`` that recently refused connections: a caller choosing which
        nodes to ask first (a reader its data fragments' nodes) leaves them for last."""
        return self._down(targets)

    def _down(self, targets: Sequence[NodeId]) -> set[NodeId]:
        """Those of ``targets`` that recently refused connections (quorum calls try them last)."""
        now = trio.current_time()
        down_until = self._down_until
        return {n for n in targets if down_until.get(n, 0.0) > now or n in self._dead}

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
    ) -> QuorumResult:
        """Send to ``targets`` and return once ``enough`` holds over the valid replies.

        Requests go to the first ``initial`` targets (all by default; nodes that recently
        refused connections last).  Another target is probed whenever one fails, refuses,
        sends an invalid reply, cannot be reached, or ``probe_after`` seconds pass without
        ``enough`` holding (the rules are :class:`~bftfs.net.quorum.QuorumEngine`'s).
        Requests still in flight when this returns keep running in the background (writes
        complete at the stragglers; their replies are dropped).

        Args:
            payload: the request, or a function giving each node's request.
            batch: let the first transmission to each node share a frame with the other
                requests of this batch kind queued for it in the same scheduler pass
                (module docstring); the decisions are the same either way.

        Raises:
            QuorumUnavailable: every target answered or failed, or ``timeout`` passed, and
                ``enough`` never held. The exception carries the partial result.
        """
        now = trio.current_time()
        timeout = bounded(self.timeout if timeout is None else timeout, now)
        targets = live_first(targets, self._down(targets))
        engine = QuorumEngine(
            targets,
            label=kind,
            enough=enough,
            accept=accept,
            initial=initial,
            probe_after=probe_after,
            resend_after=self.resend_after,
            timeout=timeout,
            now=now,
        )
        driver = QuorumDriver(engine)
        make = payload if callable(payload) else (lambda _n: payload)
        fanout = _Fanout(self, driver, kind, make, engine.deadline, batch)
        if batch is None:
            result = await driver.run(fanout)
        else:
            self._coalescing += 1
            try:
                result = await driver.run(fanout)
            finally:
                self._coalescing -= 1
        progressed(trio.current_time())
        return result

    # Coalescing ----------------------------------------------------------------------------

    def _enqueue(
        self,
        conn: _Connection,
        batch: BatchKind,
        req_id: int,
        waiter: _Waiter,
        kind: str,
        value: Any,
    ) -> None:
        """Queue a direct request (its waiter already pending) for the flusher."""
        queue = self._outbox.get(conn.node)
        if queue is None:
            queue = self._outbox[conn.node] = []
        queue.append((conn, batch, req_id, waiter, kind, value))
        if not self._flusher_started:
            self._flusher_started = True
            self._nursery.start_soon(self._flusher)
        wanted = self._flush_wanted
        if wanted is not None:
            self._flush_wanted = None
            wanted.set()

    async def _flusher(self) -> None:
        """Write the outboxes whenever requests were queued.  Woken by the first of them,
        it waits until no task can run (or :attr:`coalesce_window` passed), so that every
        task with work to do - including one that the next poll of the descriptors wakes,
        such as pyfuse3's next worker reading the kernel's next request, which takes two
        scheduler passes after the one that queued - has queued its requests too.  A lone
        request on an idle loop waits one extra poll of the descriptors, no more."""
        while True:
            self._flush()
            if self._outbox:  # queued while flushing (a send found its connection closed)
                await trio.lowlevel.checkpoint()
                continue
            wanted = self._flush_wanted = trio.Event()
            await wanted.wait()
            with trio.move_on_after(self.coalesce_window):
                await trio.testing.wait_all_tasks_blocked()

    def _sweep(self) -> None:
        """Forget the oldest batch requests that were answered, or whose requests are all
        over (answered alone after a resend, or given up); stop at the first still needed."""
        carriers = self._carriers
        while carriers:
            conn, batch_id, items = carriers[0]
            if batch_id in conn.pending and any(
                conn.pending.get(q[2]) is q[3] and not q[3].event.is_set() for q in items
            ):
                return
            carriers.popleft()
            conn.pending.pop(batch_id, None)

    def _flush(self) -> None:
        self._sweep()
        outbox, self._outbox = self._outbox, {}
        for queue in outbox.values():
            live = [q for q in queue if q[0].pending.get(q[2]) is q[3] and not q[3].event.is_set()]
            if not live:
                continue  # every call settled before its request went out
            if len(live) == 1:
                conn, _b, req_id, _w, kind, value = live[0]
                with contextlib.suppress(trio.ClosedResourceError):  # waiters resolved lost
                    conn.send_nowait([REQUEST, req_id, kind, value])
                continue
            by_kind: dict[tuple[int, str], list[_Queued]] = {}
            for q in live:  # one connection per node; a node may get several batch kinds
                by_kind.setdefault((id(q[0]), q[1].kind), []).append(q)
            for group in by_kind.values():
                batch = group[0][1]
                chunk: list[_Queued] = []
                size = 0
                for q in group:
                    value = q[5]
                    cost = len(value) if isinstance(value, bytes | bytearray) else 256
                    if chunk and (len(chunk) >= batch.max_items or size + cost > batch.max_bytes):
                        self._send_batch(chunk)
                        chunk, size = [], 0
                    chunk.append(q)
                    size += cost
                if chunk:
                    self._send_batch(chunk)

    def _send_batch(self, items: list[_Queued]) -> None:
        conn, batch = items[0][0], items[0][1]
        if len(items) == 1:
            _c, _b, req_id, _w, kind, value = items[0]
            with contextlib.suppress(trio.ClosedResourceError):
                conn.send_nowait([REQUEST, req_id, kind, value])
            return
        batch_id = next(self._ids)
        carrier = _Waiter()
        carrier.notify = lambda: _split(conn, carrier, items)
        conn.pending[batch_id] = carrier
        body = [[q[4], q[5]] for q in items]
        try:
            conn.send_nowait([REQUEST, batch_id, batch.kind, body])
        except trio.ClosedResourceError:
            return  # every waiter was resolved as lost with the connection
        self.batches += 1
        self.batched += len(items)
        self._carriers.append((conn, batch_id, items))

    async def _finish(
        self,
        node: NodeId,
        kind: str,
        conn: _Connection,
        req_id: int,
        waiter: _Waiter,
        value: Any,
        deadline: float,
    ) -> None:
        """Let a straggler of a quorum call complete: resend until answered or timed out."""
        interval = self.resend_after
        try:
            while not waiter.event.is_set():
                now = trio.current_time()
                if now >= deadline:
                    self.faults[(int(node), "timeout")] += 1
                    return
                with trio.move_on_at(min(deadline, now + interval)):
                    await waiter.event.wait()
                if waiter.event.is_set() or conn.closed:
                    break
                with contextlib.suppress(trio.ClosedResourceError):
                    conn.send_nowait([REQUEST, req_id, kind, value])
                    self.resent += 1
                interval = min(interval * 2, 5.0)
            if waiter.lost and trio.current_time() < deadline:
                with contextlib.suppress(TransportError, RemoteError):
                    await self.call(
                        node, kind, value, timeout=max(0.0, deadline - trio.current_time())
                    )
        finally:
            conn.pending.pop(req_id, None)

    async def aclose(self) -> None:
        for conn in list(self._conns.values()):
            conn._close()
        self._conns.clear()


class _Fanout:
    """How :meth:`Endpoint.quorum_call` reaches the nodes (a driver's ``Transmit``).

    On an open connection the request is sent directly and the connection's reader task
    reports the reply through the waiter's ``notify`` (no task per target, and the caller's
    task is not woken per reply); resends are the engine's (``watch``).  Without one, or
    when the connection breaks, a task runs :meth:`Endpoint.call`, which connects, resends
    and reports trouble itself.
    """

    __slots__ = ("ep", "driver", "kind", "make", "deadline", "fast", "batch")

    def __init__(
        self,
        ep: Endpoint,
        driver: QuorumDriver,
        kind: str,
        make: Callable[[NodeId], Any],
        deadline: float,
        batch: BatchKind | None = None,
    ) -> None:
        self.ep = ep
        self.driver = driver
        self.kind = kind
        self.make = make
        self.deadline = deadline
        #: Coalesce first transmissions under this batch kind (None: write at once).
        self.batch = batch
        #: Requests on the direct path: connection, request id, waiter, payload.
        self.fast: dict[NodeId, tuple[_Connection, int, _Waiter, Any]] = {}

    def send(self, node: NodeId) -> None:
        ep = self.ep
        value = self.make(node)
        conn = ep._conns.get(node)
        if conn is None or conn.closed:
            ep._nursery.start_soon(self._slow, node, value)
            return
        req_id = next(ep._ids)
        waiter = _Waiter()
        waiter.notify = lambda: self._resolved(node, waiter)
        conn.pending[req_id] = waiter
        self.fast[node] = (conn, req_id, waiter, value)
        if self.batch is not None and (ep._coalescing > 1 or ep._outbox):
            ep._enqueue(conn, self.batch, req_id, waiter, self.kind, value)
        else:
            try:
                conn.send_nowait([REQUEST, req_id, self.kind, value])
            except trio.ClosedResourceError:
                return  # the waiter was resolved as lost: retried like any lost connection
        ep.sent += 1
        self.driver.watch(node)

    def resend(self, node: NodeId) -> None:
        entry = self.fast.get(node)
        if entry is None:
            return
        conn, req_id, waiter, value = entry
        if waiter.event.is_set() or conn.closed:
            return
        try:
            conn.send_nowait([REQUEST, req_id, self.kind, value])
        except trio.ClosedResourceError:
            return
        self.ep.resent += 1

    def settle(self, verdict: Verdict) -> None:
        ep = self.ep
        for node, (conn, req_id, waiter, value) in self.fast.items():
            if verdict is Verdict.ENOUGH and not waiter.event.is_set():
                ep._nursery.start_soon(
                    ep._finish, node, self.kind, conn, req_id, waiter, value, self.deadline
                )
            else:
                conn.pending.pop(req_id, None)
        self.fast.clear()

    def _resolved(self, node: NodeId, waiter: _Waiter) -> None:
        """A direct request's waiter resolved (in the connection's reader task)."""
        driver = self.driver
        if driver.over:  # a straggler's reply, or one that no longer matters
            return
        entry = self.fast.get(node)
        if entry is None or entry[2] is not waiter:  # a stale waiter of an earlier attempt
            return
        del self.fast[node]
        if waiter.lost:  # the connection broke: retry through the slow path
            self.ep._nursery.start_soon(self._slow, node, entry[3])
            driver.lost(node)
        elif waiter.status == STATUS_OK:
            driver.reply(node, waiter.body)
        else:
            driver.failed(node, waiter.outcome()[1])

    async def _slow(self, node: NodeId, value: Any) -> None:
        """One request through :meth:`Endpoint.call` (connects, resends, reports trouble)."""
        driver = self.driver
        try:
            reply = await self.ep.call(
                node,
                self.kind,
                value,
                timeout=max(0.0, self.deadline - trio.current_time()),
                on_trouble=driver.trouble,
            )
        except TransportError as e:
            driver.failed(node, str(e))
        except RemoteError as e:
            driver.failed(node, f"refused: {e}")
        else:
            driver.reply(node, reply)


#: A coalesced request: connection, batch kind, request id, waiter, kind, payload.
_Queued = tuple[_Connection, BatchKind, int, _Waiter, str, Any]


def _split(conn: _Connection, carrier: _Waiter, items: list[_Queued]) -> None:
    """A batch request's reply (in the connection's reader task): resolve each request's
    own waiter with its item, as if it had been answered alone.  A refused or malformed
    batch refuses every item; a lost connection has resolved them all already."""
    if carrier.lost:
        return
    pending = conn.pending
    raw = carrier.body
    if carrier.status != STATUS_OK or not isinstance(raw, list) or len(raw) != len(items):
        if carrier.status != STATUS_OK and isinstance(raw, list) and len(raw) == 2:
            err: Any = raw
        else:
            err = ["malformed", "batch reply of unknown shape"]
        for q in items:
            if pending.get(q[2]) is q[3]:
                del pending[q[2]]
            q[3].resolve(STATUS_ERROR, err)
        return
    for q, res in zip(items, raw, strict=True):
        if pending.get(q[2]) is q[3]:
            del pending[q[2]]
        if isinstance(res, list) and len(res) == 2 and res[0] == 0:
            q[3].resolve(STATUS_OK, res[1])
        elif isinstance(res, list) and len(res) == 2 and res[0] == 1:
            q[3].resolve(STATUS_ERROR, res[1])
        else:
            q[3].resolve(STATUS_ERROR, ["malformed", "batch item of unknown shape"])


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
