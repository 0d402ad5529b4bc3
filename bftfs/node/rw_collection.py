"""What lazy verification's collection keeps and has kept on one node (the trio side of
:func:`bftfs.rw.collect.verified_step`; the verifier, ``node/rw_verifier.py``, decides
what to verify, this part records what was learned and collects).

* **What retention keeps now**: the configured ``[retention]``, shortened while the node
  is short of space (:func:`bftfs.rw.lazy.squeezed`, history thinned oldest first);
  :meth:`Collection.pressure` sets it before each step.
* **The record step**: one :func:`~bftfs.rw.collect.verified_step` per block, with that
  retention, the snapshots' pins and the owner's limit (a verification, an applied NOTIFY
  and a revisit all run the same step).
* **Revisits**: versions kept only for their age may go once it passes; the step says when
  (``revisit_ns``) and :meth:`Collection.collect_due` collects them then.  One live entry
  per block, its earliest: that step recomputes every later one, so a block verified again
  and again (each verification and applied NOTIFY says when) is collected once when its
  oldest kept version ages out, not once per verification.  The revisits live in memory;
  a restarted node finds them again in the scan that rebuilds its backlog
  (``collect.unverified_step(retention=...)``, ``Verifier._rebuild``).
* **History bytes** per block (versions below the verified mark), summed in the progress.
* **Given-back blocks** go to the :class:`~bftfs.node.rw_forgetter.Forgetter`.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from bftfs.node import limits
from bftfs.node.background import write_batch
from bftfs.node.rw_forgetter import Forgetter
from bftfs.node.snapshots import pinned_moments
from bftfs.policy import RetentionPolicy
from bftfs.rw import collect
from bftfs.rw.lazy import squeezed
from bftfs.rw.timestamp import ZERO, Timestamp

if TYPE_CHECKING:
    from bftfs.node.service import Node

#: Revisits collected in one store transaction (a commit apiece was the cost of a look
#: at history: ``node/qu_pruner.py``'s looks are batched so too).
COLLECT_PER_STEP = 16
#: A node short of space revisits its history again (``_press``) once retention is
#: shortened by this share of its schedule since the last time, at most every PRESS_EVERY s.
PRESS_STEP = 0.1
PRESS_EVERY = 10.0


class Collection:
    """Lazy verification's records and collection on one node (see the module docstring).

    Args:
        node: the node (its store, clock, stats, configuration).
        progress: the verifier's progress record, where the figures go.
    """

    def __init__(self, node: Node, progress: dict[str, Any]) -> None:
        self.node = node
        self.progress = progress
        cfg = node.config
        self.policy = cfg.verification
        self.retention = cfg.retention
        #: What collection keeps now: ``retention``, shortened when the node is short of
        #: space (``rw.lazy.squeezed``, set with the pressure before each step).
        self.kept = cfg.retention
        #: ``(node clock ns, block)``: blocks whose versions kept for their age may go then.
        self.revisits: list[tuple[int, int]] = []
        #: Each block's pending revisit, the earliest (:meth:`revisit`); an entry of
        #: ``revisits`` that differs is stale and skipped.
        self._due: dict[int, int] = {}
        #: Bytes of history per block (versions below the verified mark), where any.
        self._history: dict[int, tuple[int, tuple[Timestamp, Timestamp] | None]] = {}
        #: Blocks down to their verified empty version are forgotten (node/rw_forgetter.py).
        self.forgetter = Forgetter(node)
        #: A client using this much here (``pool_fraction`` of its quota) is short of
        #: room: the old versions of blocks given back under it go without waiting for
        #: their age (``collect.verified_step``).
        self.owner_limit = int(self.policy.pool_fraction * limits.quota_bytes(node))
        #: When history was last revisited for want of space (:meth:`_press`), and the
        #: share of the retention kept then (None: not since the node was last short).
        self._pressed_ns = 0
        self._pressed_share: float | None = None

    def pressure(self) -> bool:
        """Whether the node is short of space (verify without waiting for idle time); sets
        what retention keeps meanwhile (history thinned oldest first, ``squeezed``)."""
        used = self.node.store.used_scaled()  # the disk counts when it fills first
        self.progress["used_bytes"] = used
        pressure = used >= self.policy.pool_fraction * self.node.config.map_size
        self.progress["pressure"] = pressure
        self.kept = squeezed(self.retention, used, self.node.config.map_size, self.policy)
        if pressure:
            self._press()
        else:
            self._pressed_share = None  # the next shortage revisits all history again
        return pressure

    def record(
        self,
        kv: Any,
        block: int,
        *,
        mark: Timestamp,
        flag: Timestamp | None,
        poisonous: Iterable[Timestamp],
        now_ns: int,
        kept: RetentionPolicy | None = None,
    ) -> collect.Verified:
        """The store step of one block: flag ``flag`` verified, delete ``poisonous``,
        collect below ``mark`` what retention lets go: ``kept``, by default what
        :meth:`pressure` last set when the step runs."""
        return collect.verified_step(
            kv,
            block,
            mark=mark,
            flag=flag,
            poisonous=poisonous,
            now_ns=now_ns,
            retention=self.kept if kept is None else kept,  # shortened when short of space
            pins=pinned_moments(kv),
            # A node short of space (its map or its disk: issue 60) lets removed files'
            # contents go at once, as a client near its quota does: removing files must
            # give room back while writes are refused, not after keep_seconds.
            owner_limit=0 if self.progress.get("pressure") else self.owner_limit,
        )

    async def collect_due(self) -> float | None:
        """Collect the blocks whose age-retained versions may go now, up to
        :data:`COLLECT_PER_STEP` in one store transaction; seconds until the next one is
        due (None: none waits).  Below the foreground (``node/yielding.py``) unless the
        node is short of space: room is then the clients' own debt, paid at once, as a
        wave a budget forced is (a writer filling the disk waited behind 20 steps a
        second, one block apiece, and got ENOSPC)."""
        while True:
            short = self.pressure()  # sets what retention keeps now; short: revisits all
            due = self._next_due()
            if due is None:
                return None
            now_ns = self.node.now_ns()
            if due > now_ns:
                return (due - now_ns) / 1e9
            if not short:
                await self.node.gate.step()  # client requests first
            now_ns = self.node.now_ns()
            blocks = self._due_blocks(now_ns)
            if not blocks:
                continue  # changed while it waited: look again
            steps = [
                functools.partial(self._revisited, block=block, now_ns=now_ns, kept=self.kept)
                for block in blocks
            ]
            done = await write_batch(self.node, blocks, steps, "collecting block")
            self.node.stats["rw.gc.steps"] += 1
            for block, verified in done:
                self.account(verified, block)

    def _revisited(
        self, kv: Any, block: int, now_ns: int, kept: RetentionPolicy
    ) -> collect.Verified:
        """The store step of a revisit: nothing learned, collect what ``kept`` lets go."""
        return self.record(kv, block, mark=ZERO, flag=None, poisonous=(), now_ns=now_ns, kept=kept)

    def _next_due(self) -> int | None:
        """When the earliest live revisit is due (stale entries dropped), or None."""
        while self.revisits:
            due, block = self.revisits[0]
            if self._due.get(block) == due:
                return due
            heapq.heappop(self.revisits)  # stale: an earlier one was scheduled after it
        return None

    def _due_blocks(self, now_ns: int) -> list[int]:
        """The blocks due by ``now_ns``, at most :data:`COLLECT_PER_STEP`, taken off the
        revisits (each step says when next: ``account``)."""
        blocks: list[int] = []
        while len(blocks) < COLLECT_PER_STEP and (due := self._next_due()) is not None:
            if due > now_ns:
                break
            _, block = heapq.heappop(self.revisits)
            del self._due[block]
            blocks.append(block)
        return blocks

    def _press(self) -> None:
        """Short of space: every block with history here is revisited now, the most history
        first, with the shortened retention.  Revisits were scheduled for when the full
        retention lets versions go (removed files' contents a week later), so a node that
        became short after its files were removed collected nothing of them: an hour of
        writing and removing 1 GiB files on a `make up` cluster ended in ENOSPC with 8.7
        GiB of removed files' history on each node.  Once when the node becomes short,
        then again only when retention was shortened by :data:`PRESS_STEP` of its
        schedule since (at most every :data:`PRESS_EVERY` seconds): new history is
        collected by its own verification with the retention of the moment, and a full
        node whose history cannot go further does not rescan it."""
        full = self.retention.keep_seconds
        share = self.kept.keep_seconds / full if full > 0 else 0.0
        now = self.node.now_ns()
        if self._pressed_share is not None and (
            share > self._pressed_share - PRESS_STEP or now - self._pressed_ns < PRESS_EVERY * 1e9
        ):
            return
        self._pressed_ns, self._pressed_share = now, share
        ranked = sorted(self._history.items(), key=lambda item: -item[1][0])
        for i, (block, _) in enumerate(ranked):
            self.revisit(now + i, block)
        self.node.stats["rw.gc.pressed"] += 1

    def revisit(self, due: int, block: int) -> None:
        """Collect ``block`` again at node clock ``due`` (ns), unless it is collected no
        later already: that step recomputes when the block's kept versions may go and
        schedules the next revisit itself.  Before, every verification of a block pushed
        one more entry, most of them for the same moment (20 writes of one block left up
        to 37 entries, each a store transaction when it came due)."""
        pending = self._due.get(block)
        if pending is not None and pending <= due:
            return
        self._due[block] = due
        heapq.heappush(self.revisits, (due, block))

    def set_history(
        self, block: int, size: int, order: tuple[Timestamp, Timestamp] | None = None
    ) -> None:
        """Record what ``block``'s history takes here; the total is in the progress.

        ``order``: the step's ``(mark, floor)``.  Steps of one block may be accounted in
        another order than they committed in (group commit), so a step's figure replaces
        the recorded one only if it is not older: the mark and the floor only rise, and at
        the same ones history only shrinks."""
        old, old_order = self._history.get(block, (0, None))
        stale = order is not None and old_order is not None and order < old_order
        if stale or (order is not None and order == old_order and size > old):
            return
        if size:
            self._history[block] = (size, order)
        else:
            self._history.pop(block, None)
        self.progress["history_bytes"] += size - old

    def account(self, res: collect.Verified, block: int) -> None:
        """What a committed record step of ``block`` did: history, revisit, given back,
        counters."""
        self.set_history(block, res.history_bytes, (res.mark, res.floor))
        if res.revisit_ns:
            self.revisit(res.revisit_ns, block)
        if res.given_back:
            self.forgetter.given_back(block)
        self.progress["discarded"] += res.discarded
        self.progress["collected"] += res.collected
        self.node.stats["rw.gc.collected"] += res.collected
        self.node.stats["rw.verify.flagged"] += res.flagged
