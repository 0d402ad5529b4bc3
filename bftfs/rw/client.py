"""The PASIS read/write client: the driver of Figures 3.1 and 3.2 (seed L926-1095).

This module only does I/O.  It fans requests out with ``Endpoint.quorum_call``, turns every
reply into data (a :class:`~bftfs.rw.classify.NodeView`, a fragment, or a bad reply), and asks
the pure cores what to do next: :func:`bftfs.rw.classify.decide` for the read loop,
:mod:`bftfs.rw.verify` for VALIDATE, the validated cross checksum and the write's time.

Write (Figure 3.1): encode, READ_TIMESTAMP from ``N - t`` nodes (TIME replies beyond the
clock bound do not count), MAKE_TIMESTAMP, then WRITE to every node and return after
``N - t`` valid acknowledgements; the other requests finish in the background (L1675-1677).
By default a write first tries one round trip: WRITE at a guessed timestamp (the clock)
that nodes execute only if it is above everything they host; when that fails it runs the
seed's two rounds (``one_round``; :meth:`RWClient._fresh_write` gives the argument).

Read (Figure 3.2 with the optimisations of L1172-1179): READ_LATEST to ``QC + b`` nodes of
which ``m`` ask for data and the rest are witnesses; more nodes are probed when the newest
candidate is not complete (up to ``N - t`` replies and beyond, one more for every invalid
reply); then, as :func:`decide` says: fetch older history from particular nodes (READ_PREV,
history only), fetch the candidate's missing fragments by its timestamp, regenerate the
cross checksum from ``m`` fragments (a poisonous write is never returned), repair a
repairable candidate at its own timestamp (:meth:`RWClient.repair_block`, waiting for
``N - t`` acknowledgements so that it is complete when the read returns), or restart from
READ_LATEST when garbage collection removed what the read looked for (bounded by
``max_restarts``: obstruction-freedom, L1566-1574).

Concurrency: each call is independent; ``read_blocks`` / ``write_blocks`` run many blocks at
once, and a client made by :func:`open_rw_client` sends the requests of concurrent calls to
one node in shared ``rw.batch`` frames (batch.py).  Code between two ``await`` points runs
atomically, which the per-read state relies on (``accept`` callbacks of a quorum call mutate
it without locks).  Erasure coding and hashing of blocks of ``thread_threshold`` bytes or
more run in a worker thread.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from bftfs import erasure
from bftfs.ids import NodeId
from bftfs.net.batch import Batcher, batch_quorum
from bftfs.net.endpoint import Endpoint
from bftfs.net.errors import TransportError, refusal_code
from bftfs.net.quorum import QuorumUnavailable, live_first
from bftfs.outcome import (
    ClusterUnavailable,
    StorageFull,
    collapse,
    refused_for_space,
)
from bftfs.rw import verify
from bftfs.rw.batch import rw_batcher
from bftfs.rw.classify import (
    DEFAULT_MAX_FETCHES,
    Decision,
    HostStatus,
    Kind,
    NodeView,
    RWThresholds,
    decide,
    view_from_history,
)
from bftfs.rw.messages import (
    KIND_SPACE,
    KIND_TIME,
    KIND_WRITE,
    RW_WIRE_VERSION,
    BlockId,
    MessageError,
    ReadReply,
    ReadRequest,
    TimeReply,
    TimeRequest,
    WriteReply,
    WriteRequest,
    parse_space_reply,
)
from bftfs.rw.timestamp import (
    DEFAULT_MAX_AHEAD_NS,
    MAX_TIME,
    MAX_WRITER,
    ZERO,
    Timestamp,
    make_timestamp,
)
from bftfs.rw.verify import ReadOutcome

log = logging.getLogger(__name__)

#: Blocks at least this large are coded and hashed in a worker thread (below it the thread
#: hand-off costs more than the work: zfec and BLAKE2b run near 1 GB/s).
DEFAULT_THREAD_THRESHOLD = 256 * 1024
#: Read attempts restarted after garbage collection before giving up.
DEFAULT_MAX_RESTARTS = 8
#: Default number of blocks in flight in ``read_blocks`` / ``write_blocks``.
DEFAULT_CONCURRENCY = 32
#: Reads that ask a node for data only after the others once it sent a fragment that
#: failed its check (or refused to produce one): a node that corrupts what it serves
#: would otherwise cost every read a refused fragment and another round.
SUSPECT_READS = 256


def _encode_wave(blocks: Sequence[bytes], m: int, n: int) -> list[erasure.Encoded]:
    """ENCODE + MAKE_CROSS_CHECKSUM for several blocks in one call (one worker-thread
    hand-off for a whole wave of :meth:`RWClient.write_blocks`)."""
    return [erasure.encode(bytes(data), m, n) for data in blocks]


class ReadAborted(ClusterUnavailable):
    """A read restarted ``max_restarts`` times (garbage collection kept racing with it)."""


class ReadFailed(ClusterUnavailable):
    """Too few nodes answered validly for a read to decide (more than ``t`` faulty)."""


class HistoryReclaimed(ReadFailed):
    """A read of a block's past found that more than ``b`` nodes have collected below the
    asked time (retention let that version go): at least one benign node vouches for it."""


class WriteFailed(ClusterUnavailable):
    """Fewer than ``N - t`` nodes acknowledged a write (or told its time): it may or may
    not complete later."""


_TRANSPORT = (QuorumUnavailable, TransportError)


def _storage_full(e: BaseException, b: int) -> StorageFull | None:
    """:class:`StorageFull` when a failed quorum call (or any in a group) was refused as
    ``full`` or ``quota`` by more than ``b`` nodes - one of them correct - else None
    (:class:`QuotaExceeded` when ``quota`` refusals are at least as many as ``full``)."""
    if isinstance(e, BaseExceptionGroup):
        for sub in e.exceptions:
            got = _storage_full(sub, b)
            if got is not None:
                return got
        return None
    if isinstance(e, StorageFull):
        return e
    if not isinstance(e, QuorumUnavailable):
        return None
    return refused_for_space({n: refusal_code(why) for n, why in e.result.errors.items()}, b)


_F = TypeVar("_F", bound=Callable[..., Awaitable[Any]])


def _outcomes(make: type[ClusterUnavailable]) -> Callable[[_F], _F]:
    """Let a public method raise only the outcome family (``bftfs.outcome``): transport
    errors become ``make``, a nursery's group of them its first."""

    def wrap(fn: _F) -> _F:
        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except _TRANSPORT as e:
                full = _storage_full(e, args[0].th.b)
                if full is not None:
                    raise full from e
                raise make(f"{type(e).__name__}: {e}") from e
            except BaseExceptionGroup as g:
                full = _storage_full(g, args[0].th.b)
                if full is not None:
                    raise full from g
                out = collapse(g, make, _TRANSPORT)
                if out is g:
                    raise
                raise out from g

        return wrapper  # type: ignore[return-value]

    return wrap


@dataclass(frozen=True)
class RWStatistics:
    """Counters of one :class:`RWClient` (see :meth:`RWClient.statistics`)."""

    counters: dict[str, int] = field(default_factory=dict)

    def __getitem__(self, key: str) -> int:
        return self.counters.get(key, 0)


@dataclass
class _ReadState:
    """What one read attempt has learned so far (mutated only between awaits)."""

    views: dict[int, NodeView] = field(default_factory=dict)
    bad: dict[int, str] = field(default_factory=dict)
    #: Validated fragments by version: ``frags[ts][node] = (cross checksum, fragment)``.
    frags: dict[Timestamp, dict[int, tuple[bytes, bytes]]] = field(default_factory=dict)
    rejected: set[Timestamp] = field(default_factory=set)
    #: Nodes whose reply flagged a version as verified (lazy verification), by version.
    verified: dict[Timestamp, set[int]] = field(default_factory=dict)
    #: See :func:`decide`.
    restart_at: int | None = None
    #: Each answering node's garbage-collection floor (reads of the past check it).
    floors: dict[int, Timestamp] = field(default_factory=dict)

    def good_views(self) -> dict[int, NodeView]:
        return {n: v for n, v in self.views.items() if n not in self.bad}

    def failed(self, e: QuorumUnavailable, targets: Iterable[int], answered: set[int]) -> None:
        """After a quorum call gave up: targets that never answered no longer count.

        Nodes whose reply arrived were judged by ``accept`` already (marked bad, or merely
        not useful, e.g. a fragment collected meanwhile) and are left alone.
        """
        for node in targets:
            if node not in answered and node not in self.bad:
                self.mark_bad(node, e.result.errors.get(NodeId(node), "no reply in time"))

    def mark_bad(self, node: int, reason: str) -> None:
        self.bad[node] = reason
        self.views.pop(node, None)
        for by_node in self.frags.values():
            by_node.pop(node, None)
        for flaggers in self.verified.values():
            flaggers.discard(node)


class RWClient:
    """Reads and writes blocks with the PASIS protocol through one :class:`Endpoint`.

    Args:
        endpoint: the client's transport endpoint (its principal id is the writer id).
        config: the cluster configuration (thresholds, node ids, block size).
        clock_ns: wall clock for timestamps (tests pass their own).
        max_ahead_ns: the clock bound; must match the nodes' bound.
        timeout: per quorum call; None uses the endpoint's.
        probe_after: seconds before a quorum call probes one more node.
        one_round: write in one round trip at a guessed timestamp when no node hosts a
            newer version, falling back to the seed's two rounds otherwise (see
            :meth:`_fresh_write`); False always runs READ_TIMESTAMP first.
        batcher: send requests through this :class:`~bftfs.net.batch.Batcher` (concurrent
            operations share frames); None sends each request on its own.  Use
            :func:`open_rw_client` to get a client with a batcher.
        nodes: ask only these nodes (default: all).  A storage node reading as a client
            (catch-up, node/rw_catchup.py) leaves itself out: its endpoint cannot call its own
            principal, and its own "I lack it" would only lower the count of hosts.  The
            thresholds still count all ``N``: a node left out is simply never heard.
        trust_verified: skip the regeneration of a complete candidate that ``b + 1``
            replies flag as verified (lazy verification, seed L1695-1698; one of them is
            correct and verified it).  The outcome then has no regenerated fragments, so
            a caller that needs them (catch-up) turns it off.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        config: Any,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
        max_ahead_ns: int = DEFAULT_MAX_AHEAD_NS,
        max_restarts: int = DEFAULT_MAX_RESTARTS,
        max_fetches: int = DEFAULT_MAX_FETCHES,
        thread_threshold: int = DEFAULT_THREAD_THRESHOLD,
        timeout: float | None = None,
        probe_after: float = 0.5,
        one_round: bool = True,
        batcher: Batcher | None = None,
        nodes: Iterable[int] | None = None,
        trust_verified: bool = True,
    ) -> None:
        self.endpoint = endpoint
        self.th = RWThresholds.from_config(config)
        #: The largest block this client writes or reads: the cluster's biggest per-file
        #: block size (``[cluster] big_block_size``, docs/fs.md), which the nodes accept.
        self.block_size: int = int(getattr(config, "max_file_block_size", config.block_size))
        self.nodes: list[NodeId] = [
            NodeId(i) for i in (config.node_ids if nodes is None else nodes)
        ]
        self.max_fragment = erasure.fragment_size(self.block_size, self.th.m)
        self.clock_ns = clock_ns
        self.max_ahead_ns = max_ahead_ns
        self.max_restarts = max_restarts
        self.max_fetches = max_fetches
        self.thread_threshold = thread_threshold
        self.timeout = timeout
        self.probe_after = probe_after
        # The fallback of a one-round write relies on QC - t > N - QC (see write_block):
        # with thresholds that do not give it, every write takes the seed's two rounds.
        self.one_round = one_round and self.th.qc - self.th.t > self.th.n - self.th.qc
        self.batcher = batcher
        self.trust_verified = trust_verified
        #: Time of this client's latest write: its writes' times strictly increase.
        self._last_time = 0
        self._stats: Counter[str] = Counter()
        #: Faults detected per node: ``(node, kind)`` -> count, kind one of ``corrupt`` (a
        #: fragment that does not validate against the version it claims), ``malformed``
        #: (a reply that does not parse), ``refuted`` (listed a version, then did not
        #: produce its fragment), ``time_ahead`` (a time beyond the clock bound).
        self.faults: Counter[tuple[int, str]] = Counter()
        #: Nodes asked for data last, and for how many more reads (``SUSPECT_READS``).
        self._suspect: dict[int, int] = {}

    def statistics(self) -> RWStatistics:
        """A snapshot of the counters (reads, writes, rounds, repairs, restarts, ...)."""
        counters = dict(self._stats)
        if self.batcher is not None:
            counters["batches"] = self.batcher.batches
            counters["batched_requests"] = self.batcher.items
        return RWStatistics(counters)

    async def _cpu(self, size: int, fn: Callable[..., Any], *args: Any) -> Any:
        if size >= self.thread_threshold:
            return await trio.to_thread.run_sync(fn, *args)
        return fn(*args)

    async def _quorum(
        self,
        targets: Sequence[int],
        kind: str,
        payload: Any,
        *,
        enough: Callable[[Mapping[NodeId, Any]], bool],
        accept: Callable[[NodeId, Any], bool],
        initial: int | None = None,
    ) -> Mapping[NodeId, Any]:
        kwargs: dict[str, Any] = {"probe_after": self.probe_after}
        if self.timeout is not None:
            kwargs["timeout"] = self.timeout
        if self.batcher is not None:
            kwargs.setdefault("timeout", self.endpoint.timeout)
            result = await batch_quorum(
                self.batcher,
                [NodeId(t) for t in targets],
                kind,
                payload,
                enough=enough,
                accept=accept,
                initial=initial,
                **kwargs,
            )
            return result.replies
        result = await self.endpoint.quorum_call(
            [NodeId(t) for t in targets],
            kind,
            payload,
            enough=enough,
            accept=accept,
            initial=initial,
            **kwargs,
        )
        return result.replies

    # Write ---------------------------------------------------------------------------------

    @_outcomes(WriteFailed)
    async def write_block(self, block: BlockId | int, data: bytes, *, after: int = 0) -> Timestamp:
        """WRITE: store ``data`` as the new value of ``block``; its timestamp, whose Time is
        above ``after`` (the file system passes the newest block time its file records, so
        a file's versions can be read back in order, ``bftfs/fs/past.py``).

        Raises:
            ValueError: ``data`` is larger than the configured block size.
            WriteFailed: fewer than ``N - t`` nodes acknowledged.
        """
        if len(data) > self.block_size:
            raise ValueError(f"block of {len(data)} bytes exceeds block_size {self.block_size}")
        encoded: erasure.Encoded = await self._cpu(
            len(data), erasure.encode, bytes(data), self.th.m, self.th.n
        )
        return await self._write_encoded(BlockId(block), encoded, after=after)

    async def _write_encoded(
        self, block: BlockId, encoded: erasure.Encoded, *, after: int
    ) -> Timestamp:
        """:meth:`write_block` of a block already encoded (Figure 3.1 from the timestamp on)."""
        floor = 0
        if self.one_round:
            time_ = max(self.clock_ns(), self._last_time + 1, after + 1)
            ts = make_timestamp(time_, self.endpoint.pid, encoded.verifier)
            stale = await self._fresh_write(block, ts, encoded)
            if stale == 0:
                self._last_time = time_
                self._stats["writes"] += 1
                return ts
            self._stats["write_fallbacks"] += 1
            if stale is not None and stale <= self.th.n - self.th.qc:
                # The guess may complete (too few refused to rule that out), so a reader
                # may already have returned it: writing the value again at a new timestamp
                # could show it a second time after another client's write (a, b, a - not
                # linearizable; issue 18, defect 1).  Finish this write where it is.  No
                # write that completed before this one began can be above the guess:
                # its QC benign hosts would have refused it, at least QC - t of the N - t
                # who answered, and QC - t > N - QC (``one_round`` is on only then).
                await self.do_write(block, ts, encoded.fragments, encoded.cross_checksum)
                self._last_time = time_
                self._stats["writes"] += 1
                return ts
            # Enough refused that the guess can never complete, and a write that completed
            # before this one may be above it: the seed's two rounds, above the guess.
            floor = time_ + 1
        time_ = max(await self.read_timestamp(block), floor, self._last_time + 1, after + 1)
        ts = make_timestamp(time_, self.endpoint.pid, encoded.verifier)
        await self.do_write(block, ts, encoded.fragments, encoded.cross_checksum)
        self._last_time = time_
        self._stats["writes"] += 1
        return ts

    async def _fresh_write(
        self, block: BlockId, ts: Timestamp, encoded: erasure.Encoded
    ) -> int | None:
        """A one-round write at a guessed timestamp: 0 if ``N - t`` nodes executed it, else
        how many of the ``N - t`` that answered refused it (None: fewer answered).

        Not in the seed (which always runs READ_TIMESTAMP first, Figure 3.1).  Each node
        executes a *fresh* write only if ``ts`` is above every version it hosts.  That is as
        good as reading the time first: a write W that completed before this one began is
        hosted by at least ``QC`` benign nodes, and any ``N - t`` acknowledgers include at
        least ``QC - t >= b + 1`` of them; each of those checked ``ts`` > its latest >= W.
        Byzantine nodes can only refuse (at most ``b`` of them, which ``N - t`` allows for)
        or acknowledge falsely (counted within those ``b``).  As soon as ``N - t`` nodes
        answered and one of them refused, the caller falls back rather than wait for
        stragglers that may never answer.
        """
        oks: set[int] = set()
        stale: set[int] = set()
        need = self.th.quorum

        def payload(node: NodeId) -> Any:
            frag = encoded.fragments[node]
            return WriteRequest(block, ts, encoded.cross_checksum, frag, fresh=True).to_wire()

        def accept(node: NodeId, raw: Any) -> bool:
            try:
                reply = WriteReply.from_wire(raw)
            except MessageError:
                return False
            (oks if reply.ok else stale).add(node)
            return True

        def enough(_replies: Mapping[NodeId, Any]) -> bool:
            return len(oks) >= need or (bool(stale) and len(oks) + len(stale) >= need)

        try:
            await self._quorum(self.nodes, KIND_WRITE, payload, enough=enough, accept=accept)
        except QuorumUnavailable:
            return None
        return 0 if len(oks) >= need else len(stale)

    @_outcomes(WriteFailed)
    async def read_timestamp(self, block: BlockId) -> int:
        """READ_TIMESTAMP: the Time for a new write of ``block`` (Figure 3.1)."""
        latest: dict[int, Timestamp] = {}

        def accept(node: NodeId, reply: Any) -> bool:
            try:
                ts = TimeReply.from_wire(reply).latest
            except MessageError:
                return False
            if not verify.time_reply_ok(ts, self.clock_ns(), self.max_ahead_ns):
                self._stats["time_replies_too_far_ahead"] += 1
                self.faults[(int(node), "time_ahead")] += 1
                return False
            latest[node] = ts
            return True

        replies = await self._quorum(
            self.nodes,
            KIND_TIME,
            TimeRequest(block).to_wire(),
            enough=lambda r: len(r) >= self.th.quorum,
            accept=accept,
        )
        return verify.choose_time({n: latest[n] for n in replies}, self.clock_ns())

    @_outcomes(WriteFailed)
    async def do_write(
        self,
        block: BlockId,
        ts: Timestamp,
        fragments: Sequence[bytes],
        cross_checksum: bytes,
        *,
        targets: Iterable[int] | None = None,
    ) -> None:
        """DO_WRITE: send fragment ``i`` to node ``i``; return after ``N - t`` valid acks.

        ``targets`` restricts which nodes are written (only Byzantine-client tests use it;
        then fewer than ``N - t`` acknowledgements are awaited: all of the targets').
        """
        nodes = self.nodes if targets is None else [NodeId(t) for t in targets]
        need = min(self.th.quorum, len(nodes))

        def payload(node: NodeId) -> Any:
            return WriteRequest(block, ts, cross_checksum, fragments[node]).to_wire()

        def accept(node: NodeId, reply: Any) -> bool:
            try:
                return WriteReply.from_wire(reply).ok
            except MessageError:
                return False

        await self._quorum(
            nodes, KIND_WRITE, payload, enough=lambda r: len(r) >= need, accept=accept
        )

    @_outcomes(WriteFailed)
    async def write_blocks(
        self,
        blocks: Mapping[int, bytes],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        after: int = 0,
    ) -> dict[int, Timestamp]:
        """Write many blocks concurrently (Times above ``after``); their timestamps.

        The blocks go in waves of ``concurrency // 2``: a wave is encoded in one call
        (:func:`_encode_wave`, in a worker thread when it is large, so the event loop keeps
        sending the previous wave meanwhile), then all its writes start in the same
        scheduler pass, so the batcher puts a wave's fragments for a node into one frame and
        the node stores them in one durable commit (``node/store.py``).  Started one at a
        time as slots freed, each write was a frame and a commit of its own (about 1.3
        writes per commit on a 200 MiB file).  At most ``concurrency`` blocks are in flight;
        every block is written exactly as :meth:`write_block` writes it.
        """
        out: dict[int, Timestamp] = {}
        if not blocks:
            return out
        for data in blocks.values():
            if len(data) > self.block_size:
                raise ValueError(f"block of {len(data)} bytes exceeds block_size {self.block_size}")
        limit = trio.Semaphore(max(concurrency, 1))
        wave = max(concurrency // 2, 1)
        items = list(blocks.items())

        async def one(block: int, encoded: erasure.Encoded) -> None:
            try:
                out[block] = await self._write_encoded(BlockId(block), encoded, after=after)
            finally:
                limit.release()

        async with trio.open_nursery() as nursery:
            for start in range(0, len(items), wave):
                chunk = items[start : start + wave]
                size = sum(len(data) for _, data in chunk)
                encoded: list[erasure.Encoded] = await self._cpu(
                    size, _encode_wave, [data for _, data in chunk], self.th.m, self.th.n
                )
                for _ in chunk:
                    await limit.acquire()
                for (block, _data), enc in zip(chunk, encoded, strict=True):
                    nursery.start_soon(one, block, enc)
        return out

    @_outcomes(ReadFailed)
    async def space_used(self) -> int:
        """Bytes in use on a node's store as ``N - t`` nodes report it: the ``(b + 1)``-th
        largest answer, at or below what some correct node uses (``df``)."""
        used: dict[int, int] = {}

        def accept(node: NodeId, raw: Any) -> bool:
            try:
                used[node] = parse_space_reply(raw)
            except MessageError:
                return False
            return True

        await self.endpoint.quorum_call(  # not batched: rw.space is no batch item
            self.nodes,
            KIND_SPACE,
            {"v": RW_WIRE_VERSION},
            enough=lambda r: len(r) >= self.th.quorum,
            accept=accept,
            probe_after=self.probe_after,
            timeout=self.timeout if self.timeout is not None else self.endpoint.timeout,
        )
        ranked = sorted(used.values(), reverse=True)
        return ranked[min(self.th.b, len(ranked) - 1)]

    # Read ----------------------------------------------------------------------------------

    @_outcomes(ReadFailed)
    async def read_block(self, block: BlockId | int) -> bytes:
        """READ: the value of the latest complete write of ``block`` (empty if none).

        Raises:
            ReadAborted: garbage collection raced with every one of ``max_restarts`` attempts.
            ReadFailed: fewer than ``N - t`` nodes answered validly.
        """
        return (await self.read_version(block)).data

    @_outcomes(ReadFailed)
    async def read_version(self, block: BlockId | int, *, repair: bool = True) -> ReadOutcome:
        """READ, with what it found: the candidate's timestamp, cross checksum, fragments.

        ``repair`` False leaves a repairable candidate as it is (validated but not written
        back; ``outcome.kind`` says REPAIR): a storage node catching up uses it to learn the
        latest *complete* write without taking part in anyone's write (node/rw_catchup.py).

        Raises:
            ReadAborted, ReadFailed: as :meth:`read_block`.
        """
        block = BlockId(block)
        for attempt in range(self.max_restarts + 1):
            # Restart on any collected reply that matters, except on the last attempt
            # (classify.py, choice 6).
            last = attempt == self.max_restarts
            got = await self._read_attempt(block, restart_at=None if last else 1, repair=repair)
            if got is not None:
                self._stats["reads"] += 1
                return got
            self._stats["restarts"] += 1
        raise ReadAborted(f"block {block}: {self.max_restarts} restarts, giving up")

    @_outcomes(ReadFailed)
    async def read_blocks(
        self, blocks: Iterable[int], *, concurrency: int = DEFAULT_CONCURRENCY
    ) -> dict[int, bytes]:
        """Read many blocks concurrently; their values by block."""
        out: dict[int, bytes] = {}
        limit = trio.Semaphore(concurrency)

        async def one(block: int) -> None:
            async with limit:
                out[block] = await self.read_block(BlockId(block))

        async with trio.open_nursery() as nursery:
            for block in dict.fromkeys(blocks):
                nursery.start_soon(one, block)
        return out

    @_outcomes(ReadFailed)
    async def read_as_of(self, block: BlockId | int, time_ns: int) -> bytes:
        """READ as of a past moment: the value of the latest complete write of ``block``
        whose timestamp's Time is at most ``time_ns`` (versions after it are ignored, as if
        not yet written).  Nothing is repaired: the past is read, never written.

        Raises:
            HistoryReclaimed: more than ``b`` nodes collected below that time.
            ReadAborted, ReadFailed: as :meth:`read_block`.
        """
        block = BlockId(block)
        cap = Timestamp(min(time_ns, MAX_TIME), MAX_WRITER, b"\xff" * len(ZERO.verifier))
        for attempt in range(self.max_restarts + 1):
            last = attempt == self.max_restarts
            got = await self._read_attempt(
                block, restart_at=None if last else 1, repair=False, cap=cap
            )
            if got is not None:
                self._stats["past_reads"] += 1
                return got.data
            self._stats["restarts"] += 1
        raise ReadAborted(f"block {block}: {self.max_restarts} restarts, giving up")

    def _absorb(
        self, st: _ReadState, node: int, req: ReadRequest, raw: Any, *, fetched: bool
    ) -> bool:
        """Validate one read reply and merge it into ``st``; whether it was valid."""
        if node in st.bad:
            return False
        try:
            reply = ReadReply.from_wire(raw, req, n=self.th.n, max_fragment=self.max_fragment)
        except MessageError as e:
            st.mark_bad(node, f"malformed: {e}")
            self._stats["bad_replies"] += 1
            self.faults[(int(node), "malformed")] += 1
            return False
        bad = verify.check_read_reply(self.th, node, req, reply)
        if bad is not None:
            st.mark_bad(node, bad.reason)
            self._stats["bad_replies"] += 1
            self.faults[(int(node), "corrupt")] += 1
            self._suspect[int(node)] = SUSPECT_READS
            log.info("node %s: %s", node, bad.reason)
            return False
        st.floors[node] = reply.floor
        st.views[node] = view_from_history(
            node,
            reply.history,
            reply.more,
            reply.floor,
            previous=st.views.get(node),
            fetched=fetched,
            max_fetches=self.max_fetches,
        )
        if req.data and reply.latest is not None:
            assert reply.cross_checksum is not None and reply.fragment is not None
            st.frags.setdefault(reply.latest, {})[node] = (reply.cross_checksum, reply.fragment)
        if reply.verified and reply.latest is not None:
            st.verified.setdefault(reply.latest, set()).add(node)
        return True

    def _round_done(self, st: _ReadState) -> bool:
        """Whether a READ_LATEST round has what the next decision needs."""
        if len(st.views) < min(self.th.quorum, self.th.complete if self.th.fast_read else 0):
            return False  # decide() could only say WIDEN: skip the walk (hot path)
        return self._decide(st).kind is not Kind.WIDEN

    def _decide(self, st: _ReadState) -> Decision:
        return decide(
            self.th, st.good_views(), rejected=frozenset(st.rejected), restart_at=st.restart_at
        )

    async def _read_attempt(
        self,
        block: BlockId,
        *,
        restart_at: int | None,
        repair: bool,
        cap: Timestamp | None = None,
    ) -> ReadOutcome | None:
        """One pass of READ from READ_LATEST (READ_PREV up to ``cap`` inclusive when reading
        the past); None means RESTART."""
        st = _ReadState(restart_at=restart_at)
        order = self._read_order()
        # Systematic fragments first: decoding from nodes 0..m-1 costs no arithmetic.
        data_nodes = set(order[: self.th.m])
        await self._read_latest(st, block, order, data_nodes, initial=self.th.first_round, cap=cap)
        while True:
            if cap is not None:
                collected = [n for n, f in st.floors.items() if f > cap and n not in st.bad]
                if len(collected) > self.th.b:
                    raise HistoryReclaimed(
                        f"block {block}: nodes {sorted(collected)} collected its versions "
                        f"up to time {cap.time} (retention)"
                    )
            d = self._decide(st)
            self._stats[f"decision.{d.kind.value}"] += 1
            if d.kind is Kind.RESTART:
                log.debug("block %s: restart (%s)", block, d.reason)
                return None
            if d.kind is Kind.WIDEN:
                rest = [n for n in self.nodes if n not in st.views and n not in st.bad]
                if not rest:
                    raise ReadFailed(
                        f"block {block}: no decision from {len(st.views)} valid replies; "
                        f"bad: {st.bad}"
                    )
                await self._read_latest(st, block, rest, set(), initial=None, cap=cap)
                continue
            if d.kind is Kind.FETCH:
                await self._fetch_history(st, block, d)
                continue
            assert d.candidate is not None
            if d.candidate == ZERO:
                return ReadOutcome(ZERO, Kind.COMPLETE, b"", None, ())
            regen = await self._validate(st, block, d, repair=repair)
            if regen is None:
                continue
            return ReadOutcome(
                d.candidate,
                d.kind,
                regen.data,
                regen.cross_checksum,
                regen.fragments,
                tuple(sorted(st.rejected, reverse=True)),
            )

    def _read_order(self) -> list[NodeId]:
        """The nodes in the order a read asks them: by index (the systematic fragments'
        first), nodes that recently refused connections or served a fragment that failed
        its check last.  Only the cost changes: every reply is judged as before, and a
        node asked last is still asked whenever the others do not decide."""
        suspect = self._suspect
        for node in list(suspect):
            suspect[node] -= 1
            if suspect[node] <= 0:
                del suspect[node]
        last = self.endpoint.unreachable(self.nodes) | {NodeId(n) for n in suspect}
        return live_first(self.nodes, last)

    async def _read_latest(
        self,
        st: _ReadState,
        block: BlockId,
        targets: Sequence[int],
        data_nodes: set[NodeId],
        *,
        initial: int | None,
        cap: Timestamp | None = None,
    ) -> None:
        self._stats["rounds"] += 1
        reqs = {
            n: ReadRequest(block, data=n in data_nodes, below=cap, inclusive=cap is not None)
            for n in targets
        }

        answered: set[int] = set()

        def accept(node: NodeId, raw: Any) -> bool:
            answered.add(node)
            return self._absorb(st, node, reqs[node], raw, fetched=False)

        try:
            await self._quorum(
                targets,
                reqs[targets[0]].kind,
                lambda n: reqs[n].to_wire(),
                enough=lambda _r: self._round_done(st),
                accept=accept,
                initial=initial,
            )
        except QuorumUnavailable as e:
            # Every target answered or failed, or time ran out: the caller's next decision
            # widens further or gives up.
            st.failed(e, targets, answered)

    async def _fetch_history(self, st: _ReadState, block: BlockId, d: Decision) -> None:
        """READ_PREV (history only) to the nodes the decision names."""
        self._stats["rounds"] += 1
        self._stats["history_fetches"] += len(d.fetch)
        reqs = {
            f.node: ReadRequest(block, data=False, below=f.below, inclusive=f.inclusive)
            for f in d.fetch
        }
        pending = set(reqs)

        answered: set[int] = set()

        def accept(node: NodeId, raw: Any) -> bool:
            answered.add(node)
            pending.discard(node)
            return self._absorb(st, node, reqs[node], raw, fetched=True)

        try:
            await self._quorum(
                list(reqs),
                reqs[d.fetch[0].node].kind,
                lambda n: reqs[n].to_wire(),
                enough=lambda _r: not pending,
                accept=accept,
            )
        except QuorumUnavailable as e:
            # A node that cannot answer a history request no longer counts as a reply; the
            # next decision widens to other nodes if that leaves too few.
            st.failed(e, reqs, answered)

    async def _validate(
        self, st: _ReadState, block: BlockId, d: Decision, *, repair: bool
    ) -> erasure.Regenerated | None:
        """Fetch ``m`` valid fragments of the candidate, regenerate, repair if needed.

        Returns the validated regeneration, or None when the decision must be made again (the
        candidate was poisonous, or a holder failed to produce its fragment and was marked bad).
        """
        cand = d.candidate
        assert cand is not None
        have = st.frags.setdefault(cand, {})
        missing = [n for n in d.holders if n not in have and n not in st.bad]
        if len(have) < self.th.m:
            await self._fetch_fragments(st, block, cand, missing)
            if len(have) < self.th.m:
                return None  # holders were marked bad; decide again
        ccs = {cc for cc, _ in have.values()}
        # Every fragment validated against the same verifier, so one cross checksum.
        (cc,) = ccs
        frags = {n: f for n, (_cc, f) in sorted(have.items())[: self.th.m]}
        size = erasure.cc_length(cc)
        if (
            self.trust_verified
            and d.kind is Kind.COMPLETE
            and len(st.verified.get(cand, ())) > self.th.b
        ):
            # b + 1 nodes flag it verified: one of them is correct and regenerated it
            # (or holds b + 1 identical NOTIFYs), so decoding is enough (L1695-1698).
            self._stats["verified_skips"] += 1
            if sorted(frags) == list(range(self.th.m)):
                # The systematic fragments: decoding is joining them, cheaper here than
                # the hand-off to a worker thread (issue 34).
                self._stats["systematic_reads"] += 1
                return erasure.Regenerated(
                    True, erasure.decode(frags, size, self.th.m, self.th.n), (), cc
                )
            data = await self._cpu(size, erasure.decode, frags, size, self.th.m, self.th.n)
            return erasure.Regenerated(True, data, (), cc)
        regen: erasure.Regenerated = await self._cpu(
            size, verify.validate_candidate, self.th, frags, cc
        )
        if not regen.valid:
            self._stats["poisonous"] += 1
            log.info("block %s: candidate %r is poisonous (cross checksum mismatch)", block, cand)
            st.rejected.add(cand)
            return None
        if d.kind is Kind.REPAIR and repair:
            await self.repair_block(block, cand, regen)
        return regen

    async def repair_block(
        self, block: BlockId, candidate: Timestamp, regen: erasure.Regenerated
    ) -> None:
        """REPAIR (Figure 3.2, seed L992-1095): write a validated repairable candidate back.

        A repairable candidate is hosted by fewer than ``QC`` nodes, so a later read could
        classify it incomplete and return an older version: returning it without repair
        would break linearizability.  It is written to every node *at its own timestamp*
        (not a new one, so it stays the same version and concurrent readers agree), with the
        fragments and cross checksum regenerated from ``m`` validated fragments, and the
        read returns only after ``N - t`` acknowledgements, when the candidate is complete.

        Raises:
            WriteFailed: fewer than ``N - t`` nodes acknowledged the repair.
        """
        await self.do_write(block, candidate, regen.fragments, regen.cross_checksum)
        self._stats["repairs"] += 1

    async def _fetch_fragments(
        self, st: _ReadState, block: BlockId, cand: Timestamp, holders: Sequence[int]
    ) -> None:
        """READ_PREV at-or-below ``cand`` with data, from holders, until ``m`` are valid."""
        have = st.frags[cand]
        need = self.th.m - len(have)
        if not holders:
            return
        self._stats["rounds"] += 1
        req = ReadRequest(block, data=True, below=cand, inclusive=True)

        answered: set[int] = set()

        def accept(node: NodeId, raw: Any) -> bool:
            answered.add(node)
            if not self._absorb(st, node, req, raw, fetched=False):
                return False
            if node not in st.frags.get(cand, {}):
                view = st.views.get(node)
                if view is not None and view.status(cand) is HostStatus.COLLECTED:
                    # Garbage collection removed it since the node listed it: a race that
                    # the next decision resolves (seed L1566-1574), not a lie.
                    return False
                # It listed the candidate before and now returns something else: refuted.
                st.mark_bad(node, f"did not produce its fragment of {cand!r}")
                self._stats["bad_replies"] += 1
                self.faults[(int(node), "refuted")] += 1
                self._suspect[int(node)] = SUSPECT_READS
                return False
            return True

        try:
            await self._quorum(
                holders,
                req.kind,
                req.to_wire(),
                enough=lambda _r: len(have) >= self.th.m,
                accept=accept,
                initial=need,
            )
        except QuorumUnavailable as e:
            st.failed(e, holders, answered)


@asynccontextmanager
async def open_rw_client(
    endpoint: Endpoint, config: Any, *, batch: bool = True, **options: Any
) -> AsyncIterator[RWClient]:
    """An :class:`RWClient` whose requests are batched per node (``batch``), with a nursery
    for the batches and the stragglers of its quorum calls; both end with the block."""
    async with trio.open_nursery() as nursery:
        batcher = None
        if batch:
            batcher = rw_batcher(endpoint, nursery, timeout=options.get("timeout"))
        try:
            yield RWClient(endpoint, config, batcher=batcher, **options)
        finally:
            nursery.cancel_scope.cancel()
