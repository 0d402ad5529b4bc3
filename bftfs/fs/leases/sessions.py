"""This mount's lease sessions (issue 62): the shared leases it holds cost nothing per
object while it lives.

A shared lease is taken bound to the mount's session in the slot that meets the object's
quorum (``fsobjects.sessions``: ``slot_for``), and lasts as long as that session: one
``session.renew`` per slot each time half of what the last one gave is used (the term less
the holder's margin: every 12.5 s with the default 30 s term) while the slot holds any
bound lease, nothing per object.  Each renewal's answer lists the objects another client recalled
(``r``); their leases are let go as a pushed recall's are, and said ``done`` at the next
renewal (by the recall's number).  The mount counts a session from before it sent the renewal, less
``HOLDER_MARGIN``, on trio's clock and the wall clock, as it counts an object's lease; a
renewal that could not be made, or came too late, ends the slot's leases there (each is
dropped as an ended lease is, the kernel's cache of it with it).  A renewal whose lease
time lay past the session's end on this mount's count starts a new generation on the
nodes and here: every lease of the older one is let go.

A session lives in one generation of nodes (docs/membership.md, "Generations"): when the
mount switches to a new generation (:meth:`Sessions.restart`), the leases bound to the old
one's sessions are let go (the freeze recalls them; ``fs.movein`` strips them from the
objects it moves) and every slot starts again, at the new generation's ``n``: the first
renewal there makes the session afresh (its generation numbers are the new nodes', which
must not be taken for the old ones').  During the move the routers leave the old sessions
where they are and run the renewal on the new generation.

Nodes of an older release do not know the ``session`` type: a first renewal refused
``no-such-method`` turns sessions off and the mount takes per-object leases as before.

The requester's side is :func:`recall_with_sessions`: a recall whose answer names
session-bound holders is sent again with their sessions, which pins those leases to their
session's end (``fsobjects.leases``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from bftfs.fs.leases.releases import Spawn, Update
from bftfs.fsobjects.leases import HOLDER_MARGIN
from bftfs.fsobjects.sessions import DONE, MAX_RECALLS, MOUNT, SLOT, session_oid, slot_for
from bftfs.qu.objects import unknown_method
from bftfs.qu.timestamp import NARROW_OBJECTS

log = logging.getLogger(__name__)

#: The pause after a round in which a renewal failed, doubling to :data:`RETRY_MAX` while
#: they keep failing (seconds).  With more than ``t`` nodes down a renewal fails at once,
#: and a loop without a pause spent a core on it; the longest pause stays a small part of
#: the half term a due renewal has left, so a passing failure still renews in time.
RETRY_FIRST, RETRY_MAX = 0.25, 2.0
#: Seconds between two warnings of failed renewals (the others are logged at DEBUG).
WARN_EVERY = 60.0


@dataclass
class Slot:
    """One slot's session as this mount counts it: its generation on the nodes, until
    when its leases are used (trio time and wall ns) and the recalls to say done."""

    gen: int = 0
    until: float = float("-inf")
    wall_until: int = 0
    done: set[int] = field(default_factory=set)
    #: The recall numbers the last renewal listed.
    seen: set[int] = field(default_factory=set)
    #: Set when the renewal under way ends (they go one at a time per slot).
    renewing: trio.Event | None = None


class Sessions:
    """The mount's sessions, by slot (module docstring)."""

    def __init__(
        self,
        update: Update,
        *,
        client: int,
        mount: int,
        n: int,
        term: float,
        wall_ns: Callable[[], int],
        spawn: Spawn,
        stats: Counter[str],
    ) -> None:
        """``update``: the Q/U update renewals go with.  ``client``, ``mount``: the ids the
        session objects derive from.  ``n``: the cluster's servers (a slot per residue)."""
        self._update = update
        self.client = client
        self.mount = mount
        self._n = n
        self.term = term
        self.wall_ns = wall_ns
        self._spawn = spawn
        self._stats = stats
        #: Off once the nodes refused the session type (an older release).
        self.enabled = True
        self.slots: dict[int, Slot] = {}
        #: Told the recalls a renewal lists, ``[[oid, seq], ...]``, and the slot when its
        #: session ended or moved to a new generation (``Leases`` lets them go).
        self.recalled: Callable[[int, list[list[int]]], None] = lambda slot, recalls: None
        self.ended: Callable[[int], None] = lambda slot: None
        #: Whether a slot holds any bound lease (renewals stop when none is held).
        self.holds: Callable[[int], bool] = lambda slot: False
        #: Called before a slot is renewed: its leases unused for a term are let go.
        self.sweep: Callable[[int], None] = lambda slot: None
        self._renewing = False
        #: When a failed renewal was last logged as a warning (one a minute at most).
        self._warned = float("-inf")

    def restart(self, n: int) -> None:
        """The mount switched to a new generation of ``n`` nodes (module docstring): every
        slot's leases are let go and its session forgotten, so the next grant renews
        first, in the new generation."""
        for slot, s in list(self.slots.items()):
            if s.gen:
                self._stats["session_restarted"] += 1
                self.ended(slot)
        self.slots.clear()
        self._n = n

    def slot_of(self, oid: int) -> int:
        """The slot whose session meets ``oid``'s quorum."""
        return slot_for(self.client, self.mount, oid, self._n)

    def sid(self, slot: int) -> int:
        """The id of this mount's session in ``slot``."""
        return session_oid(self.client, self.mount, slot)

    def ends(self, slot: int, gen: int) -> tuple[float, int] | None:
        """Until when (trio, wall ns) a lease bound to generation ``gen`` of ``slot`` is
        used, or None when that generation is not this mount's present one."""
        s = self.slots.get(slot)
        if s is None or s.gen != gen:
            return None
        return s.until, s.wall_until

    async def ready(self, slot: int) -> int | None:
        """A generation of ``slot`` live for at least two thirds of a term (renewed now
        if need be) for a grant to bind to, or None: sessions are off or the renewal
        failed (the caller takes a per-object lease)."""
        if not self.enabled:
            return None
        s = self.slots.get(slot)
        if s is None or self._due(s, trio.current_time()):
            await self.renew(slot)
            s = self.slots.get(slot)
        if s is None or s.until - trio.current_time() < self._usable() / 4:
            return None
        return s.gen

    def _usable(self) -> float:
        """Seconds a renewal keeps a session in use here: its term less the margin."""
        return self.term - HOLDER_MARGIN / 1e9

    def _due(self, s: Slot, now: float) -> bool:
        """Whether ``s`` is to be renewed at ``now``: half its use is gone (with the
        shortest term, 10 s, every 2.5 s; with 30 s, every 12.5 s), leaving the other
        half for a renewal slowed by load."""
        return s.until - now < self._usable() / 2

    def bound(self, slot: int) -> None:
        """A lease bound to ``slot`` was just recorded: the renewing loop runs while it is
        held.  (Started by ``ready`` instead, the loop ran while the grant's update was
        under way, found no bound lease yet and ended: the first leases of a burst of
        grants were never renewed, and their session ended under them.)"""
        if not self._renewing:
            self._renewing = True
            self._spawn(self._keep_renewing)

    async def _keep_renewing(self) -> None:
        """Renew each slot that holds a bound lease once half its use is gone, pausing
        after a failed renewal (:data:`RETRY_FIRST`); stop when none holds one (a later
        grant starts this again)."""
        retry = RETRY_FIRST
        try:
            while True:
                now = trio.current_time()
                for k in list(self.slots):
                    if self._due(self.slots[k], now):
                        self.sweep(k)
                active = [k for k in self.slots if self.holds(k)]
                if not active:
                    return
                due = [k for k in active if self._due(self.slots[k], now)]
                if due:
                    failed = self._stats["session_renewal_failed"]
                    async with trio.open_nursery() as nursery:
                        for k in due:
                            nursery.start_soon(self.renew, k)
                    if self._stats["session_renewal_failed"] > failed:
                        await trio.sleep(retry)
                        retry = min(RETRY_MAX, retry * 2)
                    else:
                        retry = RETRY_FIRST
                    continue
                first = min(self.slots[k].until for k in active) - self._usable() / 2
                await trio.sleep_until(max(first, now + 0.05))
        finally:
            self._renewing = False

    async def renew(self, slot: int) -> None:
        """One ``session.renew`` of ``slot``: counted from before it was sent; its answer's
        recalls are let go; a failure leaves the session to end where it was counted."""
        s = self.slots.setdefault(slot, Slot())
        if s.renewing is not None:  # one is under way: its answer serves this call too
            await s.renewing.wait()
            return
        s.renewing = trio.Event()
        try:
            await self._renew(slot, s)
        finally:
            s.renewing.set()
            s.renewing = None

    async def _renew(self, slot: int, s: Slot) -> None:
        asked = trio.current_time()
        lt = self.wall_ns()
        done = sorted(s.done)[:MAX_RECALLS]
        arg = {MOUNT: self.mount, SLOT: slot, "lt": lt, "term": int(self.term * 1e9), DONE: done}
        try:
            state = await self._update([self.sid(slot)], "session.renew", arg)
        except Exception as e:  # noqa: BLE001 - the session then ends where it was counted
            if unknown_method(e):  # nodes of an older release
                self.enabled = False
                self._stats["session_unsupported"] += 1
                log.info("nodes do not know lease sessions: leases are renewed per object")
            else:
                self._stats["session_renewal_failed"] += 1
                now = trio.current_time()
                quiet = now - self._warned < WARN_EVERY
                if not quiet:
                    self._warned = now
                (log.debug if quiet else log.warning)("lease session %d not renewed: %s", slot, e)
            return
        self._stats["session_renewals"] += 1
        if not isinstance(state, dict) or not isinstance(state.get("e"), int):
            self._stats["session_malformed"] += 1
            return
        if asked >= s.until or lt >= s.wall_until or state.get("g") != s.gen:
            # The session ended here before this renewal was sent (or the nodes began a new
            # generation): its leases may have been passed over, every one goes.
            if s.gen:
                self._stats["session_ended"] += 1
                self.ended(slot)
            s.done.clear()
        s.done.difference_update(done)
        s.gen = int(state.get("g", 0))
        left = state["e"] - lt - HOLDER_MARGIN
        s.until = asked + left / 1e9
        s.wall_until = state["e"] - HOLDER_MARGIN
        pending = [r for r in state.get("r", []) if isinstance(r, list) and len(r) == 3]
        fresh = [r for r in pending if r[2] not in s.seen]
        if fresh:
            self._stats["session_recalls"] += len(fresh)
        # The leases granted before the recall are let go (one granted after it, the
        # holder's record being the one the recall pinned, is not), and the recalls said
        # done by their numbers at the next renewal.
        listed = [[r[0], r[2]] for r in pending if isinstance(r[0], int) and isinstance(r[2], int)]
        if listed:
            self.recalled(slot, listed)
        s.seen = {r[2] for r in pending}
        s.done.update(r[2] for r in pending if isinstance(r[2], int))


async def recall_with_sessions(
    update: Callable[[list[int], str, Any], Awaitable[Any]],
    objects: list[int],
    wall_ns: Callable[[], int],
) -> None:
    """Recall the leases on ``objects``; when the answer names holders whose leases are
    bound to a session, recall each such object again with those sessions among the
    objects (at most ``NARROW_OBJECTS``: several updates for many), which pins their leases to
    their sessions' ends on the nodes (``fsobjects.leases``)."""
    answer = await update(objects, "fs.recall", {"lt": wall_ns()})
    for item in answer if isinstance(answer, list) else ():
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[2], list)):
            continue
        oid = item[0]
        sids = sorted(
            {
                session_oid(c, m, s)
                for h in item[2]
                if isinstance(h, list) and len(h) == 3
                for c, m, s in [h]
                if all(isinstance(v, int) and not isinstance(v, bool) for v in (c, m, s))
                and 0 <= m < 2**63
                and 0 <= s < 64
            }
        )
        for i in range(0, len(sids), NARROW_OBJECTS - 1):
            await update([oid, *sids[i : i + NARROW_OBJECTS - 1]], "fs.recall", {"lt": wall_ns()})
