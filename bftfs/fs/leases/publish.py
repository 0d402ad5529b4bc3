"""Publishing what this mount holds back under an exclusive lease, and keeping the lease
(issue 64; the protocol: ``fsobjects/publish.py``).

A reader whose query one of this mount's exclusive leases refused asks the nodes for a
publication; every correct node that takes the request pushes ``{"publish": [oid, ...]}``
here.  A request is believed from ``b + 1`` nodes (:class:`RecallVotes` on that key), so a
Byzantine node alone cannot make the mount send early (which would cost only rounds).
The mount then, at most once per :data:`PACE` and for up to :data:`BATCH` objects at a
time: reads the requests counted on them (``fs.pubasked``), sends what it holds back for
them with the gated update ``fs.publish`` (the gate sends a directory's held-back creates,
mkdirs, removals and the buffered writes of the files under it first, as for a release),
which records the publication.  The lease, its cache and the directory's write-back stay:
a writer with a reader beside it keeps working without a round per operation, and the
reader waits for at most a pace and a few rounds per look.

The files made under a published directory are no longer *unseen* (``leases/unseen.py``):
the reader may now know them, so they are answered and removed as any leased file.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from bftfs.fs.leases.holdings import Holdings
from bftfs.fs.leases.releases import BATCH, Spawn, Update
from bftfs.fs.leases.votes import RecallVotes
from bftfs.fsobjects.leases import EXCLUSIVE

log = logging.getLogger(__name__)

#: Seconds between two publications of this mount: what a reader beside a busy writer
#: waits at most for a look, and what bounds the rounds readers cost the writer.
PACE = 0.2
#: The query the requests counted are read with (not answered from the leases).
ASKED = "fs.pubasked"

#: The ungated query (``Meta.query_now``: an object or a list of them).
Query = Callable[[Any, str, Any], Awaitable[Any]]


class Publisher:
    """The nodes' requests to publish and their publications (module docstring)."""

    def __init__(
        self,
        holdings: Holdings,
        votes: RecallVotes,
        query: Query,
        update: Update,
        spawn: Spawn,
        wall_ns: Callable[[], int],
        stats: Counter[str],
    ) -> None:
        self._holdings = holdings
        self._votes = votes
        self._query = query
        self._update = update
        self._spawn = spawn
        self._wall_ns = wall_ns
        self._stats = stats
        #: Objects asked for and not yet published, in order.
        self._wanted: dict[int, None] = {}
        self._running = False
        self._last = -PACE

    def _exclusive(self, oid: int) -> bool:
        h = self._holdings.held.get(oid)
        return h is not None and h.kind == EXCLUSIVE

    def on_push(self, node: int, body: Any) -> None:
        """A node's push of a request to publish (``Recalls.on_publish``)."""
        believed = self._votes.count(node, body, self._exclusive)
        for key, n in self._votes.take_stats().items():
            self._stats["publish_" + key] += n
        for oid in believed:
            self._votes.forget(oid)  # the next request needs b + 1 pushes of its own
            self._wanted[oid] = None
        if believed:
            self._stats["publish_asked"] += len(believed)
            if not self._running:
                self._running = True
                self._spawn(self._run)

    async def _run(self) -> None:
        try:
            while self._wanted:
                wait = self._last + PACE - trio.current_time()
                if wait > 0:
                    await trio.sleep(wait)
                self._last = trio.current_time()
                batch = [oid for oid in list(self._wanted)[:BATCH]]
                for oid in batch:
                    del self._wanted[oid]
                batch = [oid for oid in batch if self._exclusive(oid)]
                if batch:
                    await self.publish(batch)
        finally:
            self._running = False

    async def publish(self, oids: Sequence[int]) -> bool:
        """Publish ``oids`` now (at most :data:`BATCH`): whether the nodes recorded it.  A
        failure leaves the readers to ask again or recall the lease."""
        oids = list(oids)
        for oid in oids:
            self._holdings.unseen.publish(oid)
        try:
            asked = await self._query(oids, ASKED, None)
            await self._update(oids, "fs.publish", {"lt": self._wall_ns(), "n": asked})
        except Exception as e:  # noqa: BLE001 - readers recall the lease in the end
            self._stats["publish_failed"] += 1
            log.debug("publication of %s failed: %s", oids, e)
            return False
        for oid in oids:
            self._holdings.unseen.publish(oid)  # files made while it was being sent too
        self._stats["published"] += len(oids)
        self._stats["publications"] += 1
        return True
