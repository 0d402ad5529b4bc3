"""A client connection to one node, and the waiter a request's reply lands in.

:class:`Connection` is the calling side of one encrypted session (session.py): a writer
task batching frames (frames.py ``FrameWriter``) and a reader task that matches replies to
request ids and resolves their :class:`Waiter`; a lost connection resolves every pending
waiter as lost.  :class:`~bftfs.net.endpoint.Endpoint` owns one per node.

The reader also hands each push (a message the node sent unasked, issue 33) to the
endpoint's ``on_push(node, body)``, synchronously: the callee only queues work, and an
exception in it is logged and counted, never the end of the connection.  The node that
sent it is the one at the other end of this session: only it can seal a frame that opens
here.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import trio

from bftfs.ids import NodeId
from bftfs.net.errors import FrameError, OversizedRequest, RemoteError, TransportError
from bftfs.net.frames import (
    DEFAULT_MAX_FRAME,
    PUSH,
    REPLY,
    REQUEST,
    STATUS_OK,
    FrameReader,
    FrameWriter,
)
from bftfs.net.liveness import Liveness
from bftfs.net.rtt import Arrival, RttTable
from bftfs.net.session import Session

log = logging.getLogger(__name__)

#: What receives pushes: the node that sent one and its body (``open_endpoint(on_push=)``).
PushHandler = Callable[[NodeId, Any], None]

#: Bytes of pushes a node may send on one connection between two replies.  A correct
#: node pushes small messages (recalls, wake-ups, a view, a FaB reply per request); one
#: past this is flooding (``flood-client``: 8 MiB before each answer): the connection is
#: closed, the node made a suspect (``net/suspects.py``) and the calls waiting on it ask
#: others at once, instead of taking megabytes it chooses to send first.
PUSH_BUDGET = DEFAULT_MAX_FRAME // 4


class Waiter:
    """Where a reply for one request id lands."""

    __slots__ = ("event", "status", "body", "lost", "notify", "sent", "resent", "upto")

    def __init__(self, notify: Callable[[], None] | None = None) -> None:
        self.event = trio.Event()
        #: When the request was (first) sent: its reply's latency is the node's response
        #: time, and an old unanswered one how long the node has kept us waiting.
        self.sent = trio.current_time()
        #: Sent more than once on one connection: its reply is no round-trip sample
        #: (Karn's rule, ``net/rtt.py``).
        self.resent = False
        #: The end of its last copy in the connection's byte stream
        #: (``FrameWriter.written``): a resend waits until the peer acknowledged it.
        self.upto = 0
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

    def answer(self) -> Any:
        """The reply of a waiter resolved with one (not lost).

        Raises:
            RemoteError: the node answered with an error (its code and message).
        """
        if self.status == STATUS_OK:
            return self.body
        body = self.body
        if isinstance(body, list) and len(body) == 2:
            raise RemoteError(str(body[0]), str(body[1]))
        raise RemoteError("malformed", "error reply of unknown shape")

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


class Connection:
    """A client connection to one node: a writer task batching frames, a reader task."""

    def __init__(
        self,
        node: NodeId,
        stream: trio.SocketStream,
        reader: FrameReader,
        session: Session,
        faults: Counter[tuple[int, str]],
        on_push: PushHandler | None = None,
        liveness: Liveness | None = None,
        rtt: RttTable | None = None,
    ) -> None:
        self.node = node
        #: Where each request/reply pair's time is sampled (the endpoint's: ``net/rtt.py``).
        self.rtt = rtt
        #: Where every frame from the node is noted (the endpoint's: ``net/liveness.py``).
        self.liveness = liveness
        self.faults = faults
        self.stream = stream
        self.reader = reader
        #: Big replies arriving: a resend waits while they do (``net/rtt.Arrival``).
        self.arrival = Arrival()
        reader.on_progress = lambda got, left: self.arrival.chunk(got, left, trio.current_time())
        self.session = session
        self.on_push = on_push
        self.pending: dict[int, Waiter] = {}
        self.closed = False
        #: Set when the connection closes (``Endpoint.stay_connected`` waits on it).
        self.gone = trio.Event()
        #: Told ``(node, reason)`` of each frame that proves the node faulty (refused by
        #: the session, or neither reply nor push): the pool's suspects (``net/suspects.py``).
        self.on_fault: Callable[[NodeId, str], None] | None = None
        #: Bytes of pushes since the node's last reply (``PUSH_BUDGET``).
        self.pushed_bytes = 0
        self._writer = FrameWriter(stream)

    def send_nowait(self, msg: list[Any]) -> None:
        """Send (or queue) a message without blocking."""
        if self.closed:
            raise trio.ClosedResourceError
        liveness = self.liveness
        if liveness is not None and not liveness.waiting(self.node):
            liveness.asked(self.node, trio.current_time())
        frame = self.session.seal(msg)
        if len(frame) > self.reader.max_frame and msg[0] == REQUEST:
            raise OversizedRequest(len(frame), self.reader.max_frame)
        try:
            self._writer.write(frame)
        except trio.ClosedResourceError:
            self._close()
            raise
        waiter = self.pending.get(msg[1]) if msg[0] == REQUEST else None
        if waiter is not None:
            waiter.upto = self._writer.written

    def resend_nowait(self, msg: list[Any]) -> bool:
        """Send ``msg`` again, unless this connection still holds unsent bytes: whether it
        was sent.

        Over TCP a copy the kernel took arrives unless the connection breaks (and then
        the waiter resolves as lost and the caller sends on a new one), and a copy still in
        our backlog has not even left: a resend helps only a node that dropped the
        request itself.  A node that stops reading (its window closed: seed 002 L14-19, a
        Byzantine network stack withholding acknowledgements) would otherwise get a new
        copy of every unanswered request in our backlog at each resend interval, and the
        backlog would grow with time instead of being bounded by the requests
        outstanding (docs/buffers.md).  Bytes the kernel took but the peer has not
        acknowledged count as unsent too: on a slow link (a WAN, docs/wan.md) they wait in
        its queue, and a copy sent meanwhile only queues behind them."""
        if self._writer.pending:
            return False
        waiter = self.pending.get(msg[1])
        if waiter is not None:
            if not self._writer.arrived(waiter.upto):
                # Taken by the kernel but not acknowledged by the peer's (a slow link's
                # queue): the earlier copy has not arrived yet.
                return False
            waiter.resent = True
        self.send_nowait(msg)
        return True

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
                    log.warning("node %s: dropped frame (%s)", self.node, e)
                    self.fault(f"frame_{e.reason}")
                    if e.reason == "bad_mac":
                        continue
                    return
                liveness = self.liveness
                if kind == REPLY:
                    self.pushed_bytes = 0
                    waiter = self.pending.pop(req_id, None)
                    if liveness is not None:
                        now = trio.current_time()
                        latency = None if waiter is None else now - waiter.sent
                        liveness.heard(self.node, now, latency)
                        if waiter is not None and not waiter.resent and self.rtt is not None:
                            self.rtt.sample(self.node, now - waiter.sent, now)
                    if waiter is not None:
                        waiter.resolve(status, body)
                elif kind == PUSH:
                    self.pushed_bytes += len(frame)
                    if self.pushed_bytes > PUSH_BUDGET:
                        log.info("node %s: connection closed (pushes past the budget)", self.node)
                        self.fault("push_flood")
                        return
                    if liveness is not None:
                        liveness.heard(self.node, trio.current_time())
                    self._pushed(body)
                else:
                    self.fault("frame_unexpected")
        except FrameError as e:  # oversized or truncated: the stream cannot be trusted
            # (the reason only: a record holding ``e`` would keep its frames' buffers alive)
            log.info("node %s: connection closed (frame %s)", self.node, e.reason)
            if e.reason == "truncated":  # a crash or a cut connection: not a lie
                self.faults[(int(self.node), "frame_truncated")] += 1
            else:
                self.fault(f"frame_{e.reason}")
            return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return

    def fault(self, kind: str) -> None:
        """Count a frame of the node's that no correct node sends, and tell ``on_fault``."""
        self.faults[(int(self.node), kind)] += 1
        if self.on_fault is not None:
            self.on_fault(self.node, kind)

    def _pushed(self, body: Any) -> None:
        """Hand one authenticated push to ``on_push`` (none: ignored); its failure is
        logged and counted here, so that replies on this connection keep coming."""
        on_push = self.on_push
        if on_push is None:
            return
        try:
            on_push(self.node, body)
        except Exception:
            self.faults[(int(self.node), "push_handler_failed")] += 1
            log.exception("node %s: push handler failed", self.node)

    async def ask(self, req_id: int, kind: str, payload: Any, timeout: float) -> Any:
        """One request on this connection alone, sent once (before anyone else may use the
        connection: ``net/viewcheck.py``); its reply.

        Raises:
            TransportError: no answer within ``timeout``, or the connection lost.
            RemoteError: the node refused the request.
        """
        waiter = Waiter()
        self.pending[req_id] = waiter
        try:
            self.send_nowait([REQUEST, req_id, kind, payload])
            with trio.move_on_after(timeout):
                await waiter.event.wait()
        except trio.ClosedResourceError:
            raise TransportError(f"node {self.node}: connection closed") from None
        finally:
            self.pending.pop(req_id, None)
        if not waiter.event.is_set() or waiter.lost:
            raise TransportError(f"node {self.node}: no answer to {kind}")
        return waiter.answer()

    def close(self) -> None:
        """Close the connection now: requests waiting on it resolve as lost."""
        self._close()

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
        self.gone.set()
