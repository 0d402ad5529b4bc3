"""The Q/U client driver (seed Figure 4.3 lines 300-604 and 4.3.5): only I/O.

It keeps the cached object history set of every object it touched (L2521-2524,
``ohscache.py``), sends each operation to the object's *preferred quorum* - ``q``
consecutive servers starting at ``object id mod n`` (L2546-2549); a multi-object operation
uses the preferred quorum of its highest object id (L2839-2841) - and probes the remaining
servers, in the same rotation, when one is slow, dead or rejects (``rounds.py``, over
``Endpoint.quorum_call``).  Every decision comes from :mod:`bftfs.qu.core`; this module
runs the operation loop and repair, sleeps for backoff and counts what happened.

Concurrency: one client runs one operation at a time per object (operations on disjoint
objects run concurrently); it takes per-object locks in object-id order, so two
multi-object operations of one client cannot deadlock.  The applied table of the servers
relies on this (``replica.py``).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from bftfs.net.errors import TransportError
from bftfs.net.quorum import QuorumUnavailable
from bftfs.outcome import refused_for_space
from bftfs.qu import core
from bftfs.qu.attempt import (
    MAX_SHORT_ROUNDS,
    MAX_SPLITS,
    Attempt,
    QUUnavailable,
    TooManyObjects,
)
from bftfs.qu.classify import OpType, QUThresholds, View
from bftfs.qu.history import OHSEntry
from bftfs.qu.linkproofs import LinkProofs
from bftfs.qu.objects import MethodRefused
from bftfs.qu.ohscache import HistoryCache
from bftfs.qu.request import Operation, Request
from bftfs.qu.rounds import QuorumRounds
from bftfs.qu.timestamp import MAX_OBJECTS, Candidate, Timestamp


@dataclass(frozen=True)
class ClientStatistics:
    """What a client did (seed L2596-2597 says a single writer needs no barrier, copy or
    backoff: these counters are how tests check that)."""

    operations: int
    rounds: int
    barriers: int
    copies: int
    backoffs: int
    inline_repairs: int
    history_fetches: int
    refused: int
    #: Repairs done object by object because together they needed too many objects.
    split_repairs: int
    #: Conditioned-on links proven from stored requests (deduction behind pruning).
    link_proofs: int
    excluded_servers: tuple[int, ...]


class QUClient:
    """A Q/U client over an endpoint (``cluster.client(k)`` or the FUSE daemon's)."""

    def __init__(
        self,
        endpoint: Any,
        th: QUThresholds,
        *,
        client_id: int,
        rng: random.Random | None = None,
        seq_start: int | None = None,
        probe_after: float = 0.05,
        timeout: float | None = None,
        sleep: Callable[[float], Any] = trio.sleep,
        batch: bool = True,
    ) -> None:
        """Args:
        endpoint: has ``quorum_call`` and ``call`` (``bftfs.net.endpoint.Endpoint``).
        th: thresholds of the cluster (``QUThresholds.from_config``).
        client_id: this client's principal id (the id the endpoint authenticates as).
        rng: randomness for backoff (seeded in tests).
        seq_start: first operation sequence number; by default the wall clock in ns, so
            a restarted client never reuses a number the servers' applied tables hold.
        probe_after: seconds before probing beyond the preferred quorum.
        timeout: per round (default: the endpoint's).
        sleep: how to wait for backoff (tests may count instead).
        batch: let concurrent rounds to one node share a frame (``qu.batch``): requests
            queued for a node in one scheduler pass go together, a lone one as itself
            (``Endpoint.quorum_call``'s ``batch``; the quorum decisions are the same).
        """
        self.ep = endpoint
        self.th = th
        self.client_id = client_id
        self.rng = rng or random.Random()
        self._seq = seq_start if seq_start is not None else time.time_ns()
        self._sleep = sleep
        self._locks: dict[int, trio.Lock] = {}
        #: Faults detected per server: ``(server, kind)`` -> count, kind one of ``culled``
        #: (another server reported its history's authenticator bad), ``malevolent``
        #: (more than b servers did: proven, left out from then on) and ``malformed``
        #: (a reply that does not parse).
        self.faults: Counter[tuple[int, str]] = Counter()
        self._cache = HistoryCache(th, self.faults)
        self._rounds = QuorumRounds(
            endpoint, th, self.faults, probe_after=probe_after, timeout=timeout, batch=batch
        )
        self._links = LinkProofs(self._rounds)
        self._n = dict.fromkeys(
            (
                "operations",
                "barriers",
                "copies",
                "backoffs",
                "inline_repairs",
                "refused",
                "split_repairs",
            ),
            0,
        )

    def statistics(self) -> ClientStatistics:
        """Counters since creation."""
        return ClientStatistics(
            rounds=self._rounds.rounds,
            history_fetches=self._rounds.history_fetches,
            link_proofs=self._links.proven,
            excluded_servers=tuple(sorted(self._cache.excluded)),
            **self._n,
        )

    # Public API --------------------------------------------------------------------------

    async def query(self, objects: int | Iterable[int], method: str, arg: Any = None) -> Any:
        """Run query ``method`` on ``objects``; its answer.

        Raises:
            MethodRefused: the method refused (b+1 servers agree on the latest version).
            QUUnavailable: not enough servers answer.
        """
        return (await self._invoke(_objs(objects), method, arg, True)).answer

    async def query_at(self, oid: int, method: str, arg: Any = None) -> tuple[Any, Timestamp]:
        """Run query ``method`` on one object; its answer and the established version it
        was answered at (where a history walk starts, :mod:`bftfs.qu.pastread`)."""
        out = await self._invoke((oid,), method, arg, True)
        assert out.at is not None and len(out.at) == 1
        return out.answer, out.at[0]

    async def query_many_at(
        self, objects: Iterable[int], method: str, arg: Any = None
    ) -> tuple[Any, dict[int, Timestamp]]:
        """Run query ``method`` on up to 8 objects in one operation; its answer and the
        established version of each object it was answered at (a history walk's start for
        each: one quorum round for eight objects instead of eight, :meth:`query_at`).  An
        object whose version the outcome does not name (a context object took its place)
        is left out."""
        objs = _objs(objects)
        out = await self._invoke(objs, method, arg, True)
        at = out.at or ()
        return out.answer, dict(zip(objs, at, strict=True)) if len(at) == len(objs) else {}

    async def update(self, objects: int | Iterable[int], method: str, arg: Any = None) -> Any:
        """Run update ``method`` on ``objects`` (1 to 8; atomically); its answer."""
        return (await self._invoke(_objs(objects), method, arg, False)).answer

    async def settle(self, objects: int | Iterable[int]) -> None:
        """Repair ``objects`` until classification would let an operation run on them: a
        candidate a quorum's histories show as possibly complete is completed (inline, or
        copied forward), any other is left behind a barrier.  What they hold then is
        final: no later round of any client completes a candidate settled away.

        For an update of this client's that failed with some servers having taken it
        (refused for space by more than ``b``): the file system must know now whether it
        happened, not have another client's round make it happen later (issue 31).

        Raises:
            QUUnavailable: not enough servers answer.
        """
        objs = _objs(objects)
        try:
            async with self._locked(objs):
                self._cache.suspects = set()
                st = Attempt(self.th, self.rng, self._sleep, self._cache.latest(objs))
                await self._repair(objs, set(), {}, None, st)
        except (QuorumUnavailable, TransportError) as e:
            raise QUUnavailable(f"objects {objs}: {type(e).__name__}: {e}") from e

    def cached(self, oid: int) -> dict[int, OHSEntry]:
        """The cached OHS of ``oid`` (a copy)."""
        return self._cache.cached(oid)

    # The operation loop (lines 300-306, 400-406) -----------------------------------------

    @asynccontextmanager
    async def _locked(self, objects: tuple[int, ...]) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for oid in objects:  # sorted: no deadlock between our own operations
                await stack.enter_async_context(self._locks.setdefault(oid, trio.Lock()))
            yield

    async def _invoke(
        self, objects: tuple[int, ...], method: str, arg: Any, query: bool
    ) -> core.Outcome:
        self._n["operations"] += 1
        if query:
            op = Operation(method, True, arg, 0)
        else:
            self._seq += 1
            op = Operation(method, False, arg, self._seq)
        try:
            if len(objects) == 1:  # the common case, without an exit stack
                lock = self._locks.get(objects[0])
                if lock is None:
                    lock = self._locks[objects[0]] = trio.Lock()
                async with lock:
                    return await self._run(objects, op)
            async with self._locked(objects):
                return await self._run(objects, op)
        except (QuorumUnavailable, TransportError) as e:  # callers see one family only
            raise QUUnavailable(f"objects {objects}: {type(e).__name__}: {e}") from e

    async def _run(self, objects: tuple[int, ...], op: Operation) -> core.Outcome:
        th = self.th
        self._cache.suspects = set()
        context: set[int] = set()
        fresh: dict[int, set[int]] = {}
        st = Attempt(self.th, self.rng, self._sleep, self._cache.latest(objects))
        while True:
            shown, view = await self._present_filled(objects + tuple(sorted(context)), fresh)
            req = Request(self.client_id, objects, shown, op, None, self._links.links_for(view))
            replies = await self._rounds.request(objects, req, self._cache.targets(objects))
            if len(replies) < th.q:
                self._check_refusals(objects)
            self._cache.absorb(objects, replies, fresh)
            st.answered(replies)
            # Judge the round on the OHS we present (decision 6), the one ``next_step``
            # below decides on and the servers classified, not on the raw cache.  The cache
            # keeps the last history of every server, also of one proven malevolent or
            # stray that is asked last and so never refreshed: a forged candidate there
            # (or a crashed server's stray) made ``outcome`` classify "not METHOD" and
            # disbelieve b+1 agreeing refusals, while ``next_step`` on the presented OHS said
            # METHOD and re-sent at once, without backoff: a livelock (issue 5).
            view = self._present_view(objects + tuple(sorted(context)), fresh)[1]
            out = core.outcome(replies, view, th, op.query, objects)
            if out.result is core.Result.DONE:
                return out
            if out.result is core.Result.REFUSED:
                self._n["refused"] += 1
                raise MethodRefused(out.why)
            await st.after_unsyncable(objects, replies)
            st.check_short(objects)
            # Servers answering ``need`` are not believed: the client derives the objects
            # deduction needs from the histories it holds (next_step), so a Byzantine server
            # cannot make it drag arbitrary objects into its requests.
            latest = self._cache.latest(objects)
            if op.query and not context and latest > st.seen_latest:
                # Updates are progressing: a query never repairs what is still moving, it
                # asks again (L2588-2597: a single writer's readers need no barriers).
                st.seen_latest = latest
                continue
            st.seen_latest = latest
            context = await self._repair_or_split(objects, context, fresh, op, st)

    def _check_refusals(self, objects: tuple[int, ...]) -> None:
        """After a short round: more than b refusals for space (one correct server's at
        least) end the operation with ENOSPC, or EDQUOT for quota ones, and more than b
        refusals of this client's clock with ``ahead`` (or, for a lease time, ``behind``); b
        or fewer are probed past like any failure.

        Raises:
            bftfs.outcome.StorageFull: (or QuotaExceeded) servers out of space.
            MethodRefused: ``ahead``, this client's clock.
        """
        space = refused_for_space(self._rounds.space, self.th.b)
        if space is not None:
            raise type(space)(f"objects {objects}: {space}")
        for way in ("ahead", "behind"):  # a lease time is checked both ways (leases.py)
            nodes = sorted(n for n, code in self._rounds.space.items() if code == way)
            if len(nodes) > self.th.b:  # one correct node at least: this client's clock
                raise MethodRefused(
                    way, f"nodes {nodes}: this client's clock is too far {way} of theirs"
                )

    # What the client presents --------------------------------------------------------------

    def _present_view(self, objects: Iterable[int], fresh: dict[int, set[int]]) -> tuple:
        """:meth:`HistoryCache.present_view` with the links this client proved."""
        return self._cache.present_view(objects, fresh, self._links.facts)

    async def _present_filled(self, objects: tuple[int, ...], fresh: dict[int, set[int]]) -> tuple:
        """:meth:`_present_view`, after asking the servers not heard from yet when stray
        histories cannot be left out for want of ``q`` fresh others
        (:func:`core.present_view`); the OHS and its View."""
        shown, view, short = self._present_view(objects, fresh)
        if short:
            todo = tuple(sorted(short))
            targets = sorted(set().union(*short.values()))
            # Up to t of them may be down, and a dead server's call only fails at its
            # timeout: once all but t answered, the rest get two probe intervals (as in
            # ``QuorumRounds.request``).  Waiting for all of them cost every operation the
            # full timeout while a server whose stray history this client cached was down
            # (found by the campaign, bftfs/testing/campaign.py).  With ``t`` or fewer to
            # ask (a stray beside one crashed server), they all get just the two intervals.
            settle = max(0, len(targets) - self.th.t)
            got = await self._rounds.histories(todo, targets, len(targets), None, settle=settle)
            self._cache.absorb(todo, got, fresh)
            shown, view, _ = self._present_view(objects, fresh)
        return shown, view

    async def _fetch_missing(self, objects: tuple[int, ...], fresh: dict[int, set[int]]) -> None:
        """Histories of objects added for deduction, read from a quorum (``qu.history``)."""
        todo = tuple(o for o in objects if len(fresh.get(o, ())) < self.th.q)
        if todo:
            targets = self._cache.targets(todo)
            got = await self._rounds.histories(todo, targets, self.th.q, self.th.q)
            self._cache.absorb(todo, got, fresh)

    # Repair (lines 500-506) ----------------------------------------------------------------

    async def _repair_or_split(
        self,
        objects: tuple[int, ...],
        context: set[int],
        fresh: dict[int, set[int]],
        op: Operation,
        st: Attempt,
    ) -> set[int]:
        """:meth:`_repair` ``objects``; the context to ask again with."""
        try:
            await self._repair(objects, context, fresh, op, st)
        except TooManyObjects:
            # The objects' candidates span more than one request may name (a batched
            # query of 8 files created in one directory, each create also naming the
            # directory: 9).  Repair each object on its own (its candidates span at most
            # 8 objects), then ask again; at most MAX_SPLITS times, so this cannot loop.
            if st.splits >= MAX_SPLITS:
                raise
            st.splits += 1
            self._n["split_repairs"] += 1
            if len(objects) == 1:
                # One object whose last updates each named many objects (a directory's
                # batched creates, 7 each) and look incomplete to the servers that
                # answered: one that missed them stood in for a slow one, so deducing
                # them would name two batches (13).  Ask again after a back-off: the
                # others' answers show them complete (found under load by
                # t4_node_failures, a lookup EIO right after a directory's write-back).
                await st.back_off()
                return set()
            for oid in objects:
                await self._repair((oid,), set(), fresh, None, st)
            return set()
        return context

    async def _repair(
        self,
        objects: tuple[int, ...],
        context: set[int],
        fresh: dict[int, set[int]],
        op: Operation | None,
        st: Attempt,
    ) -> None:
        """``c_repair`` (lines 500-506): repair until classification allows the operation
        on ``objects`` (or, for a query of objects that moved on, until it is worth asking
        again).  Adds the objects deduction needs to ``context``.

        Raises:
            TooManyObjects: ``objects`` and the context deduction needs are more than one
                request may name.
            QUUnavailable: repeatedly fewer than q replies.
        """
        query = op is not None and op.query
        while True:
            allobjs = tuple(sorted(set(objects) | context))
            if len(allobjs) > MAX_OBJECTS:
                raise TooManyObjects(f"objects {allobjs}: more than {MAX_OBJECTS} to repair")
            await self._fetch_missing(allobjs, fresh)
            view = (await self._present_filled(allobjs, fresh))[1]
            nxt = core.next_step(view)
            if nxt.step is core.Step.NEED:
                context |= set(nxt.objects)
                continue
            if nxt.step is core.Step.LINKS:
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
            await self._barrier_or_copy(allobjs, view, nxt.type, fresh, st)

    async def _prove_or_back_off(
        self, objects: tuple[int, ...], wanted: Iterable[tuple[int, Timestamp]], st: Attempt
    ) -> None:
        """Prove the links deduction wants; a pass that proves none counts as a short round.

        Raises:
            QUUnavailable: :data:`MAX_SHORT_ROUNDS` passes in a row proved nothing.
        """
        if await self._links.prove(wanted):
            return
        st.short += 1
        if st.short >= MAX_SHORT_ROUNDS:
            raise QUUnavailable(f"objects {objects}: no server proves a link")
        await st.back_off()

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
        self._n["backoffs"] += 1
        await st.back_off()
        typ = typ or OpType.BARRIER
        self._n["barriers" if typ is OpType.BARRIER else "copies"] += 1
        links = self._links.links_for(view)
        mohs = {oid: dict(ohs) for oid, ohs in view.mohs.items()}
        req = Request(self.client_id, objects, mohs, None, None, links)
        replies = await self._rounds.request(objects, req, self._cache.targets(objects))
        self._cache.absorb(objects, replies, fresh)
        # Rounds in a row: a barrier or copy that q servers answered (whatever they said:
        # contention is not absence) ends a run of short ones.
        st.answered(replies)
        st.check_short(objects)

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
        self._n["inline_repairs"] += 1
        evidence = {oid: dict(view.mohs.get(oid, {})) for oid in target.objects}
        req = Request(
            original.client, original.objects, original.mohs, original.op, evidence, links
        )
        targets = self._cache.targets(original.objects)
        replies = await self._rounds.request(original.objects, req, targets)
        self._cache.absorb(original.objects, replies, fresh)
        return True


def _objs(objects: int | Iterable[int]) -> tuple[int, ...]:
    objs = (objects,) if isinstance(objects, int) else tuple(objects)
    out = tuple(sorted(set(objs)))
    if not out or len(out) != len(objs):
        raise ValueError("objects must be distinct and non-empty")
    return out


def _digest(view: View, target: Candidate) -> int:
    """How many servers list ``target`` now: a retry is worth it only if that changed."""
    return max(view.order(o, target) for o in target.objects if o in view.mohs)
