"""The PASIS client's write path: Figure 3.1 (seed L926-991) and the read's repair.

Write: encode, READ_TIMESTAMP from ``N - t`` nodes (TIME replies beyond the clock bound do
not count), MAKE_TIMESTAMP, then WRITE to every node and return after ``N - t`` valid
acknowledgements; the other requests finish in the background (L1675-1677).  By default a
write first tries one round trip: WRITE at a guessed timestamp (the clock) that nodes
execute only if it is above everything they host; when that fails it runs the seed's two
rounds (``one_round``; :meth:`Writer._fresh_write` gives the argument).

Repair (Figure 3.2): a read's write-back of a validated repairable candidate at its own
timestamp, :meth:`Writer.repair_block`, called by the read loop (``rw/read.py``).

Slow is not unavailable (``rw/calls.py``): when READ_TIMESTAMP or WRITE ends without its
``N - t`` answers while some nodes were merely silent (no reply within the call's
patience, connection up), those nodes are asked again - only they, the answers already
counted kept - with twice the patience each time (:meth:`Writer._patient_quorum`), and
the write fails with ``WriteFailed`` only once none of them is live by the transport's
judgement, the caller's patience ran out, or the rounds are spent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from bftfs import erasure
from bftfs.ids import NodeId
from bftfs.net.quorum import QuorumUnavailable
from bftfs.rw import verify
from bftfs.rw.calls import DEFAULT_CONCURRENCY, RWCalls, silent_targets
from bftfs.rw.failures import WriteFailed, outcomes
from bftfs.rw.health import NodeHealth
from bftfs.rw.messages import (
    KIND_TIME,
    KIND_WRITE,
    BlockId,
    MessageError,
    TimeReply,
    TimeRequest,
    WriteReply,
    WriteRequest,
)
from bftfs.rw.timestamp import Timestamp, make_timestamp

log = logging.getLogger(__name__)

#: The most fragment bytes one wave of :meth:`Writer.write_blocks` sends each node (one
#: frame, one commit there).  A node takes nothing of a frame before all of it arrived, so
#: across a WAN link a 16-block wave of 1 MiB blocks (5.6 MB a node, 0.9 s at 50 Mbit/s)
#: left the link idle while the node stored and acknowledged it at the end of every
#: flush: smaller frames let the node store one while the next arrives (docs/wan.md).
#: Small blocks keep waves of ``concurrency // 2``.
WAVE_FRAGMENT_BYTES = 2 * 1024 * 1024


def _waves(
    items: Sequence[tuple[int, bytes]], most: int, m: int
) -> Iterable[Sequence[tuple[int, bytes]]]:
    """``items`` in consecutive waves of at most ``most`` blocks and, past its first
    block, :data:`WAVE_FRAGMENT_BYTES` of fragments for each node."""
    start = 0
    while start < len(items):
        end, size = start, 0
        while end < len(items) and end - start < most:
            size += erasure.fragment_size(len(items[end][1]), m)
            if end > start and size > WAVE_FRAGMENT_BYTES:
                break
            end += 1
        yield items[start:end]
        start = end


def _encode_wave(blocks: Sequence[bytes], m: int, n: int) -> list[erasure.Encoded]:
    """ENCODE + MAKE_CROSS_CHECKSUM for several blocks in one call (one worker-thread
    hand-off for a whole wave of :meth:`Writer.write_blocks`).  Each block is read once,
    into its stripes (``erasure.encode``): a sealed block is a bytearray, which ``bytes()``
    would copy first."""
    return [erasure.encode(data, m, n) for data in blocks]


@dataclass(frozen=True, slots=True)
class Prepared:
    """A block encoded ahead of its write (:meth:`Writer.prepare`): ``data`` as given to
    :meth:`Writer.write_blocks`, and its encoding by ``writer``.  The encoding is used only
    by that writer (its ``N`` and ``m``: a mount that moved to another generation encodes
    again) and only for that very ``data`` object."""

    writer: Writer
    data: bytes | bytearray | memoryview
    encoded: erasure.Encoded | erasure.EncodedViews


class Writer:
    """Writes blocks (see the module docstring).

    Args:
        calls: the client's quorum calls, CPU work and counters.
        health: where a TIME reply beyond the clock bound is counted against its node.
        block_size: the largest block written.
        clock_ns: wall clock for timestamps.
        max_ahead_ns: the clock bound; must match the nodes' bound.
        one_round: try a write in one round trip first (the caller checked the thresholds
            allow it).
    """

    def __init__(
        self,
        calls: RWCalls,
        health: NodeHealth,
        *,
        block_size: int,
        clock_ns: Callable[[], int],
        max_ahead_ns: int,
        one_round: bool,
    ) -> None:
        self.calls = calls
        self.th = calls.th
        self.health = health
        self.block_size = block_size
        self.clock_ns = clock_ns
        self.max_ahead_ns = max_ahead_ns
        self.one_round = one_round
        #: Time of this client's latest write: its writes' times strictly increase.
        self._last_time = 0

    def _check_size(self, length: int) -> None:
        if length > self.block_size:
            raise ValueError(f"block of {length} bytes exceeds block_size {self.block_size}")

    @outcomes(WriteFailed)
    async def write_block(self, block: BlockId | int, data: bytes, *, after: int = 0) -> Timestamp:
        """WRITE: store ``data`` as the new value of ``block``; its timestamp, whose Time is
        above ``after`` (the file system passes the newest block time its file records, so
        a file's versions can be read back in order, ``bftfs/fs/history/past.py``).

        Raises:
            ValueError: ``data`` is larger than the configured block size.
            WriteFailed: fewer than ``N - t`` nodes acknowledged.
        """
        self._check_size(len(data))
        encoded: erasure.Encoded = await self.calls.cpu(
            len(data), erasure.encode, data, self.th.m, self.th.n
        )
        return await self._write_encoded(BlockId(block), encoded, after=after)

    async def _write_encoded(
        self, block: BlockId, encoded: erasure.Encoded | erasure.EncodedViews, *, after: int
    ) -> Timestamp:
        """:meth:`write_block` of a block already encoded (Figure 3.1 from the timestamp on)."""
        floor = 0
        stats = self.calls.stats
        if self.one_round:
            time_ = max(self.clock_ns(), self._last_time + 1, after + 1)
            ts = make_timestamp(time_, self.calls.endpoint.pid, encoded.verifier)
            stale = await self._fresh_write(block, ts, encoded)
            if stale == 0:
                self._last_time = time_
                stats["writes"] += 1
                return ts
            stats["write_fallbacks"] += 1
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
                stats["writes"] += 1
                return ts
            # Enough refused that the guess can never complete, and a write that completed
            # before this one may be above it: the seed's two rounds, above the guess.
            floor = time_ + 1
        time_ = max(await self.read_timestamp(block), floor, self._last_time + 1, after + 1)
        ts = make_timestamp(time_, self.calls.endpoint.pid, encoded.verifier)
        await self.do_write(block, ts, encoded.fragments, encoded.cross_checksum)
        self._last_time = time_
        stats["writes"] += 1
        return ts

    async def _fresh_write(
        self, block: BlockId, ts: Timestamp, encoded: erasure.Encoded | erasure.EncodedViews
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
            await self.calls.quorum(
                self.calls.nodes, KIND_WRITE, payload, enough=enough, accept=accept
            )
        except QuorumUnavailable:
            return None
        return 0 if len(oks) >= need else len(stale)

    @outcomes(WriteFailed)
    async def read_timestamp(self, block: BlockId) -> int:
        """READ_TIMESTAMP: the Time for a new write of ``block`` (Figure 3.1)."""
        latest: dict[int, Timestamp] = {}

        def accept(node: NodeId, reply: Any) -> bool:
            try:
                ts = TimeReply.from_wire(reply).latest
            except MessageError:
                return False
            if not verify.time_reply_ok(ts, self.clock_ns(), self.max_ahead_ns):
                self.calls.stats["time_replies_too_far_ahead"] += 1
                self.health.blame(node, "time_ahead")
                return False
            latest[node] = ts
            return True

        await self._patient_quorum(
            KIND_TIME,
            lambda _n: TimeRequest(block).to_wire(),
            enough=lambda: len(latest) >= self.th.quorum,
            accept=accept,
        )
        return verify.choose_time(latest, self.clock_ns())

    @outcomes(WriteFailed)
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
        """DO_WRITE: send fragment ``i`` to node ``i``; return after ``N - t`` valid acks.

        ``targets`` restricts which nodes are written (only Byzantine-client tests use it;
        then fewer than ``N - t`` acknowledgements are awaited: all of the targets').
        ``moved``: a version the background mover copies from the previous generation
        (``WriteRequest.moved``, ``fs/generations/mover.py``).
        """
        nodes = self.calls.nodes if targets is None else [NodeId(t) for t in targets]
        need = min(self.th.quorum, len(nodes))

        def payload(node: NodeId) -> Any:
            return WriteRequest(block, ts, cross_checksum, fragments[node], moved=moved).to_wire()

        acked: set[NodeId] = set()

        def accept(node: NodeId, reply: Any) -> bool:
            try:
                ok = WriteReply.from_wire(reply).ok
            except MessageError:
                return False
            if ok:
                acked.add(node)
            return ok

        await self._patient_quorum(
            KIND_WRITE, payload, enough=lambda: len(acked) >= need, accept=accept, nodes=nodes
        )

    async def _patient_quorum(
        self,
        kind: str,
        payload: Callable[[NodeId], Any],
        *,
        enough: Callable[[], bool],
        accept: Callable[[NodeId, Any], bool],
        nodes: Sequence[NodeId] | None = None,
    ) -> None:
        """A quorum call to ``nodes`` (default all) until ``enough()`` holds over what
        ``accept`` recorded, asking the nodes silent at its deadline again with more
        patience (module docstring).  ``accept`` keeps its own record, so the answers of
        earlier rounds count in later ones.

        Raises:
            QuorumUnavailable: the last round's, once there is nobody to ask again.
        """
        targets: Sequence[NodeId] = self.calls.nodes if nodes is None else nodes
        timeout: float | None = None
        rounds = 0
        while True:
            try:
                await self.calls.quorum(
                    targets,
                    kind,
                    payload,
                    enough=lambda _r: enough(),
                    accept=accept,
                    timeout=timeout,
                )
                return
            except QuorumUnavailable as e:
                quiet = silent_targets(e.result, targets)
                timeout = self.calls.patient_timeout(quiet, rounds)
                if timeout is None:
                    raise
                log.info(
                    "%s: nodes %s silent, asking them again within %.3gs", kind, quiet, timeout
                )
                rounds += 1
                targets = quiet

    @outcomes(WriteFailed)
    async def write_blocks(
        self,
        blocks: Mapping[int, bytes],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        after: int = 0,
        prepared: Mapping[int, Prepared] | None = None,
    ) -> dict[int, Timestamp]:
        """Write many blocks concurrently (Times above ``after``); their timestamps.

        A block with a ``prepared`` encoding of this writer for the same data object is
        not encoded again (a sequential writer's blocks are encoded as they fill,
        ``fs/files/encodeahead.py``).

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
            self._check_size(len(data))
        limit = trio.Semaphore(max(concurrency, 1))
        wave = max(concurrency // 2, 1)
        own = {b: p for b, p in (prepared or {}).items() if p.writer is self}
        items = list(blocks.items())

        async def one(block: int, encoded: erasure.Encoded | erasure.EncodedViews) -> None:
            try:
                out[block] = await self._write_encoded(BlockId(block), encoded, after=after)
            finally:
                limit.release()

        async with trio.open_nursery() as nursery:
            for chunk in _waves(items, wave, self.th.m):
                ready = {b: p.encoded for b, data in chunk if (p := own.get(b)) and p.data is data}
                todo = [data for block, data in chunk if block not in ready]
                size = sum(len(data) for data in todo)
                fresh = iter(await self.calls.cpu(size, _encode_wave, todo, self.th.m, self.th.n))
                encoded = [ready[b] if b in ready else next(fresh) for b, _ in chunk]
                self.calls.stats["prepared_used"] += len(ready)
                for _ in chunk:
                    await limit.acquire()
                for (block, _data), enc in zip(chunk, encoded, strict=True):
                    nursery.start_soon(one, block, enc)
        return out

    async def prepare(
        self,
        data: bytes | bytearray,
        before: Callable[[bytes | bytearray], bytes | bytearray] | None = None,
        *,
        into: tuple[int, Callable[[memoryview], None]] | None = None,
    ) -> Prepared:
        """``data`` (``before(data)`` when given: the seal) encoded now, in a worker thread
        for a block, for a later :meth:`write_blocks` of it.  ``into`` replaces ``before``
        with the length of what it makes and a function writing that into a view: the
        seal written straight into the stripes (``erasure.encode_into``), not copied into
        them."""

        def work() -> Prepared:
            if into is not None:
                length, fill = into
                self._check_size(length)
                encoded, sealed = erasure.encode_into(length, fill, self.th.m, self.th.n)
                return Prepared(self, sealed, encoded)
            value = before(data) if before is not None else data
            self._check_size(len(value))
            return Prepared(self, value, erasure.encode(value, self.th.m, self.th.n))

        result: Prepared = await self.calls.cpu(len(data), work)
        return result

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
        self.calls.stats["repairs"] += 1
