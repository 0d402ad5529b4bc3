"""Classification of object history sets (seed Figure 4.3 lines 700-800, 1100-1206).

Pure functions shared by clients and servers: given a multi-OHS they say which operation
type (METHOD, BARRIER, COPY) the seed's ``classify`` dictates, which candidates are the
latest object and barrier versions; the server's set-up of a request from them (``s_setup``,
lines 1100-1118) is :mod:`bftfs.qu.setup`.  No trio, no clock, no randomness.

Thresholds are the seed's threshold quorums (L2288-2303): a candidate whose *order* (number
of servers whose replica history holds it, line 800) is at least ``q`` is complete, at least
``r`` repairable, else incomplete.

Multi-object candidates (seed 4.3.7, L2732-2844) are classified *by deduction*: every server
that accepted one accepts it for all its objects in one atomic step, so a server that lists
it in the history of *any* of its objects accepted it for all of them.  The order of such a
candidate is therefore counted over the union of servers that list it at any of its objects
present in the multi-OHS.  This makes the classification of the candidate the same at every
one of its objects, which is what the seed requires ("classification by deduction cannot
yield conflicting reclassifications"), and it is what lets a repairer use a fresh OHS of one
object to classify the candidate at another.  To make the deduction possible, a request
over an object whose latest object candidate is an incomplete multi-object one must carry
the OHS of all of its objects (:func:`missing_objects`); servers refuse requests that do
not, and multi-object *barriers* and *copies* then cover the candidate's whole object set,
as L2829-2837 demand.  Whether a newer candidate at another object skipped such a
candidate is read from conditioned-on links, proven by the stored requests that made them
when pruning removed them from the histories (:meth:`View.skips`, :mod:`bftfs.qu.links`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bftfs.qu.history import OHS, MultiOHS, entry
from bftfs.qu.timestamp import (
    INITIAL,
    MAX_OBJECTS,
    NARROW_OBJECTS,
    ZERO,
    Candidate,
    Timestamp,
)
from bftfs.thresholds import ThresholdError, check, qu_rule


class OpType(enum.Enum):
    """What classification says must be done next (line 101)."""

    METHOD = "method"
    COPY = "copy"
    BARRIER = "barrier"


@dataclass(frozen=True)
class QUThresholds:
    """``n`` servers, ``q`` complete, ``r`` repairable, ``b`` malevolent, ``t`` faulty.

    The Q/U sizes; the PASIS ones are :class:`bftfs.rw.classify.RWThresholds` (prefixed
    names, so a search for either finds one class).
    """

    n: int
    t: int
    b: int
    q: int
    r: int
    #: Most objects this client names in one operation (``[cluster] max_objects``): a repair
    #: or a batch wider than this is split.  Nodes accept up to ``MAX_OBJECTS`` whatever it is.
    objects: int = NARROW_OBJECTS

    @classmethod
    def minimal(cls, t: int, b: int) -> QUThresholds:
        """The smallest threshold system for ``t`` and ``b`` (L2294-2298)."""
        return cls(n=3 * t + 2 * b + 1, t=t, b=b, q=2 * t + 2 * b + 1, r=t + b + 1)

    @classmethod
    def from_config(cls, config: Any) -> QUThresholds:
        """Thresholds of a ``ClusterConfig`` (anything with ``n, t, b, q, r``; its
        ``max_objects`` if it has one, else the width every node accepts)."""
        objects = getattr(config, "max_objects", NARROW_OBJECTS)
        th = cls(n=config.n, t=config.t, b=config.b, q=config.q, r=config.r, objects=objects)
        th.validate()
        return th

    def validate(self) -> None:
        """Check the seed's threshold constraints (L2288-2291).

        Raises:
            ThresholdError: naming the rule that fails.
        """
        check(qu_rule(self.n, self.t, self.b, self.q, self.r))
        if not 2 <= self.objects <= MAX_OBJECTS:
            raise ThresholdError(
                f"objects per operation must be in 2..{MAX_OBJECTS}, got {self.objects}"
            )


def _index(ohs: OHS, n: int) -> dict[tuple, tuple[Candidate, set[int]]]:
    """Every candidate in ``ohs`` by key, with the servers listing it (missing = initial)."""
    idx: dict[tuple, tuple[Candidate, set[int]]] = {}
    for s in range(n):
        for c in entry(ohs, s).rh:
            hit = idx.get(c.key)
            if hit is None:
                idx[c.key] = (c, {s})
            else:
                hit[1].add(s)
    return idx


class View:
    """A multi-OHS indexed for classification (built once per request or client step)."""

    def __init__(
        self,
        mohs: MultiOHS,
        th: QUThresholds,
        links: Mapping[tuple[int, Timestamp], Timestamp] | None = None,
    ) -> None:
        """Args:
        mohs: the multi-OHS.
        th: thresholds.
        links: proven conditioned-on links ``(oid, lt) -> lt_co`` (see :meth:`link`),
            read only, never copied (a client passes its whole cache).
        """
        self.mohs = mohs
        self.th = th
        self.objects = tuple(sorted(mohs))
        self.links: Mapping[tuple[int, Timestamp], Timestamp] = links or {}
        self._wanted: set[tuple[int, Timestamp]] = set()
        self._used: set[tuple[int, Timestamp]] = set()
        self._chains: dict[int, dict[Timestamp, Timestamp]] = {}
        self._excluded: frozenset | None = None
        self._kept: set[tuple] = set()
        #: The skips whose decision used proven links, by candidate: ``(candidate, object
        #: walked, the newer candidate walked from)`` (what a log says of a long walk).
        self.walked: dict[tuple, tuple[Candidate, int, Candidate]] = {}
        self._orders: dict[tuple, int] = {}
        self._latests: dict[tuple, Candidate | None] = {}
        self._idx = {o: _index(mohs[o], th.n) for o in self.objects}
        # A multi-object candidate seen at one of its objects is a candidate of the others
        # too (its servers accepted it for all of them at once), even where no history we
        # hold lists it: otherwise two objects could classify one update differently.
        for o in self.objects:
            for key, (c, _) in list(self._idx[o].items()):
                if c.multi:
                    for other in c.objects:
                        if other != o and other in self._idx:
                            self._idx[other].setdefault(key, (c, set()))

    def candidates(self, oid: int) -> Iterable[Candidate]:
        """Every distinct candidate in the OHS of ``oid``."""
        return (c for c, _ in self._idx[oid].values())

    def local(self, oid: int, cand: Candidate) -> set[int]:
        """Servers listing ``cand`` in their history of ``oid`` alone."""
        hit = self._idx[oid].get(cand.key)
        return set(hit[1]) if hit else set()

    def support(self, oid: int, cand: Candidate) -> set[int]:
        """Servers known to have accepted ``cand`` (classification by deduction, see above)."""
        servers = self.local(oid, cand)
        for other in cand.objects:
            if other != oid and other in self._idx:
                hit = self._idx[other].get(cand.key)
                if hit:
                    servers |= hit[1]
        return servers

    def order(self, oid: int, cand: Candidate) -> int:
        """The order of ``cand`` at ``oid`` (line 800, with deduction)."""
        objs = cand.objects
        if not objs or objs == (oid,):  # no deduction: the servers listing it here
            hit = self._idx[oid].get(cand.key)
            return len(hit[1]) if hit else 0
        # A multi-object candidate's order is asked for again and again while classifying
        # (at each of its objects, for the latest candidates, for exclusions): the index
        # never changes after construction, so each answer is kept.
        k = (oid, cand.key)
        got = self._orders.get(k)
        if got is None:
            got = self._orders[k] = len(self.support(oid, cand))
        return got

    def latest_time(self, oid: int) -> Timestamp:
        """The greatest LT anywhere in the OHS of ``oid`` (``latest_time``, line 703)."""
        idx = self._idx[oid]
        # Keys start with the LT's encoding, which orders as the LT does.
        return idx[max(idx)][0].lt

    def latest_candidate(self, oid: int, barrier: bool) -> Candidate | None:
        """Lines 1200-1206: the repairable-or-complete candidate with the greatest LT.

        Two candidates can share an LT only if a Byzantine server invented one; the one with
        the larger order wins, then the smaller object tuple, so every party picks the same.
        Object candidates in :meth:`excluded` are skipped.
        """
        return self._latest(oid, barrier, self.excluded() if not barrier else frozenset())

    def _latest(self, oid: int, barrier: bool, skip: frozenset) -> Candidate | None:
        # Kept per (object, kind, exclusions): ``excluded`` asks first, ``classify`` again.
        k = (oid, barrier, skip)
        if k in self._latests:
            return self._latests[k]
        got = self._latests[k] = self._latest_uncached(oid, barrier, skip)
        return got

    def _latest_uncached(self, oid: int, barrier: bool, skip: frozenset) -> Candidate | None:
        best: Candidate | None = None
        best_k = 0
        for c in self.candidates(oid):
            if c.lt.barrier != barrier or c.key in skip:
                continue
            k = self.order(oid, c)
            if k < self.th.r:
                continue
            # The rank is (LT, order, objects negated); the rest is compared only on a tie
            # of LTs (a Byzantine server's invention: the objects of a multi-object
            # candidate made a tuple per candidate, up to 32, in every classification).
            if best is None or c.lt > best.lt or (c.lt == best.lt and _wins(c, k, best, best_k)):
                best, best_k = c, k
        return best

    def _chain(self, oid: int) -> dict[Timestamp, Timestamp]:
        """``lt -> lt_co`` at ``oid`` for every candidate that b+1 servers list *with that
        very lt_co* (one of them benign, so the link is true).  A candidate's key leaves
        its lt_co out, so a Byzantine server can list a real timestamp with a forged one."""
        got = self._chains.get(oid)
        if got is not None:
            return got
        listed: dict[tuple[Timestamp, Timestamp], int] = {}
        for e in self.mohs[oid].values():
            for c in e.rh:
                k = (c.lt, c.lt_co)
                listed[k] = listed.get(k, 0) + 1
        got = self._chains[oid] = {lt: co for (lt, co), k in listed.items() if k > self.th.b}
        return got

    def link(self, oid: int, lt: Timestamp) -> Timestamp | None:
        """The conditioned-on timestamp of version ``lt`` at ``oid``: from the histories
        (b+1 servers list it), else from a proven link (``links``), else None - and the
        link is remembered as wanted (:meth:`wanted_links`)."""
        got = self._chain(oid).get(lt)
        if got is not None:
            return got
        got = self.links.get((oid, lt))
        if got is not None:
            self._used.add((oid, lt))
            return got
        self._wanted.add((oid, lt))
        return None

    def skips(self, oid: int, newer: Candidate, older: Candidate) -> bool | None:
        """Whether ``newer``'s conditioned-on chain at ``oid`` passes ``older`` by.

        True when a link's conditioned-on timestamp falls below ``older`` without meeting
        it, False when the chain meets ``older``, None when a link is neither listed by
        b+1 servers nor proven (pruning, line 1028, removes the links behind every
        complete version): the caller must not guess, since excluding an established
        candidate would abandon it and keeping an abandoned one would split its update.
        """
        lt = newer.lt
        while True:
            co = self.link(oid, lt)
            if co is None:
                return None
            if co == older.lt:
                return False
            if co < older.lt:
                return True
            lt = co

    def wanted_links(self) -> frozenset[tuple[int, Timestamp]]:
        """Links a decision needed and could not find: until they are proven, the view
        cannot decide which multi-object candidates to exclude (:meth:`excluded`)."""
        self.excluded()
        return frozenset(self._wanted)

    def used_links(self) -> frozenset[tuple[int, Timestamp]]:
        """Proven links the decisions of this view used: a request must carry them, so its
        servers decide alike."""
        self.excluded()
        return frozenset(self._used)

    def settled(self, cand: Candidate) -> bool | None:
        """Whether ``cand`` is in the established history of its objects as far as complete
        candidates show it, by links ``b + 1`` servers list (no proof, nothing wanted):
        True when, at one of its objects, a complete candidate's conditioned-on chain
        meets ``cand``; False when one's chain passes it by; None when none decides.

        A complete candidate is established, and so is every version its chain passes
        through (a METHOD is conditioned on a complete version, a copy establishes the one
        it carries).  So True means ``cand`` is established, and no candidate anywhere can
        skip it; False means it was never established, and every object must abandon it
        (:meth:`excluded`).  Either way, walking another object's chain to decide would
        only cost proofs, and it did: the version a newly created file's next update is
        conditioned on is its create, a two-object candidate that histories keep listing
        (pruning stops at the conditioned-on version) with fewer than ``q`` servers once
        the directory's histories pruned it.  Every later request naming that file walked
        the directory's chain back to the create, one proven link per directory version
        since; under four mounts renaming in one directory that passed the 256 links a
        request may carry (``request.MAX_LINKS``), and every node refused the request, for
        good (issue 39).  (Both at once would mean an update already split; True wins,
        keeping ``cand``, as :meth:`excluded` keeps what it cannot decide.)"""
        passed = False
        for o2 in cand.objects:
            if o2 not in self._idx:
                continue
            chain = self._chain(o2)
            for z in self.candidates(o2):
                if z.lt.barrier or z.lt <= cand.lt or self.order(o2, z) < self.th.q:
                    continue
                lt: Timestamp | None = z.lt
                while lt is not None and lt > cand.lt:
                    lt = chain.get(lt)
                if lt == cand.lt:
                    self._kept.add(cand.key)
                    return True
                passed = passed or lt is not None
        return False if passed else None

    def excluded(self) -> frozenset:
        """Multi-object candidates a copy must not carry forward (deduction, L2747-2754).

        Several candidates may be potential at once (L2270-2275).  If at one object of a
        repairable multi-object candidate M the latest repairable object candidate is newer
        than M and provably not descended from it (:meth:`skips`), copying it there abandons
        M at that object, so M
        must be abandoned at all its objects: it is excluded everywhere, and the choice is
        recomputed until it is stable.  (M cannot be established then: an established M
        and a potential candidate that skips it would share a benign server, which would
        have refused the later of the two.)  Complete candidates are never excluded; what
        complete candidates' listed chains decide is taken first (:meth:`settled`).  A
        skip that neither the listed nor the proven links decide leaves M in and the
        missing link in :meth:`wanted_links`; clients and servers act on such a view only
        once the link is proven (a copy could otherwise carry M at some objects only).
        """
        if self._excluded is not None:
            return self._excluded
        skip: set = set()
        multi = []
        for o in self.objects:
            for c in self.candidates(o):
                if not c.multi or c.lt.barrier or not self.th.r <= self.order(o, c) < self.th.q:
                    continue
                settled = self.settled(c)
                if settled is None:
                    multi.append((o, c))
                elif not settled:
                    skip.add(c.key)
        changed = bool(multi)
        while changed:
            changed = False
            frozen = frozenset(skip)
            chosen = {o: self._latest(o, False, frozen) for o in self.objects}
            for o, c in multi:
                if c.key in skip or not self.th.r <= self.order(o, c) < self.th.q:
                    continue
                wanted_before = set(self._wanted)
                for o2 in c.objects:
                    y = chosen.get(o2)
                    # Undecided (None): M stays in for now, and the link is wanted.
                    if y is None or y.lt <= c.lt:
                        continue
                    used = len(self._used)
                    skipped = self.skips(o2, y, c)
                    if len(self._used) > used:
                        self.walked[c.key] = (c, o2, y)
                    if skipped:
                        skip.add(c.key)
                        changed = True
                        break
                    if skipped is False and self.order(o2, y) >= self.th.q:
                        # A complete version's chain meets it: established, so no object
                        # can skip it, and walking the others' chains (a busy directory's,
                        # pruned: one proven link per version) would decide nothing.
                        self._kept.add(c.key)
                        break
                else:
                    continue
                # Decided: links wanted only for this candidate's other objects are not.
                self._wanted = wanted_before
        self._kept -= skip
        self._excluded = frozenset(skip)
        return self._excluded

    def kept(self) -> frozenset:
        """Multi-object candidates shown established: a complete candidate's chain, listed
        or proven, meets them at one of their objects.  Copying one forward at its other
        objects alone cannot split its update (it is in the history already), so a repair
        may do that without the busy object (``core.abandon_alone``)."""
        self.excluded()
        return frozenset(self._kept)


@dataclass(frozen=True)
class ObjectClass:
    """``classify`` for one object: the type and the latest object and barrier candidates."""

    type: OpType
    obj: Candidate | None  # ObjCand; None when no object candidate reaches order r
    bar: Candidate | None  # BarCand
    latest: Timestamp  # LTlat


def classify(view: View, oid: int) -> ObjectClass:
    """Lines 700-712 for object ``oid`` of ``view``."""
    th = view.th
    obj = view.latest_candidate(oid, False)
    bar = view.latest_candidate(oid, True)
    lat = view.latest_time(oid)
    typ = OpType.BARRIER
    # A copy carries ObjCand forward, and ObjCand is only right when read from q histories
    # *of this object* taken after they accepted the barrier: those list every version
    # their servers accepted before it (an established one among them r times at least).
    # Deduction may count a multi-object barrier complete here from other objects'
    # histories while this object's are older than the barrier and miss a version
    # established since: the copy then abandoned an update its client had seen complete
    # (found by tests/t2_qu_hunt.py).  Short of q here, it is a barrier again (whose round
    # returns fresh histories of every object).
    if bar is not None and lat == bar.lt and len(view.local(oid, bar)) >= th.q:
        typ = OpType.COPY
    if obj is not None and lat == obj.lt and view.order(oid, obj) >= th.q:
        typ = OpType.METHOD
    return ObjectClass(typ, obj, bar, lat)


def missing_objects(view: View) -> frozenset[int]:
    """Objects a request over ``view`` must also carry for deduction to be possible.

    The seed's rule (L2829-2834): when the latest object candidate of an object (ObjCand)
    is a multi-object candidate that is not complete, classification by deduction must
    look at all of its objects, and a barrier or copy repairing it covers them all.  Other
    multi-object candidates need no deduction: an incomplete one newer than ObjCand is
    abandoned by a repair (had it been established, q fresh histories of this object alone
    would list it r times), and an older one is either in ObjCand's chain or was skipped.
    Adding an object can exclude ObjCand (:meth:`View.excluded`) and make an older
    candidate ObjCand, whose objects are then needed too, so callers repeat until nothing is
    missing.  This bounds a repair by the objects of the candidates it repairs (at most 8
    each), not by how many updates are pending at a busy object.
    """
    need: set[int] = set()
    for oid in view.objects:
        c = view.latest_candidate(oid, False)
        if c is not None and c.multi and view.order(oid, c) < view.th.q:
            need.update(c.objects)
    return frozenset(need - set(view.objects))


def passed_over(view: View, oid: int) -> list[Candidate]:
    """Multi-object candidates a repair of ``oid`` passes by (no copy there carries them)
    that may stay listed at order ``r`` or more at their other objects: the excluded ones
    (:meth:`View.excluded`), and those that more than ``b`` servers list but fewer than
    ``r``.

    The latter are abandoned by the repair (had one been established, ``q`` fresh
    histories would list it ``r`` times), yet it may still reach ``r``: the servers
    outside this view that accepted it, up to ``n - q``, are not counted here, and ``b``
    listings alone may be forged.  At an object where nothing newer came (a file whose
    create lost at its directory) such a candidate stays the latest, and whoever next
    uses that object must decide it by this object's chain (:meth:`View.skips`), which
    pruning removes behind every complete version: one proven link per version since.

    Which candidates are named here costs rounds, never safety: each object a repair
    covers is classified from its own fresh histories, as any repair's are."""
    th = view.th
    excluded = view.excluded()
    return [
        c
        for c in view.candidates(oid)
        if c.multi and not c.lt.barrier and (c.key in excluded or th.b < view.order(oid, c) < th.r)
    ]


def left_behind(view: View) -> frozenset[int]:
    """Objects outside ``view`` that a repair of its objects covers too: those of the
    candidates it passes by (:func:`passed_over`).  A barrier and a copy there while this
    view decides the skip from listed links leave a complete version there whose own
    listed chain decides it (:meth:`View.settled`); left alone, the next user of the
    object walks this object's chain back to the candidate, however far it moved on
    (1 555 proven links under two PostMarks in one directory, more than a request
    carries: every node refused it)."""
    out: set[int] = set()
    for oid in view.objects:
        for c in passed_over(view, oid):
            out.update(c.objects)
    return frozenset(out - set(view.objects))


def established_answer_point(view: View, oid: int) -> Candidate | None:
    """The client-side query rule of L2588-2595.

    If the latest complete object candidate is followed only by incomplete candidates, a
    query answered on it may be returned (the newer ones are not established, so the query
    is ordered before them).  Returns that candidate, or None.
    """
    th = view.th
    best: Candidate | None = None
    for c in view.candidates(oid):
        if not c.lt.barrier and view.order(oid, c) >= th.q and (best is None or c.lt > best.lt):
            best = c
    if best is None:
        return None
    for c in view.candidates(oid):
        if c.lt > best.lt and view.order(oid, c) >= th.r:
            return None
    return best


def inline_target(view: View) -> Candidate | None:
    """The candidate a client may inline-repair (L2561-2570, L2676-2684), or None.

    It must be the latest candidate at every object of the view (nothing newer: no
    contention) and either repairable (order in ``[r, q)``) or a barrier that is not complete
    (the seed's change that stops malevolent servers forging barriers forever).  Its objects
    must all be in the view, so the repair re-sends the whole multi-object request.
    """
    th = view.th
    target: Candidate | None = None
    for oid in view.objects:
        lat = view.latest_time(oid)
        tops = [c for c in view.candidates(oid) if c.lt == lat]
        if len(tops) != 1:
            return None
        top = tops[0]
        if top == INITIAL or not set(top.objects) <= set(view.objects):
            return None
        if target is not None and top.key != target.key:
            return None
        target = top
    if target is None:
        return None
    k = max(view.order(o, target) for o in target.objects)
    if k >= th.q:
        return None
    if k >= th.r or target.lt.barrier:
        return target
    return None


def stray_holders(view: View, oid: int) -> set[int]:
    """Servers listing, at ``oid``, a candidate newer than every candidate of order > b.

    Such a candidate can be neither established nor potential (both need order > b), so a
    client may leave those servers' histories out of the OHS it presents (servers treat a
    missing history as ``{<0,0>}``, exactly like a culled one, line 1002).  This is how an
    isolated client gets past forged higher candidates and endless forged barriers
    (L2666-2687): the forger's history stops steering classification.
    """
    b = view.th.b
    lat = view.latest_time(oid)
    if any(c.lt == lat and view.order(oid, c) > b for c in view.candidates(oid)):
        return set()  # the common case: the newest candidate is not stray
    floor = ZERO
    for c in view.candidates(oid):
        if c.lt > floor and view.order(oid, c) > b:
            floor = c.lt
    out: set[int] = set()
    for s in range(view.th.n):
        if any(c.lt > floor for c in entry(view.mohs[oid], s).rh):
            out.add(s)
    return out


def _wins(c: Candidate, k: int, best: Candidate, best_k: int) -> bool:
    """Whether ``c`` (order ``k``) outranks ``best`` (order ``best_k``) of the same LT: the
    larger order, then the smaller object tuple."""
    return (k, tuple(-o for o in c.objects)) > (best_k, tuple(-o for o in best.objects))
