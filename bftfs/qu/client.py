"""The Q/U client driver (seed Figure 4.3 lines 300-604 and 4.3.5): only I/O.

It keeps the cached object history set of every object it touched (L2521-2524,
``ohscache.py``), sends each operation to the object's *preferred quorum* - ``q``
consecutive servers starting at ``object id mod n`` (L2546-2549); a multi-object operation
uses the preferred quorum of its highest object id (L2839-2841) - and probes the remaining
servers, in the same rotation, when one is slow, dead or rejects (``rounds.py``, over
``Endpoint.quorum_call``).  Every decision comes from :mod:`bftfs.qu.core`; this module
runs the operation loop, sleeps for backoff and counts what happened; repair between
rounds is ``repair.py``'s :class:`~bftfs.qu.repair.Repairer`.

Concurrency: one client runs one operation at a time per object (operations on disjoint
objects run concurrently); it takes per-object locks in object-id order, so two
multi-object operations of one client cannot deadlock.  The applied table of the servers
relies on this (``replica.py``).
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from bftfs.net.errors import OversizedRequest, TransportError
from bftfs.net.quorum import QuorumUnavailable
from bftfs.outcome import Patience, caught_up, current_patience, refused_for_space
from bftfs.qu import core
from bftfs.qu.attempt import (
    Attempt,
    QUUnavailable,
)
from bftfs.qu.classify import QUThresholds
from bftfs.qu.history import OHSEntry
from bftfs.qu.linkproofs import LinkProofs
from bftfs.qu.objects import MethodRefused
from bftfs.qu.ohscache import HistoryCache
from bftfs.qu.repair import Repairer
from bftfs.qu.reply import Reply
from bftfs.qu.request import Operation, Request
from bftfs.qu.rounds import QuorumRounds
from bftfs.qu.timestamp import Timestamp


@dataclass(frozen=True)
class ClientStatistics:
    """What a client did (seed L2596-2597 says a single writer needs no barrier, copy or
    backoff: these counters are how tests check that)."""

    operations: int
    rounds: int
    barriers: int
    copies: int
    backoffs: int
    #: Rounds that failed only because this client's histories of the objects were out
    #: of date (another client changed them since): asked again at once, no repair
    #: between.  Two writers taking turns on one object pay one each (issue 62).
    behind: int
    #: Of those, the rounds of queries (asked again while others' updates progress).
    behind_queries: int
    #: Milliseconds those backoffs waited, in all.
    backoff_ms: int
    inline_repairs: int
    history_fetches: int
    refused: int
    #: Candidates repaired on their own because the deduction of a repair named more
    #: objects than one request may (``repair.py``).
    split_repairs: int
    #: Repairs whose too wide deduction was narrowed to the objects it needs instead
    #: (``core.narrowest``).
    narrowed_repairs: int
    #: Objects repaired on their own because a repair passed by a multi-object candidate
    #: of theirs (``repair.py``, ``Repairer._repair_behind``).
    behind_repairs: int
    #: Conditioned-on links proven from stored requests (deduction behind pruning).
    link_proofs: int
    #: Links sent without their proofs, past what a request carries: the servers check
    #: them against the requests they stored (``linkproofs.PROOF_BYTES``).
    bare_links: int
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
        vouch: Callable[[int, Request, Reply], bool] | None = None,
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
        vouch: whether a node's OK reply is believed (``QuorumRounds``): the signature
            check of the cross-group commit's methods (``layout/txn.py``).
        """
        self.ep = endpoint
        self.th = th
        self.client_id = client_id
        self.rng = rng or random.Random()
        self._seq = seq_start if seq_start is not None else time.time_ns()
        self._sleep = sleep
        self._locks: dict[int, ObjectLock] = {}
        #: Faults detected per server: ``(server, kind)`` -> count, kind one of ``culled``
        #: (another server reported its history's authenticator bad), ``malevolent``
        #: (more than b servers did: proven, left out from then on) and ``malformed``
        #: (a reply that does not parse).
        self.faults: Counter[tuple[int, str]] = Counter()
        self._cache = HistoryCache(th, self.faults, source=endpoint)
        self._rounds = QuorumRounds(
            endpoint,
            th,
            self.faults,
            probe_after=probe_after,
            timeout=timeout,
            batch=batch,
            vouch=vouch,
        )
        self._links = LinkProofs(self._rounds)
        #: Repair between rounds (``repair.py``).
        self._repairer = Repairer(th, client_id, self._cache, self._rounds, self._links)
        self._n = dict.fromkeys(("operations", "refused", "behind", "behind_queries"), 0)

    def statistics(self) -> ClientStatistics:
        """Counters since creation."""
        return ClientStatistics(
            rounds=self._rounds.rounds,
            history_fetches=self._rounds.history_fetches,
            link_proofs=self._links.proven,
            bare_links=self._links.sent_bare,
            excluded_servers=tuple(sorted(self._cache.excluded)),
            **self._n,
            **self._repairer.counts,
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

    async def update(
        self, objects: int | Iterable[int], method: str, arg: Any = None, *, seq: int | None = None
    ) -> Any:
        """Run update ``method`` on ``objects`` (1 to 8; atomically); its answer.  ``seq``:
        the request id of an update run before (:meth:`next_seq`), which a version's applied
        table shows if it took effect (``qu/replica.py``): an update a generation's freeze
        cut short runs again in the next under its first id (``fs/clients/switch.py``)."""
        return (await self._invoke(_objs(objects), method, arg, False, seq)).answer

    async def update_signed(
        self, objects: int | Iterable[int], method: str, arg: Any = None, *, seq: int | None = None
    ) -> tuple[Any, Timestamp, dict[int, bytes]]:
        """:meth:`update`, with the version it made and the signatures the nodes that
        accepted it gave (``Reply.sig``, the methods of the cross-group commit), by node."""
        out = await self._invoke(_objs(objects), method, arg, False, seq)
        assert out.lt is not None
        return out.answer, out.lt, dict(out.sigs or {})

    def next_seq(self) -> int:
        """A request id for an update (:meth:`update`'s ``seq``), this client's next."""
        self._seq += 1
        return self._seq

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
                await self._repairer.repair(objs, set(), {}, None, st)
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
                held = self._locks.get(oid)
                if held is None:
                    held = self._locks[oid] = ObjectLock()
                await stack.enter_async_context(held)
            yield

    async def _invoke(
        self, objects: tuple[int, ...], method: str, arg: Any, query: bool, seq: int | None = None
    ) -> core.Outcome:
        self._n["operations"] += 1
        if query:
            op = Operation(method, True, arg, 0)
        else:
            op = Operation(method, False, arg, self.next_seq() if seq is None else seq)
        try:
            if len(objects) == 1:  # the common case, without an exit stack
                held = self._locks.get(objects[0])
                if held is None:
                    held = self._locks[objects[0]] = ObjectLock()
                async with held:
                    return await self._run(objects, op)
            async with self._locked(objects):
                return await self._run(objects, op)
        except (QuorumUnavailable, TransportError, OversizedRequest) as e:  # one family
            # (a request over the frame limit: refused before it is sent, as every node
            # would refuse it; a walk's link proofs under contention can grow that large)
            raise QUUnavailable(f"objects {objects}: {type(e).__name__}: {e}") from e
        finally:
            self._unlock_idle(objects)

    def _unlock_idle(self, objects: tuple[int, ...]) -> None:
        """Drop the locks of ``objects`` nobody holds or waits for: kept, they were one per
        object this client ever operated on, for the mount's life.  A task that took a
        lock from the table holds it or waits for it before it yields, so none is dropped
        under a task that still needs it."""
        locks = self._locks
        for oid in objects:
            held = locks.get(oid)
            if held is not None and not held.busy():
                del locks[oid]

    async def _run(self, objects: tuple[int, ...], op: Operation) -> core.Outcome:
        th = self.th
        self._cache.suspects = set()
        context: set[int] = set()
        fresh: dict[int, set[int]] = {}
        st = Attempt(self.th, self.rng, self._sleep, self._cache.latest(objects))
        while True:
            shown, view = await self._repairer.reading.present_filled(
                objects + tuple(sorted(context)), fresh
            )
            req = Request(self.client_id, objects, shown, op, None, self._links.links_for(view))
            replies = await self._rounds.request(
                objects, req, self._cache.targets(objects), self._cache.left_out()
            )
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
            view = self._repairer.reading.present_view(objects + tuple(sorted(context)), fresh)[1]
            out = core.outcome(replies, view, th, op.query, objects)
            if out.result is core.Result.DONE:
                if op.query:
                    return out
                sigs = {
                    s: r.sig
                    for s, r in replies.items()
                    if r.sig is not None and r.lt == out.lt and r.type == "method"
                }
                return dataclasses.replace(out, sigs=sigs)
            if out.result is core.Result.REFUSED:
                self._n["refused"] += 1
                raise MethodRefused(out.why)
            await st.after_unsyncable(objects, replies)
            await st.check_short(objects)
            # Servers answering ``need`` are not believed: the client derives the objects
            # deduction needs from the histories it holds (next_step), so a Byzantine server
            # cannot make it drag arbitrary objects into its requests.
            latest = self._cache.latest(objects)
            if op.query and not context and latest > st.seen_latest:
                # Updates are progressing: a query never repairs what is still moving, it
                # asks again (L2588-2597: a single writer's readers need no barriers).
                st.seen_latest = latest
                self._n["behind"] += 1
                self._n["behind_queries"] += 1
                continue
            st.seen_latest = latest
            before = (self._rounds.rounds, self._repairer.counts["split_repairs"])
            context = await self._repairer.repair_or_split(objects, context, fresh, op, st)
            if (self._rounds.rounds, self._repairer.counts["split_repairs"]) == before:
                self._n["behind"] += 1  # nothing to repair: the OHS was behind
                self._n["behind_queries"] += op.query

    def _check_refusals(self, objects: tuple[int, ...]) -> None:
        """After a short round: more than b refusals for space (one correct server's at
        least) end the operation with ENOSPC, or EDQUOT for quota ones, and more than b
        refusals of this client's clock with ``ahead`` (or, for a lease time, ``behind``); b
        or fewer are probed past like any failure.

        More than b refusals as malformed end it too (``QuorumRounds.check_malformed``).

        Raises:
            bftfs.outcome.StorageFull: (or QuotaExceeded) servers out of space.
            MethodRefused: ``ahead``, this client's clock.
            QUUnavailable: the request refused as malformed.
        """
        space = refused_for_space(self._rounds.space, self.th.b)
        if space is not None:
            raise type(space)(f"objects {objects}: {space}")
        self._rounds.check_malformed(objects)
        for way in ("ahead", "behind", "moved", "retired"):
            # A lease time is checked both ways (leases.py); ``moved``/``retired``: the
            # nodes' generation is frozen or retired (docs/membership.md, "Generations").
            nodes = sorted(n for n, code in self._rounds.space.items() if code == way)
            if len(nodes) > self.th.b:  # one correct node at least: this client's clock
                why = (
                    f"nodes {nodes}: their generation (or the object's partition) is {way}"
                    if way in ("moved", "retired")
                    else f"nodes {nodes}: this client's clock is too far {way} of theirs"
                )
                raise MethodRefused(way, why)


class ObjectLock:
    """One object's turn among this client's operations, and the patience of the last
    operation that had it: an operation that waited for its turn gets that one's progress
    as its own (:func:`bftfs.outcome.caught_up`), so waiting behind a task of this client
    that backs off for contention does not use up its patience."""

    __slots__ = ("lock", "last")

    def __init__(self) -> None:
        self.lock = trio.Lock()
        self.last: Patience | None = None

    def busy(self) -> bool:
        """Whether an operation has the object or waits for it."""
        return self.lock.locked() or bool(self.lock.statistics().tasks_waiting)

    async def acquire(self) -> None:
        waited = self.lock.locked()
        await self.lock.acquire()
        if waited:
            caught_up(self.last, trio.current_time())

    def release(self) -> None:
        self.last = current_patience()
        self.lock.release()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


def _objs(objects: int | Iterable[int]) -> tuple[int, ...]:
    objs = (objects,) if isinstance(objects, int) else tuple(objects)
    out = tuple(sorted(set(objs)))
    if not out or len(out) != len(objs):
        raise ValueError("objects must be distinct and non-empty")
    return out
