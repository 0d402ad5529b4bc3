"""A node's object syncs in flight, and the candidates its waiting requests are about to
make: what keeps a node that fell behind during a burst from syncing the same version
again and again (``node/qu_server.py``, docs/qu.md "Object sync during a burst").

A node that lacks a request's conditioned-on version hands the request to a task that
object-syncs it (seed L2599-2607).  Meanwhile the client, answered by the ``q`` others,
sends its next update of the object, conditioned on the candidate the waiting request is
about to make here; before this module the node synced that one from its peers too, and
the next, and the next, for as long as a sync took longer than the client's next update
(a node that lagged once stayed behind the whole burst), and every resend of a waiting
request started one more sync of the same version.  In ``bftfs restore`` of a 1 000-file
tree this was 2 600-5 700 ``qu.sync`` requests, each node spending ~16 s of CPU (issue 36,
benchmarks/results/2026-11-26-qu-sync-storm.md).  Now:

- **Made here**: a request waiting for a sync claims the candidate it sets up
  (``NeedSync.lt``) at each of its objects; a later request conditioned on a claimed
  candidate waits for that request to end (at most :data:`WAIT_SECONDS`) and then runs
  again on what this node stored, syncing only if the version still is not here (the
  earlier request failed).  The version it gets is the one this node made by running the
  method itself, not one believed from anybody.  A claim lasts until its request ends, or
  at most :data:`CLAIM_SECONDS` (an expired claim is no claim: waits skip it, a new
  request may take it over; and a store step that runs after its request was cancelled
  claims nothing, :class:`Held`); a timestamp is always later than the one it is
  conditioned on, so no two requests can wait for each other.
- **One sync per version**: concurrent wants of one ``(object, timestamp)`` (a resent
  request, two requests conditioned on one version) share one sync and its ``b + 1``
  matching answers.
- **A synced version is kept for the next request** that wants it, for
  :data:`KEPT_SECONDS` (at most :data:`MAX_KEPT` versions, :data:`MAX_KEPT_BYTES`): the
  request that synced it may still fail there ("not current": it lost to another update
  of one of its eight objects), and its resends wanted the same version again; on real
  processes at load 5 the same version was synced again within 2 s 4 981 times in one
  run.  It is the version ``b + 1`` hosts gave byte for byte (a version never changes).
- **A version the hosts no longer hold is not asked for again at once**: for
  :data:`FAILED_SECONDS` after a sync that every host answered without ``b + 1`` giving
  it, a request that needs it fails here without a sync (one that timed out, or that a
  host refused, is tried again: ``qu_objsync.every_host_answered``).  The benign hosts
  holding a version all answer it byte for byte, so when every host answered and no
  ``b + 1`` agreed, at most ``b`` benign hosts hold it: no sync could get it, whatever
  the liars said; and a request is conditioned only on a version its OHS shows at
  authenticated servers, so a liar cannot have a node skip a version before it exists.  Under load a
  node that fell behind on objects that change quickly (lease renewals of 1 000 files,
  eight a request) was sent resends of requests conditioned on versions the others had
  since pruned (``keep_versions``): each resend asked all five hosts and failed (node 4 of
  a real-process restore and revert: 12 405 syncs, 1 038 failed, 107 000 ``qu.sync``
  requests in two minutes).  The request would fail anyway; the client has the others.

Neither changes what a node accepts: a version still comes from ``b + 1`` hosts agreeing
byte for byte, or from this node's own method run.  Both tables hold only what the
node's waiting requests put there (each at most its 8 objects), and each wait is bounded,
so neither a client nor a peer can make a node wait or sync without bound.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable

import trio

from bftfs.qu.timestamp import Timestamp

#: What a sync yields: the version's ``(state, applied)``, or None when it failed.
Synced = tuple[bytes | None, bytes] | None

#: ``(object id, timestamp)`` of a version.
Key = tuple[int, Timestamp]

#: Longest a request waits for another request of this node to make the version it needs.
WAIT_SECONDS = 2.0

#: Longest a claim stands (a request retries its syncs three times, each bounded by the
#: sync timeout): past it nobody waits for the claimant.
CLAIM_SECONDS = 8.0

#: Claims kept at most before the expired ones are dropped.
MAX_CLAIMS = 4096

#: How long a version whose sync failed is not asked for again: a request that needs it
#: fails at once meanwhile (a client's resends of an old request, conditioned on a version
#: the others have since pruned, each cost a sync that asks every host and fails).
FAILED_SECONDS = 10.0

#: Failed versions remembered at most (the oldest are forgotten first).
MAX_FAILED = 4096

#: How long a synced version is kept for the next request that wants it, and how many
#: such versions and bytes at most (the oldest go first).
KEPT_SECONDS = 10.0
MAX_KEPT = 1024
MAX_KEPT_BYTES = 16 * 1024 * 1024


class _Shared:
    """One sync in flight: its waiters, and its result once ``finished``."""

    __slots__ = ("done", "finished", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.finished = False
        self.result: Synced = None


class Held:
    """The claims of one request being served (:meth:`InFlight.claim_for`,
    :meth:`InFlight.end`); the lock orders a late store step's claim against the end."""

    __slots__ = ("ended", "keys", "lock")

    def __init__(self, keys: Iterable[Key] = ()) -> None:
        self.keys = list(keys)
        self.ended = False
        self.lock = threading.Lock()


class InFlight:
    """The claims and shared syncs of one node's Q/U server (module docstring)."""

    def __init__(self, stats: Counter[str]) -> None:
        """``stats``: the node's counters (``qu.sync_waited``, ``qu.sync_wait_expired``,
        ``qu.sync_shared``)."""
        self.stats = stats
        self._claims: dict[Key, tuple[trio.Event, float]] = {}
        self._syncing: dict[Key, _Shared] = {}
        #: Versions whose sync failed, and until when they are not asked for again.
        self._failed: dict[Key, float] = {}
        #: Versions synced lately: until when they are kept, and the version.
        self._kept: dict[Key, tuple[float, tuple[bytes | None, bytes]]] = {}
        self._kept_bytes = 0

    def claim(self, objects: Iterable[int], lt: Timestamp | None, now: float) -> tuple[Key, ...]:
        """Claim candidate ``lt`` at each of ``objects`` nobody claimed yet (a resent
        request finds its first copy's claims; an expired claim is taken over); the keys
        claimed, for :meth:`release`.  ``now``: the trio clock.  Called inside store
        steps, which a durable store runs in a worker thread: it only adds to the table
        (an expired claim's waiters have stopped waiting, so its event needs no set)."""
        if lt is None:
            return ()
        claims = self._claims
        mine = []
        for oid in objects:
            key = (oid, lt)
            got = claims.get(key)
            if got is None or got[1] <= now:
                claims[key] = (trio.Event(), now + CLAIM_SECONDS)
                mine.append(key)
        return tuple(mine)

    def claim_for(
        self, held: Held, objects: Iterable[int], lt: Timestamp | None, now: float
    ) -> None:
        """:meth:`claim` on behalf of ``held``'s request, unless it ended already: a
        store step runs even when the task that queued it was cancelled meanwhile, and
        a claim made after its request's :meth:`end` would never be released."""
        with held.lock:
            if not held.ended:
                held.keys.extend(self.claim(objects, lt, now))

    def end(self, held: Held) -> None:
        """``held``'s request ended: release its claims, and claim nothing more for it."""
        with held.lock:
            held.ended = True
            keys, held.keys = held.keys, []
        self.release(keys)

    def release(self, keys: Iterable[Key]) -> None:
        """The claimant ended (its version stored, or not): wake who waits for it."""
        for key in keys:
            got = self._claims.pop(key, None)
            if got is not None:
                got[0].set()

    def _expire(self, now: float) -> None:
        for key, (_event, until) in list(self._claims.items()):
            if until <= now:
                self.release((key,))

    async def wait_made(self, keys: Iterable[Key]) -> bool:
        """Wait until the requests of this node that claimed any of ``keys`` ended (at
        most :data:`WAIT_SECONDS` in all, never past a claim's end); whether any live
        claim was found.  An expired claim (its request never released it) is dropped
        and does not count: else every request needing its version would step again and
        again without syncing it, and fail ("did not settle") until the claim went."""
        now = trio.current_time()
        if len(self._claims) >= MAX_CLAIMS:
            self._expire(now)
        deadline = now + WAIT_SECONDS
        waited = False
        for key in keys:
            got = self._claims.get(key)
            if got is None:
                continue
            event, until = got
            if until <= trio.current_time():
                if self._claims.get(key) is got:  # not a new claim made meanwhile
                    self.release((key,))
                continue
            waited = True
            self.stats["qu.sync_waited"] += 1
            with trio.move_on_at(min(until, deadline)) as scope:
                await event.wait()
            if scope.cancelled_caught:
                self.stats["qu.sync_wait_expired"] += 1
        return waited

    def gone(self, key: Key) -> None:
        """Every host answered and no ``b + 1`` gave the version ``key``: do not ask for
        it again for :data:`FAILED_SECONDS` (a sync that timed out is not remembered)."""
        failed = self._failed
        if len(failed) >= MAX_FAILED:
            del failed[next(iter(failed))]
        failed[key] = trio.current_time() + FAILED_SECONDS

    def _keep(self, key: Key, version: tuple[bytes | None, bytes]) -> None:
        """Keep a synced version for :data:`KEPT_SECONDS` (within the bounds)."""
        self._forget(key)
        size = len(version[0] or b"") + len(version[1])
        if size > MAX_KEPT_BYTES // 8:
            return
        kept = self._kept
        while kept and (len(kept) >= MAX_KEPT or self._kept_bytes + size > MAX_KEPT_BYTES):
            self._forget(next(iter(kept)))
        kept[key] = (trio.current_time() + KEPT_SECONDS, version)
        self._kept_bytes += size

    def _forget(self, key: Key) -> None:
        got = self._kept.pop(key, None)
        if got is not None:
            self._kept_bytes -= len(got[1][0] or b"") + len(got[1][1])

    async def fetch(self, key: Key, sync: Callable[[], Awaitable[Synced]]) -> Synced:
        """``sync()``'s result for the version ``key``, sharing a sync of it in flight;
        None at once while every host answered without it less than
        :data:`FAILED_SECONDS` ago (:meth:`gone`)."""
        now = trio.current_time()
        kept = self._kept.get(key)
        if kept is not None:
            if now < kept[0]:
                self.stats["qu.sync_reused"] += 1
                return kept[1]
            self._forget(key)
        failed = self._failed
        until = failed.get(key)
        if until is not None:
            if now < until:
                self.stats["qu.sync_skipped"] += 1
                return None
            del failed[key]
        while (shared := self._syncing.get(key)) is not None:
            self.stats["qu.sync_shared"] += 1
            await shared.done.wait()  # the sync is bounded by its own timeout
            if shared.finished:
                return shared.result
            # Its asker was cancelled before the answer: ask again.
        shared = self._syncing[key] = _Shared()
        try:
            shared.result = await sync()
            shared.finished = True
            if shared.result is not None:
                self._keep(key, shared.result)
        finally:
            if self._syncing.get(key) is shared:
                del self._syncing[key]
            shared.done.set()
        return shared.result
