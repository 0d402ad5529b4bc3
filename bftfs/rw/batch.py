"""Request batching for the PASIS client: many concurrent requests to a node, one frame.

A file is many blocks, so a client usually has many block operations in flight, and each
sends a request to (nearly) every node.  Sent one by one, every request costs a system call
and a wake-up on both sides, which on a small machine dominates everything else (see
docs/rw.md, "Where the time goes").  :class:`Batcher` queues the requests that tasks issue
while the event loop is busy and sends each node's queue as one ``rw.batch`` request when the
flusher task runs - that is, after every task that was ready has had its turn - so a lone
request goes out at once and concurrent ones share frames.  The node runs the items
concurrently (writes still share one group commit) and answers with one frame.

:func:`batch_quorum` is ``Endpoint.quorum_call`` over a batcher: the same contract (``enough``
over accepted replies, ``accept`` filter, ``initial`` targets then probing when a node fails,
refuses, answers invalidly or is slower than ``probe_after``; stragglers finish in the
background), so the protocol logic in client.py does not care which one runs.

Wire: ``rw.batch`` request = list of ``[kind, payload]`` (at most :data:`MAX_BATCH`, kinds
from ``rw.*`` other than ``rw.batch``); reply = list of the same length, each ``[0, reply]``
or ``[1, [code, message]]``.  The reply list is checked here; each item's reply is checked by
the caller as usual (messages.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from bftfs.ids import NodeId
from bftfs.transport import (
    Endpoint,
    QuorumResult,
    QuorumUnavailable,
    RemoteError,
    TransportError,
)

KIND_BATCH = "rw.batch"
#: Largest number of items in one batch (a node refuses more).
MAX_BATCH = 128

Outcome = tuple[NodeId, bool, Any]


@dataclass
class _Item:
    kind: str
    payload: Any
    done: Callable[[Outcome], None]
    trouble: Callable[[], None]


@dataclass
class _Queue:
    items: list[_Item] = field(default_factory=list)
    scheduled: bool = False


class Batcher:
    """Per-node queues of requests, flushed as ``rw.batch`` frames by background tasks."""

    def __init__(self, endpoint: Endpoint, nursery: trio.Nursery, *, timeout: float | None) -> None:
        self.endpoint = endpoint
        self._nursery = nursery
        self.timeout = timeout
        self._queues: dict[NodeId, _Queue] = {}
        self.batches = 0
        self.items = 0

    def submit(
        self,
        node: NodeId,
        kind: str,
        payload: Any,
        done: Callable[[Outcome], None],
        trouble: Callable[[], None],
    ) -> None:
        """Queue one request; ``done((node, ok, reply_or_reason))`` is called exactly once."""
        q = self._queues.setdefault(node, _Queue())
        q.items.append(_Item(kind, payload, done, trouble))
        if not q.scheduled:
            q.scheduled = True
            self._nursery.start_soon(self._flush, node)

    async def _flush(self, node: NodeId) -> None:
        # Everything queued since the flush was scheduled goes now; later submissions
        # schedule another flush, so batches to one node are pipelined, not serialised.
        q = self._queues[node]
        q.scheduled = False
        items, q.items = q.items, []
        chunks = [items[i : i + MAX_BATCH] for i in range(0, len(items), MAX_BATCH)]
        for chunk in chunks[1:]:
            self._nursery.start_soon(self._send, node, chunk)
        if chunks:
            await self._send(node, chunks[0])

    async def _send(self, node: NodeId, items: list[_Item]) -> None:
        self.batches += 1
        self.items += len(items)

        def trouble() -> None:
            for item in items:
                item.trouble()

        try:
            raw = await self.endpoint.call(
                node,
                KIND_BATCH,
                [[it.kind, it.payload] for it in items],
                timeout=self.timeout,
                on_trouble=trouble,
            )
        except TransportError as e:
            for item in items:
                item.done((node, False, str(e)))
            return
        except RemoteError as e:
            for item in items:
                item.done((node, False, f"refused: {e}"))
            return
        if not isinstance(raw, list) or len(raw) != len(items):
            for item in items:
                item.done((node, False, "malformed batch reply"))
            return
        for item, res in zip(items, raw, strict=True):
            if isinstance(res, list) and len(res) == 2 and res[0] == 0:
                item.done((node, True, res[1]))
            elif isinstance(res, list) and len(res) == 2 and res[0] == 1:
                item.done((node, False, f"refused: {res[1]!r}"))
            else:
                item.done((node, False, "malformed batch item"))


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
    """``Endpoint.quorum_call`` through ``batcher`` (same arguments and exceptions)."""
    targets = list(dict.fromkeys(targets))
    result = QuorumResult()
    if enough(result.replies):
        return result
    send, recv = trio.open_memory_channel[Outcome | None](float("inf"))
    make = payload if callable(payload) else (lambda _n: payload)
    waiting = 0
    next_target = 0

    def start_next() -> None:
        nonlocal waiting, next_target
        if next_target < len(targets):
            node = targets[next_target]
            next_target += 1
            waiting += 1
            batcher.submit(node, kind, make(node), send.send_nowait, lambda: send.send_nowait(None))

    for _ in range(len(targets) if initial is None else max(1, initial)):
        start_next()
    deadline = trio.current_time() + timeout
    while True:
        if waiting == 0 and next_target >= len(targets):
            raise QuorumUnavailable(
                f"{kind}: quorum not reached ({len(result.replies)} valid of {len(targets)}; "
                f"errors: {result.errors})",
                result,
            )
        now = trio.current_time()
        if now >= deadline:
            raise QuorumUnavailable(f"{kind}: quorum not reached within {timeout:g}s", result)
        more = next_target < len(targets)
        got: Outcome | None = None
        timed_out = True
        with trio.move_on_at(min(deadline, now + probe_after) if more else deadline):
            got = await recv.receive()
            timed_out = False
        if got is None:
            if timed_out or more:
                start_next()
            continue
        node, ok, value = got
        waiting -= 1
        if ok and (accept is None or accept(node, value)):
            result.replies[node] = value
            result.errors.pop(node, None)
            if enough(result.replies):
                return result
        else:
            result.errors[node] = value if not ok else "invalid reply"
            start_next()
