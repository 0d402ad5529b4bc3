"""Per-principal admission on the answering side of connections: a flooding client is
slowed, never dropped, and cannot take more than its share of a node.

Seed 004 L2645-2652 (spec ``pasis-qu-lazy.md`` row 38): "malevolent clients may not follow
the specified backoff policy ... additional server-side code could rate limit clients".
The client cannot be trusted to limit itself, so the node does, where it reads frames
(:class:`~bftfs.net.server.Server`): before an authenticated request is dispatched, its
sender must

1. have tokens in two buckets (:class:`TokenBucket`): requests per second (a batch counts
   one per item) and bytes per second of frames.  Without them, the connection's read loop
   sleeps until the debt is paid, so that connection is not read meanwhile: the client's
   further frames wait in its socket and TCP pushes back on it;
2. have fewer than ``max_inflight`` requests being answered; otherwise the read loop waits
   until one of them is done;
3. get one of the server's ``handler_slots`` (:class:`FairSlots`, issue 64): a pool shared
   by all limited principals and, when it is full, granted round-robin among the
   principals with a frame waiting, one grant each per round (Aardvark, NSDI'09: per-client
   queues served in turn).  A correct client's request then waits for at most one request
   of each other principal, plus the pool's requests already running, never behind a
   flooder's queue: a client that pipelines thousands of cheap requests gets the same
   share of the node as one that sends one at a time, not ``max_inflight`` tasks for each
   of the other's one.  While the pool has room nobody waits (one principal alone is
   limited only by 1 and 2, and so is a principal while no other holds a slot).

Nothing is refused or dropped: a correct client that happens to be busy only waits (its
resends, if any, are idempotent, as the transport assumes everywhere).  What the bound buys
the *other* clients: each principal holds at most ``max_inflight`` handler tasks (and their
store writes) and at most its rate of the node's loop, so one key cannot fill the node's
run queue or group-commit batches with its own work.

Which principals are limited is the caller's choice (``exempt``): the node exempts other
nodes (node/limits.py explains why).  Time comes from trio's clock, so tests run the
waits under a ``MockClock``; :class:`TokenBucket` itself takes ``now`` as an argument.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import trio

from bftfs.ids import PrincipalId

W = TypeVar("W")
#: Seconds after its last slot during which a principal counts as using the node: while
#: one does, another gets no more than the pool's share (:class:`FairSlots`).
RECENT = 1.0
#: Principals remembered before those not seen within RECENT are forgotten.
MAX_SEEN = 256


class FairSlots(Generic[W]):
    """A pool of ``slots`` handler slots granted round-robin among principals (pure: the
    waiters are whatever the caller wakes; :class:`Admission` uses ``trio.Event``).

    :meth:`request` takes a slot at once when nobody waits and one is free, or when no
    other principal held one within :data:`RECENT` seconds (the pool shares a node among
    the principals using it; it does not cap one alone: 8 slots cost a lone writer of big
    files about a quarter of its rate, its durable writes holding slots through their
    group commit, and a client working now and then still finds a flooder capped when
    its request comes); otherwise the waiter joins
    its principal's queue, and a principal with no queue yet joins the ring at its back.
    :meth:`release` passes the freed slot to the first waiter of the principal at the
    front of the ring, which then goes to the back if it has more waiting: each waiting
    principal gets one slot per round, however many it has queued.
    """

    __slots__ = ("slots", "busy", "_ring", "_held", "_seen")

    def __init__(self, slots: int) -> None:
        self.slots = slots
        #: Slots held now (granted and not released).
        self.busy = 0
        #: The principals with a waiter, in the order they get the next slots.
        self._ring: OrderedDict[PrincipalId, deque[W]] = OrderedDict()
        #: Slots held per principal (those holding none are absent).
        self._held: Counter[PrincipalId] = Counter()
        #: When each principal last held a slot (the caller's clock; pruned past RECENT).
        self._seen: dict[PrincipalId, float] = {}

    def request(self, pid: PrincipalId, waiter: W, now: float = 0.0) -> bool:
        """A slot for ``pid`` now (True), or ``waiter`` queued for one (False); ``now``:
        the caller's clock, for :data:`RECENT`."""
        if not self._ring and (self.busy < self.slots or self._alone(pid, now)):
            self.busy += 1
            self._held[pid] += 1
            self._seen[pid] = now
            return True
        queue = self._ring.get(pid)
        if queue is None:
            self._ring[pid] = deque((waiter,))
        else:
            queue.append(waiter)
        return False

    def _alone(self, pid: PrincipalId, now: float) -> bool:
        """Whether no principal but ``pid`` holds a slot or held one within RECENT."""
        if any(other != pid for other in self._held):
            return False
        if len(self._seen) > MAX_SEEN:
            self._seen = {p: t for p, t in self._seen.items() if t >= now - RECENT}
        return all(t < now - RECENT for p, t in self._seen.items() if p != pid)

    def release(self, holder: PrincipalId, now: float = 0.0) -> W | None:
        """``holder`` gives back a slot: the waiter it passes to (now holding it), or None."""
        self._held[holder] -= 1
        if self._held[holder] <= 0:
            del self._held[holder]
        self._seen[holder] = now
        if not self._ring:
            self.busy -= 1
            return None
        pid, queue = next(iter(self._ring.items()))
        waiter = queue.popleft()
        self._held[pid] += 1
        self._seen[pid] = now
        if queue:
            self._ring.move_to_end(pid)
        else:
            del self._ring[pid]
        return waiter

    def withdraw(self, pid: PrincipalId, waiter: W) -> None:
        """Take a waiter that gave up (its connection ended) out of its queue."""
        queue = self._ring.get(pid)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            if not queue:
                del self._ring[pid]

    def waiting(self, pid: PrincipalId) -> int:
        return len(self._ring.get(pid, ()))


class TokenBucket:
    """A token bucket that may go into debt (pure: time is an argument).

    Tokens refill at ``rate`` per second up to ``capacity`` (the burst).  :meth:`take`
    always takes what is asked, even below zero, and says how long the taker must wait for
    the debt to be paid: a request larger than the whole burst (a big frame) is delayed,
    never refused, and several takers waiting at once are served in turn, each delay
    counting the debt of those before it.  ``rate <= 0`` means no limit.
    """

    __slots__ = ("rate", "capacity", "tokens", "stamp")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        #: May be negative: the debt of takers still waiting.
        self.tokens = capacity
        self.stamp = now

    def take(self, now: float, amount: float) -> float:
        """Take ``amount`` tokens at time ``now``; seconds to wait before going on."""
        if self.rate <= 0:
            return 0.0
        if now > self.stamp:  # a clock that steps back must not mint tokens
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        self.tokens -= amount
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


@dataclass(frozen=True)
class Limits:
    """What one principal may ask of a server (policy.py ``[limits]`` has the defaults)."""

    #: Requests of one principal being answered at once.
    max_inflight: int
    #: Token rates (0: no limit) and how many seconds of them a bucket holds.
    requests_per_second: float
    bytes_per_second: float
    burst_seconds: float
    #: Handler slots shared by every limited principal, granted round-robin when they are
    #: all taken (:class:`FairSlots`); 0: no shared pool.
    handler_slots: int = 0


class _Principal:
    """One limited principal's buckets, in-flight slots and counters."""

    __slots__ = ("requests", "bytes", "slots", "counters", "starts")

    def __init__(self, limits: Limits, now: float) -> None:
        burst = limits.burst_seconds
        self.requests = TokenBucket(
            limits.requests_per_second, limits.requests_per_second * burst, now
        )
        self.bytes = TokenBucket(limits.bytes_per_second, limits.bytes_per_second * burst, now)
        self.slots = trio.Semaphore(limits.max_inflight)
        #: ``requests``, ``bytes_in``, ``throttled`` (waits for tokens), ``inflight_waits``
        #: (waits for a slot), ``fair_waits`` (waits for the shared pool, in turn),
        #: ``admitted``, ``overtaken`` (other principals' requests admitted while one of
        #: this one's was waiting or answered, summed: :meth:`Admission.admit`),
        #: ``waited_s`` (seconds of token waits, rounded) and whatever
        #: the node notes (:meth:`Admission.note`).
        self.counters: Counter[str] = Counter()
        #: For each request being admitted or answered, in the order read: the other
        #: principals' admissions counted when it was read (``overtaken``).
        self.starts: deque[int] = deque()


class Admission:
    """The admission of every principal of one server (see the module docstring).

    Args:
        limits: the same limits for every limited principal.
        exempt: principals never limited (the node: other nodes).
        stats: the server's counters; totals ``limits.throttled`` and
            ``limits.inflight_waits`` and ``limits.fair_waits`` are added there.
    """

    def __init__(
        self,
        limits: Limits,
        *,
        exempt: Callable[[PrincipalId], bool],
        stats: Counter[str] | None = None,
    ) -> None:
        self.limits = limits
        self._exempt = exempt
        self._principals: dict[PrincipalId, _Principal] = {}
        self.stats: Counter[str] = Counter() if stats is None else stats
        #: Requests admitted so far, of every principal (``overtaken`` is counted from it).
        self._admitted = 0
        self.pool: FairSlots[trio.Event] | None = (
            FairSlots(limits.handler_slots) if limits.handler_slots > 0 else None
        )

    def limited(self, pid: PrincipalId) -> bool:
        return not self._exempt(pid)

    def _principal(self, pid: PrincipalId) -> _Principal:
        p = self._principals.get(pid)
        if p is None:
            p = self._principals[pid] = _Principal(self.limits, trio.current_time())
        return p

    async def admit(self, pid: PrincipalId, requests: int, nbytes: int) -> None:
        """Wait until ``pid`` may have a request of ``requests`` items and ``nbytes``
        bytes answered, and take one of its in-flight slots (give it back with
        :meth:`release` once the answer is sent).  No schedule point when nothing waits."""
        p = self._principal(pid)
        counters = p.counters
        counters["requests"] += requests
        counters["bytes_in"] += nbytes
        # ``overtaken`` sums, over this principal's requests, the other principals'
        # requests admitted between its read and its answer (:meth:`release` adds the
        # other end): what fairness bounds, counted where it happens.
        start = self._admitted - counters["admitted"]
        p.starts.append(start)
        try:
            await self._wait(p, pid, requests, nbytes)
        except BaseException:
            p.starts.remove(start)
            raise
        self._admitted += 1
        counters["admitted"] += 1

    async def _wait(self, p: _Principal, pid: PrincipalId, requests: int, nbytes: int) -> None:
        """Wait for ``p``'s tokens, one of its in-flight slots, then the pool's."""
        counters = p.counters
        now = trio.current_time()
        delay = max(p.requests.take(now, requests), p.bytes.take(now, nbytes))
        if delay > 0:
            counters["throttled"] += 1
            counters["waited_ms"] += int(delay * 1000)
            self.stats["limits.throttled"] += 1
            await trio.sleep(delay)
        try:
            p.slots.acquire_nowait()
        except trio.WouldBlock:
            counters["inflight_waits"] += 1
            self.stats["limits.inflight_waits"] += 1
            await p.slots.acquire()
        if self.pool is not None:
            try:
                await self._fair_slot(pid, counters)
            except BaseException:
                p.slots.release()
                raise

    async def _fair_slot(self, pid: PrincipalId, counters: Counter[str]) -> None:
        """Wait for a slot of the shared pool, in ``pid``'s turn (:class:`FairSlots`)."""
        pool = self.pool
        assert pool is not None
        granted = trio.Event()
        if pool.request(pid, granted, trio.current_time()):
            return
        counters["fair_waits"] += 1
        self.stats["limits.fair_waits"] += 1
        try:
            await granted.wait()
        except BaseException:
            if granted.is_set():  # the slot came with the cancellation: pass it on
                self._release_pool(pid)
            else:
                pool.withdraw(pid, granted)
            raise

    def _release_pool(self, pid: PrincipalId) -> None:
        assert self.pool is not None
        waiter = self.pool.release(pid, trio.current_time())
        if waiter is not None:
            waiter.set()

    def release(self, pid: PrincipalId) -> None:
        """Give back the in-flight slot (and the pool's slot) :meth:`admit` took."""
        if self.pool is not None:
            self._release_pool(pid)
        p = self._principals[pid]
        # The oldest start: exact for requests answered in order, and for the sum once
        # all are answered whatever the order.
        p.counters["overtaken"] += self._admitted - p.counters["admitted"] - p.starts.popleft()
        p.slots.release()

    def inflight(self, pid: PrincipalId) -> int:
        p = self._principals.get(pid)
        return 0 if p is None else self.limits.max_inflight - p.slots.value

    def charge(self, pid: PrincipalId, requests: int) -> None:
        """Take ``requests`` more of ``pid``'s request tokens, without waiting: work a node
        did on its behalf beyond its request (calls to other nodes for it).  The debt is
        paid before its next request is admitted, so what a request makes a node do
        counts against its sender's rate, however little it sent."""
        p = self._principal(pid)
        p.requests.take(trio.current_time(), requests)
        p.counters["charged"] += requests

    def note(self, pid: PrincipalId, key: str, n: int = 1) -> None:
        """Add ``n`` to one of ``pid``'s counters (the node's quota refusals)."""
        self._principal(pid).counters[key] += n

    def statistics(self) -> dict[int, dict[str, int]]:
        """Counters per principal that sent anything (plain values, for the wire)."""
        return {
            int(pid): {**p.counters, "inflight": self.limits.max_inflight - p.slots.value}
            for pid, p in sorted(self._principals.items())
        }
