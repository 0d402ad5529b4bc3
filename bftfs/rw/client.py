"""The PASIS read/write client: the driver of Figures 3.1 and 3.2 (seed L926-1095).

The client only does I/O.  It fans requests out with ``Endpoint.quorum_call``, turns every
reply into data (a :class:`~bftfs.rw.classify.NodeView`, a fragment, or a bad reply), and asks
the pure cores what to do next: :func:`bftfs.rw.classify.decide` for the read loop,
:mod:`bftfs.rw.verify` for VALIDATE, the validated cross checksum and the write's time.

:class:`RWClient` is a facade over parts of one job each, composed (none inherits from
another); callers see only it:

- ``rw/calls.py`` :class:`~bftfs.rw.calls.RWCalls`: the quorum calls (batched or not), the
  worker thread for big blocks, the counters;
- ``rw/health.py`` :class:`~bftfs.rw.health.NodeHealth`: faults detected per node and the
  order a read asks the nodes (suspect and unreachable nodes last);
- ``rw/write.py`` :class:`~bftfs.rw.write.Writer`: Figure 3.1 (one-round write at a guessed
  timestamp, else READ_TIMESTAMP then WRITE), waves of blocks, the read's repair;
- ``rw/readround.py`` :class:`~bftfs.rw.readround.ReadRounds`: the rounds of a read attempt
  (READ_LATEST, READ_PREV of history, of fragments) and what their replies teach;
- ``rw/read.py`` :class:`~bftfs.rw.read.Reader`: Figure 3.2's loop (widen, fetch, validate,
  repair, restart), reads of the past;
- ``rw/failures.py``: the outcome errors the public methods raise.

Concurrency: each call is independent; ``read_blocks`` / ``write_blocks`` run many blocks at
once, and a client made by :func:`open_rw_client` sends the requests of concurrent calls to
one node in shared ``rw.batch`` frames (batch.py).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import trio

from bftfs import erasure
from bftfs.crypto import SEAL_OVERHEAD
from bftfs.ids import NodeId
from bftfs.net.batch import Batcher
from bftfs.net.endpoint import Endpoint
from bftfs.rw.batch import rw_batcher
from bftfs.rw.calls import DEFAULT_CONCURRENCY, DEFAULT_THREAD_THRESHOLD, RWCalls
from bftfs.rw.classify import DEFAULT_MAX_FETCHES, RWThresholds
from bftfs.rw.failures import (
    HistoryReclaimed,
    ReadAborted,
    ReadFailed,
    WriteFailed,
    outcomes,
)
from bftfs.rw.failures import storage_full as _storage_full
from bftfs.rw.health import SUSPECT_READS, NodeHealth
from bftfs.rw.messages import KIND_SPACE, RW_WIRE_VERSION, BlockId, MessageError, parse_space_reply
from bftfs.rw.read import Reader
from bftfs.rw.readround import ReadRounds
from bftfs.rw.timestamp import DEFAULT_MAX_AHEAD_NS, Timestamp
from bftfs.rw.verify import ReadOutcome
from bftfs.rw.write import Prepared, Writer

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_MAX_RESTARTS",
    "DEFAULT_THREAD_THRESHOLD",
    "SUSPECT_READS",
    "HistoryReclaimed",
    "RWClient",
    "RWStatistics",
    "ReadAborted",
    "ReadFailed",
    "WriteFailed",
    "_storage_full",
    "open_rw_client",
]

#: Read attempts restarted after garbage collection before giving up.
DEFAULT_MAX_RESTARTS = 8


@dataclass(frozen=True)
class RWStatistics:
    """Counters of one :class:`RWClient` (see :meth:`RWClient.statistics`)."""

    counters: dict[str, int] = field(default_factory=dict)

    def __getitem__(self, key: str) -> int:
        return self.counters.get(key, 0)


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
            ``Writer._fresh_write``); False always runs READ_TIMESTAMP first.
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
        block_size = largest_block(config)
        self.max_fragment = erasure.fragment_size(block_size, self.th.m)
        self.calls = RWCalls(
            endpoint,
            self.th,
            config.node_ids if nodes is None else nodes,
            timeout=timeout,
            probe_after=probe_after,
            batcher=batcher,
            thread_threshold=thread_threshold,
        )
        self.health = NodeHealth(endpoint)
        # The fallback of a one-round write relies on QC - t > N - QC (see write_block):
        # with thresholds that do not give it, every write takes the seed's two rounds.
        th = self.th
        self.writer = Writer(
            self.calls,
            self.health,
            block_size=block_size,
            clock_ns=clock_ns,
            max_ahead_ns=max_ahead_ns,
            one_round=one_round and th.qc - th.t > th.n - th.qc,
        )
        rounds = ReadRounds(
            self.calls, self.health, max_fragment=self.max_fragment, max_fetches=max_fetches
        )
        self.reader = Reader(
            self.calls,
            self.health,
            rounds,
            self.writer,
            max_restarts=max_restarts,
            trust_verified=trust_verified,
        )

    # What callers read (and two of them set) --------------------------------------------

    @property
    def nodes(self) -> list[NodeId]:
        """The nodes this client asks."""
        return self.calls.nodes

    @property
    def batcher(self) -> Batcher | None:
        """The batcher requests go through, if any."""
        return self.calls.batcher

    @property
    def block_size(self) -> int:
        """The largest block this client writes (a test sets it to skip the check)."""
        return self.writer.block_size

    @block_size.setter
    def block_size(self, size: int) -> None:
        self.writer.block_size = size

    @property
    def clock_ns(self) -> Callable[[], int]:
        """The wall clock of this client's timestamps."""
        return self.writer.clock_ns

    @property
    def max_ahead_ns(self) -> int:
        """The clock bound (a TIME reply beyond it does not count)."""
        return self.writer.max_ahead_ns

    @property
    def one_round(self) -> bool:
        """Whether a write first tries one round trip (off when the thresholds forbid)."""
        return self.writer.one_round

    @property
    def timeout(self) -> float | None:
        """Per quorum call; None: the endpoint's."""
        return self.calls.timeout

    @property
    def probe_after(self) -> float:
        """Seconds before a quorum call probes one more node."""
        return self.calls.probe_after

    @property
    def max_restarts(self) -> int:
        """Read attempts restarted after garbage collection before giving up."""
        return self.reader.max_restarts

    @property
    def trust_verified(self) -> bool:
        """Whether a read skips regenerating a candidate ``b + 1`` nodes flag verified."""
        return self.reader.trust_verified

    @property
    def faults(self) -> Counter[tuple[int, str]]:
        """Faults detected per node (see :class:`~bftfs.rw.health.NodeHealth`); a node
        sets its findings' counter here (node/findings.py)."""
        return self.health.faults

    @faults.setter
    def faults(self, counter: Counter[tuple[int, str]]) -> None:
        self.health.faults = counter

    def statistics(self) -> RWStatistics:
        """A snapshot of the counters (reads, writes, rounds, repairs, restarts, ...)."""
        counters = dict(self.calls.stats)
        if self.calls.batcher is not None:
            counters["batches"] = self.calls.batcher.batches
            counters["batched_requests"] = self.calls.batcher.items
        return RWStatistics(counters)

    # Write (rw/write.py) ----------------------------------------------------------------

    async def write_block(self, block: BlockId | int, data: bytes, *, after: int = 0) -> Timestamp:
        """WRITE ``data`` as the new value of ``block``: :meth:`Writer.write_block`."""
        return await self.writer.write_block(block, data, after=after)

    async def write_blocks(
        self,
        blocks: Mapping[int, bytes],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        after: int = 0,
        prepared: Mapping[int, Prepared] | None = None,
    ) -> dict[int, Timestamp]:
        """Write many blocks concurrently: :meth:`Writer.write_blocks`."""
        return await self.writer.write_blocks(
            blocks, concurrency=concurrency, after=after, prepared=prepared
        )

    async def prepare(
        self,
        block: int,
        data: bytes | bytearray,
        before: Callable[[bytes | bytearray], bytes | bytearray] | None = None,
        *,
        into: tuple[int, Callable[[memoryview], None]] | None = None,
    ) -> Prepared:
        """Encode a block ahead of its write: :meth:`Writer.prepare` (``block`` is for
        wrappers that seal it)."""
        return await self.writer.prepare(data, before, into=into)

    async def read_timestamp(self, block: BlockId) -> int:
        """READ_TIMESTAMP: :meth:`Writer.read_timestamp`."""
        return await self.writer.read_timestamp(block)

    async def do_write(
        self,
        block: BlockId,
        ts: Timestamp,
        fragments: Sequence[bytes | memoryview],
        cross_checksum: bytes,
        *,
        targets: Iterable[int] | None = None,
        moved: bool = False,
    ) -> None:
        """DO_WRITE at a given timestamp: :meth:`Writer.do_write`."""
        await self.writer.do_write(
            block, ts, fragments, cross_checksum, targets=targets, moved=moved
        )

    async def repair_block(
        self, block: BlockId, candidate: Timestamp, regen: erasure.Regenerated
    ) -> None:
        """REPAIR a validated candidate at its own timestamp: :meth:`Writer.repair_block`."""
        await self.writer.repair_block(block, candidate, regen)

    # Read (rw/read.py) ------------------------------------------------------------------

    async def read_block(self, block: BlockId | int) -> bytes | bytearray:
        """READ the latest complete write of ``block``: :meth:`Reader.read_block`."""
        return await self.reader.read_block(block)

    async def read_version(self, block: BlockId | int, *, repair: bool = True) -> ReadOutcome:
        """READ, with what it found: :meth:`Reader.read_version`."""
        return await self.reader.read_version(block, repair=repair)

    async def read_blocks(
        self, blocks: Iterable[int], *, concurrency: int = DEFAULT_CONCURRENCY
    ) -> dict[int, bytes | bytearray]:
        """Read many blocks concurrently: :meth:`Reader.read_blocks`."""
        return await self.reader.read_blocks(blocks, concurrency=concurrency)

    async def read_as_of(self, block: BlockId | int, time_ns: int) -> bytes | bytearray:
        """READ as of a past moment: :meth:`Reader.read_as_of`."""
        return await self.reader.read_as_of(block, time_ns)

    async def read_version_as_of(self, block: BlockId | int, time_ns: int) -> ReadOutcome:
        """READ as of a past moment, with what it found: :meth:`Reader.read_version_as_of`
        (``absent``: no version up to then)."""
        return await self.reader.read_version_as_of(block, time_ns)

    # Space --------------------------------------------------------------------------------

    @outcomes(ReadFailed)
    async def space(self) -> Space:
        """A node's store as ``N - t`` nodes report it (``df``): bytes used, the ``(b + 1)``-th
        largest answer (at or below what some correct node uses), and the free disk a node
        may count on, the ``(b + 1)``-th smallest answer (at or above what some correct
        node has: ``b`` liars can neither shrink nor inflate it past a correct one)."""
        calls = self.calls
        return await ask_space(
            self.endpoint,
            calls.nodes,
            self.th.quorum,
            self.th.b,
            probe_after=calls.probe_after,
            timeout=calls.timeout if calls.timeout is not None else self.endpoint.timeout,
        )


class Space(NamedTuple):
    """What one node's store uses and the free disk it may count on (None: not told)."""

    used: int
    free: int | None


async def ask_space(
    endpoint: Endpoint, nodes: Sequence[NodeId], quorum: int, liars: int, **options: Any
) -> Space:
    """``rw.space`` of ``nodes`` until ``quorum`` answered (``options``: the quorum call's):
    bytes used, the ``(liars + 1)``-th largest answer (at or below what some correct node
    uses), and the free disk a node may count on, the ``(liars + 1)``-th smallest (at or
    above what some correct node has: ``liars`` can neither shrink nor inflate it past a
    correct one).  Shared by PASIS's client and the register block store."""
    used: dict[int, int] = {}
    free: dict[int, int] = {}

    def accept(node: NodeId, raw: Any) -> bool:
        try:
            used[node], room = parse_space_reply(raw)
        except MessageError:
            return False
        if room is not None:
            free[node] = room
        return True

    await endpoint.quorum_call(  # not batched: rw.space is no batch item
        nodes,
        KIND_SPACE,
        {"v": RW_WIRE_VERSION},
        enough=lambda r: len(r) >= quorum,
        accept=accept,
        **options,
    )
    ranked = sorted(used.values(), reverse=True)
    rooms = sorted(free.values())
    return Space(
        used=ranked[min(liars, len(ranked) - 1)],
        free=rooms[liars] if len(rooms) > liars else None,
    )


def largest_block(config: Any) -> int:
    """The largest block a client writes or reads, which the nodes accept: the cluster's
    biggest per-file block size (``[cluster] big_block_size``, docs/fs.md), sealed (a
    mount of a sealed cluster writes each block ``SEAL_OVERHEAD`` bytes longer than its
    plaintext, docs/confidentiality.md)."""
    return int(getattr(config, "max_file_block_size", config.block_size)) + SEAL_OVERHEAD


def max_fragment_of(config: Any) -> int:
    """The largest fragment of a block of ``config``'s cluster."""
    return erasure.fragment_size(largest_block(config), RWThresholds.from_config(config).m)


@asynccontextmanager
async def open_rw_client(
    endpoint: Endpoint, config: Any, *, batch: bool = True, **options: Any
) -> AsyncIterator[RWClient]:
    """An :class:`RWClient` whose requests are batched per node (``batch``), with a nursery
    for the batches and the stragglers of its quorum calls; both end with the block."""
    async with trio.open_nursery() as nursery:
        batcher = None
        if batch:
            batcher = rw_batcher(
                endpoint,
                nursery,
                timeout=options.get("timeout"),
                max_fragment=max_fragment_of(config),
            )
        try:
            yield RWClient(endpoint, config, batcher=batcher, **options)
        finally:
            nursery.cancel_scope.cancel()
