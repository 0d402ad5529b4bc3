"""Forgetting given-back blocks: the last record of a removed file's contents on a node.

fs/files/reclaim.py writes an empty version over every block of a removed file, and lazy
verification then collects everything below it (node/rw_verifier.py), but the empty
version itself stayed, with the block's floor and verified mark: a few hundred bytes per
block per node that grew with every file ever removed.  Once such a block is down to its
verified empty version (``Verified.given_back``) and the version is older than
history's horizon plus ``forget_seconds`` ([retention], policy.py), this task asks every
other node for its versions of the block (a READ_LATEST witness: history only) and, when all
``n`` list that version alone or nothing (``forget.forget_agreed``), deletes it with the
floor and the mark in one store transaction (``forget.forget_step``).  The block then
reads as never written here, which is the same value: the empty block.

Why every node's word: a node that was down during the removal may still hold the old
contents; were the others to forget the empty version, a reader could find that old
version the newest one left.  A lying node speaks only for itself (one node's old version
is never returned, ``QC - missing > b``).  A node down for the whole wait leaves the block
as it is until the next sweep after it is back.

A lone empty version that is *not* verified here goes too, once every other node lists
nothing for the block (``forget.forgotten_elsewhere``): a node back from an outage
catches up the empty version of a block the others then forget (they need its word only
that it holds nothing older), and its verifier, finding nothing on them, never marks it
verified.  Nobody holds anything else of the block, so the value stays the empty block;
before, that node kept the version for good.  ``Verified.given_back`` (rw/collect.py)
and the sweep name such blocks too; ``rw.forgotten.unverified`` counts them.

While a move between generations runs (issue 35), a node of the new generation forgets
nothing (``held``, ``NodeGeneration.moving``): a reader finding no version of a block in
g + 1 reads it in g (``fs/generations/routers.py``), so forgetting a block given back in g + 1 would
bring back the contents g held before.  So does a node of a group partitions move to
(``node/moves.py``: a mount reads the source group of a block its target lacks).  The
blocks due meanwhile are counted
(``rw.forget.held``) and dropped from the queue; the hourly sweep finds them again once
the move is finished.

The queue is in memory; a sweep walks every block the store holds at start and then every
hour (node/background.py), so a restart loses nothing for long.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from bftfs.ids import NodeId
from bftfs.net.quorum import QuorumUnavailable
from bftfs.node.background import Backoff, sweep
from bftfs.rw import forget, replica
from bftfs.rw.client import max_fragment_of
from bftfs.rw.messages import MessageError, ReadReply, ReadRequest
from bftfs.rw.timestamp import Timestamp

if TYPE_CHECKING:
    from bftfs.node.parts import NodeParts

#: Blocks asked about together.
BATCH = 64
#: How long the other nodes are waited for (retries: node/backoff.py).
ASK_TIMEOUT = 5.0


class Forgetter:
    """The forgetting task of one node's PASIS store (see the module docstring)."""

    def __init__(self, node: NodeParts) -> None:
        self.node = node
        kept = node.config.retention
        self.delay_ns = int((kept.horizon_seconds + kept.forget_seconds) * 1e9)
        self.max_fragment = max_fragment_of(node.config)
        #: ``(due ns, block)``, a heap; ``_due`` the entry that counts for each block.
        self._queue: list[tuple[int, int]] = []
        self._due: dict[int, int] = {}
        self._backoff = Backoff()
        self._wake = trio.Event()
        #: Whether forgetting is held (a move to this node's generation or group runs).
        self.held: Callable[[], bool] = lambda: False

    def given_back(self, block: int, ts: Timestamp | None = None) -> None:
        """Verification left ``block`` at its empty version (``ts``, else read from the
        store): look again when it is due."""
        if ts is None:
            ts = self.node.store.read(functools.partial(forget.lone_empty, block=block))
            if ts is None:
                return
        self._schedule(block, ts.time + self.delay_ns)

    def _schedule(self, block: int, due: int) -> None:
        if self._due.get(block, due + 1) <= due:
            return  # already due no later
        heapq.heappush(self._queue, (due, block))
        self._due[block] = due
        self._wake.set()

    async def run(self) -> None:
        """Never returns while the node runs; a failed step is logged and skipped."""
        while True:
            now = self.node.now_ns()
            if not self._queue or self._queue[0][0] > now:
                wait = (self._queue[0][0] - now) / 1e9 if self._queue else float("inf")
                self._wake = trio.Event()
                with trio.move_on_after(wait):
                    await self._wake.wait()
                continue
            await self.node.gate.step()  # client requests first (node/yielding.py)
            now = self.node.now_ns()
            batch: list[int] = []
            while self._queue and self._queue[0][0] <= now and len(batch) < BATCH:
                due, block = heapq.heappop(self._queue)
                if self._due.get(block) == due:
                    del self._due[block]
                    batch.append(block)
            try:
                await self._forget(batch)
            except Exception:
                self.node.stats["internal_errors"] += 1
                self.node.log.exception("node %s: forgetting blocks", self.node.id)

    async def _forget(self, blocks: list[int]) -> None:
        """Ask every node about ``blocks`` (all at once: a node that hangs costs one
        timeout per batch, not per block) and forget those they all agree on; nothing
        while :attr:`held` (the module docstring)."""
        if self.held():
            self.node.stats["rw.forget.held"] += len(blocks)
            return
        targets = {
            b: t
            for b in blocks
            if (t := self.node.store.read(functools.partial(forget.lone_empty, block=b)))
        }
        said: dict[int, dict[int, ReadReply]] = {}

        async def ask(block: int) -> None:
            said[block] = await self._witnesses(block)

        async with trio.open_nursery() as nursery:
            for block in targets:
                nursery.start_soon(ask, block)
        for block, ts in targets.items():
            agreed = self._agreed(block, ts, said[block])
            if agreed is None:
                self.node.stats["rw.forget.waiting"] += 1
                self._retry(block)
                continue
            self._backoff.reset(block)
            step = functools.partial(forget.forget_step, block=block, ts=ts)
            if await self.node.store.write(step, background=True):
                self.node.stats["rw.forgotten"] += 1
                if agreed == "unverified":
                    self.node.stats["rw.forgotten.unverified"] += 1

    def _agreed(self, block: int, ts: Timestamp, said: dict[int, ReadReply]) -> str | None:
        """Whether ``ts``, ``block``'s lone empty version here, may go, and by which rule:
        ``"verified"`` here, once every node lists it alone or nothing; ``"unverified"``,
        once every other node lists nothing (they forgot the block: the module docstring);
        None: not yet."""
        n = self.node.config.n
        verified = self.node.store.read(functools.partial(forget.forget_target, block=block))
        if verified == ts and forget.forget_agreed(ts, said, n):
            return "verified"
        if forget.forgotten_elsewhere(ts, said, n, int(self.node.id)):
            return "unverified"
        return None

    def _retry(self, block: int) -> None:
        due = self._backoff.next_due(block, self.node.now_ns())
        if due is None:
            self.node.stats["rw.forget.given_up"] += 1
        else:
            self._schedule(block, due)

    async def _witnesses(self, block: int) -> dict[int, ReadReply]:
        """Every node's READ_LATEST witness of ``block`` (this one's from its store);
        nodes that did not answer, or answered malformed, are missing."""
        req = ReadRequest(block, data=False)  # type: ignore[arg-type]
        me = int(self.node.id)
        got: dict[int, ReadReply] = {}

        def accept(node: Any, raw: Any) -> bool:
            try:
                got[int(node)] = ReadReply.from_wire(
                    raw, req, n=self.node.config.n, max_fragment=self.max_fragment
                )
            except MessageError:
                return False
            return True

        others = [NodeId(i) for i in self.node.config.node_ids if i != me]
        with contextlib.suppress(QuorumUnavailable):
            await self.node.endpoint.quorum_call(
                others,
                req.kind,
                req.to_wire(),
                enough=lambda valid: len(valid) >= len(others),
                accept=accept,
                timeout=ASK_TIMEOUT,
            )
        got[me] = self.node.store.read(lambda kv: replica.read_step(kv, req))
        return got

    async def sweep(self) -> None:
        """Queue every block down to a verified empty version, a page at a time
        (node/background.py; never returns)."""

        def take(page: list[tuple[int, Timestamp]]) -> None:
            for block, ts in page:
                self.given_back(block, ts)

        await sweep(self.node, "blocks", forget.given_back_page, take)
