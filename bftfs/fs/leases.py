"""This mount's leases (issue 33): which objects it may answer queries on without a round,
and what it does when the nodes recall one.

A **shared lease** on an object (``fs.lease``, :mod:`bftfs.fsobjects.leases`) means no
other client changes the object without recalling the lease first.  So while one runs,
the answer to a query this mount sent after the lease was granted stays the answer the
servers would give: :meth:`Leases.cached` answers the same query again, without a round,
as long as every object of it is leased here (a lookup, a stat, an open, a listing, a
lookup's miss).  The mount's own update of an object drops what it cached of it
(:meth:`Leases.changed`; a query in flight across the update is not cached, by the
object's generation); an index from each object to the answers it is part of keeps that
in proportion to what is dropped, not to all that is kept.

**When to take one.**  A lease costs an update round and may cost another client a
recall, so it is taken only for an object queried :data:`USES` times while none was held
and since this mount last changed it (a file it is writing gains nothing from one),
and not within :data:`COOLDOWN` of a recall of it here or a refusal (two clients working in
one directory do not pass leases back and forth).  It is taken in the background and
renewed, on use, once less than a third of its term is left; an unused lease just ends.

**Time.**  The holder counts its lease from before it asked, less ``HOLDER_MARGIN`` (the
lease skew both ways and a second), so it stops answering from it before any correct node
could let a conflicting update through.  It counts on two clocks and stops at the first to
run out: ``trio`` time (monotonic: a wall clock set back does not stretch a lease) and the
wall clock, which, unlike the monotonic clock, runs on while the machine is suspended.  A
lease found ended on the wall clock alone means the machine slept (or its clock was set
on): every lease is then dropped as at a recall, the kernel told to forget what it cached
under them (its own timeouts do not count the sleep either), and released.

**Recall.**  Every correct node that takes another client's ``fs.recall`` pushes
``{"recall": [oid, ...]}`` to the holders (``node/recalls.py``).  A push is believed once
``b + 1`` nodes sent it for the object (one of them correct): this mount stops answering
from the lease at once, tells the kernel to forget what it cached
(:attr:`Leases.before_release`) and releases the lease with a gated update, so what the mount
buffered for the object (its pending creates) goes first.  A Byzantine node's false
recalls alone do nothing; withheld ones cost the requester time (``b + 1`` correct nodes
push) or, with the holder cut off, at most the lease's term.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

import trio

from bftfs.fs.leasedanswers import MAX_ANSWERS, LeasedAnswers, looked_up_name, passing
from bftfs.fs.recallvotes import RecallVotes
from bftfs.fs.releases import BATCH, Releases, Update
from bftfs.fsobjects.leases import EXCLUSIVE, HOLDER_MARGIN, SHARED
from bftfs.qu.objects import MethodRefused

log = logging.getLogger(__name__)

#: Queries of an object while no lease was held before one is taken.
USES = 2
#: The same for a regular file: most are written by the mount that opens them, and four
#: spare PostMark most of its unused file leases (476 updates, a fifth of its Q/U time).
FILE_USES = 4
#: Seconds after a recall or a refusal during which no lease on the object is asked for.
COOLDOWN = 5.0
#: Seconds the leases asked for are gathered before they are sent (a lease is an
#: optimisation: taking it a moment later costs nothing, a round per object would).
GATHER = 0.002
#: Files inherited under one directory (:meth:`Leases.inherit`) past which those no longer
#: held are forgotten.
MAX_CHILDREN = 4096

Query = Callable[[int, str, Any], Awaitable[Any]]


@dataclass
class _Held:
    """A lease held here (trio times): answers count from ``granted`` (when the grant
    arrived), the lease is used until ``until`` (its term from before it was asked, less
    the holder's margin) and until ``wall_until`` (the same on the wall clock, ns)."""

    granted: float
    until: float
    kind: int = SHARED
    wall_until: int = 0
    #: Leased with the object's create (:meth:`Leases.inherit`): the mount made it, so what
    #: it knows of it is the object from the start.
    inherited: bool = False


class Leases:
    """The leases this mount holds and the answers they keep good (module docstring)."""

    def __init__(
        self,
        update: Update,
        query: Query | None = None,
        *,
        term: float,
        b: int,
        n: int = 1,
        wall_ns: Callable[[], int] = time.time_ns,
        spawn: Callable[[Callable[[], Awaitable[None]]], None] | None = None,
    ) -> None:
        """``update``: the gated Q/U update of the file system (``Meta.update``): a
        release must follow what the mount buffered.  ``query``: the ungated query
        (``Meta.query_now``): a directory's listing is read once its exclusive lease is
        granted (None: never).  ``term``: seconds a lease is asked for.  ``b``: pushes from
        ``b + 1`` nodes make a recall believed.

        The two calls are the only way this part reaches the servers, and ``Meta`` (above
        it: it asks the leases before each query and tells them of each update) gives them
        here: the leases import nothing of it, and call it only from their own background
        tasks (taking, renewing, releasing a lease, reading a listing) and at unmount
        (:meth:`release_all`), never inside one of ``Meta``'s calls."""
        self._update = update
        #: What the leases did (``bftfs status``, the benchmarks).
        self.stats: Counter[str] = Counter()
        #: Giving leases back, with the gated update.
        self.releases = Releases(update, wall_ns, self.stats)
        self.term = term
        self.b = b
        self.n = n
        self.wall_ns = wall_ns
        self._spawn = spawn or trio.lowlevel.spawn_system_task
        self.held: dict[int, _Held] = {}
        #: The answers, listings and generations the leases keep good.
        self.answers = LeasedAnswers()
        self._uses: Counter[int] = Counter()
        #: Objects an answer showed to be regular files (:data:`FILE_USES`).
        self._files: set[int] = set()
        #: Creates this mount deferred in a directory while it held no exclusive lease.
        self._creates: Counter[int] = Counter()
        #: Objects asked for and the kind wanted (an exclusive wish wins).
        self._kinds: dict[int, int] = {}
        self.query = query
        self._quiet_until: dict[int, float] = {}
        self._asking: set[int] = set()
        #: Objects asked for and not yet sent (:meth:`_take_wanted` runs while any are).
        self._wanted: list[int] = []
        self._taking = False
        #: Objects whose lease is asked for alone (one of a refused batch).
        self._solo: set[int] = set()
        #: Moves when a lease is dropped (ended, recalled): a grant that arrives after
        #: its lease was recalled is given back, not used.
        self._epoch: Counter[int] = Counter()
        self._recalls = RecallVotes(b)
        #: Awaited with the objects whose lease was recalled, before they are released
        #: (the FUSE layer drops what the kernel cached under them).
        self.before_release: Callable[[list[int]], Awaitable[None]] | None = None
        #: Told the objects a new lease was granted on (before any answer is kept).
        self.on_grant: Callable[[list[int]], None] | None = None
        #: Files leased with their create under a directory's exclusive lease
        #: (:meth:`inherit`), by directory: given up with it at its recall.
        self._children: dict[int, set[int]] = {}
        #: Directories leased with their mkdir (:meth:`made_leased`): where each was made.
        self._made_in: dict[int, int] = {}

    # Answers -------------------------------------------------------------------------

    def _live(self, oid: int, now: float) -> _Held | None:
        h = self.held.get(oid)
        if h is None:
            return None
        if now >= h.until:
            self._drop(oid)
            return None
        if self.wall_ns() >= h.wall_until:  # the machine slept (or its clock was set on)
            self.stats["woke_past_expiry"] += 1
            self._let_go(list(self.held))
            return None
        return h

    def remaining(self, oid: int, since: float) -> float:
        """Seconds left on the lease on ``oid`` if it was granted by ``since`` (or came
        with the object's create here: held from its start), else 0."""
        now = trio.current_time()
        h = self._live(oid, now)
        if h is None or (h.granted > since and not h.inherited):
            return 0.0
        return max(0.0, min(h.until - now, (h.wall_until - self.wall_ns()) / 1e9))

    def cached(self, oids: Sequence[int], method: str, arg: Any) -> tuple[bool, Any]:
        """``(True, answer)`` when every object of the query is leased here and the same
        query was answered under the leases; else ``(False, None)``."""
        now = trio.current_time()
        if self._listed_miss(oids, looked_up_name(method, arg), now):
            self.stats["hits"] += 1
            self.stats["listed_misses"] += 1
            self._renew_if_due(oids[:1], now)
            return True, MethodRefused("not-found")
        if method == "fs.lookup" and len(oids) == 1 and self._live(oids[0], now) is not None:
            entry = self.answers.listed_entry(oids[0], looked_up_name(method, arg))
            if entry is not None:
                self.stats["hits"] += 1
                self.stats["listed_hits"] += 1
                self._renew_if_due(oids, now)
                return True, entry
        if not all(self._live(o, now) for o in oids):
            return False, None
        hit, answer = self.answers.get(oids, method, arg)
        if hit:
            self.stats["hits"] += 1
            self._renew_if_due(oids, now)
        return hit, answer

    def known_absent(self, parent: int, name: bytes) -> bool:
        """Whether directory ``parent`` has no entry ``name`` on the servers as far as a
        listing known whole under a live lease tells (``PendingCreates.sure_to_be_made``)."""
        return self._listed_miss([parent], name, trio.current_time())

    def _listed_miss(self, oids: Sequence[int], name: bytes | None, now: float) -> bool:
        """Whether a lookup of ``name`` in directory ``oids[0]`` misses in a listing this
        mount knows whole under a live lease."""
        if not oids or not self.answers.listed_miss(oids[0], name):
            return False
        return self._live(oids[0], now) is not None

    def before_query(self, oids: Sequence[int]) -> tuple[float, list[int]]:
        """What :meth:`answered` needs to tell the answer is one the leases keep good."""
        return trio.current_time(), self.answers.generations(oids)

    def answered(
        self,
        oids: Sequence[int],
        method: str,
        arg: Any,
        answer: Any,
        sent: tuple[float, list[int]],
    ) -> None:
        """A query's answer from the servers: kept when every object was leased since
        before it was sent and none changed meanwhile; counts a use of each object."""
        at, generations = sent
        if passing(answer):
            return
        now = trio.current_time()
        leased = [self._live(o, now) for o in oids]
        if all(
            h is not None and h.granted <= at for h in leased
        ) and generations == self.answers.generations(oids):
            self.answers.keep(oids, method, arg, answer)
            return
        if len(oids) == 1 and isinstance(answer, dict) and answer.get("k") == "f":
            if len(self._files) >= MAX_ANSWERS * 16:  # a bound, not a cache worth keeping
                self._files.clear()
            self._files.add(oids[0])
        for o, h in zip(oids, leased, strict=True):
            if h is None:
                self._uses[o] += 1
                if self._uses[o] >= (FILE_USES if o in self._files else USES):
                    self._ask(o, now)

    def changed(
        self,
        oids: Sequence[int],
        *,
        parent: int | None = None,
        names: frozenset[bytes] = frozenset(),
    ) -> None:
        """This mount is about to change (or changed) ``oids``: what it cached of them is
        no longer the servers' answer.  An update of entries ``names`` of directory
        ``parent`` (a create, unlink, mkdir...) leaves the lookups of the directory's
        other names as they were: only those entries and the directory's own attributes
        and listing change (the other objects of the update are dropped whole)."""
        self.answers.changed(oids, parent, names)
        for o in oids:
            self._uses.pop(o, None)  # what this mount itself changes is not worth a lease yet

    def entry_done(
        self,
        method: str,
        parent: int,
        names: frozenset[bytes],
        outcome: str,
        made: dict[bytes, list[int]] | None = None,
    ) -> None:
        """This mount's update of entries ``names`` of ``parent`` ended: ``outcome`` is
        ``"taken"``, ``"refused"`` or ``"unknown"`` (the cluster did not answer).  A known
        listing follows it: a name made, or refused (``exists``: it is there), is added;
        a name is removed only by a removal taken (an rmdir refused ``not-empty`` leaves
        the name); an unknown outcome drops the listing.  A name wrongly kept only costs a
        lookup a round; a name wrongly dropped would answer "not found" for a file that
        exists."""
        self.answers.entry_done(method, parent, names, outcome, made)

    def _drop(self, oid: int) -> None:
        self.held.pop(oid, None)
        self._made_in.pop(oid, None)
        self._creates.pop(oid, None)
        self.answers.drop(oid)
        self._epoch[oid] += 1
        self._recalls.forget(oid)

    # Taking and renewing -------------------------------------------------------------

    def _ask(self, oid: int, now: float, kind: int = SHARED) -> None:
        if oid in self._asking or now < self._quiet_until.get(oid, 0.0):
            return
        self._kinds[oid] = kind
        self._asking.add(oid)
        self._wanted.append(oid)
        if not self._taking:
            self._taking = True
            self._spawn(self._take_wanted)

    def _renew_if_due(self, oids: Sequence[int], now: float) -> None:
        for o in oids:
            h = self.held.get(o)
            if h is not None and h.until - now < self.term / 3:
                self._ask(o, now, h.kind)

    def listing(self, oid: int) -> AbstractSet[bytes] | None:
        """The names of directory ``oid`` as its listing known whole under a live lease
        here says (with this mount's own entry updates taken), or None.  A use of the
        lease, as a cached answer is: it renews the lease when due."""
        names = self.answers.listings.get(oid)
        now = trio.current_time()
        if names is None or self._live(oid, now) is None:
            return None
        self._renew_if_due([oid], now)
        return names.keys()

    def exclusive_left(self, oid: int) -> float:
        """Seconds left on this mount's exclusive lease on ``oid`` (0: it holds none)."""
        now = trio.current_time()
        h = self._live(oid, now)
        return 0.0 if h is None or h.kind != EXCLUSIVE else h.until - now

    def exclusive_from(self, oid: int) -> float | None:
        """When this mount's holding of ``oid``, exclusive now, began (trio time; held
        without a break since, so nobody else changed the object meanwhile and state read
        from then on is its state); ``-inf`` when it came with the object's create here;
        None when the mount holds no exclusive lease on it."""
        h = self._live(oid, trio.current_time())
        if h is None or h.kind != EXCLUSIVE:
            return None
        return float("-inf") if h.inherited else h.granted

    def want_exclusive_file(self, oid: int) -> None:
        """This mount closed regular file ``oid`` with writes it had to send at once (not
        held here): after :data:`USES` such closes an exclusive lease is asked for, so that
        later ones leave their writes in the mount (``fs/writeback/held.py``).  No listing is
        read for it (:meth:`_ensure_listing`)."""
        self._files.add(oid)
        self.want_exclusive(oid)

    def inherit(self, parent: int, oids: Sequence[int], *, empty_dirs: bool = False) -> None:
        """The servers made ``oids`` leased to this mount exclusively until the end of its
        exclusive lease on ``parent`` (an update with ``lx``: ``fsobjects.leases``), which
        is still held: they are held here until the same moment, and given up with it.
        ``empty_dirs``: they are directories just made, whose listing is known whole."""
        h = self._live(parent, trio.current_time())
        if h is None or h.kind != EXCLUSIVE:
            # Recalled or ended while the create was on its way: the grants (if the nodes
            # made them before the recall) are given back, or another client's look at a
            # file would wait for their term (a recall of a lease not held is ignored).
            self._spawn(lambda: self.releases.release(list(oids)))
            return
        children = self._children.setdefault(parent, set())
        if len(children) > MAX_CHILDREN:  # those whose lease ended are gone already
            children.intersection_update(self.held)
        for oid in oids:
            self.held[oid] = _Held(trio.current_time(), h.until, EXCLUSIVE, h.wall_until, True)
            children.add(oid)
            self.stats["inherited"] += 1
            if empty_dirs:
                self.answers.listings[oid] = {}

    def new_lease_term(self, parent: int) -> int | None:
        """The term (ns) to ask with a ``mkdir`` in ``parent`` that this mount holds no
        exclusive lease on, for the new directory (``fsobjects.leases.NEW_LEASE``), or None
        while ``parent`` is quiet after a recall or refusal here (others work there: a
        directory made in it is likely theirs to use too)."""
        if trio.current_time() < self._quiet_until.get(parent, 0.0):
            return None
        return int(self.term * 1e9)

    def made_leased(self, oid: int, parent: int, asked: float, lt: int) -> None:
        """The servers made directory ``oid`` in ``parent`` leased to this mount
        exclusively from ``lt`` (its ``mkdir``, asked at trio time ``asked``, carried
        ``NEW_LEASE``): held here like a lease taken then, with the object from its start
        and its listing known whole (empty), so what is made in it goes to write-back at
        once.  A recall of it quiets ``parent`` as a recall of ``parent`` would."""
        if self._recalls.believed(oid):  # recalled before the answer came: given back
            self._spawn(lambda: self.releases.release([oid]))
            return
        self.held[oid] = self._held_from(asked, lt, EXCLUSIVE, trio.current_time(), True)
        self.answers.listings[oid] = {}
        self._made_in[oid] = parent
        self.stats["made_leased"] += 1

    def _held_from(
        self, asked: float, lt: int, kind: int, granted: float, inherited: bool
    ) -> _Held:
        """A lease of one term asked at trio time ``asked`` with lease time ``lt`` (ns),
        used until that term ends less the holder's margin, on both clocks."""
        until = asked + self.term - HOLDER_MARGIN / 1e9
        wall_until = lt + int(self.term * 1e9) - HOLDER_MARGIN
        return _Held(granted, until, kind, wall_until, inherited)

    def renew(self, oids: Sequence[int]) -> None:
        """Renew the leases held on ``oids`` now, in as few updates as :meth:`_take_wanted`
        groups them (``HeldFiles.renew_used``)."""
        now = trio.current_time()
        for oid in oids:
            h = self.held.get(oid)
            if h is not None:
                self._ask(oid, now, h.kind)

    def want_exclusive(self, oid: int) -> None:
        """This mount defers a create or a removal in directory ``oid`` (or would, with an
        exclusive lease: ``fs/writeback/``): after :data:`USES` of them an exclusive
        lease is asked for, so that later ones may wait (write-back); a held one is renewed
        when a third of it is left."""
        now = trio.current_time()
        h = self._live(oid, now)
        if h is not None and h.kind == EXCLUSIVE:
            self._renew_if_due([oid], now)
            self._ensure_listing(oid)
            return
        self._creates[oid] += 1
        if self._creates[oid] >= USES:
            self._ask(oid, now, EXCLUSIVE)

    async def take_exclusive(self, oid: int) -> None:
        """Take an exclusive lease on directory ``oid`` now, not after :data:`USES` creates:
        a program about to make many entries there at once (``bftfs restore``,
        ``fs/pastrestore.py``) has its closes deferred from the first (``fs/writeback/``)."""
        if self.exclusive_left(oid) <= 0:
            await self._take([oid], EXCLUSIVE)

    async def _take_wanted(self) -> None:
        """Take the leases asked for, :data:`BATCH` objects of one quorum per update
        (objects congruent mod ``n`` share their preferred quorum, ``Meta.new_oid``: a
        directory's entries do), the groups at once; what is asked meanwhile goes next."""
        try:
            while self._wanted:
                await trio.sleep(GATHER)  # the burst of queries asking queues the rest
                wanted, self._wanted = self._wanted, []
                groups: dict[tuple[int, int], list[int]] = {}
                alone = [oid for oid in wanted if oid in self._solo]
                self._solo.difference_update(alone)
                for oid in wanted:
                    if oid not in alone:
                        key = (self._kinds.get(oid, SHARED), oid % self.n)
                        groups.setdefault(key, []).append(oid)
                async with trio.open_nursery() as nursery:
                    for oid in alone:
                        nursery.start_soon(self._take, [oid], self._kinds.get(oid, SHARED))
                    for (kind, _), group in groups.items():
                        for i in range(0, len(group), BATCH):
                            nursery.start_soon(self._take, group[i : i + BATCH], kind)
        finally:
            self._taking = False

    async def _take(self, oids: list[int], kind: int = SHARED) -> None:
        """Ask for (or renew) leases of ``kind`` on ``oids`` in one update; a refusal
        quiets them a while (one refused object refuses the update: each is asked alone
        next).

        A term counts from before it was asked; answers count only from when it was
        granted (a query answered meanwhile may predate it).  A lease recalled while it was
        being asked for (the push came before the grant) is given back at once."""
        epochs = [self._epoch[o] for o in oids]
        asked = trio.current_time()
        try:
            lt = self.wall_ns()
            arg = {"kind": kind, "lt": lt, "term": int(self.term * 1e9)}
            await self._update(list(oids), "fs.lease", arg)
        except Exception as e:  # noqa: BLE001 - a lease is an optimisation (refused, EIO)
            self._asking.difference_update(oids)
            self._refused(oids, e, kind)
            return
        self._asking.difference_update(oids)
        now = trio.current_time()
        gone = []
        new = [o for o in oids if o not in self.held]
        if new and self.on_grant is not None:
            self.on_grant(new)
        for oid, epoch in zip(oids, epochs, strict=True):
            old = self.held.get(oid)
            if self._epoch[oid] != epoch and old is None:
                gone.append(oid)  # recalled while asked for
                continue
            granted, inherited = (old.granted, old.inherited) if old else (now, False)
            self.held[oid] = self._held_from(asked, lt, kind, granted, inherited)
            self._uses.pop(oid, None)
            self._creates.pop(oid, None)
            self.stats["renewed" if old else "taken"] += 1
            if kind == EXCLUSIVE and (old is None or old.kind != EXCLUSIVE):
                self.stats["exclusive"] += 1
                self._ensure_listing(oid)
            if self._recalls.believed(oid):
                self._revoke([oid])
        if gone:
            self._spawn(lambda: self.releases.release(gone))

    def _ensure_listing(self, oid: int) -> None:
        """Read the listing of a directory leased exclusively here unless it is known or
        being read (:meth:`LeasedAnswers.read_listing`); a read a create crossed is read
        again at the next create there (:meth:`want_exclusive`)."""
        if self.query is not None and oid not in self._files:
            self.answers.read_listing(oid, self.query, self._spawn)

    def _refused(self, oids: list[int], e: Exception, kind: int = SHARED) -> None:
        if len(oids) > 1:  # someone holds or recalls one of them: ask for each alone
            for oid in oids:
                self._solo.add(oid)
                self._ask(oid, 0.0, kind)
            return
        self.stats["refused"] += 1
        self._quiet_until[oids[0]] = trio.current_time() + COOLDOWN
        log.debug("lease on %d not taken: %s", oids[0], e)

    # Recall ------------------------------------------------------------------------------

    def listen(self, endpoint: Any, nodes: Sequence[int]) -> None:
        """Take the recalls ``endpoint`` (``net.endpoint.Endpoint``) is pushed, passing
        every other push to the handler it had (a FaB mount's replies, ``FabMetaClient``),
        and keep a connection open to each of ``nodes``: a node pushes only to connected
        clients.  With no handler before, every push is counted here (a malformed one too)."""
        previous = endpoint.on_push
        if previous is None:
            endpoint.on_push = self.on_push
        else:

            def on_push(node: int, body: Any) -> None:
                if isinstance(body, dict) and "recall" in body:
                    self.on_push(node, body)
                else:
                    previous(node, body)

            endpoint.on_push = on_push
        endpoint.stay_connected(list(nodes))

    def on_push(self, node: int, body: Any) -> None:
        """A node's push (``Endpoint.on_push``): a recall is believed from ``b + 1`` nodes."""
        believed = self._recalls.count(
            node, body, lambda oid: oid in self.held or oid in self._asking
        )
        self.stats.update(self._recalls.take_stats())
        if believed:
            self._revoke([oid for oid in believed if oid in self.held])

    def _revoke(self, oids: list[int]) -> None:
        """Give up leases the nodes recalled (none: the recall was of a lease still being
        asked for, which its grant gives back at once, ``_recalls.believed``)."""
        if not oids:
            return
        self.stats["recalled"] += len(oids)
        until = trio.current_time() + COOLDOWN
        for oid in oids:  # others work where it was made: the next mkdir there asks none
            parent = self._made_in.get(oid)
            if parent is not None:
                self._quiet_until[parent] = until
        self._let_go(oids)

    def never_made(self, oid: int) -> None:
        """``oid``'s held-back mkdir was dropped (never sent): the lease it was to come
        with was never granted, so it is forgotten here, not released (a release naming
        an object the servers lack failed, and with it the release of the others in its
        batch, which then held other mounts off for the term)."""
        if oid in self.held:
            self._drop(oid)
        for children in self._children.values():
            children.discard(oid)

    def let_go(self, oids: list[int]) -> None:
        """Stop answering from the leases on ``oids`` (those held): a move to a new
        generation did not take them along (``fs/generations/routers.py``)."""
        self._let_go([oid for oid in oids if oid in self.held])

    def _let_go(self, oids: list[int]) -> None:
        """Stop answering from the leases on ``oids`` now; the kernel forgets what it cached
        under them, then they are released (after what the mount buffered for them)."""
        now = trio.current_time()
        # What was leased with its create in a directory goes too, level by level: the
        # releases go deepest first (``Releases.after``).
        levels = [oids]
        while nxt := [c for o in levels[-1] for c in self._children.pop(o, ()) if c in self.held]:
            levels.append(nxt)
        for level in levels:
            for oid in level:
                self._drop(oid)
                self._quiet_until[oid] = now + COOLDOWN
        self._spawn(lambda: self.releases.after(self.before_release, levels))

    async def release_all(self) -> None:
        """Give every lease back (an unmount): other clients need not recall them."""
        oids = list(self.held)
        for oid in oids:
            self._drop(oid)
        await self.releases.release(oids)
