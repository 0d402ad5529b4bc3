"""Pruning Q/U object versions once retention lets them go, also for objects that are
never updated again (a removed file's attribute object, a removed directory).

A server prunes an object's old versions when it accepts an update of it
(``bftfs.qu.replica.Retention``), but versions kept for their age could only go at the
*next* update, which a removed file never gets.  So every accepted update also schedules a
look at its objects ``keep_seconds`` later (:meth:`Pruner.updated`); the task runs
:func:`bftfs.qu.replica.prune_step` then, in the group-committed store, oldest first.  An
object updated again meanwhile is looked at only for its latest update.  Memory: one entry
per object updated within the last ``keep_seconds``.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING

import trio

from bftfs.qu.replica import ReplicaConfig, prune_step

if TYPE_CHECKING:
    from bftfs.node.service import Node


class Pruner:
    """The pruning task of one node's Q/U server (see the module docstring)."""

    def __init__(self, node: Node, cfg: ReplicaConfig) -> None:
        self.node = node
        self.cfg = cfg
        self.delay_ns = int(cfg.retention.keep_seconds * 1e9) + 1
        #: ``(due ns, oid)`` in due order (every delay is the same, so appending keeps it).
        self._queue: collections.deque[tuple[int, int]] = collections.deque()
        self._latest: dict[int, int] = {}
        self._wake = trio.Event()

    @property
    def enabled(self) -> bool:
        return self.cfg.retention.keep_last is not None

    def updated(self, objects: Iterable[int]) -> None:
        """The server accepted an update of ``objects`` now."""
        if not self.enabled:
            return
        due = self.node.now_ns() + self.delay_ns
        for oid in objects:
            self._queue.append((due, oid))
            self._latest[oid] = due
        self._wake.set()

    async def run(self) -> None:
        """Never returns while the node runs; a failed step is logged and skipped."""
        while True:
            if not self._queue:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            due, oid = self._queue[0]
            wait = (due - self.node.now_ns()) / 1e9
            if wait > 0:
                await trio.sleep(wait)
                continue
            self._queue.popleft()
            if self._latest.get(oid) != due:
                continue  # updated again since: its own entry comes later
            del self._latest[oid]
            step = functools.partial(prune_step, cfg=self.cfg, oid=oid, now_ns=self.node.now_ns())
            try:
                deleted = await self.node.store.write(step)
            except Exception:
                self.node.stats["internal_errors"] += 1
                self.node.log.exception("node %s: pruning object %d", self.node.id, oid)
                continue
            self.node.stats["qu.pruned"] += deleted
