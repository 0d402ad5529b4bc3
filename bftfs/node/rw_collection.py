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

import heapq
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from bftfs.node import limits
from bftfs.node.rw_forgetter import Forgetter
from bftfs.node.snapshots import pinned_moments
from bftfs.policy import RetentionPolicy
from bftfs.rw import collect
from bftfs.rw.lazy import squeezed
from bftfs.rw.timestamp import ZERO, Timestamp

if TYPE_CHECKING:
    from bftfs.node.service import Node


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

    def pressure(self) -> bool:
        """Whether the node is short of space (verify without waiting for idle time); sets
        what retention keeps meanwhile (history thinned oldest first, ``squeezed``)."""
        used = self.node.store.used_scaled()  # the disk counts when it fills first
        self.progress["used_bytes"] = used
        pressure = used >= self.policy.pool_fraction * self.node.config.map_size
        self.progress["pressure"] = pressure
        self.kept = squeezed(self.retention, used, self.node.config.map_size, self.policy)
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
        """Collect the blocks whose age-retained versions may go now; seconds until the
        next one is due (None: none waits)."""
        while self.revisits:
            due, block = self.revisits[0]
            if self._due.get(block) != due:
                heapq.heappop(self.revisits)  # stale: an earlier one was scheduled after it
                continue
            now_ns = self.node.now_ns()
            if due > now_ns:
                return (due - now_ns) / 1e9
            await self.node.gate.step()  # client requests first (node/yielding.py)
            if not self.revisits or self.revisits[0] != (due, block):
                continue  # changed while it waited: look again
            heapq.heappop(self.revisits)
            del self._due[block]  # the step says when next (``account``)
            self.pressure()  # sets what retention keeps now

            kept = self.kept

            def step(
                kv: Any, block: int = block, now_ns: int = now_ns, kept: Any = kept
            ) -> collect.Verified:
                return self.record(
                    kv, block, mark=ZERO, flag=None, poisonous=(), now_ns=now_ns, kept=kept
                )

            res = await self.node.store.write(step, background=True)
            self.account(res, block)
        return None

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
