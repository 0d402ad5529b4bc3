"""The answering side of batched requests, for any protocol a node serves.

The calling side (``bftfs/net/batch.py``) sends the requests queued for one node as one
request of a protocol's batch kind (``rw.batch`` for PASIS); :func:`batch_handler` builds
the node's handler for such a kind from the protocol's own handlers.  Wire: request = list
of ``[kind, payload]`` (at most ``max_items``, each kind one of ``handlers``); reply = a
list of the same length, each ``[0, reply]`` or ``[1, [code, message]]``.

Each item runs concurrently in its own task and goes through the node's fault hooks
exactly as a request of its own would, so a Byzantine test node misbehaves the same either
way; one item's refusal or failure never sinks the others.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from bftfs.net.server import HandlerError
from bftfs.node.store import StoreFull

if TYPE_CHECKING:
    from bftfs.node.service import Node, RequestContext

Handler = Callable[["RequestContext", Any], Awaitable[Any]]


def batch_handler(
    node: Node, handlers: Mapping[str, Handler], *, protocol: str, max_items: int
) -> Handler:
    """A handler running a batch of ``handlers``' requests; refusals of the batch itself are
    counted under ``<protocol>.refused.malformed`` like the protocol's other refusals."""

    def well_formed(payload: Any) -> bool:
        return (
            isinstance(payload, list)
            and len(payload) <= max_items
            and all(
                isinstance(it, list)
                and len(it) == 2
                and isinstance(it[0], str)
                and it[0] in handlers
                for it in payload
            )
        )

    async def on_batch(ctx: RequestContext, payload: Any) -> Any:
        if not well_formed(payload):
            node.stats[f"{protocol}.refused.malformed"] += 1
            raise HandlerError(
                "malformed", f"batch is not a bounded list of [{protocol} kind, payload]"
            )
        results: list[Any] = [None] * len(payload)

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
            except StoreFull as e:
                node.stats["refused.full"] += 1
                results[i] = [1, ["full", str(e)]]
            except Exception as e:  # one bad item must not sink the others
                node.stats["internal_errors"] += 1
                node.log.exception("node %s: %s batch item %s failed", node.id, protocol, kind)
                results[i] = [1, ["internal", type(e).__name__]]

        node.stats[f"{protocol}.batch.items"] += len(payload)
        async with trio.open_nursery() as nursery:
            for i, (kind, item) in enumerate(payload):
                nursery.start_soon(one, i, kind, item)
        return results

    return on_batch
