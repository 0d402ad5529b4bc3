"""Lazy verification of PASIS blocks on a storage node, with cooperation and garbage
collection (seed 004 sections 3.7-3.9; the decisions are pure, in ``bftfs/rw/lazy.py``).

What the task does, in a loop:

1. **Pick** a block (:meth:`Backlog.pick`): one a budget forced (a client left too many
   unverified versions, or the history pool is short), else, when the node is idle (no
   client request for ``idle_seconds``), one of its own blocks (``k mod N`` .. ``(k + b) mod
   N``) with the most unverified versions whose writes settled, else anyone's block whose
   NOTIFYs are overdue (``fallback_seconds``).
2. **Verify** it like a reader (seed L1474-1481): a READ through an
   :class:`~bftfs.rw.client.RWClient`, which finds the latest complete write, regenerates
   the cross checksum from ``m`` fragments, steps back past poisonous versions and repairs
   a repairable candidate at its own timestamp.  The node's own reply comes from its own
   store (:class:`~bftfs.rw.read.LocalReplica`; its endpoint cannot call itself), judged
   like a peer's: its fragment is VALIDATEd against the version's cross checksum, so bit
   rot here is caught as a peer's corrupt fragment would be.  A node holding a data
   fragment (index below ``m``) takes it from its store and asks ``m - 1`` peers for
   theirs (issue 34: one fragment transfer less per block).  Nothing of this blocks a
   foreground request: it is one more client of the other nodes, and here only a short
   group-committed store step.
3. **Record and collect** (:func:`bftfs.rw.collect.verified_step`): flag the version
   verified, delete poisonous versions, and delete what lies below the verified version
   and outside the retention policy.
4. **NOTIFY** the other nodes ``<block, timestamp, verified>`` (and ``poisonous``), batched
   per peer, not to those that already told this node the same (L1536).  A node that holds
   ``b + 1`` NOTIFYs applies the rules of :class:`~bftfs.rw.lazy.NotifyBook`.

The record and collection steps are :class:`~bftfs.node.rw_collection.Collection`'s
(``node/rw_collection.py``), the NOTIFYs :class:`~bftfs.node.rw_notify.Notifier`'s
(``node/rw_notify.py``); this module picks, reads and keeps the backlog.

Progress is in ``node.progress["rw.verify"]`` (``bftfs status``).  ``settled`` is set
whenever the backlog is empty (tests wait on it; it is cleared by the next write).  The
own replica's use is in ``node.stats``: ``rw.verify.local_fragments`` (own fragments read
from the store and found valid), ``rw.verify.local_rejected`` (own replies that failed
their checks: a damaged stored version), ``rw.verify.local_healed`` (damaged own copies
replaced by the regenerated fragment).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from bftfs.ids import NodeId, PrincipalId
from bftfs.node.rw_collection import Collection
from bftfs.node.rw_notify import Notifier
from bftfs.node.snapshots import pinned_moments
from bftfs.outcome import ClusterUnavailable
from bftfs.policy import RetentionPolicy
from bftfs.rw import collect, replica
from bftfs.rw.batch import rw_batcher
from bftfs.rw.behind import NotValidated, own_fragment
from bftfs.rw.classify import Kind
from bftfs.rw.client import RWClient, max_fragment_of
from bftfs.rw.lazy import BIG_OBJECT_BLOCKS, Backlog, Pick, StreamState, stream_state
from bftfs.rw.messages import BlockId, Notify, ReadReply, ReadRequest, WriteRequest
from bftfs.rw.read import LocalReplica
from bftfs.rw.timestamp import ZERO, Timestamp
from bftfs.rw.verify import ReadOutcome

if TYPE_CHECKING:
    from bftfs.node.service import Node

PROGRESS_KEY = "rw.verify"
#: Blocks per page of the start-up scan of unverified versions.
SCAN_PAGE = 256
#: Failed verifications of a block after which its undecided versions are given up (an
#: incomplete write whose writer died is not garbage until a newer write completes).
MAX_FAILURES = 4
#: Options of the reading :class:`RWClient` (tests shorten timeouts).
READ_OPTIONS: dict[str, Any] = {}
#: The reading clients' counters of the node's own replica, published in ``node.stats``
#: as ``rw.verify.<name>``.
LOCAL_COUNTERS = ("local_fragments", "local_rejected")


#: What a wave's READ found of one block: the block, the versions this node hosted before
#: it, the outcome, and the poisonous versions met.
_Read = tuple[BlockId, list[Timestamp], ReadOutcome, set[Timestamp]]


def scan_page(
    kv: Any, *, after: int | None, retention: RetentionPolicy | None = None
) -> collect.Unverified:
    pins = pinned_moments(kv) if retention is not None else ()
    return collect.unverified_step(kv, after, SCAN_PAGE, retention=retention, pins=pins)


def new_progress() -> dict[str, Any]:
    return {
        "state": "starting",
        "mode": "",
        "backlog_blocks": 0,
        "backlog_versions": 0,
        "verified": 0,
        "forced": 0,
        "repaired": 0,
        "failed": 0,
        "poisonous": 0,
        "discarded": 0,
        "collected": 0,
        "retained": 0,
        "notify_sent": 0,
        "notify_received": 0,
        "notify_applied": 0,
        "notify_bad": 0,
        "pressure": False,
        "streaming": False,
        #: Client reads of big objects with blocks left to verify (``client_read``).
        "read_holds": 0,
        #: HOLDs sent to the peers, and holds begun because ``b + 1`` peers sent one.
        "holds_sent": 0,
        "peer_holds": 0,
        #: Blocks whose verification a client's read cancelled (picked again later).
        "yielded": 0,
        #: Blocks of the wave in progress that was picked in idle time, whose READs a
        #: client's read of a big unverified object would cancel (0: no such wave).
        "idle_wave": 0,
        "used_bytes": 0,
        #: Bytes of block versions kept below their verified mark: history (issue 36).
        "history_bytes": 0,
        "faults": [],
    }


def _recording(
    record: Callable[..., collect.Verified], read: list[_Read], now_ns: int
) -> Callable[[Any], list[collect.Verified]]:
    """The store step that records what a wave's READs found (one commit per wave)."""

    def step(kv: Any) -> list[collect.Verified]:
        return [
            record(
                kv,
                block,
                mark=outcome.ts,
                flag=outcome.ts if outcome.ts != ZERO else None,
                poisonous=poison,
                now_ns=now_ns,
            )
            for block, _hosted, outcome, poison in read
        ]

    return step


class Verifier:
    """The lazy-verification task of one node (see the module docstring)."""

    def __init__(self, node: Node, *, client_options: dict[str, Any] | None = None) -> None:
        self.node = node
        cfg = node.config
        self.policy = cfg.verification
        self.retention = cfg.retention
        self.me = int(node.id)
        self.peers = [NodeId(i) for i in cfg.node_ids if i != node.id]
        self.backlog = Backlog(self.policy, me=self.me, n=cfg.n, b=cfg.b)
        self.client_options = READ_OPTIONS if client_options is None else client_options
        self.progress = node.progress[PROGRESS_KEY] = new_progress()
        self.progress["mode"] = self.policy.mode
        node.server.busy_gap = max(self.policy.stream_idle_seconds, self.policy.idle_seconds)
        self.settled = trio.Event()
        #: Set (and replaced) whenever the progress changes: tests wait on it.
        self.changed = trio.Event()
        self._wake = trio.Event()
        #: Records, collection, history bytes, revisits, forgetting.
        self.collection = Collection(node, self.progress)
        #: NOTIFYs sent and taken.
        self.notifier = Notifier(node, self.peers, self.progress)
        #: trio time a client last read a big object with blocks left to verify here
        #: (``client_read``, ``rw/lazy.stream_state``).
        self.backlog_read = -math.inf
        #: trio time the last HOLD went to the peers (``client_read``).
        self._hold_sent = -math.inf
        #: The READs of the wave in progress when it was picked in idle time (not forced
        #: nor under pressure): a client's read of a big unverified object cancels them.
        self._idle_reads: trio.CancelScope | None = None
        self._client: RWClient | None = None
        #: The same READs through a batcher, for waves of more than one block (the direct
        #: client when waves are off).
        self._wave_client: RWClient | None = None

    # Hooks the rw server calls ------------------------------------------------------------

    def stream(self, now: float) -> StreamState:
        """Whether a client stream is in progress (``rw/lazy.stream_state``)."""
        server = self.node.server
        state = stream_state(
            self.policy,
            now,
            self.node.last_client_request,
            server.client_busy_since,
            self.backlog_read,
        )
        self.progress["streaming"] = state.streaming
        return state

    def wrote(self, block: int, ts: Timestamp, client: int, size: int = 0) -> None:
        """A new version (``size`` bytes stored) was stored (not a duplicate): it joins
        the backlog."""
        now = trio.current_time()
        streaming = self.stream(now).streaming
        if self.backlog.wrote(block, ts, client, now, size=size, streaming=streaming):
            self.progress["forced"] += 1
        self.settled = trio.Event() if self.settled.is_set() else self.settled
        self._wake.set()

    def client_read(self, block: int) -> None:
        """A client read ``block``: if its object is a big one with blocks left to verify
        here (a big file read right after it was written), idle-time verification waits
        until the reads pause.  The reader checks the blocks itself; verifying them in the
        read's gaps would pay the check twice during the read (``rw/lazy.stream_state``)."""
        if self.backlog.object_backlog(block) >= BIG_OBJECT_BLOCKS:
            now = trio.current_time()
            self.progress["read_holds"] += 1
            self._hold(now)
            if now - self._hold_sent >= self.policy.stream_idle_seconds / 2:
                # The peers outside the reader's quorum see none of its reads.
                self._hold_sent = now
                self.notifier.hold()

    def peer_holds(self, sender: PrincipalId) -> None:
        """A peer holds its verification for a client's read (``rw/messages``' HOLD):
        once ``b + 1`` have within ``stream_idle_seconds``, this node holds as well, as if
        it saw the read itself (``node/rw_notify.py``)."""
        now = trio.current_time()
        if self.notifier.held(sender, now, self.policy.stream_idle_seconds):
            self.progress["peer_holds"] += 1
            self._hold(now)
            self._publish()

    def _hold(self, now: float) -> None:
        self.backlog_read = now
        if self._idle_reads is not None:
            # A wave picked in idle time before the read began: its blocks still
            # being read go back to the backlog (picking changed nothing there).
            self._idle_reads.cancel()

    def wake(self) -> None:
        """Look at the backlog now (the store is short of space)."""
        self._wake.set()

    async def notified(self, sender: PrincipalId, msg: Notify) -> None:
        """NOTIFYs from another node: apply what ``b + 1`` of them agree on."""
        todo = self.notifier.received(sender, msg)
        now_ns = self.node.now_ns()
        self.collection.pressure()  # sets what retention keeps now
        if not todo:
            return
        record = self.collection.record

        def step(kv: Any) -> list[collect.Verified]:
            return [
                record(kv, block, mark=mark, flag=flag, poisonous=poison, now_ns=now_ns)
                for block, mark, flag, poison in todo
            ]

        results = await self.node.store.write(step, background=True)
        for (block, mark, _flag, poison), res in zip(todo, results, strict=True):
            self.backlog.settled(block, mark, also=poison)
            self.collection.account(res, block)
            self.progress["notify_applied"] += 1
        self._publish()
        self._wake.set()

    # The task ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Never returns while the node runs; never raises (a bug is logged, then retried)."""
        await self._rebuild()
        self.progress["state"] = "running"
        async with trio.open_nursery() as nursery:
            reader = functools.partial(
                RWClient,
                self.node.endpoint,
                self.node.config,
                nodes=[int(p) for p in self.peers],
                **self.client_options,
            )
            self._client = self._wave_client = reader()
            # A wave's READs to a peer go out as one rw.batch frame (rw/batch.py).  A lone
            # block is read directly: the batcher's extra scheduler pass would delay the
            # forced verification of a client writing without pause.
            if self.policy.wave_blocks > 1:
                timeout = self.client_options.get("timeout")
                self._wave_client = reader(
                    batcher=rw_batcher(
                        self.node.endpoint,
                        nursery,
                        timeout=timeout,
                        max_fragment=max_fragment_of(self.node.config),
                    )
                )
            # Faults the reads meet in peers' replies are findings (node/findings.py).
            self._client.faults = self._wave_client.faults = self.node.findings.peer_faults
            # The node's own reply from its own store, its fragment too when systematic.
            local = LocalReplica(self.me, self._own_reply, data=self.me < self.node.config.m)
            self._client.reader.local = self._wave_client.reader.local = local
            if self.policy.cooperative:
                nursery.start_soon(self.notifier.run)
            nursery.start_soon(self.notifier.run_holds)
            nursery.start_soon(self.collection.forgetter.run)
            nursery.start_soon(self.collection.forgetter.sweep)
            while True:
                try:
                    await self._step()
                except Exception:
                    self.node.stats["internal_errors"] += 1
                    self.node.log.exception("node %s: lazy verification step", self.node.id)
                    await trio.sleep(1)

    async def _step(self) -> None:
        revisit_in = await self.collection.collect_due()
        now = trio.current_time()
        # A hold its peers asked for counts as a client's read here (``peer_holds``).
        idle_for = now - max(self.node.last_client_request, self.backlog_read)
        idle_after = self.stream(now).idle_after
        idle = idle_for >= idle_after
        pressure = self.collection.pressure()
        picks = self.backlog.pick_many(
            now, idle=idle, pressure=pressure, limit=self.policy.wave_blocks
        )
        self._publish()
        if not picks:
            if not len(self.backlog):
                self.settled.set()
            due = self.backlog.next_due(now)
            wait = math.inf if due is None else due
            if due is not None and not idle:
                wait = max(wait, idle_after - idle_for)
            if revisit_in is not None:
                wait = min(wait, revisit_in)
            self._wake = trio.Event()
            with trio.move_on_after(max(wait, 0.001) if math.isfinite(wait) else math.inf):
                await self._wake.wait()
            return
        if all(pick.reason in ("own", "fallback") for pick in picks):
            # Client requests first (node/yielding.py).  A wave a budget forced (or the
            # store's pressure) is the clients' own debt, paid at once as docs/lazy.md
            # promises: it does not wait for them.
            await self.node.gate.step()
        await self.verify_wave(picks)

    async def verify_wave(self, picks: list[Pick]) -> None:
        """Verify a wave of blocks: record what was learned, collect, notify.

        The blocks are read concurrently, so the batcher sends a wave's READs to a peer as
        one frame; their records go in one store commit; their NOTIFYs leave together (one
        frame per peer, :meth:`Notifier.run`).  Per block it is what one verification was: the
        same READ, the same store step, the same bookkeeping."""
        client = self._client if len(picks) == 1 else self._wave_client
        assert client is not None
        read: list[_Read] = []
        # Picked in idle time only: a client that starts reading a big object with
        # blocks left to verify here cancels the READs still running (they are picked
        # again once the reads pause; what was read is recorded).  The reader checks
        # those blocks itself, and verifying them meanwhile slowed its read (issue 34).
        yielding = all(pick.reason in ("own", "fallback") for pick in picks)
        with trio.CancelScope() as scope:
            self._idle_reads = scope if yielding else None
            if yielding:
                # Published when it begins and when it ends: a waiter on ``changed`` that
                # looked just before it began would otherwise miss it and sleep through
                # its READs (minutes when peers are slow: the test's hang, t2_rw_idle).
                self.progress["idle_wave"] = len(picks)
                self._publish()
            try:
                async with trio.open_nursery() as nursery:
                    for pick in picks:
                        nursery.start_soon(self._read, client, BlockId(pick.block), read)
            finally:
                self._idle_reads = None
                if yielding:
                    self.progress["idle_wave"] = 0
                    self._publish()
        if scope.cancelled_caught:
            self.progress["yielded"] += len(picks) - len(read)
        if not read:
            return
        self.collection.pressure()  # sets what retention keeps now
        step = _recording(self.collection.record, read, self.node.now_ns())
        results = await self.node.store.write(step, background=True)
        for found, res in zip(read, results, strict=True):
            self._settle(*found, res)
        self._count_local()
        if self.policy.cooperative:
            self.notifier.flush()
        self._publish()

    async def _read(self, client: RWClient, block: BlockId, out: list[_Read]) -> None:
        """READ ``block`` like a reader (repairing a repairable candidate); append what was
        found to ``out``, or back off the block when the cluster could not answer."""
        hosted = self.node.store.read(lambda kv: collect.hosted_step(kv, block))
        try:
            outcome = await client.read_version(block)
        except ClusterUnavailable as e:
            self.node.log.info("node %s: block %s not verified: %s", self.node.id, block, e)
            self.progress["failed"] += 1
            self.backlog.failed(block, trio.current_time())
            return
        poison = set(outcome.poisonous)
        if outcome.kind is Kind.REPAIR:
            self.progress["repaired"] += 1
            with trio.CancelScope(shield=True):  # a wave's cancellation stops READs only
                await self._store_own(block, outcome, hosted)
        elif self.me in outcome.bad and outcome.fragments:
            with trio.CancelScope(shield=True):
                await self._heal_own(block, outcome)
        if poison:
            self.progress["poisonous"] += len(poison)
            writers = sorted({ts.writer for ts in poison})
            self._fault(f"poisonous version(s) of block {block:#x} by writer(s) {writers}")
        out.append((block, hosted, outcome, poison))

    def _settle(
        self,
        block: BlockId,
        hosted: list[Timestamp],
        outcome: ReadOutcome,
        poison: set[Timestamp],
        res: collect.Verified,
    ) -> None:
        """The backlog and the NOTIFY outbox after ``block``'s record was committed."""
        self.collection.account(res, block)
        self.progress["verified"] += 1
        self.backlog.settled(block, outcome.ts, also=poison)
        # Versions above what was found complete were incomplete when read: they are
        # looked at again later, and given up after MAX_FAILURES tries (not garbage, just
        # nothing to verify until a newer write completes).
        undecided = [ts for ts in hosted if ts > outcome.ts and ts not in poison]
        if undecided:
            self.backlog.failed(block, trio.current_time())
            if self.backlog.failures(block) >= MAX_FAILURES:
                self.backlog.settled(block, max(undecided))
        if self.policy.cooperative:
            self.notifier.queue(block, outcome.ts, poison)

    # Helpers -------------------------------------------------------------------------------

    def _own_reply(self, req: ReadRequest) -> ReadReply:
        """This node's answer to ``req``, as its rw server gives a peer (``read_step``)."""
        return self.node.store.read(lambda kv: replica.read_step(kv, req))

    def _count_local(self) -> None:
        """Publish the reading clients' own-replica counters in ``node.stats``."""
        clients = {id(c): c for c in (self._client, self._wave_client) if c is not None}
        for name in LOCAL_COUNTERS:
            total = sum(c.calls.stats[name] for c in clients.values())
            self.node.stats[f"rw.verify.{name}"] = total

    async def _store_own(
        self, block: BlockId, outcome: ReadOutcome, hosted: list[Timestamp]
    ) -> None:
        """After repairing the other nodes: this node's own fragment of the repaired
        version too (checked like a WRITE), so it can flag it."""
        if outcome.ts in hosted:
            return
        req = self._own_write(block, outcome)
        if req is None:
            return
        # Charged to the version's writer, as the repairs just made (node/rw_server.py).
        await self.node.store.write(
            lambda kv: replica.store_write(kv, req, owner=req.ts.writer), background=True
        )

    def _own_write(self, block: BlockId, outcome: ReadOutcome) -> WriteRequest | None:
        """This node's fragment of the version ``outcome`` read, as the WRITE that would
        have stored it (None, logged, if it does not match the cross checksum)."""
        try:
            cc, frag = own_fragment(outcome, self.me, self.node.config.n)
        except NotValidated as e:
            self.node.log.warning("node %s: block %s: %s", self.node.id, block, e)
            return None
        return WriteRequest(block, outcome.ts, cc, frag)

    async def _heal_own(self, block: BlockId, outcome: ReadOutcome) -> None:
        """This node's own reply failed its checks in the READ that verified ``outcome``:
        if its stored copy of the version is damaged (bit rot), replace it with the
        regenerated fragment (checked like a WRITE), as the in-node scrub would later
        (``node/rw_scrubber.py``); counted as ``rw.verify.local_healed``."""
        req = self._own_write(block, outcome)
        if req is None:
            return

        def step(kv: Any) -> bool:
            if replica.stored_state(kv, req) is not False:
                return False  # absent (collected meanwhile) or intact: nothing to heal
            replica.store_write(kv, req, owner=req.ts.writer)  # keeps flags and charge
            return True

        if await self.node.store.write(step, background=True):
            self.node.stats["rw.verify.local_healed"] += 1
            self.node.log.warning(
                "node %s: block %s version %s was damaged here; replaced",
                self.node.id,
                block,
                outcome.ts,
            )

    async def _rebuild(self) -> None:
        """The backlog after a restart: versions above their block's mark, unflagged; and
        the age revisits of versions kept below it (both lived in memory: without the
        revisits, what a restart found kept for its age stayed for good, issue 31 item
        14)."""
        self.progress["state"] = "scanning"
        after: int | None = None
        now = trio.current_time()
        # The scan does not read the fragments: each counts at the largest a fragment can
        # be, so the stream budget (bytes) binds no later than before the restart.
        size = max_fragment_of(self.node.config)
        while True:
            page = self.node.store.read(
                functools.partial(scan_page, after=after, retention=self.retention)
            )
            for block, ts in page.versions:
                self.backlog.wrote(block, ts, ts.writer, now, size=size)
            for block, due in page.revisits:
                self.collection.revisit(due, block)
            for block, size in page.history:
                self.collection.set_history(block, size)
            if page.after is None:
                break
            after = page.after
            # A page a step, behind client requests (node/yielding.py): after a restart of
            # a node holding much history the scan was half of six nodes' CPU while a
            # client copied a file (benchmarks/results/2026-12-01-ageing.md, 12-06).
            await self.node.gate.step()
        self._publish()

    def _fault(self, what: str) -> None:
        faults = self.progress["faults"]
        faults.append(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {what}")
        del faults[:-8]

    def bad_notify(self, sender: PrincipalId, why: str) -> None:
        self.progress["notify_bad"] += 1
        self._fault(f"bad NOTIFY from node {sender}: {why}")

    def _publish(self) -> None:
        self.progress["backlog_blocks"] = len(self.backlog)
        self.progress["backlog_versions"] = self.backlog.versions
        self.changed.set()
        self.changed = trio.Event()


async def run(verifier: Verifier) -> None:
    """The task a node spawns at start-up (``node/rw_server.py``)."""
    await verifier.run()
