"""Leases that ping-pong (issue 62): when this mount stops asking for a lease on an object
other clients keep taking from it.

Two mounts working in one directory (two PostMarks, same file names) pass leases back and
forth: each lease costs its taker an update, the other a recall and a wait, and the pair
ran at a seventh of the rate with no leases at all.  So each object's **contention** is
counted here, per object and in this mount only (no protocol change): a lease on it
recalled by the nodes or refused (another holds it), or this mount's own update of it
refused ``leased`` by another's lease.  More than :data:`K` of them within :data:`WINDOW`
seconds **cool** the object: no lease of any kind is asked for on it (so no exclusive
lease on a directory either: write-back there runs synchronously, as with ``lease=0``),
nor on the entries seen in it (:meth:`Contention.children`), for :data:`BASE` seconds,
and its requests go straight to the servers.  Contention met again while an object's
cool-down is remembered doubles it (up to :data:`LONGEST`); each whole cool-down length
spent without contention after it ended halves it, and below :data:`BASE` it is forgotten.

The rule is pure (times are passed in, trio's clock in the mount): unit-tested with a fake
clock (``tests/t1_lease_contention.py``).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

#: Contention events (recalls, refusals) within :data:`WINDOW` an object tolerates: one
#: more cools it.
K = 3
#: Seconds over which contention events are counted.
WINDOW = 30.0
#: Seconds of the first cool-down of an object.
BASE = 10.0
#: The longest cool-down (seconds): one lease term's worth of doublings past a few.
LONGEST = 640.0
#: Objects tracked past which those neither cooled nor remembered are forgotten.
MAX_OBJECTS = 4096


@dataclass
class _Object:
    """One object's contention: recent events and its cool-down."""

    events: deque[float] = field(default_factory=deque)
    #: The current cool-down's length (0: none remembered).
    cool: float = 0.0
    #: Until when (clock time) no lease on it is asked for.
    until: float = 0.0


class Contention:
    """Which objects this mount leaves unleased because others keep recalling them
    (module docstring).  ``stats``: ``cooled`` counts cool-downs started (an object not
    leased because of contention), ``cool_skipped`` the lease requests not made."""

    def __init__(
        self,
        stats: Counter[str],
        *,
        k: int = K,
        window: float = WINDOW,
        base: float = BASE,
        longest: float = LONGEST,
    ) -> None:
        self._stats = stats
        self.k = k
        self.window = window
        self.base = base
        self.longest = longest
        self._objects: dict[int, _Object] = {}
        #: The directory each entry of a contended one was seen in (:meth:`children`).
        self._parent: dict[int, int] = {}

    def contended(self, oid: int, now: float, base: float | None = None) -> bool:
        """A lease on ``oid`` was recalled here, or this mount's update of it was refused
        by another's lease, at ``now``: True when that starts a cool-down of it (at least
        ``base`` seconds long, if given, else :data:`BASE` the first time)."""
        st = self._objects.get(oid)
        if st is None:
            if len(self._objects) >= MAX_OBJECTS:
                self._forget_idle(now)
            st = self._objects[oid] = _Object()
        self._decay(st, now)
        if now < st.until:
            return False  # cooled already: nothing of ours is recalled, others still work
        st.events.append(now)
        while st.events and st.events[0] <= now - self.window:
            st.events.popleft()
        # A cool-down remembered: contention again right after it doubles it at once.
        if len(st.events) <= (0 if st.cool else self.k):
            return False
        st.cool = min(self.longest, max(st.cool * 2 if st.cool else self.base, base or 0.0))
        st.until = now + st.cool
        st.events.clear()
        self._stats["cooled"] += 1
        return True

    def children(self, parent: int, oids: list[int]) -> None:
        """``oids`` are entries of directory ``parent`` (a lookup, a listing, a create):
        while ``parent`` cools down so do they, if it has met contention (the ping-pong
        is in the directory: two mounts making and looking at its names)."""
        if parent not in self._objects:
            return
        if len(self._parent) >= MAX_OBJECTS:
            self._parent.clear()  # a bound: a child forgotten is only leased again
        for oid in oids:
            if oid != parent:
                self._parent[oid] = parent

    def cooled(self, oid: int, now: float) -> bool:
        """Whether no lease on ``oid`` is to be asked for at ``now``: it cools down, or the
        directory it was last seen in does (:meth:`children`)."""
        parent = self._parent.get(oid)
        if parent is not None and self._cooled(parent, now):
            return True
        return self._cooled(oid, now)

    def _cooled(self, oid: int, now: float) -> bool:
        st = self._objects.get(oid)
        if st is None:
            return False
        self._decay(st, now)
        if now < st.until:
            return True
        if not st.cool and not st.events:
            del self._objects[oid]
        return False

    def cooling_now(self, oid: int, now: float) -> bool:
        """Whether ``oid`` itself cools down at ``now`` (not through its directory)."""
        st = self._objects.get(oid)
        return st is not None and now < st.until

    def skipped(self) -> None:
        """A lease request not made because its object is cooling down (counted)."""
        self._stats["cool_skipped"] += 1

    def cooling(self, now: float) -> int:
        """How many objects are cooling down at ``now``."""
        return sum(1 for st in self._objects.values() if now < st.until)

    def cool_of(self, oid: int) -> float:
        """The cool-down remembered for ``oid`` (seconds; 0: none)."""
        st = self._objects.get(oid)
        return 0.0 if st is None else st.cool

    def _decay(self, st: _Object, now: float) -> None:
        """Halve ``st``'s remembered cool-down for each whole length of it spent since it
        ended without contention; below :data:`BASE` it is forgotten."""
        if not st.cool or now < st.until:
            return
        since = max(st.until, st.events[-1]) if st.events else st.until
        while st.cool and now - since >= st.cool:
            since += st.cool
            st.cool = st.cool / 2 if st.cool / 2 >= self.base else 0.0

    def _forget_idle(self, now: float) -> None:
        """Drop the objects neither cooling nor remembering a cool-down (a bound)."""
        for oid in [o for o, st in self._objects.items() if not st.cool and now >= st.until]:
            del self._objects[oid]
