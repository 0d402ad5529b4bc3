"""A restarted node's catch-up of block registers (docs/listeners.md "Blocks on four nodes").

Byzantine Listeners' forwarding makes every value one correct node stores reach every
correct node (Lemma 16), over links the seed assumes reliable.  A node that was down lost
those messages: it would hold old values of the blocks written meanwhile, and while it
lags, one more faulty node leaves fewer than a quorum of nodes that agree on them.

So each node keeps, with a block register's value, the ``K`` and ``J`` that made it vouched
(``bnodeside.PROOFS``).  A node that starts asks every other node for ``bl.sync``; each
answers at once and then sends it, in the background and one register at a time, each
block register's value as a ``bl.store`` with that ``K`` and ``J`` and a TTL of 0.  The
receiver runs its ordinary STORE rules (S1-S18): the entries of the correct nodes check
there as they did at the sender, more than ``f`` of them make it vouch and add its own, and
with a quorum it stores the value if it is newer than its own (S6).  A Byzantine sender
gains nothing a forwarded STORE would not give it: a write no quorum vouched for is not
stored (Lemma 12).  TTL 0: the receiver forwards nothing on.
"""

from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING, Any

import trio

from bftfs.ids import NodeId, is_node
from bftfs.listeners import bmessages as bm
from bftfs.listeners import messages as m
from bftfs.listeners.bnodeside import DB, sync_request
from bftfs.net.errors import RemoteError, TransportError
from bftfs.net.server import HandlerError

if TYPE_CHECKING:
    from bftfs.node.service import Node, RequestContext

KIND_SYNC = "bl.sync"
#: Seconds between a starting node's tries of a peer that did not answer (doubling).
RETRY_SECONDS = (1.0, 60.0)


def _block_keys(kv: Any) -> list[bytes]:
    end = m.BLOCK_PREFIX[:-1] + bytes([m.BLOCK_PREFIX[-1] + 1])
    return list(kv.scan_keys(DB, m.BLOCK_PREFIX, end))


class Sync:
    """``bl.sync`` on a node whose blocks are registers, and its own catch-up at start."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.peers = [int(s.id) for s in node.config.nodes if int(s.id) != int(node.id)]
        #: ``asked`` (peers that answered this node's request), ``sent`` (registers sent),
        #: ``sending`` (catch-ups of other nodes under way): ``progress.blisteners-sync``.
        self.stats: dict[str, int] = {"asked": 0, "sent": 0, "sending": 0}
        node.progress["blisteners-sync"] = self.stats

    async def on_sync(self, ctx: RequestContext, payload: Any) -> Any:
        if not is_node(ctx.sender):
            raise HandlerError("forbidden", "bl.sync is between nodes")
        self.stats["sending"] += 1  # (before the answer: a status poll sees it at once)
        self.node.endpoint.spawn(self._send_all, NodeId(int(ctx.sender)))
        return {}

    async def _send_all(self, peer: NodeId) -> None:
        try:
            for key in self.node.store.read(_block_keys):  # one at a time: up to 4 MiB each
                payload = self.node.store.read(functools.partial(sync_request, key=key))
                if payload is None:
                    continue
                with contextlib.suppress(TransportError, RemoteError):
                    await self.node.endpoint.call(peer, bm.KIND_STORE, payload, timeout=30.0)
                    self.stats["sent"] += 1
        finally:
            self.stats["sending"] -= 1

    async def catch_up(self) -> None:
        """Ask every other node for its block registers, each until it answers once."""
        async with trio.open_nursery() as nursery:
            for peer in self.peers:
                nursery.start_soon(self._ask, NodeId(peer))

    async def _ask(self, peer: NodeId) -> None:
        wait, most = RETRY_SECONDS
        while True:
            try:
                await self.node.endpoint.call(peer, KIND_SYNC, {}, timeout=10.0)
            except (TransportError, RemoteError):
                await trio.sleep(wait)  # a peer down: tried again, less and less often
                wait = min(most, wait * 2)
                continue
            self.stats["asked"] += 1
            return


def register(node: Node) -> Sync:
    """Serve ``bl.sync`` on ``node`` and start its catch-up."""
    sync = Sync(node)
    node.register(KIND_SYNC, sync.on_sync, inline=True)
    node.spawn(sync.catch_up)
    return sync
