"""Repair of Q/U objects by a client (seed Figure 4.3 lines 500-506, 4.3.5): the object
history set it presents, barriers and copies, inline repair, proving links, and splitting
a repair that would name too many objects (repairing it in groups).

:class:`Repairer` is the part of :class:`~bftfs.qu.client.QUClient` that its operation
loop (``client.py``) calls between rounds; every decision comes from :mod:`bftfs.qu.core`,
the calls go through ``rounds.py``, the histories live in ``ohscache.py``.  It shares the
client's cache, rounds and proven links, and counts what it did in :attr:`Repairer.counts`
(part of ``QUClient.statistics``).

**A deduction wider than one request** (issue 67). A batched update (``writemany``,
``unlinkmany``, creates: up to 7 objects and their directory) that looks incomplete to the
servers that answer pulls every object it names into the deduction (``missing_objects``),
and one of those objects' own latest update, a newer batch, pulls in its objects too: a
chain of such names more objects than a request may carry (the cluster's ``max_objects``;
15 in ``t4_held_listings``' ``rm -rf`` under lease churn, each lookup that met it
answering EIO after four backoffs, ``MAX_SPLITS``). :meth:`Repairer.repair` first reads
every server's histories of those objects (``Presenter.widen``: at ``q`` of all ``n`` they may be
complete, one server of the quorum asked having missed them). If the deduction is still
too wide, it is narrowed to the objects it needs (:meth:`Repairer._narrow`,
:func:`core.narrowest`: an object added for a candidate may exclude it, and then its other
objects are not needed), and failing that repaired in groups (:meth:`Repairer._split`):
the newest candidate the deduction pulls in (:func:`core.split_target`) is repaired on its
own - barrier and copy, or inline, of its objects only, at most ``max_objects`` - and
deduction starts again from the operation's objects, now a link shorter. This keeps the
classification rules: a repair is per object, so one candidate's objects may be repaired
before the others'; and a group's barrier or copy is a request like any other, carrying
every object its own deduction needs (as context, or the group splits again, at a newer
candidate), which the servers check (``missing_objects``, answered ``need``): no copy
carries a candidate forward at some of its objects only. The newest one is where the chain
ends: each link leads to a newer candidate (``split_target``), so at its objects nothing
further needs deducing. The alternatives weighed: backing off and asking again until other
servers show the chain complete only helps while they are complete somewhere (not when a
server that holds them is down, ``t3_qu_repair_wide``), and a fixed number of tries made a
busy machine an EIO; backing off for ever while a quorum answers waits for what will not
come.

What bounds the work: each split repairs a candidate for good (complete, or abandoned at
each of its objects), and a candidate is split off once per operation
(``Attempt.split_off``), so splits are at most the distinct candidates clients made
meanwhile. A Byzantine server cannot add to them: deduction follows ObjCands only, of
order ``r`` at least, so ``t + 1`` correct servers accepted each from a client. Splits
nest at most :data:`MAX_SPLIT_DEPTH` deep. A group whose repair finds nothing left to
split off but a candidate being repaired further up ends (``_Cycle``), and the repair that
split it off goes on. Repairs name at most :data:`HEADROOM` objects less than a request
may (unless their operation names more, or is a batch, ``_Wide.start``), so that the
candidate a copy makes can be repaired later with what shows what it passed by; the full
width only when nothing can be split off. A pass with nothing to split off even then backs
off and reads every server again, at most ``MAX_STALLS`` times in a row, or, under a
patience that waits while a quorum is live (a mount's), until that patience runs out: slow
is not unavailable. ``tests/t2_qu_wide_hunt.py`` hunts for histories that break these
rules."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from bftfs.outcome import refused_for_space
from bftfs.qu import core
from bftfs.qu.attempt import MAX_SHORT_ROUNDS, Attempt, QUUnavailable
from bftfs.qu.classify import OpType, QUThresholds, View, left_behind
from bftfs.qu.linkproofs import LinkProofs
from bftfs.qu.ohscache import HistoryCache
from bftfs.qu.presenting import Presenter
from bftfs.qu.reply import Reply
from bftfs.qu.request import Operation, Request
from bftfs.qu.rounds import QuorumRounds
from bftfs.qu.timestamp import Candidate, Timestamp

log = logging.getLogger(__name__)

#: Candidates one repair splits off inside one another at most (:meth:`Repairer._split`):
#: each is newer than the one it was split from, so this is never reached while other
#: clients' updates do not pile up faster than they are repaired; past it the repair
#: backs off and reads again instead of going deeper.
MAX_SPLIT_DEPTH = 16

#: Objects a repair leaves unnamed below the cluster's width (``QUThresholds.objects``),
#: unless its operation names them: room for what a later repair of the candidate its
#: copy makes must add (as write-back's batches leave two, ``fs.createmany``).
HEADROOM = 2

#: How many requests' worth of objects a too wide deduction may grow to while
#: :meth:`Repairer._narrow` closes it (each object tried costs a view of them all).
WIDEST = 2


@dataclass
class _Wide:
    """What one :meth:`Repairer.repair` keeps of its too wide passes."""

    #: Objects its requests name at most: ``HEADROOM`` below the cluster's width, unless
    #: its operation names more, until only the full width does.
    width: int
    objects: tuple[int, ...]
    #: The context it was given (never left out).
    given: set[int]
    widened: bool = False
    #: The last narrowed set of objects (a pass never repeats one).
    narrowed: tuple[int, ...] = ()

    @classmethod
    def start(
        cls, full: int, objects: tuple[int, ...], given: set[int], op: Operation | None
    ) -> _Wide:
        """The state of a repair of ``objects`` with ``given`` context (for ``op``, or
        None), in a cluster whose requests name at most ``full`` objects.  A copy names
        what its repair named, and the candidate it makes may need repairing later with
        an object or two more to show what it passed by: made at the full width, it
        could not be.  An operation of one object less than the full width or more
        (write-back's batches, ``fs/writeback/schedule.py`` ``batch_size``) keeps it: such
        a batch is sized to be repaired together with another client's two-object
        update, in one request."""
        named = len(set(objects) | given)
        batch = op is not None and named >= full - 1
        width = full if batch else max(full - HEADROOM, min(named, full))
        return cls(width, objects, given)


class _Cycle(Exception):
    """A split repair found nothing to split off but candidates repaired further up
    (:meth:`Repairer._split`): it ends, and the repair that split it off goes on."""


class Repairer:
    """A client's repair (see the module docstring).

    Args:
        th: the cluster's thresholds.
        client_id: the client's principal id (a barrier or copy is its request).
        cache: the client's cached object history sets.
        rounds: the client's calls to the servers.
        links: the links the client has proven.
    """

    def __init__(
        self,
        th: QUThresholds,
        client_id: int,
        cache: HistoryCache,
        rounds: QuorumRounds,
        links: LinkProofs,
    ) -> None:
        self.th = th
        self.client_id = client_id
        self._cache = cache
        self._rounds = rounds
        self._links = links
        #: The object history sets it presents and the reads that fill them in (the
        #: client's operation loop presents through it too).
        self.reading = Presenter(th, cache, rounds, links)
        #: What repair did, in ``QUClient.statistics``.
        self.counts = dict.fromkeys(
            (
                "barriers",
                "copies",
                "backoffs",
                "backoff_ms",
                "inline_repairs",
                "split_repairs",
                "narrowed_repairs",
                "behind_repairs",
            ),
            0,
        )

    async def _back_off(self, st: Attempt) -> None:
        """``st``'s next backoff, its wait counted (``backoff_ms``: what contention cost
        this client in waiting, beside the rounds it cost)."""
        self.counts["backoff_ms"] += round(1000 * await st.back_off())

    # Repair (lines 500-506) ----------------------------------------------------------------

    async def repair_or_split(
        self,
        objects: tuple[int, ...],
        context: set[int],
        fresh: dict[int, set[int]],
        op: Operation,
        st: Attempt,
    ) -> set[int]:
        """:meth:`repair` ``objects`` for the operation loop (``client.py``); the context
        to ask again with.  A deduction too wide for one request is split inside
        :meth:`repair` (see the module docstring), which then answers with the objects'
        own context."""
        await self.repair(objects, context, fresh, op, st)
        return context

    async def repair(
        self,
        objects: tuple[int, ...],
        context: set[int],
        fresh: dict[int, set[int]],
        op: Operation | None,
        st: Attempt,
        repairing: frozenset[tuple] = frozenset(),
    ) -> None:
        """``c_repair`` (lines 500-506): repair until classification allows the operation
        on ``objects`` (or, for a query of objects that moved on, until it is worth asking
        again).  Adds the objects deduction needs to ``context``.

        When ``objects`` and that context are more than one request may name, even with
        every server's histories read, the newest candidate deduction pulls in is repaired
        on its own first (:meth:`_split`), and deduction starts again from ``objects``;
        ``repairing``: the keys of the candidates being repaired so further up.

        Raises:
            TooManyObjects: the deduction stayed too wide and nothing could be split off
                (:meth:`Attempt.check_stalled`).
            QUUnavailable: repeatedly fewer than q replies.
        """
        query = op is not None and op.query
        wide = _Wide.start(self.th.objects, objects, set(context), op)
        while True:
            allobjs = tuple(sorted(set(objects) | context))
            if len(allobjs) > wide.width:
                await self._too_wide(wide, allobjs, context, fresh, st, repairing)
                continue
            await self.reading.fetch_missing(allobjs, fresh)
            view = (await self.reading.present_filled(allobjs, fresh))[1]
            nxt = core.next_step(view)
            if nxt.step is core.Step.NEED:
                context |= set(nxt.objects)
                continue
            st.stalls = 0
            if nxt.step is core.Step.LINKS:
                if not st.widened_for_links:
                    # A candidate that looks incomplete to this quorum is often complete
                    # at q of all n (one server here missed it, or pruned past it): read
                    # every server's histories before walking a pruned chain, one proven
                    # link per version since (the journal pattern with one name: an
                    # established unlink at order q - 1 of the file's quorum, the
                    # directory 300 versions on, every node refusing the walk; issue 60
                    # item 9).  Once per operation: the walk still decides the rest.
                    st.widened_for_links = True
                    await self.reading.widen(allobjs, fresh)
                    continue
                await self._prove_or_back_off(allobjs, nxt.links, st)
                continue
            if nxt.step is core.Step.METHOD:
                return
            target = nxt.target if nxt.step is core.Step.INLINE else None
            if target is not None and await self._inline_once(target, view, fresh, st):
                continue
            if query and not context:
                latest = self._cache.latest(objects)
                if latest > st.seen_latest:  # moved on since the query: ask again
                    st.seen_latest = latest
                    return
            if await self._repair_behind(view, fresh, st, repairing):
                continue
            # Objects that only abandon an excluded candidate go alone first, the rest as
            # context (``core.abandon_alone``): a busy object cannot keep them stale.
            await self._barrier_or_copy(nxt.alone or allobjs, view, nxt.type, fresh, st)

    async def _repair_behind(
        self,
        view: View,
        fresh: dict[int, set[int]],
        st: Attempt,
        repairing: frozenset[tuple],
    ) -> bool:
        """Repair on its own each object outside ``view`` of a candidate a repair of
        ``view`` passes by (:func:`~bftfs.qu.classify.left_behind`), once per operation,
        before that repair moves its own objects on; whether there was any.

        While the view's listed links still decide the skip, a single-object copy there
        passes the candidate by, and its own listed chain decides it from then on
        (:meth:`View.settled`).  Left listed there, the next user of that object walks
        the view's chain, pruned meanwhile behind every complete version:
        1 555 proven links in one directory under two PostMarks, more than a request may
        carry, and every node refused it.  One object at a time: a copy over several
        would be a multi-object candidate again, whose next reader may have to deduce it
        from the others' chains.  Best effort: an object that cannot be repaired now is
        left to its next user, and this repair goes on."""
        behind = left_behind(view) - st.covered_behind
        st.covered_behind |= behind | set(view.objects)
        for oid in sorted(behind):
            self.counts["behind_repairs"] += 1
            try:
                await self.repair((oid,), set(), fresh, None, st, repairing)
            except (QUUnavailable, _Cycle) as e:
                log.info("object %d, passed by in a repair, not repaired now: %r", oid, e)
        return bool(behind)

    async def _too_wide(
        self,
        wide: _Wide,
        allobjs: tuple[int, ...],
        context: set[int],
        fresh: dict[int, set[int]],
        st: Attempt,
        repairing: frozenset[tuple],
    ) -> None:
        """A step of :meth:`repair` whose deduction names ``allobjs``, more than
        ``wide.width``: sets ``context`` for the next pass."""
        if not wide.widened:
            # Deduction wants more objects than a request may name, because their latest
            # updates look incomplete at the quorum asked: typically one server of it is
            # behind (a newcomer catching up, issue 60 items 15-16) and shows each update
            # it lacks at order q - 1.  Complete at q of all n, they need no deduction:
            # read every server's histories of them and classify again.
            wide.widened = True
            await self.reading.widen(allobjs, fresh)
            context.intersection_update(wide.given)
            return
        # Incomplete at every server that answers (a server that has them is down, or the
        # writer stopped): the objects deduction needs, if fewer (``core.narrowest``; once
        # per set, a pass never repeats unchanged), else repair them a group at a time,
        # else with the room kept for later (``HEADROOM``), else wait.
        got = await self._narrow(wide.objects, wide.given, allobjs, fresh)
        if got is None or len(got) > wide.width or got == wide.narrowed:
            context.intersection_update(wide.given)
            if await self._split(allobjs, fresh, st, repairing):
                return
            if got is None or len(got) > self.th.objects or got == wide.narrowed:
                await self._stalled(allobjs, fresh, st, repairing)
                return
            wide.width = self.th.objects
        wide.narrowed = got
        self.counts["narrowed_repairs"] += 1
        context.clear()
        context.update(set(got) - set(wide.objects))

    async def _narrow(
        self,
        objects: tuple[int, ...],
        given: set[int],
        allobjs: tuple[int, ...],
        fresh: dict[int, set[int]],
    ) -> tuple[int, ...] | None:
        """The objects a repair of ``objects`` (with ``given`` context) needs, out of the
        too wide ``allobjs``: its deduction closed (every server's histories of what it
        adds read, as :meth:`Presenter.widen` does), then narrowed
        (:func:`core.narrowest`); None when the closure grows past :data:`WIDEST`
        requests' worth.  The caller weighs the answer against its width."""
        wide = set(allobjs)
        while need := core.missing_objects(self.reading.present_view(sorted(wide), fresh)[1]):
            if len(wide | need) > WIDEST * self.th.objects:
                return None
            await self.reading.widen(tuple(sorted(need)), fresh)
            wide |= need
        return core.narrowest(
            set(objects) | given, wide, lambda objs: self.reading.present_view(objs, fresh)[1]
        )

    async def _split(
        self,
        allobjs: tuple[int, ...],
        fresh: dict[int, set[int]],
        st: Attempt,
        repairing: frozenset[tuple],
    ) -> bool:
        """One step of a repair whose deduction names ``allobjs``, more than a request
        may: repair the newest candidate it pulls in on its own
        (:func:`core.split_target`), whose objects are at most
        ``th.objects`` - splitting again, at a newer candidate
        each time, if its objects' histories show one.  A repair is per object and the
        servers check every request's deduction (``missing_objects``), so a barrier and
        copy of that candidate's objects alone classify as any other request does.

        A candidate is split off once per operation (``Attempt.split_off``): its repair
        left it complete, or abandoned at every object, so it cannot be an incomplete
        ObjCand again - unless histories read earlier in the operation say otherwise.
        Whether there was one to split off (not every candidate pulled in was, or is
        being repaired further up).
        """
        view = self.reading.present_view(allobjs, fresh)[1]
        cand = core.split_target(view, repairing | st.split_off)
        if cand is None or len(repairing) >= MAX_SPLIT_DEPTH:
            return False
        self.counts["split_repairs"] += 1
        st.split_off.add(cand.key)
        try:
            await self.repair(cand.objects, set(), fresh, None, st, repairing | {cand.key})
        except _Cycle:
            log.debug("candidate %r: its repair needs one being repaired further up", cand)
        return True

    async def _stalled(
        self,
        allobjs: tuple[int, ...],
        fresh: dict[int, set[int]],
        st: Attempt,
        repairing: frozenset[tuple],
    ) -> None:
        """A pass of a too wide repair that found nothing to split off: back off and read
        every server's histories again, as many times as :meth:`Attempt.check_stalled`
        allows; a pass never repeats without a backoff.

        Raises:
            _Cycle: what is left to split off is being repaired further up (waiting
                here would never end; the repair that split this one goes on).
        """
        view = self.reading.present_view(allobjs, fresh)[1]
        if repairing and core.split_target(view, st.split_off) is not None:
            raise _Cycle
        st.check_stalled(allobjs)
        st.split_off.clear()  # read again: what they show now may need repairing
        await self._back_off(st)
        await self.reading.widen(allobjs, fresh)

    async def _prove_or_back_off(
        self, objects: tuple[int, ...], wanted: Iterable[tuple[int, Timestamp]], st: Attempt
    ) -> None:
        """Prove the links deduction wants; a pass that proves none counts as a short round.

        Raises:
            QUUnavailable: :data:`MAX_SHORT_ROUNDS` passes in a row proved nothing.
        """
        wanted = list(wanted)
        if await self._links.prove(wanted):
            return
        st.short += 1
        if st.short >= MAX_SHORT_ROUNDS:
            named = ", ".join(f"{oid} at {lt!r}" for oid, lt in wanted[:3])
            raise QUUnavailable(
                f"objects {objects}: no server proves a link ({len(wanted)} wanted: {named})"
            )
        await self._back_off(st)

    async def _barrier_or_copy(
        self,
        objects: tuple[int, ...],
        view: View,
        typ: OpType | None,
        fresh: dict[int, set[int]],
        st: Attempt,
    ) -> None:
        """Back off, then send a repair request (no operation, line 504): a barrier, or a
        copy of the latest candidate, as ``view`` classifies.

        Raises:
            QUUnavailable: :data:`MAX_SHORT_ROUNDS` short rounds in a row.
        """
        self.counts["backoffs"] += 1
        st.progressed(core.progress_mark(view))
        await self._back_off(st)
        typ = typ or OpType.BARRIER
        self.counts["barriers" if typ is OpType.BARRIER else "copies"] += 1
        links = self._links.links_for(view)
        mohs = {oid: dict(ohs) for oid, ohs in view.mohs.items()}
        req = Request(self.client_id, objects, mohs, None, None, links)
        replies = await self._rounds.request(
            objects, req, self._cache.targets(objects), self._cache.left_out()
        )
        self._check_space(objects, replies)
        if len(replies) < self.th.q:
            self._rounds.check_malformed(objects)
        self._cache.absorb(objects, replies, fresh)
        # Rounds in a row: a barrier or copy that q servers answered (whatever they said:
        # contention is not absence) ends a run of short ones.
        st.answered(replies)
        await st.check_short(objects)

    async def _inline_once(
        self, target: Candidate, view: View, fresh: dict[int, set[int]], st: Attempt
    ) -> bool:
        """:meth:`_inline` ``target``, unless this operation tried it already with as many
        servers listing it; whether it was sent."""
        key = (target.key, _digest(view, target))
        if key in st.inline_tried:
            return False
        st.inline_tried.add(key)
        return await self._inline(target, view, fresh)

    async def _inline(self, target: Candidate, view: View, fresh: dict[int, set[int]]) -> bool:
        """Inline repair (L2561-2570): fetch the request that made ``target`` from a server
        that lists it, check it sets up exactly ``target``'s timestamp, and re-send it on
        its original client's behalf with our OHS as evidence.  Whether it was sent."""
        hosts = sorted(
            s
            for oid in target.objects
            for s, e in view.mohs.get(oid, {}).items()
            if any(c.key == target.key for c in e.rh)
        )
        original = await self._rounds.original(hosts, target)
        if original is None:
            return False
        links = original.links
        if links:  # stored without proofs: the servers need them again
            await self._links.prove({(lk.oid, lk.lt) for lk in links})
            proven = self._links.with_proofs(links)
            if proven is None:
                return False
            links = proven
        self.counts["inline_repairs"] += 1
        evidence = {oid: dict(view.mohs.get(oid, {})) for oid in target.objects}
        req = Request(
            original.client, original.objects, original.mohs, original.op, evidence, links
        )
        targets = self._cache.targets(original.objects)
        replies = await self._rounds.request(original.objects, req, targets, self._cache.left_out())
        self._check_space(original.objects, replies)
        self._cache.absorb(original.objects, replies, fresh)
        return True

    def _check_space(self, objects: tuple[int, ...], replies: dict[int, Reply]) -> None:
        """A repair that more than ``b`` nodes refused for space (one correct node at
        least) cannot be made until space is given back: the operation ends with ENOSPC
        (or EDQUOT) now, as its own round would, instead of repairing again and again
        until its time is up and answering EIO (``t4_full_disk``).

        Raises:
            bftfs.outcome.StorageFull: (or QuotaExceeded) servers out of space.
        """
        if len(replies) >= self.th.q:
            return
        space = refused_for_space(self._rounds.space, self.th.b)
        if space is not None:
            raise type(space)(f"objects {objects}: a repair was refused: {space}")


def _digest(view: View, target: Candidate) -> int:
    """How many servers list ``target`` now: a retry is worth it only if that changed."""
    return max(view.order(o, target) for o in target.objects if o in view.mohs)
