"""Giving this mount's leases back (issue 33): after the kernel forgot what it cached
under them, with the gated update, so that what the mount buffered for the objects
reaches the servers before the release does (a recall's contract)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import trio

log = logging.getLogger(__name__)

#: Objects one ``fs.lease`` or ``fs.release`` update names at most (``MAX_OBJECTS``).
BATCH = 8

#: The Q/U update the leases are given (``Meta.lease_update``: gated for a release).
Update = Callable[[list[int], str, Any], Awaitable[Any]]
#: Starts a task that outlives its caller (``fs/background.py``'s ``Background.spawn``).
Spawn = Callable[[Callable[[], Awaitable[None]]], None]


class Releases:
    """Giving leases back: what the kernel cached under them is forgotten first, then one
    ``fs.release`` per :data:`BATCH` objects with the gated update (what the mount
    buffered for them goes before it: a recall's contract); a release that fails leaves
    the leases to end at their term."""

    def __init__(self, update: Update, wall_ns: Callable[[], int], stats: Counter[str]) -> None:
        self._update = update
        self.wall_ns = wall_ns
        self.stats = stats

    async def after(
        self,
        forget: Callable[[list[int]], Awaitable[None]] | None,
        levels: list[list[int]],
    ) -> None:
        """Release the objects of ``levels`` once ``forget`` (``Leases.before_release``)
        has run on all of them.

        ``levels``: the directories recalled, then what was leased with its create in
        them, then in those, ...: released deepest first.  Another client's recall of a
        directory waits for that directory's release only; released in one go, in
        batches of :data:`BATCH` side by side, the directory's batch could land before a
        new subdirectory's, whose gate still had its creates to send, and that client's
        listing of the subdirectory (no longer, or never, leased on the nodes) missed
        them (a ``cp -r`` on one mount, ``diff -r`` on another under load)."""
        oids = [oid for level in levels for oid in level]
        if forget is not None:
            try:
                await forget(oids)
            except Exception:  # noqa: BLE001 - the release must go on
                log.exception("dropping the kernel's cache of %s", oids)
        for level in reversed(levels):
            await self.release(level)

    async def release(self, oids: list[int]) -> None:
        if not oids:  # nothing to give back (an update names at least one object)
            return
        if len(oids) > BATCH:  # 8 at once (a restore's session leases every file it made)
            for j in range(0, len(oids), 8 * BATCH):
                async with trio.open_nursery() as nursery:
                    for i in range(j, min(j + 8 * BATCH, len(oids)), BATCH):
                        nursery.start_soon(self.release, oids[i : i + BATCH])
            return
        try:
            await self._update(oids, "fs.release", {"lt": self.wall_ns()})
        except Exception as e:  # noqa: BLE001 - the lease then ends at its term
            self.stats["release_failed"] += 1
            log.warning("release of leases on %s failed (they end at their term): %s", oids, e)
