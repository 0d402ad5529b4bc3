"""Lazy verification's decisions: pure, no I/O, times passed in (seed 004 sections 3.7-3.9,
spec ``pasis-qu-lazy.md`` part B).  The trio driver is ``bftfs/node/rw_verifier.py``.

* :func:`responsible` - block ``k`` is the responsibility of nodes ``k mod N`` ..
  ``(k + b) mod N`` (seed L1665-1668): ``b + 1`` nodes, so one of them is correct.
* :class:`NotifyBook` - what other nodes said in NOTIFY ``<block, timestamp, status>``
  (L1503-1513).  Two rules, both safe with ``b`` liars:

  - *flag*: a version that ``b + 1`` nodes name identically as verified is verified (one of
    them is correct and verified it), so this node may set its verified flag, which readers
    count (L1695-1698); identically named poisonous versions may be discarded;
  - *floor*: sort each node's latest "verified" timestamp descending and take the
    ``(b + 1)``-th highest (L1581-1588): a correct node verified a complete version at or
    above it, so everything below may be collected.  The floor is *not* flagged: it may be
    a liar's timestamp.

  Missing or lying NOTIFYs cost time only: without ``b + 1`` agreeing ones the node verifies
  the block itself (L1517-1525, L1671-1672).
* :class:`Backlog` - the unverified versions this node hosts, by block and by the client
  that wrote them, with the budgets of seed B.3, and :meth:`Backlog.pick`, the order in
  which blocks are verified: forced ones first (a budget reached), then the node's own
  blocks with the most unverified versions once their writes settled (high yield first,
  let bursts settle: L1599-1621), then anyone's block whose NOTIFYs are overdue.
* :func:`squeezed` - the retention a node short of space applies; what garbage collection
  of one block deletes under a retention is :func:`bftfs.rw.gcplan.gc_plan`.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from bftfs.policy import RetentionPolicy, VerificationPolicy
from bftfs.rw.messages import object_of
from bftfs.rw.timestamp import Timestamp

VERIFIED = "verified"
POISONOUS = "poisonous"
STATUSES = (VERIFIED, POISONOUS)
#: Blocks the NOTIFY book remembers (least recently told forgotten first): a node that
#: floods NOTIFYs about made-up blocks can only push out what costs a verification later.
MAX_BOOK_BLOCKS = 65536
#: The backlog's heaps are rebuilt when they hold this many entries per unverified block.
STALE_FACTOR = 4
#: Poisonous timestamps remembered per block and notifier.
MAX_POISONOUS_PER_NODE = 8
#: A node not responsible for a block a budget forces verifies it itself only once the
#: client left this many times its budgets on the node (``Backlog._far_over``).
COOPERATIVE_SLACK = 2


def responsible(block: int, n: int, b: int) -> tuple[int, ...]:
    """The ``b + 1`` nodes that verify ``block`` first (seed L1665-1668)."""
    return tuple((block + i) % n for i in range(b + 1))


def fallback_delay(block: int, me: int, n: int, b: int, base: float) -> float:
    """How long node ``me`` waits for NOTIFYs about ``block`` before verifying it itself.

    The seed lets a node that is not responsible verify once NOTIFYs are overdue; if every
    such node did so after the same delay, a slow responsible set (a loaded machine, a
    node that withholds) would make ``n - b - 1`` nodes each read ``n - 1`` fragments of
    every block.  Instead the nodes after the responsible ones fall back in groups of
    ``b + 1``, in ring order: the first group after ``base``, the next after ``2 * base``,
    and so on.  A group of ``b + 1`` verifies and NOTIFYs, which is enough for everyone
    later in the ring to trust, so a missing or lying NOTIFY costs one more group's
    verification, never all of them; every node still verifies by itself in the end
    (at most ``base * ceil((n - b - 1) / (b + 1))``), so liveness does not depend on
    anyone's NOTIFYs.  Responsible nodes: 0 (they verify first).
    """
    rank = (me - block) % n
    if rank <= b:
        return 0.0
    return base * (1 + (rank - b - 1) // (b + 1))


class HoldBook:
    """The HOLDs a node's peers sent (``node/rw_notify.py``): a node holds its idle-time
    verification for another's client read only when ``b + 1`` peers say so within a
    window, so that at least one of them is correct and sees the reads; ``b`` lying nodes
    cannot hold it back on their own.

    Args:
        b: the most nodes that may lie.
    """

    def __init__(self, b: int) -> None:
        self.b = b
        #: The latest HOLD of each peer (at most one entry per node).
        self._last: dict[int, float] = {}

    def held(self, sender: int, now: float, window: float) -> bool:
        """Record ``sender``'s HOLD at ``now``; whether ``b + 1`` distinct peers have sent
        one within ``window`` before it."""
        self._last[sender] = now
        return sum(1 for t in self._last.values() if now - t < window) > self.b


class NotifyBook:
    """NOTIFYs received, per block and node (see the module docstring).

    Timestamps are kept encoded (44 bytes, ordered as the timestamps are): a full book
    holds about 300 000 of them, and as objects each, with its record and list, is what
    CPython's collector walks at every full collection of the node (issue 62's aged
    cluster: 0.7 s a pass); ``bytes`` and dicts holding only them are not tracked."""

    def __init__(self, b: int, *, max_blocks: int = MAX_BOOK_BLOCKS) -> None:
        self.b = b
        self.max_blocks = max_blocks
        #: block -> node -> the newest version it said is verified (encoded).
        self._blocks: OrderedDict[int, dict[int, bytes]] = OrderedDict()
        #: block -> node -> versions it said are poisonous (encoded; rare).
        self._poisonous: dict[int, dict[int, list[bytes]]] = {}

    def record(self, node: int, block: int, ts: Timestamp, status: str) -> None:
        """Remember that ``node`` said ``ts`` of ``block`` is ``status``."""
        if status not in STATUSES:
            raise ValueError(f"unknown NOTIFY status {status!r}")
        by_node = self._blocks.get(block)
        if by_node is None:
            by_node = self._blocks[block] = {}
            while len(self._blocks) > self.max_blocks:
                gone, _ = self._blocks.popitem(last=False)
                self._poisonous.pop(gone, None)
        else:
            self._blocks.move_to_end(block)
        raw = ts.encode()
        if status == VERIFIED:
            if raw > by_node.get(node, b""):
                by_node[node] = raw
            return
        told = self._poisonous.setdefault(block, {}).setdefault(node, [])
        if raw not in told:
            told.append(raw)
            del told[:-MAX_POISONOUS_PER_NODE]

    def flagged(self, block: int) -> Timestamp | None:
        """The newest version ``b + 1`` nodes name identically as verified, if any."""
        votes = Counter(self._blocks.get(block, {}).values())
        agreed = [raw for raw, k in votes.items() if k >= self.b + 1]
        return Timestamp.decode(max(agreed)) if agreed else None

    def floor(self, block: int) -> Timestamp | None:
        """The ``(b + 1)``-th highest "verified" timestamp (None: fewer than ``b + 1``)."""
        told = sorted(self._blocks.get(block, {}).values(), reverse=True)
        return Timestamp.decode(told[self.b]) if len(told) > self.b else None

    def poisonous(self, block: int) -> set[Timestamp]:
        """Versions ``b + 1`` nodes name as poisonous."""
        votes = Counter(raw for told in self._poisonous.get(block, {}).values() for raw in told)
        return {Timestamp.decode(raw) for raw, k in votes.items() if k >= self.b + 1}

    def told_by(self, block: int, ts: Timestamp) -> set[int]:
        """Nodes that already said ``ts`` is verified (no NOTIFY goes back to them, L1536)."""
        raw = ts.encode()
        return {n for n, told in self._blocks.get(block, {}).items() if told == raw}

    def forget(self, block: int) -> None:
        self._blocks.pop(block, None)
        self._poisonous.pop(block, None)

    def __len__(self) -> int:
        return len(self._blocks)


@dataclass
class _Debt:
    """The unverified versions of one block on this node."""

    #: Unverified versions and the client that wrote each.
    versions: dict[Timestamp, int] = field(default_factory=dict)
    #: Bytes of each unverified version's fragment (the stream budget counts bytes).
    sizes: dict[Timestamp, int] = field(default_factory=dict)
    #: When the latest write reached the node (seconds, the driver's clock).
    last_write: float = 0.0
    #: When to try again after a verification that could not decide (0: any time).
    retry_at: float = 0.0
    failures: int = 0
    #: When the block becomes due (outside pool pressure), and whether it was found due:
    #: the one entry of :class:`Backlog`'s heaps that is current for it.
    due: float = 0.0
    ready: bool = False
    #: Whether this node is one of the block's responsible nodes (or cooperation is off).
    own: bool = True


@dataclass(frozen=True)
class Pick:
    """The next block to verify and why (``forced``, ``own``, ``fallback``)."""

    block: int
    reason: str


class Backlog:
    """Unverified versions this node hosts and the budgets on them (seed B.3).

    :meth:`pick` is called once per verification and the backlog can hold every block of
    a big file (3 200 of a 200 MiB one), so the order is kept in heaps rather than found
    by a scan of every block: a heap of blocks by the time they become due, and two heaps
    of due blocks (own, others') by unverified versions.  Entries are never removed from a
    heap; one that no longer matches its block's state is skipped when it comes up (each
    change pushes a fresh one).  Under pool pressure, rare and urgent, blocks are due
    whatever their settle time, and :meth:`pick` scans them all.
    """

    def __init__(self, policy: VerificationPolicy, *, me: int, n: int, b: int) -> None:
        self.policy = policy
        self.me = me
        self.n = n
        self.b = b
        self._debts: dict[int, _Debt] = {}
        self._by_client: Counter[int] = Counter()
        self._bytes_by_client: Counter[int] = Counter()
        #: Blocks with unverified versions, by object (:meth:`object_backlog`).
        self._by_object: Counter[int] = Counter()
        self._forced: OrderedDict[int, None] = OrderedDict()
        self._seq = itertools.count()
        #: (due time, order, block): blocks waiting to settle, for their fallback, or to retry.
        self._pending: list[tuple[float, int, int]] = []
        #: (-unverified versions, order, block): due blocks, this node's own and others'.
        self._ready_own: list[tuple[int, int, int]] = []
        self._ready_other: list[tuple[int, int, int]] = []
        #: Clients over their node-wide budget: every block they wrote is forced.
        self.over_budget: set[int] = set()

    def __len__(self) -> int:
        """Blocks with unverified versions."""
        return len(self._debts)

    def object_backlog(self, block: int) -> int:
        """Blocks with unverified versions here of the object ``block`` belongs to."""
        return self._by_object[object_of(block)]

    @property
    def versions(self) -> int:
        """Unverified versions, all blocks."""
        return sum(self._by_client.values())

    def by_client(self, client: int) -> int:
        return self._by_client[client]

    def _reschedule(self, block: int, debt: _Debt) -> None:
        """Recompute when ``block`` is due and queue it for then."""
        wait = self.policy.settle_seconds if debt.own else self._fallback(block)
        debt.due = max(debt.last_write + wait, debt.retry_at)
        debt.ready = False
        heapq.heappush(self._pending, (debt.due, next(self._seq), block))
        if len(self._pending) + len(self._ready_own) + len(self._ready_other) > STALE_FACTOR * (
            len(self._debts) + 16
        ):
            self._compact()

    def _compact(self) -> None:
        """Rebuild the heaps from the blocks' state, one entry per block: every change
        pushes an entry and stale ones leave only when they reach the top, so under a
        long load with no idle time (nothing picked) they would pile up."""
        self._pending, self._ready_own, self._ready_other = [], [], []
        for block, debt in self._debts.items():
            if debt.ready:
                heap = self._ready_own if debt.own else self._ready_other
                heap.append((-len(debt.versions), next(self._seq), block))
            else:
                self._pending.append((debt.due, next(self._seq), block))
        heapq.heapify(self._pending)
        heapq.heapify(self._ready_own)
        heapq.heapify(self._ready_other)

    def wrote(
        self,
        block: int,
        ts: Timestamp,
        client: int,
        now: float,
        *,
        size: int = 0,
        streaming: bool = False,
    ) -> bool:
        """A new version (``size`` bytes of fragment) was stored; whether a budget now
        forces the block's verification.  ``streaming``: a client stream is in progress
        (:func:`stream_state`), so the node-wide budget is :meth:`over_budget_now`'s."""
        debt = self._debts.get(block)
        if debt is None:
            ours = self.me in responsible(block, self.n, self.b)
            debt = self._debts[block] = _Debt(own=ours or not self.policy.cooperative)
            self._by_object[object_of(block)] += 1
        if ts not in debt.versions:
            debt.versions[ts] = client
            debt.sizes[ts] = size
            self._by_client[client] += 1
            self._bytes_by_client[client] += size
        debt.last_write = now
        self._reschedule(block, debt)
        mine = sum(1 for c in debt.versions.values() if c == client)
        forced = mine > self.policy.per_client_block
        if self.over_budget_now(client, streaming=streaming):
            self.over_budget.add(client)
        else:
            self.over_budget.discard(client)
        if client in self.over_budget:
            forced = True
        if self.policy.mode == "write-time" or (
            forced and (debt.own or self._far_over(client, mine, streaming=streaming))
        ):
            self._forced[block] = None
        return forced

    def _far_over(self, client: int, mine: int, *, streaming: bool) -> bool:
        """Whether ``client`` left :data:`COOPERATIVE_SLACK` times its budgets here: past
        that, a block it writes is verified at once by this node even when others are
        responsible for it (:meth:`wrote`).  Below it, a block a budget forces is verified
        at once by its ``b + 1`` responsible nodes, whose NOTIFYs settle it here.  Forced
        blocks verified by every node cost a 2 GiB write (past ``per_client`` versions
        and ``stream_bytes``) 73 node CPU-s instead of 51, and 44 MB/s instead of 56
        (issue 34); the bound is twice as loose on the nodes that wait, and holds even
        if the responsible nodes say nothing."""
        slack = COOPERATIVE_SLACK
        if mine > slack * self.policy.per_client_block:
            return True
        if self._by_client[client] <= slack * self.policy.per_client:
            return False
        return not streaming or self._bytes_by_client[client] > slack * self.policy.stream_bytes

    def bytes_by_client(self, client: int) -> int:
        """Bytes of unverified fragments ``client`` left on this node."""
        return self._bytes_by_client[client]

    def over_budget_now(self, client: int, *, streaming: bool) -> bool:
        """Whether ``client`` left more unverified data here than it may.

        Outside a stream the budget is ``per_client`` versions (seed B.3).  While a stream
        lasts it is ``stream_bytes`` bytes of fragments instead (and never less than
        ``per_client`` versions), so that a big file's writes are not verified while they
        arrive but after: the versions a stream may leave are bounded by bytes, which is
        what unverified data costs a node, and a client that streams without end is held
        to ``stream_bytes`` all the same."""
        if self._by_client[client] <= self.policy.per_client:
            return False
        return not streaming or self._bytes_by_client[client] > self.policy.stream_bytes

    def force(self, block: int) -> None:
        """Verify ``block`` before anything that is not forced (pool pressure, a request)."""
        if block in self._debts:
            self._forced[block] = None

    def settled(self, block: int, upto: Timestamp, also: Iterable[Timestamp] = ()) -> None:
        """Versions at or below ``upto`` (and those in ``also``) need no verification now."""
        debt = self._debts.get(block)
        if debt is None:
            return
        gone = {ts for ts in debt.versions if ts <= upto} | (set(also) & set(debt.versions))
        for ts in gone:
            client = debt.versions.pop(ts)
            self._by_client[client] -= 1
            self._bytes_by_client[client] -= debt.sizes.pop(ts, 0)
            if self._by_client[client] <= 0:
                del self._by_client[client]
                self._bytes_by_client.pop(client, None)
            if client in self.over_budget and self._by_client[client] <= self.policy.per_client:
                self.over_budget.discard(client)
        if not debt.versions:
            del self._debts[block]
            self._forced.pop(block, None)
            obj = object_of(block)
            self._by_object[obj] -= 1
            if self._by_object[obj] <= 0:
                del self._by_object[obj]
        else:
            debt.failures = 0
            debt.retry_at = 0.0
            self._reschedule(block, debt)

    def failures(self, block: int) -> int:
        debt = self._debts.get(block)
        return 0 if debt is None else debt.failures

    def failed(self, block: int, now: float) -> None:
        """A verification of ``block`` could not decide: back off (1 s doubling to 60 s)."""
        debt = self._debts.get(block)
        if debt is None:
            return
        debt.failures += 1
        debt.retry_at = now + min(60.0, 2.0 ** (debt.failures - 1))
        self._forced.pop(block, None)
        self._reschedule(block, debt)

    def _promote(self, now: float) -> None:
        """Move the blocks that became due by ``now`` to the ready heaps."""
        while self._pending and self._pending[0][0] <= now:
            due, _, block = heapq.heappop(self._pending)
            debt = self._debts.get(block)
            if debt is None or debt.ready or debt.due != due:
                continue  # gone, or rescheduled since this entry was pushed
            debt.ready = True
            heap = self._ready_own if debt.own else self._ready_other
            heapq.heappush(heap, (-len(debt.versions), next(self._seq), block))

    def _best(self, heap: list[tuple[int, int, int]]) -> int | None:
        """The due block with the most unverified versions in ``heap`` (left in it)."""
        while heap:
            minus, _, block = heap[0]
            debt = self._debts.get(block)
            if debt is None or not debt.ready:
                heapq.heappop(heap)  # gone, or not due any more: a fresh entry exists
                continue
            if -minus != len(debt.versions):
                heapq.heapreplace(heap, (-len(debt.versions), next(self._seq), block))
                continue
            return block
        return None

    def pick(self, now: float, *, idle: bool, pressure: bool) -> Pick | None:
        """The next block to verify, or None (nothing is due; see :meth:`next_due`).

        ``pressure`` (the history pool is short) makes blocks due at once, settled or not,
        idle or not; a block another node is responsible for still waits for its NOTIFYs
        until the fallback delay, so the pool is not spent on N verifications of each."""
        picks = self.pick_many(now, idle=idle, pressure=pressure, limit=1)
        return picks[0] if picks else None

    def pick_many(self, now: float, *, idle: bool, pressure: bool, limit: int) -> list[Pick]:
        """Up to ``limit`` distinct blocks to verify together (a *wave*), best first in
        :meth:`pick`'s order: forced blocks, then under ``pressure`` any block (others'
        after their fallback delay), else when ``idle`` the due blocks, own before others'.

        A wave's READs share one frame per peer and its records one commit
        (``node/rw_verifier.py``): per block, the frames and commits were most of what
        verification cost a node.  Nothing here changes the backlog; the verifier reports
        each block's result as before (:meth:`settled`, :meth:`failed`)."""
        picks: list[Pick] = []
        taken: set[int] = set()

        def add(block: int, reason: str) -> None:
            picks.append(Pick(block, reason))
            taken.add(block)

        for block in self._forced:
            if len(picks) >= limit:
                return picks
            debt = self._debts.get(block)
            if debt is not None and debt.retry_at <= now:
                add(block, "forced")
        if pressure:
            for block, reason in self._under_pressure(now):
                if len(picks) >= limit:
                    break
                if block not in taken:
                    add(block, reason)
            return picks
        if not idle:
            return picks
        self._promote(now)
        for heap, reason in ((self._ready_own, "own"), (self._ready_other, "fallback")):
            for block in self._take(heap, limit - len(picks), taken):
                picks.append(Pick(block, reason))
        return picks

    def _take(self, heap: list[tuple[int, int, int]], room: int, taken: set[int]) -> list[int]:
        """The best ``room`` due blocks of ``heap`` not in ``taken`` (the heap keeps them)."""
        out: list[int] = []
        popped = []
        while len(out) < room:
            block = self._best(heap)
            if block is None:
                break
            popped.append(heapq.heappop(heap))
            if block not in taken:  # a block may have two current entries
                taken.add(block)
                out.append(block)
        for entry in popped:
            heapq.heappush(heap, entry)
        return out

    def _under_pressure(self, now: float) -> list[tuple[int, str]]:
        """Every block a scan: own blocks at once, others' after their fallback delay; each
        group with the most unverified versions first."""
        own: list[tuple[int, int]] = []
        fallback: list[tuple[int, int]] = []
        for block, debt in self._debts.items():
            if debt.retry_at > now:
                continue
            count = len(debt.versions)
            if debt.own:
                own.append((count, block))
            elif now - debt.last_write >= self._fallback(block):
                fallback.append((count, block))
        # Stable sorts: among equal counts the scan's order, as before waves.
        own.sort(key=lambda e: -e[0])
        fallback.sort(key=lambda e: -e[0])
        return [(b, "own") for _, b in own] + [(b, "fallback") for _, b in fallback]

    def _fallback(self, block: int) -> float:
        return fallback_delay(block, self.me, self.n, self.b, self.policy.fallback_seconds)

    def next_due(self, now: float) -> float | None:
        """Seconds until some block may become due (None: the backlog is empty)."""
        if not self._debts:
            return None
        self._promote(now)
        if self._best(self._ready_own) is not None or self._best(self._ready_other) is not None:
            return 0.0
        while self._pending:
            due, _, block = self._pending[0]
            debt = self._debts.get(block)
            if debt is not None and not debt.ready and debt.due == due:
                return max(0.0, due - now)
            heapq.heappop(self._pending)
        return None


#: Blocks of one object left to verify on a node from which a client's read of that object
#: holds idle-time verification back (``stream_state``'s ``backlog_read``): a big file read
#: right after it was written.  Small files (Andrew's, PostMark's) keep the short
#: ``idle_seconds``: their budgets are counted in versions, and verification held back
#: during their reads would force their next writes' verification on every node.
BIG_OBJECT_BLOCKS = 16


@dataclass(frozen=True)
class StreamState:
    """Whether a client stream is in progress and how much quiet verification waits for."""

    streaming: bool
    #: Seconds without a client request after which the node counts as idle.
    idle_after: float


def stream_state(
    policy: VerificationPolicy,
    now: float,
    last_request: float,
    busy_since: float,
    backlog_read: float = -math.inf,
) -> StreamState:
    """The node's stream state at ``now`` (pure; ``node/rw_verifier.py`` asks it each step).

    ``busy_since`` is when the current run of client requests began, a run being broken
    by a gap of ``stream_idle_seconds`` (``net/server.py`` keeps it); ``last_request`` is
    the latest client request.  A run that has lasted ``stream_seconds`` is a stream (a big
    file written or read back: requests every few milliseconds for seconds).  While it
    lasts, verification waits for ``stream_idle_seconds`` of quiet rather than
    ``idle_seconds``: on a machine whose cores the client and the nodes share, the short
    gaps inside a stream are where the stream's own next requests are prepared, and
    verifying in them slows the stream by what verification costs (about half of the
    nodes' CPU during a 200 MiB write, docs/performance.md).  Budgets still force
    verification during a stream (:meth:`Backlog.over_budget_now`).

    ``backlog_read`` is when a client last read a block of a big object of which this node
    has blocks to verify (a big file read right after it was written,
    :data:`BIG_OBJECT_BLOCKS`): verification waits for ``stream_idle_seconds`` of
    quiet from then on, without the run having to last ``stream_seconds`` first.  Such a
    reader checks every block it uses itself (it regenerates what ``b + 1`` nodes have not
    flagged), so verifying the same blocks in its gaps pays the check twice inside the read
    (issue 34, sixth pass); it runs once the read is over.  It is not a stream for the
    budgets (``streaming`` stays False): reading raises no client's budget."""
    quiet = now - last_request
    stream_idle = max(policy.stream_idle_seconds, policy.idle_seconds)
    streaming = (
        policy.stream_seconds > 0
        and quiet < stream_idle
        and last_request - busy_since >= policy.stream_seconds
    )
    reading = policy.stream_seconds > 0 and now - backlog_read < stream_idle
    return StreamState(streaming, stream_idle if streaming or reading else policy.idle_seconds)


def squeezed(
    retention: RetentionPolicy, used: int, map_size: int, v: VerificationPolicy
) -> RetentionPolicy:
    """The retention a node short of space applies (pure): history thinned oldest first.

    Below ``pool_fraction`` of the map in use, ``retention`` itself.  From there to
    ``data_fraction`` (where new block versions are refused) every part of the schedule -
    the window of every version, the hours, days and weeks - is shortened in proportion,
    so what goes first is the oldest history on the whole node, whatever block it is of;
    at ``data_fraction`` only the newest ``keep_versions`` (and snapshots' versions) stay.
    The newest complete version is never at stake: collection keeps it whatever this
    says (:func:`bftfs.rw.gcplan.gc_plan`)."""
    low, high = v.pool_fraction * map_size, v.data_fraction * map_size
    if used < low:
        return retention
    share = 0.0 if used >= high or high <= low else 1.0 - (used - low) / (high - low)
    return replace(
        retention,
        keep_seconds=retention.keep_seconds * share,
        keep_hourly=int(retention.keep_hourly * share),
        keep_daily=int(retention.keep_daily * share),
        keep_weekly=int(retention.keep_weekly * share),
    )
