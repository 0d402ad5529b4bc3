"""Pruning Q/U object versions once retention lets them go, also for objects that are
never updated again (a removed file's attribute object, a removed directory), and
shrinking finished objects to tombstones once every server holds their final version.

A server prunes an object's old versions when it accepts an update of it
(``bftfs.qu.serverconfig.Retention``), but versions kept for their age could only go at the
*next* update, which a removed file never gets.  So every accepted update also schedules a
look at its objects ``keep_seconds`` later (:meth:`Pruner.updated`); the task runs
:func:`bftfs.qu.retention.prune_step` then, in the group-committed store, oldest first.  An
object updated again meanwhile is looked at only for its latest update.  Memory: one entry
per object updated within the last ``keep_seconds``.

**Tombstones** (docs/qu.md, "Reclaiming removed objects").  Pruning keeps what the replica
history names: the conditioned-on version of a removed file's final update and the stored
requests of both.  When the newest version of an object is finished (``tombstone_target``),
the task asks every other server for its history of the object (``qu.history``, up to
:data:`BATCH` objects a call), culls them with its own key and, when all ``n`` list that
version as their newest (``tombstone_agreed``), deletes everything of the object but its
history and that version (``tombstone_step``, one store transaction per object).  Without
every server's word it tries again later, each time twice as long, about four minutes in
all (node/background.py); a node down longer leaves the object as pruning left it until
the next sweep, below.

**Forgetting** (docs/qu.md, "Forgetting removed objects").  A tombstone is forgotten
``forget_seconds`` after it aged out of ``keep_seconds`` (``forget_target``): when every
server lists its final version as newest or holds nothing of the object, the server
deletes the final version and the replica history (``forget_step``), and the object reads
as never touched here.  Until then it waits in a second heap that does not count as work
(``idle`` is set while only such entries wait).

**Sweeps.**  The queue is in memory, so a restarted node (or one whose tombstone attempts
ran out while another node was down) would keep what it held.  A sweep therefore walks
every object the store holds, a page at a time and only while nothing else is queued, at
start and then every hour (node/background.py), and queues those with something
to prune, shrink or forget (``sweep_candidates``), each for when it comes due: a duty
not due yet at a restart (a file removed seconds before it) waits in the second heap.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import trio

from bftfs.ids import PrincipalId
from bftfs.net.quorum import QuorumUnavailable
from bftfs.node.background import Backoff, sweep, write_batch
from bftfs.qu.duties import pending_due, sweep_candidates
from bftfs.qu.history import ReplicaHistory
from bftfs.qu.messages import KIND_HISTORY, VERSION, MessageError
from bftfs.qu.reads import handle_history
from bftfs.qu.replica import cull
from bftfs.qu.reply import Reply
from bftfs.qu.retention import (
    Thinned,
    drop_requests,
    load_revisits,
    prune_step,
    set_revisit,
    thin_step,
)
from bftfs.qu.serverconfig import ReplicaConfig
from bftfs.qu.timestamp import NARROW_OBJECTS
from bftfs.qu.tombstones import (
    Forget,
    forget_step,
    forget_target,
    tombstone_agreed,
    tombstone_step,
    tombstone_target,
)

if TYPE_CHECKING:
    from bftfs.node.parts import NodeParts

#: Objects whose histories one ``qu.history`` call asks for.
BATCH = NARROW_OBJECTS
#: How long the servers' histories are waited for.
ASK_TIMEOUT = 5.0
#: A server's histories of some objects: ``oid -> (histories culled with this server's
#: key, how many servers answered with no history of it)``.
Histories = dict[int, tuple[dict[int, ReplicaHistory], int]]


#: Looks (:func:`_look`) done in one store transaction at most, per step of the gate: a
#: commit shared by 16 (a look reads 4 versions and records on average), while a step stays
#: short beside the foreground's commits.
LOOKS_PER_STEP = 16
#: Seconds between writes of the looks updates scheduled (``qu.revisit``): what a node
#: restarted within this long after an update forgets to look at (until its next update).
SAVE_EVERY = 5.0


def _look(kv: Any, cfg: ReplicaConfig, oid: int, now_ns: int) -> tuple[int, Thinned]:
    """One object's look after ``request_seconds``: its old requests dropped and its
    history thinned, and when to look again recorded, in one store transaction."""
    dropped, thinned = drop_requests(kv, cfg, oid, now_ns), thin_step(kv, cfg, oid, now_ns)
    set_revisit(kv, oid, thinned.revisit_ns)
    return dropped, thinned


def _save(kv: Any, due: dict[int, int]) -> None:
    for oid, ns in due.items():
        set_revisit(kv, oid, ns)


class Pruner:
    """The pruning task of one node's Q/U server (see the module docstring)."""

    def __init__(self, node: NodeParts, cfg: ReplicaConfig) -> None:
        self.node = node
        self.cfg = cfg
        self.delay_ns = int(cfg.retention.keep_seconds * 1e9) + 1
        #: ``(due ns, oid)``, a heap (retries come due later than updates queued after them).
        self._queue: list[tuple[int, int]] = []
        self._latest: dict[int, int] = {}
        #: ``(due ns, oid)`` of tombstones to forget later (not work: see ``idle``).
        self._later: list[tuple[int, int]] = []
        self._backoff = Backoff()
        #: Stored requests to drop (``Retention.request_seconds``): ``(due ns, oid)``, a
        #: heap, each object's latest entry in ``_requests_latest`` (:meth:`drop_requests`).
        secs = cfg.retention.request_seconds
        self.request_delay_ns = (
            int(secs * 1e9) + 1 if secs is not None and secs < cfg.retention.keep_seconds else None
        )
        self._requests: list[tuple[int, int]] = []
        self._requests_latest: dict[int, int] = {}
        #: Looks scheduled by updates and not written to ``qu.revisit`` yet (each
        #: object's latest; :meth:`save_looks`).
        self._unsaved: dict[int, int] = {}
        self._requests_wake = trio.Event()
        self._wake = trio.Event()
        #: Set while nothing is queued or being done (tests wait on it).
        self.idle = node.finished["qu.prune"] = trio.Event()
        self.idle.set()

    @property
    def enabled(self) -> bool:
        return self.cfg.retention.keep_last is not None

    def updated(self, objects: Iterable[int]) -> None:
        """The server accepted an update of ``objects`` now."""
        if not self.enabled:
            return
        due = self.node.now_ns() + self.delay_ns
        objects = list(objects)
        for oid in objects:
            heapq.heappush(self._queue, (due, oid))
            self._latest[oid] = due
            self._backoff.reset(oid)
        self._busy()
        self._wake.set()
        if self.request_delay_ns is not None:
            soon = self.node.now_ns() + self.request_delay_ns
            for oid in objects:
                heapq.heappush(self._requests, (soon, oid))
                self._requests_latest[oid] = soon
                self._unsaved[oid] = soon
            self._requests_wake.set()

    async def drop_requests(self) -> None:
        """Drop the stored requests of versions past ``request_seconds`` and thin the
        history to the schedule, each object looked at once after its latest update
        (:func:`bftfs.qu.retention.drop_requests`, :func:`~bftfs.qu.retention.thin_step`)
        and again when a version the schedule keeps may go; never returns while the node
        runs.  Memory: one entry per object updated within ``request_seconds`` or holding
        a version the schedule keeps for now.  The looks pending are kept in the store
        too (``qu.revisit``: each look records the next, :meth:`save_looks` those updates
        scheduled), and a restarted node takes them up again, those come due while it was
        down at once."""
        loaded = self.node.store.read(load_revisits)
        for due, oid in loaded:
            if due < self._requests_latest.get(oid, due + 1):
                heapq.heappush(self._requests, (due, oid))
                self._requests_latest[oid] = due
        self.node.stats["qu.revisits_loaded"] += len(loaded)
        while True:
            now = self.node.now_ns()
            if not self._requests or self._requests[0][0] > now:
                wait = (self._requests[0][0] - now) / 1e9 if self._requests else float("inf")
                self._requests_wake = trio.Event()
                with trio.move_on_after(wait):
                    await self._requests_wake.wait()
                continue
            # Client requests first (node/yielding.py); what is queued meanwhile comes due
            # no later than the head did, so the head is still due after the wait.
            await self.node.gate.step()
            now = self.node.now_ns()
            oids = self._due_looks(now)
            if not oids:
                continue
            steps = [functools.partial(_look, cfg=self.cfg, oid=oid, now_ns=now) for oid in oids]
            done = await write_batch(self.node, oids, steps, "dropping requests of")
            self.node.stats["qu.look_steps"] += 1
            for oid, (dropped, thinned) in done:
                self._looked(oid, dropped, thinned)

    def _due_looks(self, now: int) -> list[int]:
        """The objects whose looks are due at ``now``, at most :data:`LOOKS_PER_STEP`: one
        store transaction for them all.  A look apiece cost a commit apiece; the first
        looks of an ageing cluster (15 minutes after its first round) took the nodes' CPU
        a PostMark transaction from 0.0 to 3.2 ms and the rate from 1 572 to 499 tps."""
        oids: list[int] = []
        while self._requests and self._requests[0][0] <= now and len(oids) < LOOKS_PER_STEP:
            due, oid = heapq.heappop(self._requests)
            if self._requests_latest.get(oid) != due:
                continue  # updated again since: its own entry comes later
            del self._requests_latest[oid]
            self._unsaved.pop(oid, None)  # the look records the next one itself
            oids.append(oid)
        return oids

    def _looked(self, oid: int, dropped: int, thinned: Thinned) -> None:
        self.node.stats["qu.requests_dropped"] += dropped
        self.node.stats["qu.thinned"] += thinned.thinned
        self.node.stats["qu.looks"] += 1
        self.node.stats["qu.looks.examined"] += thinned.examined
        if thinned.revisit_ns is not None and oid not in self._requests_latest:
            heapq.heappush(self._requests, (thinned.revisit_ns, oid))
            self._requests_latest[oid] = thinned.revisit_ns

    async def save_looks(self) -> None:
        """Write the looks updates scheduled to ``qu.revisit`` every :data:`SAVE_EVERY`
        seconds, in one background transaction (never returns while the node runs)."""
        while True:
            await trio.sleep(SAVE_EVERY)
            if not self._unsaved:
                continue
            due, self._unsaved = self._unsaved, {}
            try:
                await self.node.store.write(functools.partial(_save, due=due), background=True)
            except Exception:
                self.node.stats["internal_errors"] += 1
                self.node.log.exception("node %s: saving %d looks", self.node.id, len(due))

    def _busy(self) -> None:
        if self.idle.is_set():
            self.idle = self.node.finished["qu.prune"] = trio.Event()

    def _schedule(self, oid: int, due: int) -> None:
        heapq.heappush(self._queue, (due, oid))
        self._latest[oid] = due

    def _retry(self, oid: int) -> None:
        due = self._backoff.next_due(oid, self.node.now_ns())
        if due is None:
            self.node.stats["qu.tombstone.given_up"] += 1
        else:
            self._schedule(oid, due)

    def _forget_later(self, oid: int, due: int) -> None:
        heapq.heappush(self._later, (due, oid))

    async def run(self) -> None:
        """Never returns while the node runs; a failed step is logged and skipped."""
        while True:
            now = self.node.now_ns()
            while self._later and self._later[0][0] <= now:
                due, oid = heapq.heappop(self._later)
                if oid not in self._latest:
                    self._busy()
                    self._schedule(oid, due)
            if not self._queue:
                self.idle.set()
                self._wake = trio.Event()
                wait = (self._later[0][0] - now) / 1e9 if self._later else float("inf")
                with trio.move_on_after(wait):
                    await self._wake.wait()
                continue
            due, oid = self._queue[0]
            wait = (due - now) / 1e9
            if wait > 0:
                with trio.move_on_after(wait):
                    self._wake = trio.Event()
                    await self._wake.wait()  # an update queued meanwhile comes due later
                continue
            shrink: list[int] = []
            forget: list[int] = []
            while (
                self._queue
                and self._queue[0][0] <= self.node.now_ns()
                and len(shrink) + len(forget) < BATCH  # one qu.history call asks for them
            ):
                due, oid = heapq.heappop(self._queue)
                if self._latest.get(oid) != due:
                    continue  # updated again since: its own entry comes later
                del self._latest[oid]
                await self.node.gate.step()  # client requests first (node/yielding.py)
                found = await self._prune(oid)
                if found is True:
                    shrink.append(oid)
                elif isinstance(found, Forget):
                    self._forget_when_due(oid, found, forget)
            if shrink or forget:
                await self._reclaim(shrink, forget)

    def _forget_when_due(self, oid: int, found: Forget, due_now: list[int]) -> None:
        if found.due_ns <= self.node.now_ns():
            due_now.append(oid)
        else:
            self._forget_later(oid, found.due_ns)

    async def _prune(self, oid: int) -> bool | Forget | None:
        """Prune ``oid``; True if it may shrink to a tombstone, its :class:`Forget` if it
        is a tombstone that may be forgotten (now or later)."""
        now = self.node.now_ns()
        step = functools.partial(prune_step, cfg=self.cfg, oid=oid, now_ns=now)

        def next_step(kv: Any) -> bool | Forget | int | None:
            if tombstone_target(kv, self.cfg, oid, now) is not None:
                return True
            return forget_target(kv, self.cfg, oid) or pending_due(kv, self.cfg, oid, now)

        try:
            deleted = await self.node.store.write(step, background=True)
            found = self.node.store.read(next_step)
        except Exception:
            self.node.stats["internal_errors"] += 1
            self.node.log.exception("node %s: pruning object %d", self.node.id, oid)
            return None
        self.node.stats["qu.pruned"] += deleted
        if isinstance(found, int) and not isinstance(found, bool):
            # Something comes due later (its final version ages out of keep_seconds after
            # the older ones did): look again then, not only at the next update or sweep.
            heapq.heappush(self._later, (found, oid))
            return None
        return found

    async def _reclaim(self, shrink: list[int], forget: list[int]) -> None:
        """Ask every server for its histories of the objects and shrink to tombstones, or
        forget, those all of them agree on (see the module docstring)."""
        histories = await self._histories(shrink + forget)
        for oid in shrink:
            await self.node.gate.step()
            await self._tombstone(oid, histories.get(oid, ({}, 0)))
        for oid in forget:
            await self.node.gate.step()
            await self._forget(oid, histories.get(oid, ({}, 0)))

    async def _tombstone(self, oid: int, said: tuple[dict[int, ReplicaHistory], int]) -> None:
        now = self.node.now_ns()
        try:
            target = self.node.store.read(
                functools.partial(tombstone_target, cfg=self.cfg, oid=oid, now_ns=now)
            )
            if target is None:
                return
            if not tombstone_agreed(target, said[0], self.cfg.th.n, said[1]):
                self.node.stats["qu.tombstone.waiting"] += 1
                self._retry(oid)
                return
            step = functools.partial(
                tombstone_step, cfg=self.cfg, oid=oid, final=target, now_ns=now
            )
            deleted = await self.node.store.write(step, background=True)
            found = self.node.store.read(lambda kv: forget_target(kv, self.cfg, oid))
        except Exception:
            self.node.stats["internal_errors"] += 1
            self.node.log.exception("node %s: tombstone of object %d", self.node.id, oid)
            return
        if deleted:
            self.node.stats["qu.tombstones"] += 1
            self.node.stats["qu.tombstone.deleted"] += deleted
        if found is not None:
            self._forget_later(oid, found.due_ns)
            self._wake.set()

    async def _forget(self, oid: int, said: tuple[dict[int, ReplicaHistory], int]) -> None:
        now = self.node.now_ns()
        try:
            found = self.node.store.read(lambda kv: forget_target(kv, self.cfg, oid))
            if found is None or found.due_ns > now:
                return
            if not tombstone_agreed(found.final, said[0], self.cfg.th.n, said[1]):
                self.node.stats["qu.forget.waiting"] += 1
                self._retry(oid)
                return
            step = functools.partial(
                forget_step, cfg=self.cfg, oid=oid, final=found.final, now_ns=now
            )
            deleted = await self.node.store.write(step, background=True)
        except Exception:
            self.node.stats["internal_errors"] += 1
            self.node.log.exception("node %s: forgetting object %d", self.node.id, oid)
            return
        if deleted:
            self.node.stats["qu.forgotten"] += 1

    async def sweep(self) -> None:
        """Queue every stored object with something to prune, shrink or forget, a page at a
        time while nothing else is queued (node/background.py; never returns while the
        node runs)."""
        if not self.enabled:
            return

        def read_page(
            kv: Any, after: int | None, limit: int
        ) -> tuple[list[tuple[int, int]], int | None]:
            return sweep_candidates(kv, self.cfg, after, limit, self.node.now_ns())

        def take(page: list[tuple[int, int]]) -> None:
            now = self.node.now_ns()
            queued = [(oid, due) for oid, due in page if oid not in self._latest]
            for oid, due in queued:
                if due <= now:
                    self._schedule(oid, now)
                else:  # a duty that comes due later (not work until then)
                    heapq.heappush(self._later, (due, oid))
            self.node.stats["qu.swept"] += len(queued)
            if queued:
                if any(due <= now for _, due in queued):
                    self._busy()
                self._wake.set()

        async def drained() -> None:
            await self.idle.wait()

        await sweep(self.node, "objects", read_page, take, before_page=drained)

    async def _histories(self, oids: list[int]) -> Histories:
        """Every server's history of each of ``oids`` (this one's from its store), culled
        with this server's key: what each server says for itself, nothing it forged for
        another.  Servers that did not answer are missing.  One call per :data:`BATCH`
        objects (servers refuse longer lists)."""
        ids = sorted(set(oids))  # qu.history takes sorted, distinct ids
        out: Histories = {}
        for i in range(0, len(ids), BATCH):
            out.update(await self._history_batch(tuple(ids[i : i + BATCH])))
        return out

    async def _history_batch(self, objects: tuple[int, ...]) -> Histories:
        n, me = self.cfg.th.n, int(self.cfg.me)
        got: dict[int, Any] = {}

        def accept(node: Any, raw: Any) -> bool:
            try:
                got[int(node)] = Reply.from_wire(raw, objects, n).hist
            except (MessageError, IndexError, TypeError, ValueError):
                return False
            return True

        others = [PrincipalId(s) for s in range(n) if s != me]
        with contextlib.suppress(QuorumUnavailable):
            await self.node.endpoint.quorum_call(
                others,
                KIND_HISTORY,
                {"v": VERSION, "o": list(objects)},
                enough=lambda valid: len(valid) >= n - 1,
                accept=accept,
                timeout=ASK_TIMEOUT,
            )
        got[me] = self.node.store.read(lambda kv: handle_history(kv, self.cfg, objects)).hist
        out: Histories = {}
        for i, oid in enumerate(objects):
            entries = {s: hist[i] for s, hist in got.items() if len(hist) == len(objects)}
            culled, bad = cull(self.cfg, {oid: entries})
            # cull keeps valid non-initial histories: the rest of the valid ones are empty.
            empty = len(entries) - len(culled[oid]) - len(bad[0])
            out[oid] = ({s: e.rh for s, e in culled[oid].items()}, empty)
        return out
