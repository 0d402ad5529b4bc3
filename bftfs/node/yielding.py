"""Foreground first: a node's background work yields to the client requests it serves.

A node is one trio process: lazy verification, collection, forgetting, pruning, scrub and
catch-up share its loop (and its GIL) with the servers answering clients.  Each of their
steps first awaits :meth:`Gate.step`, which lets it go at once while the foreground is
quiet, and otherwise holds it back to a small share of the loop, a floor so that
background work never starves (its promises: storage bounded, everything verified within
its budget, catch-up finishing).

**Busy** (:class:`Foreground`) means a client request is being answered now (the server
counts them from the frame read to the reply, ``Server.client_inflight``), or one came,
or a chunk of a client's big frame arrived (``Server.client_active``: across a WAN a
batch of fragments takes a second to arrive, docs/wan.md), within :data:`RECENT` seconds
(lazy verification's ``idle_seconds``): a client working through a mount leaves gaps of
milliseconds between its requests to one node, in which the other nodes (on the same
cores, on a local cluster) and the mount are still answering it.  A background step
begun in such a gap takes CPU the client's next request wants, here or on another node.
Requests of other nodes (their own background work, NOTIFYs) and status polls are not
foreground.

**The rule** (:class:`GateRule`, pure: time is an argument).  While the foreground is
busy, the node's background as a whole gets one *slice* of ``slice`` seconds every
``floor`` seconds (every step that asks during the slice goes; one asking after it
sleeps until the next, and goes then), all of it when the foreground is quiet.  The
node's defaults are a slice of 0 every :data:`FLOOR` (50 ms): one step every 50 ms
while clients are active, whichever task asks, so five busy tasks do not take five
shares.  Slices of wall time were tried first (10 ms every 100 ms): a step let through in
a slice runs on past it (its store write, its peers' answers), so a slice let bursts of
steps through and the background kept its share of a busy node's CPU (py-spy: 26-33% of
node 0's busy samples, as without a gate).  A held step
does not poll for the foreground to go quiet: a timer per poll cost the node more CPU
than the steps it held back did (py-spy, a 10 ms poll: a third of node 0's busy samples
in trio's timer and cancel code).

Steps must be small for this to mean anything: a step that holds the loop for 50 ms
delays a request arriving meanwhile by 50 ms, whatever the gate says.  Each task's step is
what it did between two awaits before (one object, one wave, one page).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import trio

#: A client request within this many seconds keeps the foreground busy.
RECENT = 0.05
#: While the foreground is busy, the background runs one slice of SLICE seconds per FLOOR
#: (a slice of 0: one step).
FLOOR = 0.05
SLICE = 0.0


@dataclass
class GateRule:
    """When a background step may go (pure; see the module docstring).

    ``floor``: seconds between the starts of two slices while the foreground is busy;
    ``slice``: how long a slice lasts (0: the slice is the one step that opened it).
    """

    floor: float = FLOOR
    slice: float = SLICE
    #: When the current (or last) slice began; -inf before the first.
    slice_start: float = float("-inf")

    def wait(self, now: float, busy: bool) -> float:
        """Seconds a step asking at ``now`` must wait before asking again (0: it goes).
        A step that goes while the foreground is busy and no slice is open opens one."""
        if not busy or now < self.slice_start + self.slice:
            return 0.0
        next_slice = self.slice_start + self.floor
        if now >= next_slice:
            self.slice_start = now
            return 0.0
        return next_slice - now


class Foreground:
    """Whether a node's servers are answering a client now (see the module docstring).

    Args:
        inflight: client requests being answered now.
        last_request: trio time of the latest client request.
    """

    def __init__(
        self,
        inflight: Callable[[], int],
        last_request: Callable[[], float],
        recent: float = RECENT,
    ) -> None:
        self._inflight = inflight
        self._last = last_request
        self.recent = recent

    def busy(self, now: float) -> bool:
        return self._inflight() > 0 or now - self._last() < self.recent


class Gate:
    """The gate every background step of one node awaits (:meth:`step`).

    ``stats`` (the node's counters) gets ``bg.steps`` (steps that went), ``bg.waits``
    (steps that waited for the foreground) and ``bg.floor`` (slices opened while the
    foreground was busy: the floor at work; with the defaults, steps that went then).
    """

    def __init__(
        self,
        foreground: Foreground,
        stats: Counter[str],
        rule: GateRule | None = None,
    ) -> None:
        self.foreground = foreground
        self.stats = stats
        self.rule = GateRule() if rule is None else rule

    async def step(self) -> None:
        """Return when a background step may run (always a checkpoint first, so the
        requests that are ready run before it)."""
        await trio.lowlevel.checkpoint()
        waited = False
        while True:
            now = trio.current_time()
            busy = self.foreground.busy(now)
            opened = self.rule.slice_start
            wait = self.rule.wait(now, busy)
            if wait <= 0:
                break
            waited = True
            # Until the next slice (it goes then, busy or not): no polling, which cost
            # the node more than the steps it held back (a timer expiring is a cancel).
            await trio.sleep(wait)
        if busy and self.rule.slice_start != opened:
            self.stats["bg.floor"] += 1
        self.stats["bg.waits"] += waited
        self.stats["bg.steps"] += 1
