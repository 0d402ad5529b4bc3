"""Publishing what this mount holds back under an exclusive lease, and keeping the lease
(issue 64; the protocol: ``fsobjects/publish.py``).

A reader whose query one of this mount's exclusive leases refused asks the nodes for a
publication with a token of its own (``fs.pubreq``, a query); every correct node that
answers it pushes ``{"publish": [[oid, client, mount, token], ...]}`` here.  A request is
believed from ``b + 1`` nodes pushing the same entry (:class:`RecallVotes` over the
entries), so a Byzantine
node alone can neither make the mount send early (which would cost only rounds) nor
record a token no reader asked with.  The mount then, at most :data:`RATE` times a second
after a burst of :data:`BURST`, for up to :data:`BATCH` objects at a time,
:data:`PARALLEL` publications at once, sends what it holds back for them with the gated
update ``fs.publish`` (the gate sends a directory's held-back creates, mkdirs, removals
and the buffered writes of the files under it first, as for a release), which records
each reader's token.  The lease, its cache and the directory's write-back stay: a writer
with a reader beside it keeps working without a round per operation, and a reader
looking now and then waits a few rounds a look.  An object the mount has not used for
:data:`IDLE` (nor anything in its tree), or no longer holds, is handed over instead:
released after what it held back, as at a recall, so that the reader may lease it.

The files made under a published directory are no longer *unseen* (``leases/unseen.py``):
the reader may now know them, so they are answered and removed as any leased file.  They
stay held with the directory (and the directories made there, and what was made in
those), so its creates, removals and the files' writes go on in write-back; a reader's
look at one asks a publication of its own (batched with the others asked meanwhile), and
they go with the directory when it is handed over or recalled.  Given up at each
publication instead, a reader listing the directory every second leased them one by one
and the writer's next use of each recalled it: PostMark beside such a reader went from
281 to 33 transactions a second (``benchmarks/results/2026-11-30-issue64-byzantine-client.md``).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Any

import trio

from bftfs.fs.leases.holdings import COUNT_USES, Holdings
from bftfs.fs.leases.releases import Spawn, Update
from bftfs.fs.leases.votes import RecallVotes
from bftfs.fsobjects.publish import MAX_UPTO
from bftfs.fsobjects.pubstate import Reader
from bftfs.rate import ByteRate

log = logging.getLogger(__name__)

#: Publications this mount makes at once, and a second after that: what bounds the rounds
#: readers cost a writer (one a publication, and what it held back sent early); a reader
#: looking now and then is answered at once.
BURST = 32
RATE = 10
#: Objects one publication names at most (``MAX_OBJECTS``).
BATCH = 32
#: Readers' tokens one publication records per object at most (the newest).
READERS_PER_OBJECT = MAX_UPTO // BATCH
#: One request to publish as nodes push it: the object, the reader, its token.
Ask = tuple[int, int, int, int]
#: Publications under way at once: a reader listing a directory asks for each of its
#: entries, and one publication after another (a second each on two loaded cores) kept
#: a listing of 300 entries waiting past ``PUBLISH_WAIT``, so it recalled the directory.
PARALLEL = 4
#: Requests whose pushes are counted at most (then they are forgotten).
MAX_COUNTED = 4096
#: Seconds without a use of an object or its tree after which a request to publish it
#: hands it over instead (released: the reader may lease it), as a recall would: a
#: writer keeps what it works on, not what it made and left (``Holdings.used_since``).
IDLE = 1.0
#: Seconds since a reader's last publication here after which its next look is a first
#: one.  The creates a first look's publication sends make the small files this mount
#: closed and left without its lease (``fs/writeback/creates_sending.py``): the reader's
#: listing then meets no lease on them.  A reader looking more often (a file manager, a
#: ``watch``) finds them leased and published, as before: handed over at each of its
#: looks, the files it leased were recalled at the writer's next use of them (PostMark
#: beside a watcher 327-517 tx/s against 651-666).
FIRST_LOOK = 10.0
#: True while a publication for readers' first looks sends what this mount held back.
FOR_FIRST_LOOK: ContextVar[bool] = ContextVar("publication_for_first_looks", default=False)


class Publisher:
    """The nodes' requests to publish and their publications (module docstring)."""

    def __init__(
        self,
        holdings: Holdings,
        votes: RecallVotes[Ask],
        update: Update,
        spawn: Spawn,
        wall_ns: Callable[[], int],
        stats: Counter[str],
        give_up: Callable[[list[list[int]]], Any],
    ) -> None:
        """``update``: the gated update (``Meta.update``: what the mount holds back for
        the objects goes first); ``give_up``: lets leases go and releases them
        (``Recalls.give_up``)."""
        self._give_up = give_up
        self._holdings = holdings
        self._votes = votes
        self._update = update
        self._spawn = spawn
        self._wall_ns = wall_ns
        self._stats = stats
        #: Objects asked for and not yet published, in order, with each reader's token.
        self._wanted: dict[int, dict[Reader, int]] = {}
        #: Publications under way (at most :data:`PARALLEL`).
        self._running = 0
        #: The publications' pace: :data:`BURST` at once, then :data:`RATE` a second.
        self._pace = ByteRate(RATE, burst=BURST / RATE)
        #: Each reader's last publication here (trio time): :data:`FIRST_LOOK`.
        self._looks: dict[Reader, float] = {}

    def on_push(self, node: int, body: Any) -> None:
        """A node's push of requests to publish (``Recalls.on_publish``).  Every request
        believed is taken, not only those on objects held here exclusively: an unseen
        file whose own lease lapsed here, or a lease this mount stopped using
        ``HOLDER_MARGIN`` before its end, still stands on the nodes, and what the mount
        holds back for it must go: such an object, like one not used here for
        :data:`IDLE`, is released rather than published (:meth:`publish`), so its record
        goes and readers need no token and may lease it; a publication of an object it
        holds nothing back for sends nothing, and the nodes record it only while its
        exclusive lease stands."""
        if len(self._votes) > MAX_COUNTED:
            self._votes.clear()  # a Byzantine node's pushes for requests nobody made
        believed = self._votes.count(node, body, lambda _ask: True)
        for key, n in self._votes.take_stats().items():
            self._stats["publish_" + key] += n
        for ask in believed:
            self._votes.forget(ask)  # the next request needs b + 1 pushes of its own
        for oid, client, mount, token in believed:
            readers = self._wanted.setdefault(oid, {})
            readers[(client, mount)] = max(readers.get((client, mount), 0), token)
        if believed:
            self._stats["publish_asked"] += len(believed)
            while self._running < min(PARALLEL, math.ceil(len(self._wanted) / BATCH)):
                self._running += 1
                self._spawn(self._run)

    async def _run(self) -> None:
        try:
            while self._wanted:
                await self._pace.spend(1)
                batch = list(self._wanted)[:BATCH]
                await self.publish({oid: self._wanted.pop(oid) for oid in batch})
        finally:
            self._running -= 1

    async def publish(self, asked: dict[int, dict[Reader, int]]) -> bool:
        """Publish the objects of ``asked`` now (at most :data:`BATCH`), recording each
        reader's token: whether the nodes recorded it.  A failure leaves the readers to ask
        again or recall the lease.  What it reads of the leases is no use of the objects
        (``COUNT_USES``): it would keep them in use."""
        reset = COUNT_USES.set(False)
        first = FOR_FIRST_LOOK.set(self._first_looks(asked))
        try:
            return await self._publish(asked)
        finally:
            FOR_FIRST_LOOK.reset(first)
            COUNT_USES.reset(reset)

    def _first_looks(self, asked: dict[int, dict[Reader, int]]) -> bool:
        """Whether no reader of ``asked`` had a publication here for :data:`FIRST_LOOK`
        (each now has one)."""
        now = trio.current_time()
        if len(self._looks) > MAX_COUNTED:
            self._looks.clear()  # a bound: a reader forgotten looks for the first time
        readers = {r for rs in asked.values() for r in rs}
        first = all(now - self._looks.get(r, -math.inf) >= FIRST_LOOK for r in readers)
        self._looks.update(dict.fromkeys(readers, now))
        return first

    async def _publish(self, asked: dict[int, dict[Reader, int]]) -> bool:
        started = now = trio.current_time()
        oids = list(asked)
        kept = [o for o in oids if self._holdings.used_since(o, now - IDLE, now)]
        unseen = self._holdings.unseen
        unseen.seen(oids)  # the reader knows them now
        for oid in oids:
            unseen.publish(oid)
        try:
            if handed := [o for o in oids if o not in kept]:  # not in use here: the reader
                await self._give_up(self._holdings.with_children(handed))  # may lease them
                self._stats["handed_over"] += len(handed)
            if kept:
                arg = {"lt": self._wall_ns(), "r": _entries(kept, asked)}
                await self._update(kept, "fs.publish", arg)
        except Exception as e:  # noqa: BLE001 - readers recall the lease in the end
            self._stats["publish_failed"] += 1
            log.debug("publication of %s failed: %s", oids, e)
            return False
        for oid in oids:
            self._holdings.unseen.publish(oid)  # files made while it was being sent too
        self._stats["publish_ms"] += round((trio.current_time() - started) * 1000)
        self._stats["published"] += len(oids)
        self._stats["publications"] += 1
        return True


def _entries(oids: Sequence[int], asked: dict[int, dict[Reader, int]]) -> list[list[int]]:
    """``fs.publish``'s entries for ``oids``: each reader's token, the newest
    :data:`READERS_PER_OBJECT` of an object."""
    out = []
    for oid in oids:
        newest = sorted(asked[oid].items(), key=lambda kv: kv[1])[-READERS_PER_OBJECT:]
        out += [[oid, client, mount, token] for (client, mount), token in newest]
    return out
