"""The PASIS client's read loop: Figure 3.2 (seed L992-1095) with the optimisations of
L1172-1179.

READ_LATEST to ``QC + b`` nodes of which ``m`` ask for data and the rest are witnesses;
more nodes are probed when the newest candidate is not complete (up to ``N - t`` replies
and beyond, one more for every invalid reply: WIDEN); then, as
:func:`~bftfs.rw.classify.decide` says: fetch older history from particular nodes
(READ_PREV, history only), fetch the candidate's missing fragments by its timestamp,
regenerate the cross checksum from ``m`` fragments (a poisonous write is never returned),
repair a repairable candidate at its own timestamp (``Writer.repair_block``, waiting for
``N - t`` acknowledgements so that it is complete when the read returns), or restart from
READ_LATEST when garbage collection removed what the read looked for (bounded by
``max_restarts``: obstruction-freedom, L1566-1574).  The rounds and what they learn are
``rw/readround.py``; this module decides which to run and when the read is done.

Slow is not unavailable: a node that did not answer within a round's patience is
*silent*, not bad (``ReadState.silent``).  The read goes on without it - widening to the
nodes not asked yet, as before, so a node that never answers (crashed, or Byzantine and
withholding) costs at most one patience while others can answer - and only when WIDEN
finds no other node left does it ask the silent nodes again, with twice the patience each
time (``RWCalls.patient_timeout``: bounded back-off, a bounded number of rounds).  It
fails with ``ReadFailed`` only when too few nodes are left that are neither proven faulty
nor really unreachable (connection refused or closed, or the transport's liveness
says absent: ``Endpoint.node_live``), or when the caller's patience (the mount's
``timeo``) ran out or the rounds are spent; a caller's cancel scope cancels the read.

A storage node reading as a client (lazy verification, ``node/rw_verifier.py``) gives its
reader a :class:`LocalReplica`: its own reply is then read from its own store instead of
left out (its endpoint cannot call itself), and taken through the same checks as a peer's
reply (``ReadRounds`` parses it, VALIDATEs its fragment against the version's cross
checksum, merges its view), so its store's bit rot is caught like a peer's corrupt
fragment.  When its fragment is a systematic one (index below ``m``) the first round asks
one peer fewer and ``m - 1`` peers for data: one fragment transfer, its AEAD and copies
saved per block (issue 34).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable

import trio

from bftfs import erasure
from bftfs.net.errors import refusal_code
from bftfs.net.quorum import QuorumUnavailable
from bftfs.rw import verify
from bftfs.rw.calls import DEFAULT_CONCURRENCY, RWCalls
from bftfs.rw.classify import Decision, HostStatus, Kind
from bftfs.rw.failures import HistoryReclaimed, ReadAborted, ReadFailed, outcomes
from bftfs.rw.health import NodeHealth
from bftfs.rw.messages import BlockId, ReadReply, ReadRequest
from bftfs.rw.readround import ReadRounds, ReadState
from bftfs.rw.schema import SchemaError
from bftfs.rw.timestamp import MAX_TIME, MAX_WRITER, ZERO, Timestamp
from bftfs.rw.verify import ReadOutcome
from bftfs.rw.write import Writer

log = logging.getLogger(__name__)

#: How long a read waits for the nodes its first round did not ask before it repairs a
#: candidate one holder short of COMPLETE (:meth:`Reader._one_short`); past it, it repairs.
REPAIR_WIDEN_SECONDS = 0.25


@dataclasses.dataclass(frozen=True)
class LocalReplica:
    """The reading node's own replica, answered in process (see the module docstring).

    ``answer`` runs the node's READ_LATEST / READ_PREV step (``rw/replica.read_step``) on its
    own store.  Its replies are judged exactly like a peer's: a stored fragment that no
    longer matches its cross checksum marks the node bad for the attempt, and the read goes
    on with the peers alone, as before this path existed.
    """

    node: int
    answer: Callable[[ReadRequest], ReadReply]
    #: Whether to take the node's own fragment in the first round: only when it is a
    #: systematic one (index below ``m``), so that decoding stays joining data fragments.
    data: bool


class Reader:
    """Reads blocks (see the module docstring).

    Args:
        calls: the client's quorum calls, CPU work and counters.
        health: the order a read asks the nodes in.
        rounds: the rounds of an attempt.
        writer: writes a repairable candidate back.
        max_restarts: attempts restarted after garbage collection before giving up.
        trust_verified: skip the regeneration of a complete candidate that ``b + 1``
            replies flag as verified (lazy verification, seed L1695-1698), and the
            write-back of such a candidate a round left repairable.
    """

    def __init__(
        self,
        calls: RWCalls,
        health: NodeHealth,
        rounds: ReadRounds,
        writer: Writer,
        *,
        max_restarts: int,
        trust_verified: bool,
    ) -> None:
        self.calls = calls
        self.th = calls.th
        self.health = health
        self.rounds = rounds
        self.writer = writer
        self.max_restarts = max_restarts
        self.trust_verified = trust_verified
        #: This node's own replica when a storage node reads (set by the verifier); its
        #: replies count as the other nodes' do (``local_replies``, ``local_fragments``
        #: used, ``local_rejected`` that failed their checks, in the client's counters).
        self.local: LocalReplica | None = None

    @outcomes(ReadFailed)
    async def read_block(self, block: BlockId | int) -> bytes | bytearray:
        """READ: the value of the latest complete write of ``block`` (empty if none).

        Raises:
            ReadAborted: garbage collection raced with every one of ``max_restarts`` attempts.
            ReadFailed: fewer than ``N - t`` nodes answered validly.
        """
        return (await self.read_version(block)).data

    @outcomes(ReadFailed)
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
                self.calls.stats["reads"] += 1
                return got
            self.calls.stats["restarts"] += 1
        raise ReadAborted(f"block {block}: {self.max_restarts} restarts, giving up")

    @outcomes(ReadFailed)
    async def read_blocks(
        self, blocks: Iterable[int], *, concurrency: int = DEFAULT_CONCURRENCY
    ) -> dict[int, bytes | bytearray]:
        """Read many blocks concurrently; their values by block, each a buffer of its own
        that the caller may change (``erasure.decode``; a sealed cluster opens it in place,
        ``fs/clients/seal.py``)."""
        out: dict[int, bytes | bytearray] = {}
        limit = trio.Semaphore(concurrency)

        async def one(block: int) -> None:
            async with limit:
                out[block] = await self.read_block(BlockId(block))

        async with trio.open_nursery() as nursery:
            for block in dict.fromkeys(blocks):
                nursery.start_soon(one, block)
        return out

    @outcomes(ReadFailed)
    async def read_as_of(self, block: BlockId | int, time_ns: int) -> bytes | bytearray:
        """READ as of a past moment: the value of the latest complete write of ``block``
        whose timestamp's Time is at most ``time_ns`` (versions after it are ignored, as if
        not yet written).  Nothing is repaired: the past is read, never written.

        Raises:
            HistoryReclaimed: more than ``b`` nodes collected below that time.
            ReadAborted, ReadFailed: as :meth:`read_block`.
        """
        return (await self.read_version_as_of(block, time_ns)).data

    @outcomes(ReadFailed)
    async def read_version_as_of(self, block: BlockId | int, time_ns: int) -> ReadOutcome:
        """:meth:`read_as_of`, with what it found: ``outcome.absent`` when no version's Time
        is at most ``time_ns`` (not the same as a version that is empty).

        Raises:
            HistoryReclaimed, ReadAborted, ReadFailed: as :meth:`read_as_of`.
        """
        block = BlockId(block)
        cap = Timestamp(min(time_ns, MAX_TIME), MAX_WRITER, b"\xff" * len(ZERO.verifier))
        for attempt in range(self.max_restarts + 1):
            last = attempt == self.max_restarts
            got = await self._read_attempt(
                block, restart_at=None if last else 1, repair=False, cap=cap
            )
            if got is not None:
                self.calls.stats["past_reads"] += 1
                return got
            self.calls.stats["restarts"] += 1
        raise ReadAborted(f"block {block}: {self.max_restarts} restarts, giving up")

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
        st = ReadState(restart_at=restart_at)
        rounds = self.rounds
        order = self.health.read_order(self.calls.nodes)
        initial, with_data = self.th.first_round, self.th.m
        if self.local is not None:
            req = ReadRequest(block, self.local.data, below=cap, inclusive=cap is not None)
            reply = self._ask_local(st, req, fetched=False)
            if reply is not None:
                initial -= 1  # the node's own view is one of the round's replies
                if req.data and reply.latest is not None:
                    with_data -= 1  # and its fragment one of the m asked for
        # Systematic fragments first: decoding from nodes 0..m-1 costs no arithmetic.
        data_nodes = set(order[:with_data])
        await rounds.read_latest(st, block, order, data_nodes, initial=initial, cap=cap)
        widened = False  # asked the rest before a repair (:meth:`_one_short`)
        while True:
            if cap is not None:
                self._check_not_reclaimed(st, block, cap)
            d = rounds.decide(st)
            self.calls.stats[f"decision.{d.kind.value}"] += 1
            if d.kind is Kind.RESTART:
                log.debug("block %s: restart (%s)", block, d.reason)
                return None
            if d.kind is Kind.WIDEN:
                await self._widen(st, block, cap)
                continue
            if d.kind is Kind.FETCH:
                await self._fetch_history(st, block, d)
                continue
            d = self._verified_complete(st, d)
            if repair and not widened and await self._one_short(st, block, d, cap):
                widened = True
                continue
            assert d.candidate is not None
            if d.candidate == ZERO:
                # Poisonous versions met on the way are reported here too: a block whose
                # only writes were poisonous has them discarded (node/rw_verifier.py).
                rejected = tuple(sorted(st.rejected, reverse=True))
                return ReadOutcome(ZERO, Kind.COMPLETE, b"", None, (), rejected)
            try:
                regen = await self._validate(st, block, d, repair=repair)
            except _Gone:
                if restart_at is None:  # the last attempt: no more restarts
                    raise
                return None
            if regen is None:
                continue
            return ReadOutcome(
                d.candidate,
                d.kind,
                regen.data,
                regen.cross_checksum,
                regen.fragments,
                tuple(sorted(st.rejected, reverse=True)),
                tuple(sorted(st.bad)),
            )

    def _verified_complete(self, st: ReadState, d: Decision) -> Decision:
        """A REPAIR of a candidate ``b + 1`` replies flag as verified, as COMPLETE.

        A verifier finds "the latest complete write version" (seed L1475-1476) and writes
        a repairable one back before it flags it (node/rw_verifier.py), so one of those
        ``b + 1`` flags is a correct node's that found it complete: this round's answers
        left it short only because a holder among them lost its fragment (a ``rational``
        node dropping every second block), and a write-back would change nothing a later
        read relies on.  Without the flags the read asks the rest first
        (:meth:`_one_short`), and a partial write nobody verified is repaired as before.
        """
        cand = d.candidate
        if (
            d.kind is Kind.REPAIR
            and cand is not None
            and self.trust_verified
            and len(st.verified.get(cand, ())) > self.th.b
        ):
            self.calls.stats["verified_repairs_skipped"] += 1
            return dataclasses.replace(d, kind=Kind.COMPLETE, reason="verified by b + 1")
        return d

    async def _one_short(
        self, st: ReadState, block: BlockId, d: Decision, cap: Timestamp | None
    ) -> bool:
        """Before a REPAIR whose candidate lacks one holder of COMPLETE, ask the nodes the
        round did not (none known down or slow, within ``REPAIR_WIDEN_SECONDS``) for their
        latest; whether it did (then decide again).

        A holder among the first round's that lost its fragment (a node that was down for
        the write, or drops what it is sent: the ``rational`` profile) would otherwise make
        every read of the block write it back.  With one more reply the candidate is
        complete if the node asked hosts it; if it does not, or does not answer in time,
        the decision stays REPAIR: ``hosts >= QC + b - 1 >= QC - missing`` for any number of
        replies, so a wider round never turns a repairable candidate into an incomplete one
        (unlike a different first round, ``tests/t5_repair_charges.py``), and a candidate
        with fewer hosts (a partial write) is repaired as before without asking."""
        if d.kind is not Kind.REPAIR or len(d.holders) + 1 < self.th.complete:
            return False
        unasked = st.unasked(self.calls.nodes)
        last = self.health.asked_last(unasked)
        rest = [n for n in unasked if n not in last]
        if not rest:
            return False
        self.calls.stats["repair_widens"] += 1
        await self.rounds.read_latest(
            st, block, rest, set(), initial=None, cap=cap, timeout=REPAIR_WIDEN_SECONDS, every=True
        )
        return True

    async def _widen(self, st: ReadState, block: BlockId, cap: Timestamp | None) -> None:
        """WIDEN: ask the nodes not asked yet; with nobody else, the silent nodes again,
        with more patience (module docstring).

        Raises:
            ReadFailed: nobody is left and the silent nodes' patience is spent.
        """
        rounds = self.rounds
        rest = st.unasked(self.calls.nodes)
        if rest:
            await rounds.read_latest(st, block, rest, set(), initial=None, cap=cap)
            return
        quiet = list(st.silent)
        timeout = self.calls.patient_timeout(quiet, st.patient_rounds)
        if timeout is None:
            raise ReadFailed(
                f"block {block}: no decision from {len(st.views)} valid replies; "
                f"bad: {st.bad}; silent: {st.silent}"
            )
        st.patient_rounds += 1
        st.silent.clear()
        log.info("block %s: nodes %s silent, asking them again within %.3gs", block, quiet, timeout)
        await rounds.read_latest(st, block, quiet, set(), initial=None, cap=cap, timeout=timeout)

    def _ask_local(self, st: ReadState, req: ReadRequest, *, fetched: bool) -> ReadReply | None:
        """This node's own reply to ``req``, merged into ``st`` through the checks a peer's
        reply goes through (``ReadRounds._absorb``: parsed, its fragment VALIDATEd); None
        when it failed them (the node is then bad for the attempt, as a peer would be)."""
        local = self.local
        assert local is not None
        stats = self.calls.stats
        stats["local_replies"] += 1
        try:
            reply = local.answer(req)
        except SchemaError as e:  # an undecodable stored record: like a malformed reply
            why = f"unreadable own replica: {e}"
        else:
            why = "own reply failed its checks"
            if self.rounds._absorb(st, local.node, req, reply.to_wire(), fetched=fetched):
                if req.data and reply.latest is not None:
                    stats["local_fragments"] += 1
                return reply
        if local.node not in st.bad:
            st.mark_bad(local.node, why)
        stats["local_rejected"] += 1
        log.warning("block %s: %s on this node (%s)", req.block, why, local.node)
        return None

    def _local_fragment(self, st: ReadState, block: BlockId, cand: Timestamp) -> None:
        """This node's own fragment of ``cand`` (READ_PREV at or below it), as
        ``ReadRounds.fetch_fragments`` takes a holder's."""
        local = self.local
        assert local is not None
        req = ReadRequest(block, data=True, below=cand, inclusive=True)
        if self._ask_local(st, req, fetched=False) is None:
            return
        if local.node not in st.frags.get(cand, {}):
            view = st.views.get(local.node)
            if view is None or view.status(cand) is not HostStatus.COLLECTED:
                # Listed before, gone now without a collection: not a fragment to use.
                st.mark_bad(local.node, f"own store no longer holds {cand!r}")

    async def _fetch_history(self, st: ReadState, block: BlockId, d: Decision) -> None:
        """READ_PREV (history only) to the nodes ``d`` names; this node's own from its
        store."""
        local = self.local
        rest = d.fetch
        if local is not None:
            for f in d.fetch:
                if f.node == local.node:
                    req = ReadRequest(block, data=False, below=f.below, inclusive=f.inclusive)
                    self._ask_local(st, req, fetched=True)
            rest = tuple(f for f in d.fetch if f.node != local.node)
        if rest:
            await self.rounds.fetch_history(st, block, dataclasses.replace(d, fetch=rest))

    def _check_not_reclaimed(self, st: ReadState, block: BlockId, cap: Timestamp) -> None:
        """A read of the past fails once more than ``b`` valid replies collected above
        ``cap``: one of them is benign, so the version asked for is gone."""
        collected = [n for n, f in st.floors.items() if f > cap and n not in st.bad]
        if len(collected) > self.th.b:
            raise HistoryReclaimed(
                f"block {block}: nodes {sorted(collected)} collected its versions "
                f"up to time {cap.time} (retention)"
            )

    async def _validate(
        self, st: ReadState, block: BlockId, d: Decision, *, repair: bool
    ) -> erasure.Regenerated | None:
        """Fetch ``m`` valid fragments of the candidate, regenerate, repair if needed.

        Returns the validated regeneration, or None when the decision must be made again (the
        candidate was poisonous, or a holder failed to produce its fragment and was marked bad).
        """
        cand = d.candidate
        assert cand is not None
        have = st.frags.setdefault(cand, {})
        missing = [n for n in d.holders if n not in have and n not in st.bad]
        local = self.local
        own = local is not None and local.node in missing
        if own:
            assert local is not None
            missing.remove(local.node)  # never asked over the network
            if local.data and len(have) < self.th.m:
                self._local_fragment(st, block, cand)  # systematic: before the peers'
                own = False
        if len(have) < self.th.m:
            await self.rounds.fetch_fragments(st, block, cand, missing)
            if own and len(have) < self.th.m:
                self._local_fragment(st, block, cand)  # a parity fragment: only if needed
            if len(have) < self.th.m:
                return None  # holders were marked bad; decide again
        ccs = {cc for cc, _ in have.values()}
        # Every fragment validated against the same verifier, so one cross checksum.
        (cc,) = ccs
        frags = {n: f for n, (_cc, f) in sorted(have.items())[: self.th.m]}
        size = erasure.cc_length(cc)
        stats = self.calls.stats
        if (
            self.trust_verified
            and d.kind is Kind.COMPLETE
            and len(st.verified.get(cand, ())) > self.th.b
        ):
            # b + 1 nodes flag it verified: one of them is correct and regenerated it
            # (or holds b + 1 identical NOTIFYs), so decoding is enough (L1695-1698).
            stats["verified_skips"] += 1
            if sorted(frags) == list(range(self.th.m)):
                # The systematic fragments: decoding is joining them, cheaper here than
                # the hand-off to a worker thread (issue 34).
                stats["systematic_reads"] += 1
                return erasure.Regenerated(
                    True, erasure.decode(frags, size, self.th.m, self.th.n), (), cc
                )
            data = await self.calls.cpu(size, erasure.decode, frags, size, self.th.m, self.th.n)
            return erasure.Regenerated(True, data, (), cc)
        regen: erasure.Regenerated = await self.calls.cpu(
            size, verify.validate_candidate, self.th, frags, cc
        )
        if not regen.valid:
            stats["poisonous"] += 1
            log.info("block %s: candidate %r is poisonous (cross checksum mismatch)", block, cand)
            st.rejected.add(cand)
            return None
        if d.kind is Kind.REPAIR and repair:
            try:
                await self.writer.repair_block(block, cand, regen)
            except QuorumUnavailable as e:
                if not _unproven(e, self.th.b):
                    raise
                # More than b nodes (one correct) say fewer than b + 1 others host the
                # candidate any more: collected below a newer write since the rounds read
                # it (the race of L1566-1574 again, now seen by the repair).  Restart.
                stats["repair_unproven"] += 1
                raise _Gone from e
        return regen


class _Gone(Exception):
    """A repair was refused because the candidate is no longer hosted: restart the read."""


def _unproven(e: QuorumUnavailable, b: int) -> bool:
    """Whether more than ``b`` nodes refused a repair as ``unproven`` (node/rw_server.py)."""
    codes = [refusal_code(why) for why in e.result.errors.values()]
    return sum(code == "unproven" for code in codes) > b
