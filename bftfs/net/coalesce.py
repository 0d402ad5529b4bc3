"""The batcher's second sender: the first transmissions of concurrent quorum calls (the Q/U
client's rounds) carried in batches of ``batch.py``.

``Endpoint.quorum_call(..., batch=BatchKind(...))``: while another such call runs, a direct
request is not written at once but put in the node's outbox (a call running alone writes at
once: it has nothing to share a frame with, and waiting would cost it a task switch and a
poll); the :class:`Coalescer`'s flusher task, woken by the first request queued, waits until
no other task can run (at most ``coalesce_window``, idle.py) and writes each node's outbox
as one frame: a lone request as itself, several as one request of the batch kind whose reply
is split back onto the requests' own waiters.  Each request keeps its own id and waiter, so
resends (of the request alone, under its own id), stragglers and lost connections are
handled exactly as without coalescing; only the first transmission shares a frame.

The batch itself - its kind and bounds (:class:`~bftfs.net.batch.BatchKind`), the cut of a
node's queue into batches, the reply split back onto the items - is ``batch.py``'s, shared
with its :class:`~bftfs.net.batch.Batcher` (``node/batching.py`` answers both).  What this
sender does differently is behaviour, named there: it changes only how a request's first
copy is written, leaving the request (id, waiter, the quorum engine's resends, stragglers)
to ``Endpoint.quorum_call``, and holds nothing back (a request waits at most ``window``);
the ``Batcher`` owns its items and limits what a node may have unanswered.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import deque
from typing import Any

import trio

from bftfs.ids import NodeId
from bftfs.net.batch import ITEM_OK, ITEM_REFUSED, BatchKind, cut, split_reply
from bftfs.net.connection import Connection, Waiter
from bftfs.net.frames import REQUEST, STATUS_ERROR, STATUS_OK
from bftfs.net.idle import wait_all_tasks_blocked

__all__ = ["BatchKind", "Coalescer"]

#: A coalesced request: connection, batch kind, request id, waiter, kind, payload.
_Queued = tuple[Connection, BatchKind, int, Waiter, str, Any]


def _cost(q: _Queued) -> tuple[int, int]:
    """What a coalesced request adds to its batch's request frame (its payload's bytes, or
    a small request's guess), and to its reply (not counted: the answers are small)."""
    value = q[5]
    return (len(value) if isinstance(value, bytes | bytearray) else 256), 0


class Coalescer:
    """The outboxes of an endpoint's coalesced requests and the flusher task that writes them.

    Args:
        nursery: where the flusher runs (the endpoint's).
        ids: the endpoint's request-id counter (a batch request takes an id of its own).
        window: longest a coalesced request waits for the loop to go idle before it is
            written anyway (a loop that never idles must not hold requests back).
    """

    def __init__(self, nursery: trio.Nursery, ids: itertools.count[int], window: float) -> None:
        self._nursery = nursery
        self._ids = ids
        self.window = window
        #: Coalesced requests waiting for the flusher: node -> (connection, batch kind,
        #: request id, waiter, kind, payload), in submission order.
        self._outbox: dict[NodeId, list[_Queued]] = {}
        self._flush_wanted: trio.Event | None = None
        #: Batch requests sent and not yet answered, oldest first: a batch's own waiter is
        #: dropped once its requests are over even if the node never answers it (a
        #: withholding node must not make ``pending`` grow; :meth:`_sweep`).
        self._carriers: deque[tuple[Connection, int, list[_Queued]]] = deque()
        self._flusher_started = False
        #: Frames the flusher wrote carrying several requests, and the requests in them.
        self.batches = 0
        self.batched = 0
        #: Quorum calls with a batch kind running now: a call's requests are coalesced only
        #: while another runs (or requests wait in an outbox); a lone call writes at once.
        self.calls = 0

    def wanted(self) -> bool:
        """Whether a batch call's direct request should be queued rather than written."""
        return self.calls > 1 or bool(self._outbox)

    def enqueue(
        self,
        conn: Connection,
        batch: BatchKind,
        req_id: int,
        waiter: Waiter,
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
        it waits until no task can run (or :attr:`window` passed), so that every
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
            with trio.move_on_after(self.window):
                await wait_all_tasks_blocked()

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
                for chunk in cut(group, batch.max_items, batch.max_bytes, _cost):
                    self._send_batch(chunk)

    def _send_batch(self, items: list[_Queued]) -> None:
        conn, batch = items[0][0], items[0][1]
        if len(items) == 1:
            _c, _b, req_id, _w, kind, value = items[0]
            with contextlib.suppress(trio.ClosedResourceError):
                conn.send_nowait([REQUEST, req_id, kind, value])
            return
        batch_id = next(self._ids)
        carrier = Waiter()
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


def _split(conn: Connection, carrier: Waiter, items: list[_Queued]) -> None:
    """A batch request's reply (in the connection's reader task): resolve each request's
    own waiter with its item, as if it had been answered alone.  A refused or malformed
    batch refuses every item; a lost connection has resolved them all already."""
    if carrier.lost:
        return
    pending = conn.pending
    raw = carrier.body
    parts = split_reply(raw, len(items)) if carrier.status == STATUS_OK else None
    if parts is None:
        if carrier.status != STATUS_OK and isinstance(raw, list) and len(raw) == 2:
            err: Any = raw
        else:
            err = ["malformed", "batch reply of unknown shape"]
            conn.fault("malformed_batch_reply")  # no correct node sends it: a suspect
        for q in items:
            if pending.get(q[2]) is q[3]:
                del pending[q[2]]
            q[3].resolve(STATUS_ERROR, err)
        return
    for q, (how, value) in zip(items, parts, strict=True):
        if pending.get(q[2]) is q[3]:
            del pending[q[2]]
        if how == ITEM_OK:
            q[3].resolve(STATUS_OK, value)
        elif how == ITEM_REFUSED:
            q[3].resolve(STATUS_ERROR, value)
        else:
            conn.fault("malformed_batch_item")
            q[3].resolve(STATUS_ERROR, ["malformed", "batch item of unknown shape"])
