"""Taking and renewing this mount's leases (issue 33): when one is asked for, and the
background task that asks for them in batches and holds what is granted.

**When to take one.**  A lease costs an update round and may cost another client a
recall, so it is taken only for an object queried :data:`USES` times while none was held
and since this mount last changed it (a file it is writing gains nothing from one), and
not within ``COOLDOWN`` of a recall of it here or a refusal (two clients working in one
directory do not pass leases back and forth), nor while the object, or the directory it
was seen in, cools down after many recalls (``fs/leases/contention.py``, issue 62: the
two then work as with no leases).  It is taken in the background.  A shared
one is bound to the mount's session (``fs/leases/sessions.py``, issue 62): it costs no
renewal of its own, and is let go once unused for a term.  Any other (an exclusive one,
or every one when the nodes know no sessions) is renewed, on use, once less than a third
of its term is left; an unused one just ends.  An
exclusive lease on a directory is asked for after :data:`USES` creates or removals the
mount deferred there (write-back), and its listing is read once granted.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from bftfs.fs.leases.answers import LeasedAnswers
from bftfs.fs.leases.batches import Batch, plan, send_batches
from bftfs.fs.leases.claims import Claims
from bftfs.fs.leases.holdings import COOLDOWN, TRACKED, Holdings, Lease
from bftfs.fs.leases.recalls import Recalls
from bftfs.fs.leases.releases import Spawn, Update
from bftfs.fs.leases.sessions import Sessions
from bftfs.fsobjects.leases import BOUND, EXCLUSIVE, HOLDER_MARGIN, SHARED
from bftfs.fsobjects.sessions import SLOT

log = logging.getLogger(__name__)

#: Queries of an object while no lease was held before one is taken.
USES = 2
#: The same for a regular file: most are written by the mount that opens them, and four
#: spare PostMark most of its unused file leases (476 updates, a fifth of its Q/U time).
FILE_USES = 4
#: The part of its span (the term less the holder's margin) left at which the exclusive
#: lease on a directory write-back works in is renewed, if more than a third of the term
#: (any other lease: a third of the term).  Write-back holds nothing back on less than
#: two margins (6 s) of it, and the term's last third (10 s of 30, the holder counting
#: 25) left a renewal 4 s to come back: on a loaded machine it often did not, and
#: ``rm -rf``'s removals meanwhile went one by one (issue 62: 221 of 3 000).  Half of 25
#: leaves it 6.5 s; at the shortest term (10 s, 5 counted) the third stays.
WRITE_BACK_RENEW = 0.5
#: How many of the slowest recent waits for a grant a renewal is asked ahead of its
#: lease's end (:meth:`Taker.renew_margin`), and how many recent waits are remembered.
#: Two: a renewal asked that early comes back in time even when it waits twice as long
#: as any of the last :data:`WAITS` did (its own round, and the queue it joins).
RENEW_WAITS = 2.0
WAITS = 32
#: The most of a lease's span (term less the holder's margin) the measured margin may
#: take: however slow the rounds, a lease is not renewed more often than that leaves.
MAX_MARGIN = 0.8

#: The ungated query of the file system (``Meta.query_now``): a listing is read with it.
Query = Callable[[int, str, Any], Awaitable[Any]]


class Taker:
    """Asks for leases, takes what is granted and renews it (module docstring)."""

    def __init__(
        self,
        holdings: Holdings,
        recalls: Recalls,
        answers: LeasedAnswers,
        update: Update,
        query: Query | None,
        spawn: Spawn,
        *,
        n: int,
        stats: Counter[str],
        sessions: Sessions | None = None,
    ) -> None:
        """``update``: the update a lease is taken with.  ``query``: a directory's listing
        is read with it once its exclusive lease is granted (None: never).  ``n``: objects
        congruent mod ``n`` share their preferred quorum (asked for in one update).
        ``sessions``: the mount's sessions shared leases are bound to (None: none)."""
        self.sessions = sessions
        self._holdings = holdings
        holdings.unseen.relied_on = lambda parent: self.renew_if_due([parent], trio.current_time())
        self._recalls = recalls
        self._answers = answers
        self._update = update
        self.query = query
        self._spawn = spawn
        self._n = n
        self._stats = stats
        #: Told the objects a new lease was granted on (before any answer is kept).
        self.on_grant: Callable[[list[int]], None] | None = None
        self._uses: Counter[int] = Counter()
        #: Objects an answer showed to be regular files (:data:`FILE_USES`).
        self._files: set[int] = set()
        #: Creates this mount deferred in a directory while it held no exclusive lease.
        self._creates: Counter[int] = Counter()
        #: Objects asked for and the kind wanted (an exclusive wish wins).
        self._kinds: dict[int, int] = {}
        #: Objects asked for and not yet sent (:meth:`_take_wanted` runs while any are).
        self._wanted: list[int] = []
        self._taking = False
        #: Objects whose lease is asked for alone (one of a refused batch).
        self._solo: set[int] = set()
        #: Directories whose write-back lease is asked for: sent first, unpaced.
        self._urgent: set[int] = set()
        #: The files' exclusive leases removals ask for (``leases/claims.py``).
        self.claims = Claims(holdings, self, self._files, stats)
        #: Directories by when this mount last deferred a create or removal there.
        self._worked: dict[int, float] = {}
        #: Directories by when a removal there last asked to wait in write-back.
        self._removing: dict[int, float] = {}
        #: Objects asked for -> when (trio time): the wait for their grant is measured.
        self._asked_at: dict[int, float] = {}
        #: The last :data:`WAITS` waits (seconds) from asking for a lease to its grant.
        self._waits: deque[float] = deque(maxlen=WAITS)

    def used(
        self, oids: Sequence[int], leased: Sequence[Lease | None], answer: Any, now: float
    ) -> None:
        """A query of ``oids`` answered while not all were leased (``leased``: their
        leases): a use of each not leased, asked for after :data:`USES` of them."""
        if len(oids) == 1 and isinstance(answer, dict) and answer.get("k") == "f":
            if len(self._files) >= TRACKED * 16:  # a bound, not a cache worth keeping
                self._files.clear()
            self._files.add(oids[0])
        for o, h in zip(oids, leased, strict=True):
            if h is None:
                self._uses[o] += 1
                if self._uses[o] >= (FILE_USES if o in self._files else USES):
                    self.ask(o, now)

    def changed(self, oids: Sequence[int]) -> None:
        """This mount changes ``oids``: what it changes itself is not worth a lease yet."""
        for o in oids:
            self._uses.pop(o, None)

    def forget(self, oid: int) -> None:
        """The lease on ``oid`` was dropped: the creates counted toward one start again."""
        self._creates.pop(oid, None)

    def ask(self, oid: int, now: float, kind: int = SHARED) -> bool:
        """Ask for a lease of ``kind`` on ``oid`` (unless asked already, or quiet);
        whether it was asked."""
        if oid in self._holdings.asking or self._holdings.quiet(oid, now):
            return False
        self._kinds[oid] = kind
        self._holdings.asking.add(oid)
        self._asked_at[oid] = now if now > 0 else trio.current_time()
        self._wanted.append(oid)
        if kind == EXCLUSIVE and oid not in self._files and self._holdings.children.get(oid):
            self._urgent.add(oid)  # (what it made is held under it: ahead of files' asks)
        if not self._taking:
            self._taking = True
            self._spawn(self._take_wanted)
        return True

    def to_session(self, oids: Sequence[int]) -> int:
        """``Leases.to_session``: turn the exclusive leases on ``oids`` into shared ones
        bound to the session; how many were asked."""
        if self.sessions is None or not self.sessions.enabled:
            return 0
        now = trio.current_time()
        asked = 0
        for oid in oids:
            h = self._holdings.live(oid, now)
            if h is None or h.kind != EXCLUSIVE or oid in self._holdings.converting:
                continue
            if self.claims.keeps_exclusive(oid, now):
                continue  # a removal in its directory asked it back: renewed as it is
            if self._worked_in(self._holdings.parents.get(oid), now):
                continue  # a removal there would ask for it back (kept: renewed)
            self._holdings.converting.add(oid)  # exclusive no more: nothing new held back
            if self.ask(oid, now, SHARED):
                asked += 1
            else:
                self._holdings.converting.discard(oid)
        return asked

    def _worked_in(self, parent: int | None, now: float) -> bool:
        """Whether directory ``parent`` is one this mount removes files from (a removal
        there found a file turned into a shared lease and asked its files back,
        ``Claims.reclaim``) and still works in (deferred a create or removal there
        within the last term, :meth:`want_exclusive`).  Its files then stay exclusive:
        turned into shared ones at every sweep (a third of a term), each was asked back
        by the next removal there (that removal sent at once), two grants a sweep where a
        renewal costs one (PostMark past ten seconds under ``reject-everything``: 215
        conversions and 215 grants back in 18 s).  A tree only read after it was made
        (no removal) still goes to the session (``tests/t4_busy_leases.py``).  So from
        the first sweep on, when this mount removes files in ``parent`` (within a term)
        and a reader had it published under the holding it has now: its files may have
        been seen, and each removal turned to the session waited for that reclaim or went
        at once (PostMark beside a mount listing it: 49 of 1 470 removals, 4.5 s of 20)."""
        if parent is None:
            return False
        at, removed = self._worked.get(parent), self._removing.get(parent)
        removing = removed is not None and now - removed < self._holdings.term
        if removing and self._holdings.unseen.published_under_holding(parent):
            return True
        reclaimed = parent in self.claims.reclaimed
        return reclaimed and at is not None and now - at < self._holdings.term

    def removes_in(self, parent: int) -> None:
        """A removal in directory ``parent`` asks to wait in write-back (``WriteBack``):
        its files no other client can have seen need no lease of their own meanwhile
        (:meth:`lapses`)."""
        if len(self._removing) >= TRACKED and parent not in self._removing:
            self._removing.clear()  # a bound: at worst some files are renewed once more
        self._removing[parent] = trio.current_time()

    def lapses(self, oid: int) -> bool:
        """Whether the exclusive lease on file ``oid`` (nothing held back for it) may end
        unrenewed and not bound to the session (``HeldFiles.renew_used``): no other client
        can have seen it (``leases/unseen.py``) and this mount removes files in its
        directory (within a term), so what it does there needs no lease on the file (its
        attributes are the mount's, its removal waits on the directory's lease).
        Converted at each sweep, every file of ``rm -rf``'s directory or of PostMark's cost
        a grant it never used (issue 62)."""
        parent = self._holdings.unseen.directory_of(oid)
        at = None if parent is None else self._removing.get(parent)
        return at is not None and trio.current_time() - at < self._holdings.term

    def renew_margin(self) -> float:
        """Seconds before its end the exclusive lease a directory's write-back works in is
        renewed at the latest (:meth:`want_exclusive`): :data:`RENEW_WAITS` times the
        longest recent wait for a grant (asked to granted: the batch ahead of it, the
        directory's write-back updates it queues behind, the rounds), at most
        :data:`MAX_MARGIN` of a lease's span.  With half the span alone (12.5 s of 25), a
        grant slower than 6.5 s left the deferred creates and removals of its last seconds
        under two write-back margins (sent at once), and one slower than 12.5 s broke the
        holding, and with it every file made under it that no other client could have
        seen (``leases/unseen.py``).  Grants at `b = 2` on a loaded machine waited up to
        4.7 s (8.3 s at `b = 1` under more load; issue 64): slow is not unavailable, so the
        renewal goes earlier as the waits grow rather than the lease running short."""
        slowest = max(self._waits, default=0.0)
        span = self._holdings.term - HOLDER_MARGIN / 1e9
        return min(RENEW_WAITS * slowest, MAX_MARGIN * span)

    def renew_if_due(self, oids: Sequence[int], now: float) -> None:
        """Renew the leases on ``oids`` that have less than a third of their term left.
        (Not :meth:`renew_margin`: renewed on use, earlier renewals under load would keep
        leases the held files' sweep lets end, ``lapses``; one that ends is taken again.)"""
        for o in oids:
            h = self._holdings.held.get(o)
            if h is not None and h.slot is not None:
                h.used = now  # its session is renewed, not it
            elif h is not None and h.until - now < self._holdings.term / 3:
                self.ask(o, now, h.kind)

    def renew(self, oids: Sequence[int]) -> None:
        """``Leases.renew``: renew the leases held on ``oids`` now (those bound to the
        session: only counted as used)."""
        now = trio.current_time()
        for oid in oids:
            h = self._holdings.held.get(oid)
            if h is not None and h.slot is not None:
                h.used = now
            elif h is not None:
                self.ask(oid, now, h.kind)

    def want_exclusive_file(self, oid: int) -> None:
        """``Leases.want_exclusive_file``: no listing is read for a file."""
        self._files.add(oid)
        self.want_exclusive(oid)

    def want_exclusive(self, oid: int) -> None:
        """``Leases.want_exclusive``: count a deferred create or removal in ``oid``."""
        now = trio.current_time()
        if len(self._worked) >= TRACKED and oid not in self._worked:
            self._worked.clear()  # a bound: at worst some files go to the session once more
        self._worked[oid] = now
        h = self._holdings.live(oid, now)
        if h is not None and h.kind == EXCLUSIVE:
            term = self._holdings.term
            due = max(term / 3, (term - HOLDER_MARGIN / 1e9) * WRITE_BACK_RENEW)
            due = max(due, self.renew_margin())
            if h.slot is None and h.until - now < due:
                self.ask_first(oid, now)
            self.ensure_listing(oid)
            return
        self._creates[oid] += 1
        if self._creates[oid] >= USES:
            self.ask_first(oid, now)

    def ask_first(self, oid: int, now: float) -> None:
        """Ask for the exclusive lease of ``oid``, a directory's sent ahead of the
        files' leases (``leases/batches.py``)."""
        if self.ask(oid, now, EXCLUSIVE) and oid not in self._files:
            self._urgent.add(oid)

    async def take_exclusive(self, oid: int) -> None:
        """``Leases.take_exclusive``: an exclusive lease on ``oid`` now."""
        if self._holdings.exclusive_left(oid) <= 0:
            await self._take([oid], EXCLUSIVE)

    def new_lease_term(self, parent: int) -> int | None:
        """``Leases.new_lease_term``: the term for a mkdir's new directory, or None."""
        if self._holdings.quiet(parent, trio.current_time()):
            return None
        return int(self._holdings.term * 1e9)

    async def _take_wanted(self) -> None:
        """Take the leases asked for (``fs/leases/batches.py``: a directory's write-back
        lease first, the others a few updates at a time)."""
        try:
            await send_batches(self._take, self._planned, lambda: bool(self._wanted))
        finally:
            self._taking = False

    def _planned(self) -> list[Batch]:
        wanted, self._wanted = self._wanted, []
        urgent = self._urgent
        return plan(wanted, solo=self._solo, kinds=self._kinds, n=self._n, urgent=urgent)

    async def _take(self, oids: list[int], kind: int = SHARED) -> None:
        """Ask for (or renew) leases of ``kind`` on ``oids`` in one update; a refusal
        quiets them a while (one refused object refuses the update: each is asked alone
        next).

        A term counts from before it was asked; answers count only from when it was
        granted (a query answered meanwhile may predate it).  A lease recalled while it was
        being asked for (the push came before the grant) is given back at once."""
        holdings = self._holdings
        epochs = [holdings.epoch[o] for o in oids]
        slot = gen = None
        if kind == SHARED and self.sessions is not None:
            slot = self.sessions.slot_of(oids[0])
            gen = await self.sessions.ready(slot)
        asked = trio.current_time()
        objects = list(oids)
        try:
            lt = holdings.wall_ns()
            arg: dict[str, Any] = {"kind": kind, "lt": lt, "term": int(holdings.term * 1e9)}
            if slot is not None and gen is not None and self.sessions is not None:
                arg.update({BOUND: 1, SLOT: slot})
                objects.append(self.sessions.sid(slot))
            answer = await self._update(objects, "fs.lease", arg)
        except Exception as e:  # noqa: BLE001 - a lease is an optimisation (refused, EIO)
            self._waited(oids)  # (a converting exclusive lease runs on)
            self._refused(oids, e, kind)
            return
        seq = 0
        if BOUND in arg:
            ok = isinstance(answer, list) and len(answer) == 3
            got, seq = (answer[1], answer[2]) if ok else (None, 0)
            if got is None or got != gen or holdings.session_ends(slot or 0, got) is None:
                gen = None  # the session moved on meanwhile: given back, not held
        self._waited(oids)
        now = trio.current_time()
        gone = []
        new = [o for o in oids if o not in holdings.held]
        if new and self.on_grant is not None:
            self.on_grant(new)
        for oid, epoch in zip(oids, epochs, strict=True):
            old = holdings.held.get(oid)
            if old is not None and not holdings.lasted(old, now):
                if old.slot is None:
                    self._stats["lapsed"] += 1  # (the renewal came too late: renew_margin)
                    log.info("lease on %d (kind %d) renewed after its end", oid, old.kind)
                # It ended before this grant came (a renewal answered late, under load):
                # the nodes may have let another client in meanwhile, so this grant is a
                # new holding, not a continuation of it: what was kept under it (answers,
                # the listing) goes, and what was made unseen under it is no longer
                # (``leases/unseen.py``: the holding's start moves).
                holdings.drop(oid)
                old, epoch = None, holdings.epoch[oid]
            if holdings.epoch[oid] != epoch and old is None:
                gone.append(oid)  # recalled while asked for
                continue
            granted, inherited = (old.granted, old.inherited) if old else (now, False)
            if BOUND in arg and gen is None:
                gone.append(oid)
                holdings.drop(oid)
                continue
            held = holdings.held_from(asked, lt, kind, granted, inherited)
            if BOUND in arg:
                held.slot, held.gen, held.used, held.seq = slot, gen or 0, now, seq
                held.kept = old is not None and (old.kind == EXCLUSIVE or old.kept)
            holdings.held[oid] = held
            self._uses.pop(oid, None)
            self._creates.pop(oid, None)
            self._stats["renewed" if old else "taken"] += 1
            if old is not None and old.kind == EXCLUSIVE and kind == SHARED:
                self._stats["to_session"] += 1
            if kind == EXCLUSIVE and (old is None or old.kind != EXCLUSIVE):
                self._stats["exclusive"] += 1
                self.ensure_listing(oid)
            if self._recalls.believed(oid):
                self._recalls.revoke([oid])
        if BOUND in arg and gen is not None and self.sessions is not None:
            self.sessions.bound(slot or 0)  # renewed while held (``Sessions.bound``)
        holdings.tidy()
        if gone:
            self._recalls.give_back(gone)

    def _waited(self, oids: Sequence[int]) -> None:
        """The answer to the lease asked for ``oids`` came (or its failure): they are no
        longer being asked for or converted, and how long the longest of them waited is
        remembered (:meth:`renew_margin`), counted as ``wait_ms`` (the sum) and
        ``wait_max_ms`` (the longest) in the statistics."""
        self._holdings.asking.difference_update(oids)
        self._holdings.converting.difference_update(oids)
        now = trio.current_time()
        waits = [now - at for o in oids if (at := self._asked_at.pop(o, None)) is not None]
        if not waits:
            return
        wait = max(waits)
        self._waits.append(wait)
        ms = round(wait * 1000)
        self._stats["wait_ms"] += ms
        self._stats["waits"] += 1
        self._stats["wait_max_ms"] = max(self._stats["wait_max_ms"], ms)

    def ensure_listing(self, oid: int) -> None:
        """Read the listing of a directory leased exclusively here unless it is known or
        being read (:meth:`LeasedAnswers.read_listing`); a read a create crossed is read
        again at the next create there (:meth:`want_exclusive`)."""
        if self.query is not None and oid not in self._files:
            self._answers.read_listing(oid, self.query, self._spawn)

    def _refused(self, oids: list[int], e: Exception, kind: int = SHARED) -> None:
        if len(oids) > 1:  # someone holds or recalls one of them: ask for each alone
            for oid in oids:
                if oid in self.claims.claimed:  # (asked ahead of removals: they go alone)
                    self._holdings.quiet_until[oid] = trio.current_time() + COOLDOWN
                    continue
                self._solo.add(oid)
                self.ask(oid, 0.0, kind)
            return
        self._stats["refused"] += 1
        now = trio.current_time()
        self._holdings.quiet_until[oids[0]] = now + COOLDOWN
        self._holdings.contention.contended(oids[0], now)  # another holds it: contention
        log.debug("lease on %d (kind %d) not taken: %s", oids[0], kind, e)
