"""The leases this mount holds (issue 33), by object, and the state around them that the
other parts of the wing read: which objects a lease is being asked for, which are quiet
after a recall or a refusal here, an epoch per object that moves at each drop (a grant
that arrives after its lease was recalled is given back), and the leases that came with
a create or a mkdir (given up with their directory).

A lease is used until its term, counted from before it was asked less the holder's
margin, runs out on ``trio``'s clock or on the wall clock, whichever comes first
(``fs/leases/mount.py``, "Time"); one found ended on the wall clock alone means the
machine slept, and every lease is let go (``woke``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass

import trio

from bftfs.fs.leases.contention import Contention
from bftfs.fs.leases.unseen import UnseenFiles
from bftfs.fsobjects.leases import EXCLUSIVE, HOLDER_MARGIN, SHARED

log = logging.getLogger(__name__)

#: False in a task whose looks at the leases are not uses of the objects (a publication's
#: own reads and sends, ``publish.py``): they must not make an object seem in use there.
COUNT_USES: ContextVar[bool] = ContextVar("lease_uses_counted", default=True)

#: Seconds after a recall or a refusal during which no lease on the object is asked for.
COOLDOWN = 5.0
#: Objects (and directories) each of the taker's records (``leases/taking.py``,
#: ``leases/claims.py``) tracks, past which they are trimmed: a bound, not a cache worth
#: keeping.
TRACKED = 4096
#: Seconds at least that a directory cools down when another client's changes recall this
#: mount's read leases there (:meth:`Holdings.read_where_changed`): two lease terms.  A
#: directory someone writes in is likely to go on being written; each read lease taken
#: there again costs the writer a wait on its recall (ten seconds let a mount listing the
#: directory every second take 979 leases in 40 s beside a writer).
READ_COOL = 60.0
#: Files inherited under one directory (:meth:`Holdings.inherit`) past which those no
#: longer held are forgotten.
MAX_CHILDREN = 4096
#: Objects whose directory is remembered (:meth:`Holdings.seen_in`; past it all are
#: forgotten at once: a lease whose directory is not known is judged by its own use).
MAX_PARENTS = 1 << 18
#: Leases held past which those of their own term that ended are forgotten (then again at
#: twice as many as were left): :meth:`Holdings.tidy`.
PURGE_AT = 4096
#: Directories above a leased object whose use keeps its lease (the tree in use): its
#: directory and the one above, so a file stays held while its directory, its other
#: entries or its cousins are worked on (git walking a tree one directory at a time).
TREE_LEVELS = 2


@dataclass
class Lease:
    """A lease held here (trio times): answers count from ``granted`` (when the grant
    arrived), the lease is used until ``until`` (its term from before it was asked, less
    the holder's margin) and until ``wall_until`` (the same on the wall clock, ns)."""

    granted: float
    until: float
    kind: int = SHARED
    wall_until: int = 0
    #: Leased with the object's create (:meth:`Holdings.inherit`): the mount made it, so
    #: what it knows of it is the object from the start.
    inherited: bool = False
    #: Bound to this mount's session in this slot and generation (``fs/leases/sessions.py``):
    #: used until the session ends, not ``until``; None: a lease of its own term.
    slot: int | None = None
    gen: int = 0
    #: The session's last recall number at the grant: a recall listed with a higher one
    #: pinned this lease, one with a number up to it an earlier grant's (released).
    seq: int = 0
    #: When a query last used it (trio time): a bound lease unused for a term is let go.
    used: float = 0.0
    #: A shared lease that continues this mount's exclusive holding without a break
    #: (``Taker.to_session``): what the mount kept under the exclusive lease is still the
    #: object's (:meth:`Holdings.kept_left`).
    kept: bool = False


class Holdings:
    """The leases held here and their bookkeeping (module docstring)."""

    def __init__(
        self,
        term: float,
        wall_ns: Callable[[], int],
        stats: Counter[str],
        *,
        dropped: Callable[[int], None],
        woke: Callable[[list[int]], None],
    ) -> None:
        """``term``: seconds a lease is asked for.  ``dropped``: told each object whose
        lease is dropped (what the other parts keep of it goes).  ``woke``: given every
        object held when the wall clock shows the machine slept past a lease."""
        self.term = term
        self.wall_ns = wall_ns
        self.stats = stats
        self._dropped = dropped
        self._woke = woke
        self.held: dict[int, Lease] = {}
        #: Until when (trio, wall ns) a lease bound to a session's slot and generation is
        #: used (``Sessions.ends``; None: not, that generation is over here).
        self.session_ends: Callable[[int, int], tuple[float, int] | None] = lambda s, g: None
        #: Objects a lease is being asked for (a recall of one is counted).
        self.asking: set[int] = set()
        #: Trio time until which no lease on an object is asked for (:data:`COOLDOWN`).
        self.quiet_until: dict[int, float] = {}
        #: Objects others keep recalling: not leased for a cool-down (``contention.py``).
        self.contention = Contention(stats)
        #: Moves when a lease is dropped (ended, recalled): a grant that arrives after
        #: its lease was recalled is given back, not used.
        self.epoch: Counter[int] = Counter()
        #: Files leased with their create under a directory's exclusive lease
        #: (:meth:`inherit`), by directory: given up with it at its recall.
        self.children: dict[int, set[int]] = {}
        #: Per directory with many such files, how many make :meth:`inherit` forget those
        #: no longer held (:data:`MAX_CHILDREN`, then twice as many as were left).
        self._children_at: dict[int, int] = {}
        #: Directories leased with their mkdir (:meth:`made`): where each was made.
        self.made_in: dict[int, int] = {}
        #: The directory each object was seen in (a lookup, a listing, a create here).
        self.parents: dict[int, int] = {}
        #: When something under a directory was last used (trio time): its tree in use.
        self.tree_used: dict[int, float] = {}
        #: Exclusive leases being turned into session-bound shared ones (``Taker.to_session``):
        #: no longer exclusive here from the moment it is asked (nothing new is held back).
        self.converting: set[int] = set()
        #: Files made here that no other client can have seen (``leases/unseen.py``).
        self.unseen = UnseenFiles(self.exclusive_from)
        #: How many leases held make :meth:`tidy` forget those ended (:data:`PURGE_AT`).
        self._purge_at = PURGE_AT

    def live(self, oid: int, now: float) -> Lease | None:
        """The lease on ``oid`` while it is to be used at trio time ``now`` (one whose term
        ran out is dropped; one ended on the wall clock alone lets every lease go)."""
        h = self.held.get(oid)
        if h is None:
            return None
        ends = self.ends(h)
        if ends is None or now >= ends[0]:
            if oid in self.asking and h.slot is None:
                # A renewal (or a conversion to the session) was asked and has not come
                # back: counted, a slow round's or an ask made near the end (issue 64).
                self.stats["lapsed"] += 1
                log.info("lease on %d (kind %d) ended while asked for again", oid, h.kind)
            self.drop(oid)
            return None
        if self.wall_ns() >= ends[1]:  # the machine slept (or its clock was set on)
            self.stats["woke_past_expiry"] += 1
            self._woke(list(self.held))
            return None
        if COUNT_USES.get():
            h.used = now  # (a bound lease whose tree is unused for a term is let go: ``Leases``)
            self._tree_use(oid, now)
        return h

    def _tree_use(self, oid: int, now: float) -> None:
        """Count a use of ``oid`` as one of the :data:`TREE_LEVELS` directories above it."""
        for _ in range(TREE_LEVELS):
            parent = self.parents.get(oid)
            if parent is None or parent == oid:
                return
            self.tree_used[parent] = now
            oid = parent

    def seen_in(self, parent: int, oids: Sequence[int]) -> None:
        """``oids`` are entries of directory ``parent`` (a lookup, a listing, a create)."""
        if len(self.parents) + len(oids) > MAX_PARENTS:
            self.parents.clear()
            self.tree_used.clear()
        for oid in oids:
            if oid != parent:
                self.parents[oid] = parent

    def ends(self, h: Lease) -> tuple[float, int] | None:
        """Until when (trio, wall ns) lease ``h`` is used: its term's end, or for one bound
        to a session the session's (None: that generation is over here)."""
        if h.slot is None:
            return h.until, h.wall_until
        return self.session_ends(h.slot, h.gen)

    def lasted(self, h: Lease, now: float) -> bool:
        """Whether lease ``h`` is still to be used at trio time ``now`` (on both clocks),
        without dropping it (:meth:`live` does)."""
        ends = self.ends(h)
        return ends is not None and now < ends[0] and self.wall_ns() < ends[1]

    def drop(self, oid: int) -> None:
        """Forget the lease on ``oid`` (ended, recalled, let go)."""
        self.held.pop(oid, None)
        self.made_in.pop(oid, None)
        self.epoch[oid] += 1
        self._dropped(oid)

    def quiet(self, oid: int, now: float) -> bool:
        """Whether ``oid`` is quiet at ``now`` after a recall or refusal here, or cooling
        down after many (``contention.py``: counted as a request skipped)."""
        if now < self.quiet_until.get(oid, 0.0):
            return True
        if self.contention.cooled(oid, now):
            self.contention.skipped()
            return True
        return False

    def remaining(self, oid: int, since: float) -> float:
        """Seconds left on the lease on ``oid`` if it was granted by ``since`` (or came
        with the object's create here: held from its start), else 0."""
        now = trio.current_time()
        h = self.live(oid, now)
        ends = None if h is None else self.ends(h)
        if h is None or ends is None or (h.granted > since and not h.inherited):
            return 0.0
        return max(0.0, min(ends[0] - now, (ends[1] - self.wall_ns()) / 1e9))

    def exclusive_left(self, oid: int) -> float:
        """Seconds left on this mount's exclusive lease on ``oid`` (0: it holds none)."""
        now = trio.current_time()
        h = self.live(oid, now)
        if h is None or h.kind != EXCLUSIVE or oid in self.converting:
            return 0.0
        return h.until - now

    def kept_left(self, oid: int) -> float:
        """Seconds left on the holding of ``oid`` under which state this mount kept while
        it held the object exclusively is still the object's: an exclusive lease, or the
        shared one that continued it (``Lease.kept``); 0 when there is none."""
        now = trio.current_time()
        h = self.live(oid, now)
        ends = None if h is None else self.ends(h)
        if h is None or ends is None or not (h.kind == EXCLUSIVE or h.kept):
            return 0.0
        return max(0.0, min(ends[0] - now, (ends[1] - self.wall_ns()) / 1e9))

    def exclusive_from(self, oid: int) -> float | None:
        """When this mount's holding of ``oid``, exclusive now, began (trio time; held
        without a break since, so nobody else changed the object meanwhile and state read
        from then on is its state); ``-inf`` when it came with the object's create here;
        None when the mount holds no exclusive lease on it."""
        h = self.live(oid, trio.current_time())
        if h is None or h.kind != EXCLUSIVE or oid in self.converting:
            return None
        return float("-inf") if h.inherited else h.granted

    def bound(self, slot: int) -> list[int]:
        """The objects whose lease is bound to ``slot``'s session."""
        return [oid for oid, h in self.held.items() if h.slot == slot]

    def idle(self, slot: int, before: float) -> list[int]:
        """The objects whose lease is bound to ``slot`` and whose tree was last used before
        ``before``: neither the object, nor anything under it or under the
        :data:`TREE_LEVELS` directories above it (a tree in use keeps its leases: the
        kernel answers most of a busy tree's stats and lookups itself, so one object's own
        uses say little)."""
        return [
            oid
            for oid, h in self.held.items()
            if h.slot == slot and h.used < before and not self._tree_busy(oid, before)
        ]

    def used_since(self, oid: int, since: float, now: float) -> bool:
        """Whether ``oid`` is held at ``now`` and it or its tree was used since ``since``
        (as :meth:`idle` judges; nothing is counted as a use, nothing dropped)."""
        h = self.held.get(oid)
        ends = None if h is None else self.ends(h)
        if h is None or ends is None or now >= ends[0]:
            return False
        return h.used >= since or self._tree_busy(oid, since)

    def _tree_busy(self, oid: int, since: float) -> bool:
        """Whether something under ``oid`` or under the :data:`TREE_LEVELS` directories
        above it, or one of those directories itself, was used since ``since``.  A
        directory's own use counts: a writer creating and removing there uses its lease,
        no file's, and a use marks only the directories above the object used, so in
        the root (its own parent) or a directory whose parent is not known the files it
        made and left were not in use, and a reader's look handed each over."""
        for level in range(TREE_LEVELS + 1):
            if self.tree_used.get(oid, float("-inf")) >= since:
                return True
            if level and (h := self.held.get(oid)) is not None and h.used >= since:
                return True
            parent = self.parents.get(oid)
            if parent is None or parent == oid:
                return False
            oid = parent
        return False

    def held_from(self, asked: float, lt: int, kind: int, granted: float, inherited: bool) -> Lease:
        """A lease of one term asked at trio time ``asked`` with lease time ``lt`` (ns),
        used until that term ends less the holder's margin, on both clocks."""
        until = asked + self.term - HOLDER_MARGIN / 1e9
        wall_until = lt + int(self.term * 1e9) - HOLDER_MARGIN
        return Lease(granted, until, kind, wall_until, inherited)

    def inherit(self, parent: int, oids: Sequence[int], asked: float | None = None) -> bool:
        """Hold ``oids`` until the end of the exclusive lease on ``parent``, given up with
        it (``Leases.inherit``); False, holding nothing, when that lease is not held.
        ``asked``: when their create was sent (trio time; None: not a create, a mkdir):
        made under a holding of ``parent`` that began before, they are unseen
        (``leases/unseen.py``)."""
        h = self.live(parent, trio.current_time())
        if h is None or h.kind != EXCLUSIVE:
            return False
        since = float("-inf") if h.inherited else h.granted
        if asked is not None and since <= asked:
            self.unseen.made(parent, oids, since)
        self.tidy()
        children = self.children.setdefault(parent, set())
        if len(children) > self._children_at.get(parent, MAX_CHILDREN):
            # Those whose lease ended are gone already; while the rest stay held, looked
            # at again only once they are twice as many (each create here walked all of
            # them: a directory's 8 000th file cost the mount 2 ms more than its first).
            children.intersection_update(self.held)
            self._children_at[parent] = max(MAX_CHILDREN, 2 * len(children))
        self.seen_in(parent, oids)
        for oid in oids:
            self.held[oid] = Lease(trio.current_time(), h.until, EXCLUSIVE, h.wall_until, True)
            children.add(oid)
            self.stats["inherited"] += 1
        return True

    def tidy(self) -> None:
        """Past :data:`PURGE_AT` leases held (then at twice what was left), drop those of
        their own term that ended and are not being asked for again (:meth:`live` drops
        one only when it is next looked at): called where leases are added (a create's,
        a grant).  The files made under a directory's exclusive lease inherit theirs;
        removed, they were never looked at again and stayed for the mount's life: 1 100
        more each PostMark run on one mount (5 178 after four)."""
        if len(self.held) < self._purge_at:
            return
        now = trio.current_time()
        held, asking = self.held.items(), self.asking
        ended = [o for o, h in held if h.slot is None and h.until <= now and o not in asking]
        for oid in ended:
            self.drop(oid)
        self.stats["ended_forgotten"] += len(ended)
        self._purge_at = max(PURGE_AT, 2 * len(self.held))

    def made(self, oid: int, parent: int, asked: float, lt: int) -> None:
        """Hold directory ``oid``, made in ``parent`` leased exclusively from ``lt`` (its
        mkdir asked at trio time ``asked``: ``Leases.made_leased``)."""
        self.held[oid] = self.held_from(asked, lt, EXCLUSIVE, trio.current_time(), True)
        self.made_in[oid] = parent
        self.seen_in(parent, [oid])

    def with_children(self, oids: list[int]) -> list[list[int]]:
        """``oids``, then what was leased with its create in them and is still held, then
        in those, ...: level by level (forgotten as children: they go with ``oids``)."""
        levels = [oids]
        while nxt := [c for o in levels[-1] for c in self._take_children(o) if c in self.held]:
            levels.append(nxt)
        return levels

    def _take_children(self, oid: int) -> set[int]:
        """Forget what was leased with its create in ``oid`` (and when to look at it)."""
        self._children_at.pop(oid, None)
        return self.children.pop(oid, set())

    def read_where_changed(self, oids: Sequence[int], now: float) -> list[int]:
        """``oids``' leases are being recalled at ``now`` (still held, their own contention
        counted): what else to let go.

        A shared lease this mount took to read (not one continuing its own exclusive
        holding) that another client's change recalls says that client works in the
        directory the object was seen in: once per recall, that counts as contention of
        the directory too, and a cool-down it starts lasts at least :data:`READ_COOL`.
        While a directory cools (so, or by recalls of its own lease), this mount's read
        leases there and on it are of no use: the other client would recall them one by
        one, each of its changes waiting for this mount's release (a mount listing a
        directory every second cost a writer there 278 waits in 40 s, 12 transactions a
        second against 885).  Returned, held and not among ``oids``, for the caller to
        let go with them."""
        dirs = {
            p
            for o in oids
            if (h := self.held.get(o)) is not None and h.kind == SHARED and not h.kept
            if (p := self.parents.get(o)) is not None and p not in oids
        }
        for d in dirs:
            self.contention.contended(d, now, READ_COOL)
        cooling = {d for d in dirs.union(oids) if self.contention.cooling_now(d, now)}
        if not cooling:
            return []
        gone = set(oids)
        out = [
            o
            for o, h in self.held.items()
            if o not in gone and h.kind == SHARED and not h.kept and o not in self.converting
            if o in cooling or self.parents.get(o) in cooling
        ]
        self.stats["read_leases_let_go"] += len(out)
        return out

    def never_made(self, oid: int) -> None:
        """``Leases.never_made``: forget ``oid``'s lease, never granted."""
        if oid in self.held:
            self.drop(oid)
        for children in self.children.values():
            children.discard(oid)
