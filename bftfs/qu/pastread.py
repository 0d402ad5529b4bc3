"""The client side of reading an object's past (rules in :mod:`bftfs.qu.past`).

:class:`PastReader` walks the conditioned-on chain of one object from a version the caller
knows is established (the ``at`` of a query, :meth:`QUClient.query_at`) back to the
initial version, believing an entry only when ``b + 1`` servers agree on it (and its time
only when ``2b + 1`` give one), and fetches states on demand, each checked against its
agreed digest.  It steps over versions retention's schedule thinned (``Agreed.thinned``:
their ``lt_co`` agreed, their state not), which stay in the walk, without a state, so
that a read of their moment says "reclaimed".  The walk stops where fewer than
``b + 1`` servers still know the next version: retention let it go (``end`` says so).
"""

from __future__ import annotations

import enum
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bftfs.ids import NodeId
from bftfs.net.endpoint import Endpoint
from bftfs.net.quorum import QuorumUnavailable
from bftfs.qu.classify import QUThresholds
from bftfs.qu.history import ReplicaHistory
from bftfs.qu.messages import MessageError
from bftfs.qu.past import (
    KIND_VERSIONS,
    Agreed,
    ChainEntry,
    agree,
    parse_versions_reply,
    versions_request,
)
from bftfs.qu.pastmany import (
    KIND_CHAINS,
    KIND_STARTS,
    ChainsAsk,
    ChainsReply,
    established_start,
    parse_chains_reply,
    parse_starts_reply,
    starts_request,
)
from bftfs.qu.paststates import ROUND_TIMEOUT, HistoryUnavailable, StateFetcher
from bftfs.qu.timestamp import ZERO, Timestamp

log = logging.getLogger(__name__)

#: Tries of a ``qu.versions`` round for servers that are slow to answer, each twice as
#: patient as the one before (5, 10, 20 s).
TRIES = 3


class End(enum.Enum):
    """Why a walk stopped."""

    #: It reached the object's initial version: the whole history is there.
    INITIAL = "initial"
    #: Fewer than b+1 servers still hold the next older version (retention let it go).
    RECLAIMED = "reclaimed"
    #: The caller asked for no more (a limit or a time bound).
    STOPPED = "stopped"


@dataclass
class Seed:
    """What a ``qu.chains`` round brought for one object: each answering server's page
    from ``start`` (as a ``qu.versions`` round from it would) and the states servers
    offered, unchecked."""

    start: Timestamp
    pages: dict[int, list[ChainEntry]] = field(default_factory=dict)
    offered: dict[Timestamp, bytes] = field(default_factory=dict)


@dataclass
class Walk:
    """The versions found so far, newest first, and why the walk ended."""

    versions: list[Agreed] = field(default_factory=list)
    end: End = End.STOPPED


class PastReader:
    """History reads of Q/U objects through ``endpoint`` (any client of the cluster)."""

    def __init__(self, endpoint: Endpoint, th: QUThresholds) -> None:
        self.endpoint = endpoint
        self.th = th
        self.nodes = [NodeId(s) for s in range(th.n)]
        self.rounds = 0
        #: ``qu.starts`` rounds, and the objects they settled.
        self.start_rounds = 0
        self.started = 0
        #: Tries of a round that waited longer for slow servers; servers that never
        #: answered a round's tries (not waited for again); told of each wait.
        self.waits = 0
        self.silent: set[int] = set()
        self.on_wait: Callable[[str], None] | None = None
        #: Nodes that let a ``qu.starts`` or ``qu.chains`` round or a ``qu.states`` request
        #: time out: later rounds do not wait for them beyond a quorum, and states are
        #: asked of them last.
        self._unanswered: set[int] = set()
        #: Fetches the states of versions (``qu.states``), sharing :attr:`_unanswered`.
        self.fetcher = StateFetcher(endpoint, self._unanswered)
        #: Versions whose time became known only by asking every node from the version
        #: itself after some node's page in an everyone-round had reached it (:meth:`_gather`).
        self.timed_on_second_ask = 0
        #: Rounds that ended without what they waited for (a timeout, or too few nodes
        #: answering): a stopped node must not make one (it refuses connections).
        self.rounds_cut = 0

    def _unheard(self, got: Mapping[int, Any]) -> set[int]:
        """The nodes that did not answer a round and may still: not those that refuse
        connections now (a stopped node: its request only retries connecting until the
        round's timeout, which every history command paid, 5 s, while one node was down)."""
        refusing = {int(n) for n in self.endpoint.refusing(self.nodes)}
        return {int(n) for n in self.nodes} - got.keys() - refusing

    def _waiting_for(self, got: Mapping[int, Any]) -> set[int]:
        """The nodes a round that waits past a quorum still waits for: :meth:`_unheard`,
        but not those that once let a round time out."""
        return self._unheard(got) - self._unanswered

    def _enough_pages(self, pages: Mapping[int, Any], need: int, _replies: Any) -> bool:
        """A ``qu.versions`` round's ``enough``: ``need`` pages in, or every node that can
        answer (at least a quorum) when ``need`` is more (an everyone-round)."""
        if len(pages) >= need:
            return True
        return len(pages) >= self.th.q and not self._unheard(pages)

    async def _pages(
        self, oid: int, start: Timestamp, *, everyone: bool
    ) -> dict[int, list[ChainEntry]]:
        """One ``qu.versions`` round: each answering server's chain page from ``start``
        (a quorum of them, or every server if ``everyone``).

        Servers that did not answer in :data:`ROUND_TIMEOUT` (neither replied nor failed:
        slow, on a loaded machine) are asked again, each try twice as patient, up to
        :data:`TRIES` tries (``on_wait`` is told): with too few reports a version's time
        is unknown and the command ends "cannot be told" (issue 36).  The tries after the
        first wait for all but ``b`` servers, not for every one: ``b`` that withhold cost
        one :data:`ROUND_TIMEOUT`, not a doubling series.  A server that never
        answered a whole round's tries is not waited for again by this reader."""
        self.rounds += 1
        pages: dict[int, list[ChainEntry]] = {}

        def accept(node: NodeId, raw: Any) -> bool:
            try:
                pages[node] = parse_versions_reply(raw, start)
            except MessageError:
                return False
            return True

        need = self.th.n if everyone else self.th.q
        ask, timeout = self.nodes, ROUND_TIMEOUT
        for attempt in range(TRIES):
            try:
                await self.endpoint.quorum_call(
                    ask,
                    KIND_VERSIONS,
                    versions_request(oid, start),
                    enough=functools.partial(self._enough_pages, pages, need),
                    accept=accept,
                    timeout=timeout,
                )
                break
            except QuorumUnavailable as e:
                self.rounds_cut += 1
                slow = [s for s in ask if s not in pages and s not in e.result.errors]
                if attempt == TRIES - 1:
                    self.silent.update(slow)
                slow = [s for s in slow if s not in self.silent]
                # Only the first try waits for the last b: they may be Byzantine, and one
                # that withholds cost 5 + 10 + 20 s of a 60 s budget (the campaign's hang).
                need = min(need, self.th.n - self.th.b)
                if not slow or len(pages) >= need:
                    break
                self.waits += 1
                timeout *= 2
                wait = (
                    f"object {oid:#x}: {len(pages)} of {self.th.n} nodes answered a "
                    f"history round; waiting up to {timeout:.0f} s more for nodes "
                    + ", ".join(map(str, slow))
                )
                log.info("%s", wait)
                if self.on_wait is not None:
                    self.on_wait(wait)
                ask = slow
        if len(pages) < self.th.b + 1:
            raise HistoryUnavailable(
                f"object {oid}: history from {len(pages)} servers, need {self.th.b + 1}"
            )
        return pages

    async def starts(self, oids: Sequence[int]) -> dict[int, Timestamp]:
        """One ``qu.starts`` round for ``oids`` (distinct; at most
        :data:`~bftfs.qu.pastmany.MAX_OBJECTS`): the established version of each object
        the replica histories of a quorum show (:func:`~bftfs.qu.pastmany.established_start`),
        for the objects they settle; the others are left out (all of them when fewer than
        a quorum answer in time).

        An update returns once a quorum took it, so the node left out of the quorum that
        answered first may be the one holding it: objects still unsettled wait for the
        other nodes (not for one that once let a round time out)."""
        self.start_rounds += 1
        got: dict[int, list[ReplicaHistory]] = {}
        settled: dict[int, Timestamp] = {}

        def accept(node: NodeId, raw: Any) -> bool:
            try:
                got[node] = parse_starts_reply(raw, len(oids))
            except MessageError:
                return False
            return True

        def decide() -> bool:
            """Settle what the replies so far settle; whether to stop waiting."""
            if len(got) < self.th.q:
                return False
            for i, oid in enumerate(oids):  # a decision on a quorum's reports stands
                if oid not in settled:
                    lt = established_start(oid, {s: rhs[i] for s, rhs in got.items()}, self.th)
                    if lt is not None:
                        settled[oid] = lt
            return len(settled) == len(oids) or not self._waiting_for(got)

        try:
            await self.endpoint.quorum_call(
                self.nodes,
                KIND_STARTS,
                starts_request(oids),
                enough=lambda r: decide(),
                accept=accept,
                timeout=ROUND_TIMEOUT,
            )
        except QuorumUnavailable as e:  # (fewer than a quorum: nothing settles)
            self.rounds_cut += 1
            self._unanswered |= set(self.nodes) - got.keys() - e.result.errors.keys()
            decide()
        self.started += len(settled)
        return settled

    async def chains(
        self,
        objs: Sequence[tuple[int, Timestamp]],
        *,
        until_ns: int | None = None,
        moments: Sequence[int] = (),
        all_states: bool = False,
    ) -> dict[int, Seed]:
        """One ``qu.chains`` round for ``objs`` (object, established version; at most
        :data:`~bftfs.qu.pastmany.MAX_OBJECTS`): each object's pages from a quorum of
        servers, and the states of the versions current at ``moments`` (every version's if
        ``all_states``) offered by one server each (the ``i``-th object's by server ``i mod
        n``: object ids need not spread evenly).  Walks take them up with :meth:`walk`'s
        ``seed``.  The round waits past a quorum for every server but those that once let
        a round time out: each offers a sixth of the states (a state not taken costs a
        ``qu.states`` request), and a sixth page settles more walks.

        Raises:
            HistoryUnavailable: fewer than ``b + 1`` servers answered.
        """
        self.rounds += 1
        starts = [lt for _, lt in objs]
        got: dict[int, ChainsReply] = {}

        def payload(node: NodeId) -> Any:
            serve = tuple(i for i in range(len(objs)) if i % self.th.n == node)
            ask = ChainsAsk(tuple(objs), until_ns=until_ns, moments=tuple(moments),
                            all_states=all_states, serve=serve)  # fmt: skip
            return ask.to_wire()

        def accept(node: NodeId, raw: Any) -> bool:
            try:
                got[node] = parse_chains_reply(raw, starts)
            except MessageError:
                return False
            return True

        def enough() -> bool:
            return len(got) >= self.th.q and not self._waiting_for(got)

        try:
            await self.endpoint.quorum_call(
                self.nodes,
                KIND_CHAINS,
                payload,
                enough=lambda r: enough(),
                accept=accept,
                timeout=ROUND_TIMEOUT,
            )
        except QuorumUnavailable as e:
            self.rounds_cut += 1
            self._unanswered |= set(self.nodes) - got.keys() - e.result.errors.keys()
            if len(got) < self.th.b + 1:
                raise HistoryUnavailable(
                    f"histories of {len(objs)} objects from {len(got)} servers, "
                    f"need {self.th.b + 1}"
                ) from None
        seeds = {oid: Seed(lt) for oid, lt in objs}
        for node, reply in got.items():
            for i, ((oid, _), page) in enumerate(zip(objs, reply.pages, strict=True)):
                seeds[oid].pages[node] = page
                if i % self.th.n == node:  # states only from the node asked for them
                    seeds[oid].offered.update(reply.offered[i])
        return seeds

    async def walk(
        self,
        oid: int,
        start: Timestamp,
        *,
        limit: int | None = None,
        until_ns: int | None = None,
        seed: Seed | None = None,
    ) -> Walk:
        """The chain of ``oid`` from ``start`` (established), newest first.

        A version whose time fewer than ``2b + 1`` servers of a quorum give is asked of
        every server once (a page covers the versions after it too) before its time is
        left unknown (:func:`~bftfs.qu.past.agreed_time`).

        Args:
            limit: stop after this many versions.
            until_ns: stop after the first version whose time is known to be at or before
                this time (the version current at that time, :func:`current_at`; a version
                of unknown time never stops the walk).
            seed: a ``qu.chains`` round's pages from ``start`` (:meth:`chains`), taken as
                this walk's first round.
        """
        out = Walk()
        reports: dict[Timestamp, dict[int, ChainEntry]] = {}
        want = start
        asked_all: Timestamp | None = None
        #: Versions every answering server was asked about (in a page from everyone).
        timed_all: set[Timestamp] = set()
        #: The versions each everyone-round's pages reached, and those asked again.
        reached: list[set[Timestamp]] = []
        asked_again: set[Timestamp] = set()
        pages_from: Timestamp | None = None
        if seed is not None and seed.start == start:
            self._add(seed.pages, reports)
            pages_from = start  # as if a quorum round from ``start`` was asked
        while True:
            if want == ZERO:
                out.end = End.INITIAL
                return out
            if limit is not None and len(out.versions) >= limit:
                return out
            got = agree(want, reports.get(want, {}), self.th.b, settled=asked_all == want)
            if got is None or got.co is None:
                if asked_all == want:
                    out.end = End.RECLAIMED
                    return out
                everyone = pages_from == want  # a quorum was not enough: ask everyone
                await self._gather(oid, want, reports, timed_all, reached, everyone=everyone)
                if everyone:
                    asked_all = want
                pages_from = want
                continue
            if got.time_ns is None and want not in timed_all:
                if any(want in page for page in reached):
                    asked_again.add(want)
                await self._gather(oid, want, reports, timed_all, reached, everyone=True)
                continue
            if got.time_ns is not None and want in asked_again:
                self.timed_on_second_ask += 1
            out.versions.append(got)
            if until_ns is not None and got.time_ns is not None and got.time_ns <= until_ns:
                return out
            want = got.co

    async def _gather(
        self,
        oid: int,
        start: Timestamp,
        reports: dict[Timestamp, dict[int, ChainEntry]],
        timed_all: set[Timestamp],
        reached: list[set[Timestamp]],
        *,
        everyone: bool,
    ) -> None:
        """One round of pages from ``start`` added to ``reports`` (and, from everyone,
        ``start`` and the versions every answering server's page reached to ``timed_all``).

        A page says nothing of the versions past where it stops: its server holds the
        version there only by object sync (no ``lt_co``) or lacks the one before it, and
        may still hold older ones (it made them before it lagged).  Counting a version as
        asked of everyone because *some* server's page covered it left its time unknown
        when the servers that stopped above it were the ones needed for ``2b + 1``
        reports: ``revert`` exited 7 under lease contention (the issue 36 follow-up,
        ``benchmarks/results/2026-11-27-revert-exit7.md``)."""
        pages = await self._pages(oid, start, everyone=everyone)
        self._add(pages, reports)
        if everyone:
            covered = [{e.lt for e in page} for page in pages.values()]
            timed_all.update(set.intersection(*covered) if covered else ())
            timed_all.add(start)
            reached.append(set.union(*covered) if covered else set())

    @staticmethod
    def _add(
        pages: Mapping[int, list[ChainEntry]], reports: dict[Timestamp, dict[int, ChainEntry]]
    ) -> None:
        """Each server's page entries into ``reports`` (version -> server -> entry)."""
        for node, page in pages.items():
            for e in page:
                reports.setdefault(e.lt, {})[node] = e

    async def states(
        self,
        oid: int,
        versions: Sequence[Agreed],
        offered: Mapping[Timestamp, bytes] | None = None,
    ) -> dict[Timestamp, bytes | None]:
        """:meth:`StateFetcher.states`."""
        return await self.fetcher.states(oid, versions, offered)

    @property
    def fetches(self) -> int:
        """``qu.states`` requests sent."""
        return self.fetcher.fetches

    @property
    def offered_taken(self) -> int:
        """States taken from what ``qu.chains`` offered."""
        return self.fetcher.offered_taken

    @property
    def hedged(self) -> int:
        """States asked of a next host because the one asked was silent."""
        return self.fetcher.hedged
