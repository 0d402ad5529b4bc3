"""The answering side of batched requests, for any protocol a node serves.

The calling side (``bftfs/net/batch.py``) sends the requests queued for one node as one
request of a protocol's batch kind (``rw.batch`` for PASIS); :class:`BatchHandler` builds
the node's handler for such a kind from the protocol's own handlers.  Wire: request = list
of ``[kind, payload]`` (at most ``max_items``, each kind one of ``handlers``); reply = a
list of the same length, each ``[0, reply]`` or ``[1, [code, message]]``.

Each item runs concurrently in its own task and goes through the node's fault hooks
exactly as a request of its own would, so a Byzantine test node misbehaves the same either
way; one item's refusal or failure never sinks the others.

A protocol whose requests have a synchronous first try (``fast`` handlers, see
``Server.register``: a Q/U query or non-durable update is one LMDB transaction) gets it for
its batch items too: :meth:`BatchHandler.fast` answers the items it can in the connection's
read loop, and when some must wait (a durable write, an object sync) hands the batch to the
task path with those answers kept, so no item runs twice.  Without fault injection only:
with it, every item takes the task path through the hooks, as a lone request does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from bftfs.net.server import DEFER, FastHandler, HandlerError
from bftfs.node.store import StoreFull

if TYPE_CHECKING:
    from bftfs.node.service import Node, RequestContext

Handler = Callable[["RequestContext", Any], Awaitable[Any]]


class BatchHandler:
    """The node's handler of one batch kind (module docstring) running ``handlers``'
    requests (``fast``: their synchronous first tries, if any); register it with
    ``fast=handler.fast`` when the protocol has fast handlers.  Refusals of the batch itself
    are counted under ``<protocol>.refused.malformed`` like the protocol's other refusals."""

    #: Batches the fast path handed on with answers (payload id -> (payload, results)):
    #: bounded, as a handed-on batch that never arrives (a fault override) must not pile up.
    MAX_HANDED_ON = 256

    def __init__(
        self,
        node: Node,
        handlers: Mapping[str, Handler],
        *,
        protocol: str,
        max_items: int,
        fast: Mapping[str, FastHandler] | None = None,
        reply_bytes: Callable[[str, Any], int] | None = None,
        max_reply_bytes: int | None = None,
    ) -> None:
        self.node = node
        self.handlers = dict(handlers)
        self.protocol = protocol
        self.max_items = max_items
        #: What an item's reply may carry at most (``reply_bytes(kind, payload)``), and
        #: the most a batch of several items may ask for in all: the calling side cuts its
        #: batches so (``net/batch.py``, ``max_bytes``), and a batch asking for more is
        #: refused, since its reply would be held whole in the node's memory until sent
        #: (docs/buffers.md: 128 data reads of 1 MiB blocks were a 43 MiB reply).
        self.reply_bytes = reply_bytes
        self.max_reply_bytes = max_reply_bytes
        self.fast_handlers = dict(fast or {})
        self._handed_on: dict[int, tuple[Any, list[Any]]] = {}

    def _check(self, payload: Any) -> None:
        handlers = self.handlers
        if not (
            isinstance(payload, list)
            and len(payload) <= self.max_items
            and all(
                isinstance(it, list)
                and len(it) == 2
                and isinstance(it[0], str)
                and it[0] in handlers
                for it in payload
            )
        ):
            self.node.stats[f"{self.protocol}.refused.malformed"] += 1
            raise HandlerError(
                "malformed", f"batch is not a bounded list of [{self.protocol} kind, payload]"
            )
        size, limit = self.reply_bytes, self.max_reply_bytes
        if size is not None and limit is not None and len(payload) > 1:
            asked = sum(size(kind, item) for kind, item in payload)
            if asked > limit:
                self.node.stats[f"{self.protocol}.refused.malformed"] += 1
                raise HandlerError(
                    "malformed", f"batch asks for {asked} bytes of replies, over {limit}"
                )

    def _failed(self, kind: str, e: Exception) -> list[Any]:
        """The item answer for an exception other than a refusal (logged, counted)."""
        node = self.node
        if isinstance(e, StoreFull):
            node.stats["refused.full"] += 1
            return [1, ["full", str(e)]]
        node.stats["internal_errors"] += 1
        node.log.exception("node %s: %s batch item %s failed", node.id, self.protocol, kind)
        return [1, ["internal", type(e).__name__]]

    def fast(self, ctx: RequestContext, payload: Any) -> Any:
        """Answer every item synchronously, or hand the batch on (``DEFER``) with the
        answers of those that were, for :meth:`__call__` to complete."""
        self._check(payload)
        results: list[Any] = [None] * len(payload)
        waits = False
        fast_handlers = self.fast_handlers
        for i, (kind, item) in enumerate(payload):
            fast = fast_handlers.get(kind)
            if fast is None:
                waits = True
                continue
            try:
                reply = fast(ctx, item)
            except HandlerError as e:
                results[i] = [1, [e.code, e.message]]
                continue
            except Exception as e:  # one bad item must not sink the others
                results[i] = self._failed(kind, e)
                continue
            if reply is DEFER:
                waits = True
            else:
                results[i] = [0, reply]
        self.node.stats[f"{self.protocol}.batch.items"] += len(payload)
        if not waits:
            return results
        if len(self._handed_on) >= self.MAX_HANDED_ON:
            self._handed_on.clear()
        self._handed_on[id(payload)] = (payload, results)
        return DEFER

    async def __call__(self, ctx: RequestContext, payload: Any) -> Any:
        node = self.node
        got = self._handed_on.pop(id(payload), None)
        if got is not None and got[0] is payload:
            results = got[1]
        else:
            self._check(payload)
            node.stats[f"{self.protocol}.batch.items"] += len(payload)
            results = [None] * len(payload)
        handlers = self.handlers

        async def one(i: int, kind: str, item: Any) -> None:
            override = None if node.faults is None else node.faults.handler(kind)
            try:
                if override is not None:
                    reply = await override(ctx, item, handlers[kind])
                else:
                    reply = await handlers[kind](ctx, item)
                results[i] = [0, reply]
            except HandlerError as e:
                results[i] = [1, [e.code, e.message]]
            except Exception as e:  # one bad item must not sink the others
                results[i] = self._failed(kind, e)

        async with trio.open_nursery() as nursery:
            for i, (kind, item) in enumerate(payload):
                if results[i] is None:
                    nursery.start_soon(one, i, kind, item)
        return results
