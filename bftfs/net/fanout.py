"""How :meth:`Endpoint.quorum_call <bftfs.net.endpoint.Endpoint.quorum_call>` reaches the
nodes and collects their replies: a :class:`Fanout` per call, the driver's ``Transmit``.

On an open connection a request is sent directly and the connection's reader task reports
the reply (no task per target); otherwise a task runs :meth:`Endpoint.call`, which
connects and resends.  Requests still in flight when a call returns finish in the
background (:meth:`Fanout.finish`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from bftfs.ids import NodeId
from bftfs.net.batch import BatchKind
from bftfs.net.connection import Connection, Waiter
from bftfs.net.driver import QuorumDriver
from bftfs.net.errors import RemoteError, TransportError
from bftfs.net.frames import REQUEST, STATUS_OK
from bftfs.net.quorum import Verdict
from bftfs.outcome import acting_for, current_patience

if TYPE_CHECKING:
    from bftfs.net.endpoint import Endpoint


class Fanout:
    """How one quorum call reaches the nodes (a driver's ``Transmit``).

    On an open connection the request is sent directly and the connection's reader task
    reports the reply through the waiter's ``notify`` (no task per target, and the caller's
    task is not woken per reply); resends are the engine's (``watch``).  Without one, or
    when the connection breaks, a task runs :meth:`Endpoint.call`, which connects, resends
    and reports trouble itself.
    """

    __slots__ = ("ep", "driver", "kind", "make", "deadline", "fast", "batch", "patience")

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
        #: The calling operation's (its requests may be sent from other tasks).
        self.patience = current_patience()
        #: Requests on the direct path: connection, request id, waiter, payload.
        self.fast: dict[NodeId, tuple[Connection, int, Waiter, Any]] = {}

    def send(self, node: NodeId) -> None:
        ep = self.ep
        value = self.make(node)
        conn = ep.pool.open_to(node)
        if conn is None:
            ep.spawn(self._slow, node, value)
            return
        req_id = next(ep.ids)
        waiter = Waiter()
        waiter.notify = lambda: self._resolved(node, waiter)
        conn.pending[req_id] = waiter
        self.fast[node] = (conn, req_id, waiter, value)
        if self.batch is not None and ep.coalescer.wanted():
            ep.coalescer.enqueue(conn, self.batch, req_id, waiter, self.kind, value)
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
            if not conn.resend_nowait([REQUEST, req_id, self.kind, value]):
                self.ep.resends_held += 1
                return
        except trio.ClosedResourceError:
            return
        self.ep.resent += 1

    def settle(self, verdict: Verdict) -> None:
        for node, (conn, req_id, waiter, value) in self.fast.items():
            if verdict is Verdict.ENOUGH and not waiter.event.is_set():
                self.ep.spawn(self.finish, node, conn, req_id, waiter, value)
            else:
                conn.pending.pop(req_id, None)
        self.fast.clear()

    def _resolved(self, node: NodeId, waiter: Waiter) -> None:
        """A direct request's waiter resolved (in the connection's reader task)."""
        driver = self.driver
        if driver.over:  # a straggler's reply, or one that no longer matters
            return
        entry = self.fast.get(node)
        if entry is None or entry[2] is not waiter:  # a stale waiter of an earlier attempt
            return
        del self.fast[node]
        if waiter.lost and self.ep.suspected([node]):  # it broke it, likely: no new copy
            driver.failed(node, "connection lost, and the node is suspect")
        elif waiter.lost:  # the connection broke: retry through the slow path
            self.ep.spawn(self._slow, node, entry[3])
            driver.lost(node)
        elif waiter.status == STATUS_OK:
            driver.reply(node, waiter.body)
        else:
            driver.failed(node, waiter.outcome()[1], answered=True)

    async def _slow(self, node: NodeId, value: Any) -> None:
        """One request through :meth:`Endpoint.call` (connects, resends, reports trouble)."""
        driver = self.driver
        try:
            with acting_for(self.patience):
                reply = await self.ep.call(
                    node,
                    self.kind,
                    value,
                    timeout=max(0.0, self.deadline - trio.current_time()),
                    on_trouble=driver.trouble,
                    keep=lambda: not driver.over,
                )
        except TransportError as e:
            driver.failed(node, str(e))
        except RemoteError as e:
            driver.failed(node, f"refused: {e}", answered=True)
        else:
            driver.reply(node, reply)

    async def finish(
        self, node: NodeId, conn: Connection, req_id: int, waiter: Waiter, value: Any
    ) -> None:
        """Let a straggler of the quorum call complete: resend until answered or timed out."""
        ep, kind, deadline = self.ep, self.kind, self.deadline
        interval = ep.resend_after
        try:
            while not waiter.event.is_set():
                now = trio.current_time()
                if now >= deadline:
                    ep.faults[(int(node), "timeout")] += 1
                    return
                with trio.move_on_at(min(deadline, now + interval)):
                    await waiter.event.wait()
                if waiter.event.is_set() or conn.closed:
                    break
                with contextlib.suppress(trio.ClosedResourceError):
                    if conn.resend_nowait([REQUEST, req_id, kind, value]):
                        ep.resent += 1
                    else:
                        ep.resends_held += 1
                interval = min(interval * 2, 5.0)
            if waiter.lost and trio.current_time() < deadline and not ep.suspected([node]):
                with contextlib.suppress(TransportError, RemoteError):
                    await ep.call(
                        node, kind, value, timeout=max(0.0, deadline - trio.current_time())
                    )
        finally:
            conn.pending.pop(req_id, None)
