"""The Q/U client driver (seed Figure 4.3 lines 300-604 and 4.3.5): only I/O.

It keeps the cached object history set of every object it touched (L2521-2524), sends each
operation to the object's *preferred quorum* - ``q`` consecutive servers starting at
``object id mod n`` (L2546-2549); a multi-object operation uses the preferred quorum of its
highest object id (L2839-2841) - and probes the remaining servers, in the same rotation,
when one is slow, dead or rejects (``Endpoint.quorum_call``).  Every decision comes from
:mod:`bftfs.qu.core`; this module sends requests, gathers replies, sleeps for backoff and
counts what happened.

Concurrency: one client runs one operation at a time per object (operations on disjoint
objects run concurrently); it takes per-object locks in object-id order, so two
multi-object operations of one client cannot deadlock.  The applied table of the servers
relies on this (``replica.py``).
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import trio

from bftfs.net.endpoint import BatchKind
from bftfs.net.errors import RemoteError, TransportError, refusal_code
from bftfs.net.quorum import QuorumUnavailable
from bftfs.outcome import ClusterUnavailable, paused, refused_for_space
from bftfs.qu import core
from bftfs.qu.canon import pack
from bftfs.qu.classify import OpType, QUThresholds, View
from bftfs.qu.history import OHSEntry
from bftfs.qu.links import prove
from bftfs.qu.messages import (
    KIND_BATCH,
    KIND_FETCH,
    KIND_HISTORY,
    KIND_REQUEST,
    MAX_BATCH,
    VERSION,
    Link,
    MessageError,
    Operation,
    Reply,
    ReplyStatus,
    Request,
)
from bftfs.qu.objects import MethodRefused
from bftfs.qu.timestamp import MAX_OBJECTS, ZERO, Candidate, Timestamp

log = logging.getLogger(__name__)

#: Rounds in a row with fewer than q replies before an operation gives up.
MAX_SHORT_ROUNDS = 3
#: Rounds in a row, each backed off, in which a quorum answered that it could not object-
#: sync a version the operation needs, before giving up: no server holds it (an object
#: forgotten before nodes kept the ids they forgot, issue 31), so re-sending at once, as
#: for other failures, would go on for ever.
MAX_UNSYNCABLE_ROUNDS = 10
#: The failure servers answer when no ``b + 1`` hosts hand over a version (node/qu_server.py).
UNSYNCABLE = "object sync failed"
#: How the client's rounds share frames (``qu.batch``).
QU_BATCH = BatchKind(KIND_BATCH, MAX_BATCH)
#: Proven links a client keeps before it starts over (each costs a proof of a few KB).
MAX_FACTS = 4096


class QUUnavailable(ClusterUnavailable):
    """Fewer than q servers answered, repeatedly: the object cannot make progress now.

    The file system turns it into its own ``bftfs.fs.errors.Unavailable`` (EIO).
    """


class TooManyObjects(QUUnavailable):
    """Repair would have to name more objects than one request may (8), even object by
    object: the candidates to repair span too many objects."""


@dataclass
class _RepairState:
    """What one operation's repair loop carries from round to round."""

    seen_latest: tuple
    repairs: int = 0
    short: int = 0
    unsyncable: int = 0
    #: Servers that answered any of the current run of short rounds.
    heard: set[int] = field(default_factory=set)
    inline_tried: set[tuple] = field(default_factory=set)


def preferred_order(oid: int, n: int) -> list[int]:
    """All servers, preferred quorum first: ``oid mod n``, then the next ones, wrapping.

    The first q are the preferred quorum; the rest are the probing order, which keeps
    locality when a server fails and spreads the load of different objects (L2551-2553).
    """
    start = oid % n
    return [(start + i) % n for i in range(n)]


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
        self.probe_after = probe_after
        self.timeout = timeout
        self._sleep = sleep
        self._batch = QU_BATCH if batch else None
        self._cache: dict[int, dict[int, OHSEntry]] = {}
        self._locks: dict[int, trio.Lock] = {}
        self._excluded: set[int] = set()
        self._suspects: set[int] = set()  # stray-history servers of the running operation
        #: Servers that refused the latest round for space: ``full`` (out of it) or
        #: ``quota`` (this client is at its quota there), by server.
        self._space: dict[int, str] = {}
        self._n = dict.fromkeys(
            (
                "operations",
                "rounds",
                "barriers",
                "copies",
                "backoffs",
                "inline_repairs",
                "history_fetches",
                "refused",
                "split_repairs",
                "link_proofs",
            ),
            0,
        )
        #: Proven conditioned-on links, ``(oid, lt) -> lt_co``, and the proofs behind them
        #: (facts: true forever, so kept across operations; dropped wholesale when large).
        #: Faults detected per server: ``(server, kind)`` -> count, kind one of ``culled``
        #: (another server reported its history's authenticator bad), ``malevolent``
        #: (more than b servers did: proven, left out from then on) and ``malformed``
        #: (a reply that does not parse).
        self.faults: Counter[tuple[int, str]] = Counter()
        self._facts: dict[tuple[int, Timestamp], Timestamp] = {}
        self._proofs: dict[tuple[int, Timestamp], bytes] = {}

    def statistics(self) -> ClientStatistics:
        """Counters since creation."""
        return ClientStatistics(**self._n, excluded_servers=tuple(sorted(self._excluded)))

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
                self._suspects = set()
                st = _RepairState(seen_latest=self._latest(objs))
                await self._repair(objs, set(), {}, None, st)
        except (QuorumUnavailable, TransportError) as e:
            raise QUUnavailable(f"objects {objs}: {type(e).__name__}: {e}") from e

    def cached(self, oid: int) -> dict[int, OHSEntry]:
        """The cached OHS of ``oid`` (a copy)."""
        return dict(self._cache.get(oid, {}))

    # Driver ------------------------------------------------------------------------------

    @asynccontextmanager
    async def _locked(self, objects: tuple[int, ...]) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for oid in objects:  # sorted: no deadlock between our own operations
                await stack.enter_async_context(self._locks.setdefault(oid, trio.Lock()))
            yield

    def _mohs(self, objects: Iterable[int]) -> dict[int, dict[int, OHSEntry]]:
        return {oid: dict(self._cache.get(oid, {})) for oid in objects}

    def _targets(self, objects: Iterable[int]) -> list[int]:
        """Preferred order, with servers whose histories we leave out (stray or proven
        malevolent) last: a quorum of servers whose histories count is what makes the
        next classification complete."""
        order = preferred_order(max(objects), self.th.n)
        last = self._excluded | self._suspects
        return (
            [s for s in order if s not in last]
            + [s for s in order if s in last and s not in self._excluded]
            + [s for s in order if s in self._excluded]
        )

    def _present_view(self, objects: Iterable[int], fresh: dict[int, set[int]]) -> tuple:
        """:func:`core.present_view` of the cached histories (the OHS, its :class:`View`,
        the objects short of fresh histories); remembers whom it left out."""
        cached = self._mohs(objects)
        shown, view, short = core.present_view(cached, self.th, fresh, self._excluded, self._facts)
        for oid, ohs in cached.items():
            if len(ohs) != len(shown[oid]):
                self._suspects |= set(ohs) - set(shown[oid]) - self._excluded
        return shown, view, short

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
            # ``_round``).  Waiting for all of them cost every operation the full timeout
            # while a server whose stray history this client cached was down (found by
            # the campaign, bftfs/testing/campaign.py).
            settle = max(1, len(targets) - self.th.t)
            await self._read_histories(todo, targets, len(targets), None, fresh, settle=settle)
            shown, view, _ = self._present_view(objects, fresh)
        return shown, view

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
        self._suspects = set()
        context: set[int] = set()
        fresh: dict[int, set[int]] = {}
        st = _RepairState(seen_latest=self._latest(objects))
        splits = 0
        while True:
            mohs, shown = await self._present_filled(objects + tuple(sorted(context)), fresh)
            req = Request(self.client_id, objects, mohs, op, None, self._links_for(shown))
            replies = await self._round(objects, req)
            if len(replies) < th.q:
                # More than b refusals for space (one correct server's at least): ENOSPC,
                # or EDQUOT for quota ones; b or fewer are probed past like any failure.
                space = refused_for_space(self._space, th.b)
                if space is not None:
                    raise type(space)(f"objects {objects}: {space}")
                ahead = sorted(n for n, code in self._space.items() if code == "ahead")
                if len(ahead) > th.b:  # one correct node at least: this client's clock
                    raise MethodRefused(
                        "ahead", f"nodes {ahead}: this client's clock is more than 60 s ahead"
                    )
            self._absorb(objects, replies, fresh)
            st.short = st.short + 1 if len(replies) < th.q else 0
            st.heard = st.heard | set(replies) if st.short else set()
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
            await self._unsyncable(objects, replies, st)
            if st.short >= MAX_SHORT_ROUNDS:
                raise self._too_few(objects, st)
            # Servers answering ``need`` are not believed: the client derives the objects
            # deduction needs from the histories it holds (next_step), so a Byzantine server
            # cannot make it drag arbitrary objects into its requests.
            latest = self._latest(objects)
            if op.query and not context and latest > st.seen_latest:
                # Updates are progressing: a query never repairs what is still moving, it
                # asks again (L2588-2597: a single writer's readers need no barriers).
                st.seen_latest = latest
                continue
            st.seen_latest = latest
            try:
                await self._repair(objects, context, fresh, op, st)
            except TooManyObjects:
                # The objects' candidates span more than one request may name (a batched
                # query of 8 files created in one directory, each create also naming the
                # directory: 9).  Repair each object on its own (its candidates span at most
                # 8 objects), then ask again; once only, so this cannot loop.
                if len(objects) == 1 or splits:
                    raise
                splits += 1
                self._n["split_repairs"] += 1
                for oid in objects:
                    await self._repair((oid,), set(), fresh, None, st)
                context = set()

    async def _unsyncable(
        self, objects: tuple[int, ...], replies: Mapping[int, Reply], st: _RepairState
    ) -> None:
        """Back off after a round in which ``q`` servers could not object-sync a version the
        operation needs; give up after :data:`MAX_UNSYNCABLE_ROUNDS` such rounds in a row.

        Raises:
            QUUnavailable: no server holds that version.
        """
        failed = sum(r.status is ReplyStatus.FAIL and r.why == UNSYNCABLE for r in replies.values())
        if failed < self.th.q:
            st.unsyncable = 0
            return
        st.unsyncable += 1
        if st.unsyncable >= MAX_UNSYNCABLE_ROUNDS:
            raise QUUnavailable(
                f"objects {objects}: no server holds a version this operation needs "
                f"({st.unsyncable} rounds of '{UNSYNCABLE}')"
            )
        await self._sleep(core.backoff_delay(st.unsyncable, self.rng))

    async def _repair(
        self,
        objects: tuple[int, ...],
        context: set[int],
        fresh: dict[int, set[int]],
        op: Operation | None,
        st: _RepairState,
    ) -> None:
        """``c_repair`` (lines 500-506): repair until classification allows the operation
        on ``objects`` (or, for a query of objects that moved on, until it is worth asking
        again).  Adds the objects deduction needs to ``context``.

        Raises:
            TooManyObjects: ``objects`` and the context deduction needs are more than one
                request may name.
            QUUnavailable: repeatedly fewer than q replies.
        """
        th = self.th
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
                if not await self._prove(nxt.links):
                    st.short += 1
                    if st.short >= MAX_SHORT_ROUNDS:
                        raise QUUnavailable(f"objects {allobjs}: no server proves a link")
                    await self._back_off(st)
                continue
            if nxt.step is core.Step.METHOD:
                return
            if nxt.step is core.Step.INLINE and nxt.target is not None:
                key = (nxt.target.key, _digest(view, nxt.target))
                if key not in st.inline_tried:
                    st.inline_tried.add(key)
                    if await self._inline(nxt.target, view, fresh):
                        continue
            if query and not context:
                latest = self._latest(objects)
                if latest > st.seen_latest:  # moved on since the query: ask again
                    st.seen_latest = latest
                    return
            self._n["backoffs"] += 1
            await self._back_off(st)
            typ = nxt.type or OpType.BARRIER
            self._n["barriers" if typ is OpType.BARRIER else "copies"] += 1
            links = self._links_for(view)
            rreq = Request(self.client_id, allobjs, dict(view.mohs), None, None, links)
            rreplies = await self._round(allobjs, rreq)
            self._absorb(allobjs, rreplies, fresh)
            # Rounds in a row: a barrier or copy that q servers answered (whatever they
            # said: contention is not absence) ends a run of short ones.
            st.short = st.short + 1 if len(rreplies) < th.q else 0
            st.heard = st.heard | set(rreplies) if st.short else set()
            if st.short >= MAX_SHORT_ROUNDS:
                raise self._too_few(allobjs, st)

    def _too_few(self, objects: tuple[int, ...], st: _RepairState) -> QUUnavailable:
        """The operation's end after :data:`MAX_SHORT_ROUNDS` rounds in a row that fewer
        than q servers answered (whatever they said), naming the servers none of those
        rounds heard from: what the mount log shows for the EIO."""
        silent = sorted(set(range(self.th.n)) - {int(s) for s in st.heard})
        return QUUnavailable(
            f"objects {objects}: fewer than q={self.th.q} servers answer ({MAX_SHORT_ROUNDS} "
            f"rounds in a row; {len(st.heard)} answered, none from nodes {silent})"
        )

    async def _back_off(self, st: _RepairState) -> None:
        """Wait the next random exponential backoff of this operation (contention).  The
        wait is this client's choice, not the cluster's silence: it does not use up the
        operation's patience (``bftfs.outcome``), which ran out in long contended repairs
        and made the next rounds short, and the operation EIO, with every node answering
        (issue 31, item 11)."""
        delay = core.backoff_delay(st.repairs, self.rng)
        st.repairs += 1
        start = trio.current_time()
        await self._sleep(delay)
        paused(trio.current_time() - start)

    def _latest(self, objects: tuple[int, ...]) -> tuple:
        """The newest timestamp cached for each of ``objects`` (how far they have moved)."""
        return tuple(
            max((c.lt for e in self._cache.get(o, {}).values() for c in e.rh), default=None) or ZERO
            for o in objects
        )

    def _absorb(
        self, objects: tuple[int, ...], replies: Mapping[int, Reply], fresh: dict[int, set[int]]
    ) -> None:
        merged = core.merge(self._mohs(objects), objects, replies)
        for oid in objects:
            self._cache[oid] = merged[oid]
            fresh.setdefault(oid, set()).update(replies)
        for rep in replies.values():
            for culled in rep.culled:
                for s in set(culled):
                    self.faults[(int(s), "culled")] += 1
        proven = core.malevolent(replies.items(), list(objects), self.th.b) - self._excluded
        for s in proven:
            self.faults[(int(s), "malevolent")] += 1
            log.warning("Q/U server %s is malevolent (its history culled by more than b)", s)
        self._excluded |= proven

    async def _fetch_missing(self, objects: tuple[int, ...], fresh: dict[int, set[int]]) -> None:
        """Histories of objects added for deduction, read from a quorum (``qu.history``)."""
        todo = tuple(o for o in objects if len(fresh.get(o, ())) < self.th.q)
        if todo:
            await self._read_histories(todo, self._targets(todo), self.th.q, self.th.q, fresh)

    async def _read_histories(
        self,
        todo: tuple[int, ...],
        targets: list[int],
        enough: int,
        initial: int | None,
        fresh: dict[int, set[int]],
        *,
        settle: int | None = None,
    ) -> None:
        """Read the histories of ``todo`` from ``targets`` (``qu.history``) until ``enough``
        servers answered (or none more will), and take them in.  ``settle``: once that many
        answered, wait two probe intervals for the others, then go on without them."""
        self._n["history_fetches"] += 1
        stash: dict[int, Reply] = {}
        scope = trio.CancelScope()

        def accept(node: int, raw: Any) -> bool:
            try:
                stash[node] = Reply.from_wire(raw, todo, self.th.n)
            except MessageError:
                self.faults[(int(node), "malformed")] += 1
                return False
            if settle is not None and len(stash) >= settle and scope.deadline == float("inf"):
                scope.deadline = trio.current_time() + 2 * self.probe_after
            return True

        with scope, suppress(QuorumUnavailable):
            await self.ep.quorum_call(
                targets,
                KIND_HISTORY,
                {"v": VERSION, "o": list(todo)},
                enough=lambda valid: len(valid) >= enough,
                accept=accept,
                initial=initial,
                probe_after=self.probe_after,
                timeout=self.timeout,
                batch=self._batch,
                renew_at=self.th.q,  # a quorum answering is progress, cut short or not
            )
        self._absorb(todo, stash, fresh)

    def _links_for(self, view: View) -> tuple[Link, ...]:
        """The proven links ``view``'s decisions used, with their proofs: the servers must
        decide with the same facts (none at all unless this client ever proved one)."""
        if not self._facts:
            return ()
        return tuple(
            Link(oid, lt, self._facts[(oid, lt)], self._proofs[(oid, lt)])
            for oid, lt in sorted(view.used_links(), key=lambda k: (k[0], k[1].encode()))
        )

    async def _prove(self, wanted: Iterable[tuple[int, Timestamp]]) -> int:
        """Prove conditioned-on links (``bftfs.qu.links``) this client does not know yet.
        How many new links were proven."""
        if len(self._facts) > MAX_FACTS:
            self._facts.clear()
            self._proofs.clear()
        proven = 0
        for oid, lt in sorted(wanted, key=lambda k: (k[0], k[1].encode())):
            if (oid, lt) in self._facts:
                continue
            got = await self._fetch_proof(oid, lt)
            if got is not None:
                self._facts[(oid, lt)], self._proofs[(oid, lt)] = got
                self._n["link_proofs"] += 1
                proven += 1
        return proven

    async def _fetch_proof(self, oid: int, lt: Timestamp) -> tuple[Timestamp, bytes] | None:
        """The conditioned-on timestamp of version ``lt`` of ``oid`` and its proof: the
        stored request that made it, from any one server (the timestamp hash binds it, so
        no server need be believed), or None if no server has one that checks."""
        got: list[tuple[Timestamp, bytes]] = []

        def accept(_node: int, raw: Any) -> bool:
            body = raw.get("r") if isinstance(raw, dict) else None
            if body is None or got:
                return False
            try:
                proof = pack(body)
            except (TypeError, ValueError):
                return False
            co = prove(proof, self.th, oid, lt)
            if co is None:
                return False
            got.append((co, proof))
            return True

        with suppress(QuorumUnavailable):
            await self.ep.quorum_call(
                preferred_order(oid, self.th.n),
                KIND_FETCH,
                {"v": VERSION, "lt": lt.encode()},
                enough=lambda valid: len(valid) >= 1,
                accept=accept,
                initial=self.th.b + 1,
                probe_after=self.probe_after,
                timeout=self.timeout,
                batch=self._batch,
            )
        return got[0] if got else None

    async def _round(self, objects: tuple[int, ...], req: Request) -> dict[int, Reply]:
        """``c_quorum_rpc`` (lines 600-604): replies from a quorum, probing as needed.

        Every parsed reply is kept; only OK replies count toward the quorum, so a server that
        fails makes the transport probe another (a refusal is an answer: no probe).  The call
        stops once q replies are in and q OK replies have become impossible, so contention
        never waits for a dead server's timeout, while the OHS is still refreshed from a full
        quorum.
        """
        self._n["rounds"] += 1
        th = self.th
        body = req.packed()
        stash: dict[int, Reply] = {}

        def settled() -> bool:
            oks = sum(1 for r in stash.values() if r.status is ReplyStatus.OK)
            hopeless = oks + (th.n - len(stash)) < th.q
            return oks >= th.q or (hopeless and len(stash) >= th.q)

        def enough(valid: Mapping[int, Any]) -> bool:
            return settled()

        scope = trio.CancelScope()

        def accept(node: int, raw: Any) -> bool:
            try:
                rep = Reply.from_wire(raw, objects, th.n)
            except MessageError:
                self.faults[(int(node), "malformed")] += 1
                return False
            stash[node] = rep
            if settled():
                return True
            if len(stash) >= th.q and scope.deadline == float("inf"):
                # A dead server's call only fails at its timeout; with q replies in, wait
                # two probe intervals for the rest, then go on with what we have.
                scope.deadline = trio.current_time() + 2 * self.probe_after
            # A refusal is a server's valid answer, not a reason to probe another: probing
            # made the server outside the preferred quorum object-sync for every negative
            # lookup (118 syncs in a 111-file cp -a).  Failures (not current) still probe.
            return rep.status in (ReplyStatus.OK, ReplyStatus.REFUSED)

        self._space = {}
        try:
            with scope:
                await self.ep.quorum_call(
                    self._targets(objects),
                    KIND_REQUEST,
                    body,
                    enough=enough,
                    accept=accept,
                    initial=th.q if req.op is not None and req.op.query else th.n,
                    probe_after=self.probe_after,
                    timeout=self.timeout,
                    batch=self._batch,
                    renew_at=self.th.q,  # a quorum answering is progress, cut short or not
                )
        except QuorumUnavailable as e:
            # Servers out of space answer ``full`` (node/service.py), a client's update past
            # its quota ``quota`` (node/qu_server.py); judged in ``_run``.
            self._space = {
                int(n): code
                for n, why in e.result.errors.items()
                if (code := refusal_code(why)) in ("full", "quota", "ahead")
            }
        return dict(stash)

    async def _inline(self, target: Candidate, view: View, fresh: dict[int, set[int]]) -> bool:
        """Inline repair (L2561-2570): fetch the request that made ``target`` from a server
        that lists it, check it sets up exactly ``target``'s timestamp, and re-send it on
        its original client's behalf with our OHS as evidence.  Whether it was sent."""
        th = self.th
        hosts = sorted(
            s
            for oid in target.objects
            for s, e in view.mohs.get(oid, {}).items()
            if any(c.key == target.key for c in e.rh)
        )
        original: Request | None = None
        for s in dict.fromkeys(hosts):
            try:
                raw = await self.ep.call(s, KIND_FETCH, {"v": VERSION, "lt": target.lt.encode()})
                if raw is None or not isinstance(raw, dict) or raw.get("r") is None:
                    continue
                cand = Request.from_wire(raw["r"], th.n)
            except (TransportError, RemoteError, MessageError):
                continue
            if cand.objects == target.objects and core.expected_lt(cand, th) == target.lt:
                original = cand
                break
        if original is None:
            return False
        links = original.links
        if links:  # stored without proofs: the servers need them again
            await self._prove({(lk.oid, lk.lt) for lk in links})
            if any((lk.oid, lk.lt) not in self._proofs for lk in links):
                return False
            links = tuple(lk.__class__(*lk.fact(), self._proofs[(lk.oid, lk.lt)]) for lk in links)
        self._n["inline_repairs"] += 1
        evidence = {oid: dict(view.mohs.get(oid, {})) for oid in target.objects}
        req = Request(
            original.client, original.objects, original.mohs, original.op, evidence, links
        )
        replies = await self._round(original.objects, req)
        self._absorb(original.objects, replies, fresh)
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
