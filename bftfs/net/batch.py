"""The request batcher: many concurrent requests to a node, one frame.

A client with many operations in flight sends a request to (nearly) every node for each.
Sent one by one, every request costs a system call and a wake-up on both sides, which on a
small machine dominates everything else (see docs/rw.md, "Where the time goes").
:class:`Batcher` queues the requests that tasks issue while the event loop is busy and
sends each node's queue as one batch request when the flusher task runs - that is, after
every task that was ready has had its turn - so a lone request goes out at once and
concurrent ones share frames.  The node runs the items and answers with one frame.

:func:`batch_quorum` is ``Endpoint.quorum_call`` over a batcher: the same engine
(:class:`~bftfs.net.quorum.QuorumEngine`) and driver, another way to the nodes, so the
protocol logic above does not care which one runs.  Resends are the batch call's own
(``Endpoint.call``), so the engine watches nothing here.

A batch is also bounded in bytes: ``item_bytes`` says what an item adds to the request and
to the reply frame (a fragment written or read), and a flush starts another batch before
the items of one pass ``max_bytes`` in either, so neither frame can pass the receiver's frame limit
(``net/frames.py``): a hundred concurrent reads of 256 KiB blocks made a data node's reply
frame 8.7 MB, over the client's 8 MiB, and every such read failed (issue 34).

Wire (the batch kind is the protocol's, e.g. ``rw.batch``): request = list of ``[kind,
payload]`` (at most ``max_batch``); reply = list of the same length, each ``[0, reply]`` or
``[1, [code, message]]``.  The reply list is checked here; each item's reply is checked by
the caller as usual.  The PASIS client and the nodes' lazy verifiers batch so
(``rw/batch.py``).

**One batcher, two senders.**  What a batch is - its kind and bounds (:class:`BatchKind`),
a node's queued requests cut into batches (:func:`cut`), the reply split back onto them
(:func:`split_reply`) - is this module's, and both ways of filling one use it:

- :class:`Batcher` (here) *owns* its requests: an item has no id of its own, the batch
  call resends and times out for it, and a node's unanswered items are held to
  ``max_pending`` and ``max_pending_bytes`` (the PASIS client's fragments, issue 34);
- the endpoint's :class:`~bftfs.net.coalesce.Coalescer` (``Endpoint.quorum_call`` with a
  batch kind: the Q/U client's rounds) *carries* only the first copy of requests that keep
  their own id, waiter and the quorum engine's resends, and holds nothing back.

They stay two senders because those differences are behaviour: the coalescer under PASIS
would drop the limit on a node's unanswered fragments, this batcher under Q/U would take
each request's resends from its quorum engine.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import trio

from bftfs.ids import NodeId
from bftfs.net.driver import QuorumDriver
from bftfs.net.errors import RemoteError, TransportError
from bftfs.net.quorum import Linger, QuorumEngine, QuorumResult, Verdict, live_first
from bftfs.net.suspects import suspects_last
from bftfs.outcome import Patience, acting_for, bounded, current_patience, progressed

Outcome = tuple[NodeId, bool, Any]
T = TypeVar("T")


# The batch ---------------------------------------------------------------------------


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


def cut(
    items: Sequence[T],
    max_items: int,
    max_bytes: int | None,
    sizes: Callable[[T], tuple[int, int]],
) -> list[list[T]]:
    """``items`` in order, cut into batches of at most ``max_items`` items and ``max_bytes``
    bytes of request and of reply each (``sizes(item)`` is the pair; an item larger than
    that goes alone; None: no limit in bytes)."""
    chunks: list[list[T]] = []
    chunk: list[T] = []
    sent = answered = 0
    for item in items:
        size, reply_size = sizes(item)
        full = len(chunk) >= max_items or (
            max_bytes is not None and max(sent + size, answered + reply_size) > max_bytes
        )
        if chunk and full:
            chunks.append(chunk)
            chunk, sent, answered = [], 0, 0
        chunk.append(item)
        sent += size
        answered += reply_size
    if chunk:
        chunks.append(chunk)
    return chunks


#: How :func:`split_reply` found an item: answered, refused by the node, of unknown shape.
ITEM_OK, ITEM_REFUSED, ITEM_MALFORMED = 0, 1, 2


def split_reply(raw: Any, n: int) -> list[tuple[int, Any]] | None:
    """The ``n`` items of batch reply ``raw`` (a list of ``[0, reply]`` or ``[1, error]``),
    each ``(ITEM_OK, reply)``, ``(ITEM_REFUSED, error)`` or ``(ITEM_MALFORMED, None)``;
    None when ``raw`` is not a list of ``n``."""
    if not isinstance(raw, list) or len(raw) != n:
        return None
    out: list[tuple[int, Any]] = []
    for res in raw:
        if isinstance(res, list) and len(res) == 2 and res[0] == 0:
            out.append((ITEM_OK, res[1]))
        elif isinstance(res, list) and len(res) == 2 and res[0] == 1:
            out.append((ITEM_REFUSED, res[1]))
        else:
            out.append((ITEM_MALFORMED, None))
    return out


# The batcher that owns its requests --------------------------------------------------


class Caller(Protocol):
    """What :class:`Batcher` needs of the endpoint (``net.endpoint.Endpoint``)."""

    resend_after: float

    async def call(
        self,
        node: NodeId,
        kind: str,
        payload: Any,
        *,
        timeout: float | None = None,
        on_trouble: Callable[[], None] | None = None,
        keep: Callable[[], bool] | None = None,
    ) -> Any: ...

    def ask_last(self, targets: Sequence[NodeId]) -> set[NodeId]: ...

    def suspected(self, targets: Sequence[NodeId]) -> set[NodeId]: ...

    def suspect(self, node: NodeId, reason: str) -> None: ...

    def pardon(self, nodes: Sequence[NodeId]) -> None: ...

    def node_live(self, node: NodeId, now: float) -> bool: ...

    def usual_wait(self, node: NodeId) -> float: ...

    def linger(self, p: Patience | None) -> Linger | None: ...


#: Seconds without an answered batch after which a node at its ``max_pending`` limit has
#: new items failed at once rather than kept waiting for room (a dead or stalled node).
STALLED = 2.0


@dataclass
class _Item:
    kind: str
    payload: Any
    done: Callable[[Outcome], None]
    trouble: Callable[[], None]
    #: What the item adds to its batch's request frame, and to its reply frame
    #: (``Batcher.item_bytes``): only the first is held until the node answers.
    size: int = 0
    reply_size: int = 0
    #: The patience of the operation that queued it, and whether its quorum call is over
    #: (None: no call waits for it): a batch call past its timeout goes on waiting for a
    #: live node while one of its items' operations would (issue 60).
    patience: Patience | None = None
    over: Callable[[], bool] | None = None

    def wanted(self) -> bool:
        return self.over is not None and not self.over()


@dataclass
class _Queue:
    items: list[_Item] = field(default_factory=list)
    scheduled: bool = False
    #: Items queued or sent and not yet answered (stragglers of finished calls included).
    pending: int = 0
    #: Their request bytes (``Batcher.item_bytes``).
    pending_bytes: int = 0
    #: Items refused because ``pending`` was at the limit, answered by the next flush.
    refused: list[_Item] = field(default_factory=list)
    #: Items over the limit to a node that is answering: sent as answers make room.
    waiting: deque[_Item] = field(default_factory=deque)
    #: When the node last answered a batch (``-inf``: never).
    answered_at: float = float("-inf")
    waiting_bytes: int = 0


class Batcher:
    """Per-node queues of requests, flushed as batch requests by background tasks."""

    def __init__(
        self,
        endpoint: Caller,
        nursery: trio.Nursery,
        *,
        kind: str,
        max_batch: int,
        timeout: float | None,
        max_pending: int | None = None,
        max_bytes: int | None = None,
        item_bytes: Callable[[str, Any], tuple[int, int]] | None = None,
        max_pending_bytes: int | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._nursery = nursery
        #: The request kind that carries a batch (the node's handler runs its items).
        self.kind = kind
        self.max_batch = max_batch
        self.timeout = timeout
        self._queues: dict[NodeId, _Queue] = {}
        #: Requests a node may have unanswered before new ones to it fail at once (None:
        #: no limit).  Each keeps its payload until the node answers or the call times
        #: out, and a quorum call returns without waiting for the slowest nodes: without a
        #: limit a dead node (until the timeout) or one that falls behind holds every
        #: fragment written meanwhile, which grew the mount daemon to 1.4 GB for a 1 GiB
        #: file with one node down (issue 34).  A failed item is what a quorum call
        #: expects of a faulty node: it asks another, or completes without it.  Only a
        #: node silent for ``STALLED`` seconds has items failed so: one that answers keeps
        #: them waiting for room (up to ``max_pending_bytes`` more), since failing them
        #: failed reads when every node was busy with a small-block file's read-ahead.
        self.max_pending = max_pending
        #: The same limit in bytes of requests (None: none): fragments of big blocks are
        #: larger, and it is their bytes that the limit is for (a read holds nothing: its
        #: reply's bytes count only towards its batch's ``max_bytes``).
        self.max_pending_bytes = max_pending_bytes
        #: Bytes of items one batch carries at most in its request and in its reply
        #: (``item_bytes(kind, payload)`` is the pair); an item larger than that goes
        #: alone (None: no limit; see the module docstring).
        self.max_bytes = max_bytes
        self.item_bytes = item_bytes
        self.batches = 0
        self.items = 0
        #: Items failed at once because their node had ``max_pending`` unanswered.
        self.backlogged = 0

    def submit(
        self,
        node: NodeId,
        kind: str,
        payload: Any,
        done: Callable[[Outcome], None],
        trouble: Callable[[], None],
        *,
        patience: Patience | None = None,
        over: Callable[[], bool] | None = None,
    ) -> None:
        """Queue one request; ``done((node, ok, reply_or_reason))`` is called exactly once
        (from the flush task, never from here: the caller's state may be mid-update).
        ``patience``, ``over``: the queuing operation's patience and whether its quorum
        call has ended (:class:`_Item`)."""
        q = self._queues.setdefault(node, _Queue())
        size, reply_size = self.item_bytes(kind, payload) if self.item_bytes else (0, 0)
        item = _Item(kind, payload, done, trouble, size, reply_size, patience, over)
        if not self._backlogged(q, size):
            self._take(q, item)
        elif self._may_wait(node, q, size):
            q.waiting.append(item)
            q.waiting_bytes += size
            return  # a send that ends makes room for it (``_send``)
        else:
            self.backlogged += 1
            q.refused.append(item)
        self._schedule(node, q)

    def _take(self, q: _Queue, item: _Item) -> None:
        q.pending += 1
        q.pending_bytes += item.size
        q.items.append(item)

    def _schedule(self, node: NodeId, q: _Queue) -> None:
        if not q.scheduled:
            q.scheduled = True
            self._nursery.start_soon(self._flush, node)

    def _may_wait(self, node: NodeId, q: _Queue, size: int) -> bool:
        """Whether an item over the limit waits for room: its node answered a batch
        within ``STALLED`` seconds or, if live (``Endpoint.node_live``), within several of
        its own response times (a loaded machine's nodes answer slower than ``STALLED``,
        and failing their items failed writes with every node up, issue 60; a node silent
        from the start has no response time and is given ``STALLED``, so a silent node
        still holds at most ``max_pending`` items), and the waiting items' bytes stay
        within ``max_pending_bytes`` (what they hold is what the limit is for; reads hold
        none and count their reply)."""
        now = trio.current_time()
        endpoint = self.endpoint
        stalled = STALLED
        if endpoint.node_live(node, now):
            stalled = max(STALLED, endpoint.usual_wait(node))
        if now - q.answered_at >= stalled:
            return False
        limit = self.max_pending_bytes
        return limit is None or q.waiting_bytes + size <= limit

    def _backlogged(self, q: _Queue, size: int) -> bool:
        """Whether a node's unanswered items leave no room for one of ``size`` bytes (a
        node with nothing unanswered always takes one)."""
        if self.max_pending is not None and q.pending >= self.max_pending:
            return True
        limit = self.max_pending_bytes
        return limit is not None and q.pending > 0 and q.pending_bytes + size > limit

    async def _flush(self, node: NodeId) -> None:
        # Everything queued since the flush was scheduled goes now; later submissions
        # schedule another flush, so batches to one node are pipelined, not serialised.
        q = self._queues[node]
        q.scheduled = False
        refused, q.refused = q.refused, []
        for item in refused:
            item.done((node, False, f"backlogged: {q.pending} requests unanswered"))
        items, q.items = q.items, []
        chunks = self._chunks(items)
        for chunk in chunks[1:]:
            self._nursery.start_soon(self._send, node, chunk)
        if chunks:
            await self._send(node, chunks[0])

    def _chunks(self, items: list[_Item]) -> list[list[_Item]]:
        """``items`` in order, cut into batches of at most ``max_batch`` items and
        ``max_bytes`` bytes of request and of reply (an item larger than that alone)."""
        return cut(items, self.max_batch, self.max_bytes, lambda it: (it.size, it.reply_size))

    async def _send(self, node: NodeId, items: list[_Item]) -> None:
        self.batches += 1
        self.items += len(items)
        try:
            await self._call(node, items)
        finally:
            q = self._queues[node]
            q.pending -= len(items)
            q.pending_bytes -= sum(item.size for item in items)
            self._admit_waiting(node, q)

    def _admit_waiting(self, node: NodeId, q: _Queue) -> None:
        """Queue waiting items (oldest first) for which room was made."""
        admitted = 0
        while q.waiting and not self._backlogged(q, q.waiting[0].size):
            item = q.waiting.popleft()
            q.waiting_bytes -= item.size
            self._take(q, item)
            admitted += 1
        if admitted:
            self._schedule(node, q)

    async def _call(self, node: NodeId, items: list[_Item]) -> None:

        def trouble() -> None:
            for item in items:
                item.trouble()

        # The batch waits past its timeout for a live node as long as an operation whose
        # call still wants one of its items would (``Endpoint.call``'s ``keep``).
        patience = next((it.patience for it in items if it.patience is not None), None)
        try:
            with acting_for(patience):
                raw = await self.endpoint.call(
                    node,
                    self.kind,
                    [[it.kind, it.payload] for it in items],
                    timeout=self.timeout,
                    on_trouble=trouble,
                    keep=lambda: any(it.wanted() for it in items),
                )
        except TransportError as e:
            for item in items:
                item.done((node, False, str(e)))
            return
        except RemoteError as e:
            self._queues[node].answered_at = trio.current_time()
            for item in items:
                item.done((node, False, f"refused: {e}"))
            return
        self._queues[node].answered_at = trio.current_time()
        parts = split_reply(raw, len(items))
        if parts is None:
            self.endpoint.suspect(node, "malformed batch reply")
            for item in items:
                item.done((node, False, "malformed batch reply"))
            return
        for item, (how, value) in zip(items, parts, strict=True):
            if how == ITEM_OK:
                item.done((node, True, value))
            elif how == ITEM_REFUSED:
                if isinstance(value, list) and len(value) == 2:
                    item.done((node, False, f"refused: {value[0]}: {value[1]}"))
                else:
                    item.done((node, False, f"refused: {value!r}"))
            else:
                self.endpoint.suspect(node, "malformed batch item")
                item.done((node, False, "malformed batch item"))


class _BatchFanout:
    """How :func:`batch_quorum` reaches the nodes (a driver's ``Transmit``)."""

    __slots__ = ("batcher", "driver", "kind", "make", "patience")

    def __init__(
        self, batcher: Batcher, driver: QuorumDriver, kind: str, make: Callable[[NodeId], Any]
    ) -> None:
        self.batcher = batcher
        self.driver = driver
        self.kind = kind
        self.make = make
        #: The calling operation's (sends may come from other tasks' reports).
        self.patience = current_patience()

    def send(self, node: NodeId) -> None:
        driver = self.driver
        self.batcher.submit(
            node,
            self.kind,
            self.make(node),
            self._done,
            driver.trouble,
            patience=self.patience,
            over=lambda: driver.over,
        )

    def resend(self, node: NodeId) -> None:
        """Never asked: nothing is watched (the batch call resends)."""

    def settle(self, verdict: Verdict) -> None:
        """Queued and sent items run to their end in the batcher's tasks."""

    def _done(self, outcome: Outcome) -> None:
        node, ok, value = outcome
        if ok:
            self.driver.reply(node, value)
        else:
            self.driver.failed(
                node, value, answered=isinstance(value, str) and value.startswith("refused")
            )


async def batch_quorum(
    batcher: Batcher,
    targets: Sequence[NodeId],
    kind: str,
    payload: Any | Callable[[NodeId], Any],
    *,
    enough: Callable[[Mapping[NodeId, Any]], bool],
    accept: Callable[[NodeId, Any], bool] | None = None,
    initial: int | None = None,
    probe_after: float = 0.5,
    timeout: float = 10.0,
) -> QuorumResult:
    """``Endpoint.quorum_call`` through ``batcher`` (same arguments and exceptions).

    Raises:
        QuorumUnavailable: as ``Endpoint.quorum_call``.
    """
    # As ``Endpoint.quorum_call``: nodes that recently refused connections, and nodes far
    # slower than the others, are asked last.
    targets = live_first(targets, batcher.endpoint.ask_last(targets))
    targets, reserve = suspects_last(targets, batcher.endpoint.suspected(targets))
    p = current_patience()
    linger = batcher.endpoint.linger(p)  # attaches the cluster's liveness to ``p`` too
    engine = QuorumEngine(
        targets,
        label=kind,
        enough=enough,
        accept=accept,
        initial=initial,
        probe_after=probe_after,
        resend_after=batcher.endpoint.resend_after,
        timeout=bounded(timeout, trio.current_time()),
        now=trio.current_time(),
        linger=linger,
        reserve=reserve,
    )
    driver = QuorumDriver(engine)
    make = payload if callable(payload) else (lambda _n: payload)
    try:
        result = await driver.run(_BatchFanout(batcher, driver, kind, make))
    finally:
        batcher.endpoint.pardon(engine.reserve_answered)  # suspects that answered correctly
    progressed(trio.current_time())
    return result
