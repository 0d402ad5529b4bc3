"""Lazy verification's cooperation on one node: the NOTIFYs it sends and the ones it
takes (seed L1496-1537, L1665-1672; the rules are :class:`bftfs.rw.lazy.NotifyBook`),
and the HOLDs that keep the nodes out of a big read's way.

A verified version (and each poisonous one met) is told to every other node that has not
told this node the same (L1536); the NOTIFYs wait :data:`NOTIFY_LINGER` to go together,
one request per peer.  What others tell is recorded per sender; a block that ``b + 1``
agree on is what the verifier then records (``Verifier.notified``).

A HOLD (``rw.hold``) tells every peer that this node holds its idle-time verification
back because a client reads a big object it has left to verify (``Verifier.client_read``).
A node outside the reader's quorum sees none of the reads; verifying the file in the
meantime, it read the fragments the reader reads from the same nodes and took CPU the
read needed (a 1 GiB file read right after it was written: 105 MB/s, against 203 with
no verification during the read; docs/lazy.md).  Told so by ``b + 1`` peers within
``stream_idle_seconds`` (so at least one correct node sees the reads), it holds too.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

import trio

from bftfs.ids import NodeId, PrincipalId
from bftfs.net.errors import RemoteError, TransportError
from bftfs.rw.lazy import POISONOUS, VERIFIED, HoldBook, NotifyBook
from bftfs.rw.messages import KIND_HOLD, KIND_NOTIFY, MAX_NOTIFY, BlockId, Notify, hold_wire
from bftfs.rw.timestamp import ZERO, Timestamp

if TYPE_CHECKING:
    from bftfs.node.service import Node

#: How long NOTIFYs wait to be sent together (they never hold anything up).
NOTIFY_LINGER = 0.02

#: What ``b + 1`` NOTIFYs agree on for one block: the block, the mark to collect below,
#: the version to flag verified (or None), the poisonous versions.
Agreed = tuple[int, Timestamp, Timestamp | None, set[Timestamp]]


class Notifier:
    """The NOTIFYs of one node's verifier (see the module docstring).

    Args:
        node: the node (its endpoint, configuration, log).
        peers: the other nodes.
        progress: the verifier's progress record, where the counts go.
    """

    def __init__(self, node: Node, peers: list[NodeId], progress: dict[str, Any]) -> None:
        self.node = node
        self.progress = progress
        self.peers = peers
        self.book = NotifyBook(node.config.b)
        self._outbox: dict[NodeId, list[tuple[BlockId, Timestamp, str]]] = defaultdict(list)
        self._flush = trio.Event()
        self._hold = trio.Event()
        self.holds = HoldBook(node.config.b)

    def hold(self) -> None:
        """Send a HOLD to every peer (at once, in the background)."""
        self._hold.set()

    def held(self, sender: PrincipalId, now: float, window: float) -> bool:
        """Record ``sender``'s HOLD; whether ``b + 1`` peers sent one within ``window``."""
        return self.holds.held(int(sender), now, window)

    def received(self, sender: PrincipalId, msg: Notify) -> list[Agreed]:
        """Record ``sender``'s NOTIFYs; what ``b + 1`` senders now agree on, per block."""
        self.progress["notify_received"] += len(msg.entries)
        blocks = []
        for block, ts, status in msg.entries:
            self.book.record(int(sender), block, ts, status)
            blocks.append(block)
        agreed: list[Agreed] = []
        for block in dict.fromkeys(blocks):
            flag = self.book.flagged(block)
            floor = self.book.floor(block)
            poison = self.book.poisonous(block)
            if flag is None and floor is None and not poison:
                continue
            mark = max(flag or ZERO, floor or ZERO)
            agreed.append((block, mark, flag, poison))
        return agreed

    def queue(self, block: BlockId, ts: Timestamp, poison: set[Timestamp]) -> None:
        """``ts`` of ``block`` was verified, ``poison`` found poisonous: tell the peers
        (not those that told this node ``ts`` already) at the next :meth:`flush`."""
        if ts != ZERO:
            told = self.book.told_by(block, ts)
            for peer in self.peers:
                if int(peer) not in told:
                    self._outbox[peer].append((block, ts, VERIFIED))
        # Poison found above the initial value (a block whose only writes were poisonous)
        # is told too, so the others discard it without verifying it themselves.
        for bad in poison:
            for peer in self.peers:
                self._outbox[peer].append((block, bad, POISONOUS))

    def flush(self) -> None:
        """Send what is queued (after :data:`NOTIFY_LINGER`)."""
        self._flush.set()

    async def run(self) -> None:
        """Send queued NOTIFYs, one request per peer, in the background."""
        while True:
            await self._flush.wait()
            await trio.sleep(NOTIFY_LINGER)
            self._flush = trio.Event()
            outbox, self._outbox = self._outbox, defaultdict(list)
            async with trio.open_nursery() as nursery:
                for peer, entries in outbox.items():
                    for i in range(0, len(entries), MAX_NOTIFY):
                        nursery.start_soon(self._send, peer, entries[i : i + MAX_NOTIFY])

    async def run_holds(self) -> None:
        """Send HOLDs, one request per peer, in the background."""
        while True:
            await self._hold.wait()
            self._hold = trio.Event()
            self.progress["holds_sent"] += 1
            async with trio.open_nursery() as nursery:
                for peer in self.peers:
                    nursery.start_soon(self._send_hold, peer)

    async def _send_hold(self, peer: NodeId) -> None:
        try:
            await self.node.endpoint.call(peer, KIND_HOLD, hold_wire())
        except (TransportError, RemoteError) as e:
            # A lost HOLD costs the read that peer's verification beside it, never safety.
            self.node.log.debug("node %s: HOLD to %s lost: %s", self.node.id, peer, e)

    async def _send(self, peer: NodeId, entries: list[tuple[BlockId, Timestamp, str]]) -> None:
        try:
            await self.node.endpoint.call(peer, KIND_NOTIFY, Notify(tuple(entries)).to_wire())
            self.progress["notify_sent"] += len(entries)
        except (TransportError, RemoteError) as e:
            # A lost NOTIFY costs the peer a verification of its own, never safety.
            self.node.log.debug("node %s: NOTIFY to %s lost: %s", self.node.id, peer, e)
