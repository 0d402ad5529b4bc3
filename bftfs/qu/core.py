"""The pure decisions of a Q/U client (seed Figure 4.3 lines 300-604, and 4.3.5).

The driver (``client.py``) only does I/O: it sends requests, gathers replies, and asks this
module what they mean and what to do next.  Nothing here reads a clock or global random
state; the backoff draws from a ``random.Random`` the caller passes in.

- :func:`preferred_order` is the preferred quorum of an object and the order the client
  probes the others in (L2546-2553).
- :func:`merge` folds replies into the cached multi-OHS (line 602).
- :func:`present` picks the OHS to send: without servers proven malevolent by authenticator
  reports (L2659-2664) and without *stray* histories, whose newest candidates have order at
  most b and so are neither established nor potential (see
  :func:`bftfs.qu.classify.stray_holders`) - but only when enough fresh histories remain
  for classification to say METHOD.
- :func:`outcome` decides whether a round completed the operation (order >= q, line 302),
  including the optimistic and "established despite newer incomplete" query answers
  (L2526-2536, L2588-2595), and whether the method refused.
- :func:`next_step` is ``c_repair``'s loop body (lines 500-506) with inline repair
  (L2561-2570) and classification by deduction for multi-object candidates (L2747-2754).
- :func:`split_target` is the candidate a repair whose deduction names more objects than
  one request may repairs on its own first (``repair.py``).
- :func:`expected_lt` lets a repairer check a stored request fetched from a (possibly
  Byzantine) server before re-sending it: the timestamp must be the one it sets up.
- :func:`backoff_delay` is the random exponential backoff (L2585-2587, 1 ms start, x2).
"""

from __future__ import annotations

import enum
import random
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bftfs.qu.classify import (
    ObjectClass,
    OpType,
    QUThresholds,
    View,
    classify,
    established_answer_point,
    inline_target,
    missing_objects,
    passed_over,
    stray_holders,
)
from bftfs.qu.history import OHSEntry
from bftfs.qu.links import Facts, expected_setup_lt
from bftfs.qu.messages import ReplyStatus
from bftfs.qu.reply import Reply
from bftfs.qu.request import Request
from bftfs.qu.setup import request_type
from bftfs.qu.timestamp import Candidate, Timestamp

MOHS = dict[int, dict[int, OHSEntry]]


def preferred_order(oid: int, n: int) -> list[int]:
    """All servers, preferred quorum first: ``oid mod n``, then the next ones, wrapping.

    The first q are the preferred quorum; the rest are the probing order, which keeps
    locality when a server fails and spreads the load of different objects (L2551-2553).
    """
    start = oid % n
    return [(start + i) % n for i in range(n)]


def merge(
    mohs: Mapping[int, Mapping[int, OHSEntry]],
    objects: tuple[int, ...],
    replies: Mapping[int, Reply],
) -> MOHS:
    """A copy of ``mohs`` with each replying server's histories replaced by its reply's.

    ``objects`` are the request's operated objects, in order: reply histories are per
    operated object.  Objects missing from ``mohs`` are added.
    """
    out: MOHS = {oid: dict(ohs) for oid, ohs in mohs.items()}
    for oid in objects:
        out.setdefault(oid, {})
    for server, rep in replies.items():
        if len(rep.hist) != len(objects):
            continue
        for oid, e in zip(objects, rep.hist, strict=True):
            out[oid][server] = e
    return out


def malevolent(
    reports: Iterable[tuple[int, Reply]],
    objects: list[int],
    b: int,
    stale: Callable[[int, int, int], bool] | None = None,
) -> set[int]:
    """Servers whose histories more than ``b`` servers culled: at least one benign server
    found their authenticator bad, and a correct client did not tamper, so they are
    malevolent (L2659-2662).

    The seed's inference holds only if the culled server authenticated its history under
    the key the reporter checks it with.  A node replaced by a new machine (a view or a
    layout: same index, new key) breaks that for the histories made before: the newcomer
    culls every history whose entry for it was made under the old machine's key, and a
    peer culls the old machine's histories; a correct server cannot tell those from forged
    ones, so it reports them.  ``stale(reporter, oid, server)`` says a report may be one
    of those (``HistoryCache._stale``): it does not count.  Every other report counts as
    before, so a server that forges histories its peers check is still proven.
    """
    count: Counter[tuple[int, int]] = Counter()
    for reporter, rep in reports:
        for oid, culled in zip(objects, rep.culled, strict=False):
            for s in set(culled):
                if s != reporter and (stale is None or not stale(reporter, oid, s)):
                    count[(oid, s)] += 1
    return {s for (_, s), k in count.items() if k > b}


def present(
    mohs: Mapping[int, Mapping[int, OHSEntry]],
    th: QUThresholds,
    fresh: Mapping[int, set[int]],
    excluded: set[int],
    links: Facts | None = None,
) -> MOHS:
    """The multi-OHS to send: ``mohs`` without ``excluded`` servers and stray histories.

    Args:
        mohs: the cached multi-OHS.
        th: thresholds.
        fresh: per object, servers whose history came in during this operation.
        excluded: servers known to be malevolent.
        links: proven conditioned-on links (``bftfs.qu.links``) the view may use.
    """
    return present_view(mohs, th, fresh, excluded, links)[0]


def present_view(
    mohs: Mapping[int, Mapping[int, OHSEntry]],
    th: QUThresholds,
    fresh: Mapping[int, set[int]],
    excluded: set[int],
    links: Facts | None = None,
) -> tuple[MOHS, View, dict[int, set[int]]]:
    """:func:`present`, the :class:`View` of what it returns (the one built to find stray
    histories when none were left out, so a client judging a round builds one View, not
    two), and the objects whose stray histories cannot all be left out for want of ``q``
    fresh others, each with the servers still to ask (neither fresh nor excluded).

    A round ends at ``q`` replies; when one of them is a Byzantine server's history with a
    forged candidate under its own valid authenticator (the largest logical time, say), the
    other ``q - 1`` are too few to leave it out, every correct server classifies with it and
    refuses, and the client would retry forever without ever asking the (q+1)-th server
    (issue 18, defect 2).  Asking the rest settles it."""
    out: MOHS = {
        oid: {s: e for s, e in ohs.items() if s not in excluded} for oid, ohs in mohs.items()
    }
    view = View(out, th, links)
    changed = False
    short: dict[int, set[int]] = {}
    for oid in list(out):
        strays = stray_holders(view, oid)
        if not strays:
            continue
        have = fresh.get(oid, set())
        if len(have - strays - excluded) < th.q:
            rest = set(range(th.n)) - have - excluded
            if rest:
                short[oid] = rest
        drop = _strays_to_drop(view, oid, strays, have - excluded, th.q)
        if drop:
            out[oid] = {s: e for s, e in out[oid].items() if s not in drop}
            changed = True
    return out, (View(out, th, links) if changed else view), short


def _strays_to_drop(view: View, oid: int, strays: set[int], fresh: set[int], q: int) -> set[int]:
    """Which stray histories of ``oid`` to leave out: all of them when ``q`` fresh others
    remain, else those listing the newest stray candidates, newest first, for as long as
    ``q`` fresh others remain.  Leaving out a forger's candidate at the largest logical time
    must not wait for an honest server's in-flight update (order 1, a stray too) to settle:
    that update cannot settle while every correct server refuses the forged time."""
    if len(fresh - strays) >= q:
        return strays
    floor = max(
        (c.lt for c in view.candidates(oid) if view.order(oid, c) > view.th.b),
        default=None,
    )
    newer = sorted(
        (c for c in view.candidates(oid) if floor is None or c.lt > floor),
        key=lambda c: c.lt,
        reverse=True,
    )
    drop: set[int] = set()
    for c in newer:
        holders = view.local(oid, c) & strays
        if len(fresh - drop - holders) < q:
            break
        drop |= holders
    return drop


class Result(enum.Enum):
    """What one round of replies means for the operation."""

    DONE = "done"
    REFUSED = "refused"
    AGAIN = "again"


@dataclass(frozen=True)
class Outcome:
    """The meaning of one round: done (with answer), refused (with reason), or not yet."""

    result: Result
    answer: Any = None
    why: str = ""
    lt: Timestamp | None = None
    #: A query's answer point: the version of each object it was answered at.
    at: tuple[Timestamp, ...] | None = None
    #: An update's: the nodes' signatures of it (``Reply.sig``), by node.
    sigs: Mapping[int, bytes] | None = None


def _agreed(replies: list[Reply], b: int) -> tuple[bool, Any]:
    """The answer at least b+1 of ``replies`` agree on (one benign server vouches for it),
    compared by canonical bytes."""
    count: Counter[bytes] = Counter()
    first: dict[bytes, Any] = {}
    for r in replies:
        k = r.key()
        count[k] += 1
        first.setdefault(k, r.answer)
    for k, c in count.most_common():
        if c >= b + 1:
            return True, first[k]
    return False, None


def outcome(
    replies: Mapping[int, Reply],
    view: View,
    th: QUThresholds,
    query: bool,
    objects: tuple[int, ...] | None = None,
) -> Outcome:
    """Lines 301-302/401-402 plus the query rules of 4.3.5, for one round of replies.

    Args:
        replies: parsed replies of this round.
        view: the merged multi-OHS after this round, as :func:`present` shows it (the one
            :func:`next_step` decides on).  Judged on the raw cache instead, a forged or stray
            history left out of the OHS could make this say AGAIN to refusals that
            ``next_step`` then re-sends at once, forever (issue 5).
        th: thresholds.
        query: whether the operation is a query.
        objects: the operated objects (default: all of the view; others are context).
    """
    objects = view.objects if objects is None else objects
    oks = [(s, r) for s, r in replies.items() if r.status is ReplyStatus.OK and r.type == "method"]
    groups: dict[Any, list[Reply]] = {}
    for _, r in oks:
        key = r.at if query else r.lt
        groups.setdefault(key, []).append(r)
    for key, group in groups.items():
        if key is not None and len(group) >= th.q:
            ok, answer = _agreed(group, th.b)
            if ok:
                if query:
                    return Outcome(Result.DONE, answer, at=key)
                return Outcome(Result.DONE, answer, lt=key)
    # Refusal: b+1 servers refused the same call on the version classification says is
    # the latest complete one.
    classes = {oid: classify(view, oid) for oid in objects}
    point: tuple[Timestamp, ...] | None = None
    if request_type(classes) is OpType.METHOD:
        point = tuple(c.obj.lt for c in classes.values() if c.obj is not None)
    refusals: Counter[tuple] = Counter()
    for r in replies.values():
        if r.status is ReplyStatus.REFUSED and r.at is not None and r.at == point:
            refusals[(r.at, r.why)] += 1
    for (_, why), k in refusals.items():
        if k >= th.b + 1:
            return Outcome(Result.REFUSED, why=why)
    if query and len(objects) == 1:
        oid = objects[0]
        cand: Candidate | None = classes[oid].obj if point is not None else None
        if cand is None:
            cand = established_answer_point(view, oid)
        if cand is not None:
            answers = [
                r
                for r in replies.values()
                if r.at == (cand.lt,) and r.status is not ReplyStatus.REFUSED
            ]
            ok, answer = _agreed(answers, th.b)
            if ok:
                return Outcome(Result.DONE, answer, at=(cand.lt,))
    return Outcome(Result.AGAIN)


class Step(enum.Enum):
    """What ``c_repair`` does next."""

    METHOD = "method"  # classification allows the operation: (re)send it
    NEED = "need"  # fetch the histories of more objects first (deduction)
    LINKS = "links"  # prove conditioned-on links first (deduction behind pruned histories)
    INLINE = "inline"  # re-send a stored request to complete a candidate in place
    REPAIR = "repair"  # back off, then a barrier or copy (the servers decide which)


@dataclass(frozen=True)
class Next:
    """The decision of :func:`next_step`."""

    step: Step
    objects: frozenset[int] = frozenset()  # for NEED: objects to add
    links: frozenset[tuple[int, Timestamp]] = frozenset()  # for LINKS: (oid, lt) to prove
    target: Candidate | None = None  # for INLINE
    type: OpType | None = None  # for REPAIR: what the servers will do
    #: For REPAIR: the objects to operate on first when not all (:func:`abandon_alone`);
    #: empty for all of the view.
    alone: tuple[int, ...] = ()


def next_step(view: View) -> Next:
    """Lines 500-506 with deduction and inline repair, for the multi-OHS in ``view``.

    Links come before objects: which candidates are excluded decides which objects
    deduction needs, and an undecided skip must not steer anything."""
    need = missing_objects(view)
    wanted = view.wanted_links()
    if wanted:
        return Next(Step.LINKS, links=wanted)
    if need:
        return Next(Step.NEED, objects=need)
    classes = {oid: classify(view, oid) for oid in view.objects}
    typ = request_type(classes)
    if typ is OpType.METHOD:
        return Next(Step.METHOD)
    target = inline_target(view)
    if target is not None:
        return Next(Step.INLINE, target=target)
    alone = abandon_alone(view, classes)
    if alone and len(alone) < len(view.objects):
        return Next(Step.REPAIR, type=request_type({o: classes[o] for o in alone}), alone=alone)
    return Next(Step.REPAIR, type=typ)


def abandon_alone(view: View, classes: Mapping[int, ObjectClass]) -> tuple[int, ...]:
    """Objects whose repair abandons an excluded multi-object candidate and nothing else
    needs the others: a barrier and a copy of them alone, the rest carried as context.

    A multi-object candidate M that a newer potential candidate skipped at one object is
    excluded everywhere (:meth:`View.excluded`), but it is abandoned only where a copy
    passes it by.  At an object where nothing newer came (a file whose create lost at its
    directory), M stays listed at order ``r`` until a repair of that object, and deciding
    it again later walks the busy object's chain, pruned behind every complete version:
    one proven link per version since M.  A repair of all the objects together is stale
    at the busy one after every backoff, so each view walked from a newer version, until
    a request needed more links than it may carry and every node refused it (issue 60
    item 9: two mounts looping create, fsync, unlink in one directory).  Repairing these
    objects alone, while the skip is proven, needs no other object to hold still: once a
    complete copy there passes M by, its listed chain decides M (:meth:`View.settled`).

    An object qualifies when it is not METHOD, a candidate its repair passes over
    (:func:`~bftfs.qu.classify.passed_over`: an excluded one, or one too thin to be
    established that may yet reach ``r``) is listed there newer than its latest object
    candidate, and that candidate can be copied there alone (not an incomplete
    multi-object one, whose copy must cover all its objects).  Likewise
    when its latest object candidate is such a multi-object candidate that a complete
    version's chain meets at another object (:meth:`View.kept`): established, it is copied
    forward here alone (an established unlink shown at order ``q - 1`` with a node down,
    its directory far on).
    """
    kept = view.kept()
    out = []
    for oid in view.objects:
        cl = classes.get(oid)
        if cl is None or cl.type is OpType.METHOD:
            continue
        obj = cl.obj
        if obj is not None and obj.multi and view.order(oid, obj) < view.th.q:
            if obj.key in kept:  # established: copied forward here alone, safely
                out.append(oid)
            continue
        floor = obj.lt if obj is not None else None
        if any(
            view.local(oid, c) and (floor is None or c.lt > floor) for c in passed_over(view, oid)
        ):
            out.append(oid)
    return tuple(out)


def narrowest(
    keep: Collection[int], wide: Iterable[int], view_of: Callable[[tuple[int, ...]], View]
) -> tuple[int, ...]:
    """Objects of ``wide`` (a set deduction closed: :func:`missing_objects` finds nothing
    more) that are enough on their own, with ``keep``; ``view_of`` gives a set's view.

    Deduction is not monotone.  An object added for a candidate's objects can exclude that
    candidate (a newer one there skips it, :meth:`View.excluded`), and then an older
    candidate is the ObjCand of its other objects, whose objects are needed in turn; the
    excluded candidate's other objects are not (the one that shows the skip is).  A closure
    that keeps them all can name more than a request may while a set within it would do:
    repaired in groups instead, the group of the older candidate needed the excluded one's
    objects again, which needed the older candidate's, being repaired further up, and a
    repair waited for ever (two mounts, one listing while the other wrote, 2026-12-05).
    Servers judge a request's objects by the same rule (:func:`missing_objects`, answered
    ``need``), so any set found here is one they accept.

    Two greedy searches, the smaller answer kept: from ``keep``, adding one missing object
    at a time, the one that leaves the fewest missing (the object that excludes a
    candidate before that candidate's others); and from ``wide``, leaving out each object
    in turn, newest first, while nothing goes missing.  A view per object tried."""
    wide = set(wide)
    shrunk = _leave_out(keep, wide, view_of)
    grown = _grow(keep, wide, view_of)
    return shrunk if grown is None else min(_leave_out(keep, grown, view_of), shrunk, key=len)


def _grow(
    keep: Collection[int], wide: set[int], view_of: Callable[[tuple[int, ...]], View]
) -> set[int] | None:
    """``keep`` and, one at a time, the missing object that leaves the fewest missing,
    until nothing is; None if something missing is outside ``wide`` (not read)."""

    def missing(objects: set[int]) -> frozenset[int]:
        return missing_objects(view_of(tuple(sorted(objects))))

    got = set(keep)
    need = missing(got)
    while need:
        if not need <= wide:
            return None
        tries = ((more, missing(more)) for more in ({*got, o} for o in sorted(need)))
        got, need = min(tries, key=lambda tried: len(tried[1]))
    return got


def _leave_out(
    keep: Collection[int], objects: set[int], view_of: Callable[[tuple[int, ...]], View]
) -> tuple[int, ...]:
    """``objects`` (nothing missing) less each object outside ``keep`` whose leaving out
    leaves nothing missing, tried newest first."""
    got = sorted(objects)
    for oid in sorted(objects - set(keep), reverse=True):
        trial = tuple(o for o in got if o != oid)
        if not missing_objects(view_of(trial)):
            got = list(trial)
    return tuple(got)


def split_target(view: View, skip: Collection[tuple] = ()) -> Candidate | None:
    """The candidate to repair on its own first when the deduction over ``view`` names
    more objects than one request may (``repair.py``): the newest multi-object candidate
    that is some object's ObjCand and not complete, leaving out the keys in ``skip`` (the
    ones being repaired further up), or None.

    Deduction goes from an object to the objects of its ObjCand ``c``, and from one of
    those, ``o``, on when ``o``'s ObjCand is another such candidate: newer than ``c``
    (``c`` is a candidate of ``o`` too, of the same order), unless ``c`` is excluded, which
    leaves an older one ObjCand (:func:`narrowest` keeps those chains short).  The newest
    one not excluded is where a chain of newer ones ends: at the objects of it this view
    holds, it is the ObjCand itself (or a complete or single-object candidate, which needs
    no deduction), and repairing it names its objects, at most
    :data:`~bftfs.qu.timestamp.MAX_OBJECTS`, and what they need.  Its objects' other
    histories may still show newer ones: then repairing it splits again.  Ties (equal
    timestamps: a Byzantine server invented one) go to the larger key, so the choice is
    the same every time."""
    best: Candidate | None = None
    for oid in view.objects:
        c = view.latest_candidate(oid, False)
        if c is None or not c.multi or c.key in skip or view.order(oid, c) >= view.th.q:
            continue
        if best is None or c.key > best.key:
            best = c
    return best


def expected_lt(req: Request, th: QUThresholds) -> Timestamp | None:
    """The timestamp servers set up for ``req`` if none of its histories gets culled."""
    got = expected_setup_lt(req, th)
    return got[0] if got is not None else None


def progress_mark(view: View) -> tuple:
    """The newest complete object candidate of each object of ``view``: when it changes
    between two backoffs of one operation, some client made progress meanwhile
    (:meth:`bftfs.qu.attempt.Attempt.progressed`)."""
    out = []
    for oid in view.objects:
        best = None
        for c in view.candidates(oid):
            if c.lt.barrier or view.order(oid, c) < view.th.q:
                continue
            if best is None or c.lt > best:
                best = c.lt
        out.append((oid, best))
    return tuple(out)


def backoff_delay(
    attempt: int, rng: random.Random, initial: float = 0.001, cap: float = 1.0
) -> float:
    """Random exponential backoff: uniform in ``[d/2, d]`` with ``d = initial * 2**attempt``.

    The prototype starts at 1000 us and doubles per failed retry (L3072-3074); drawing from
    the upper half keeps the doubling visible while still separating contenders.
    """
    d = min(cap, initial * (2 ** min(attempt, 30)))
    return rng.uniform(d / 2, d)
