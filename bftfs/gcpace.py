"""Full garbage collections when a process is quiet, not between two of its requests.

A mount daemon answers every FUSE request on one thread, a node every client request on
its own, and CPython's collector runs on whichever allocation crosses its thresholds.  A
full (generation 2) collection walks every tracked object the process holds - caches,
leases, held-back files, replica histories - and CPython starts one whenever a quarter
as many objects again have survived into the old generation: on a
``make up`` mount copying 2 200 small files, 10-11 of 50-120 ms each (0.6-0.7 s of the
copy's 30 s), each a stall of every request in flight.  The young generations stay
CPython's (pauses of a millisecond or a few).

So the process takes the full collections over (:func:`take_over`): no automatic ones, and
:class:`FullCollections` runs one once the young generations have been collected
:data:`MIN_YOUNG` times since the last (what CPython waits for at least), either when no
request has been in flight for :data:`QUIET` seconds, or at the latest :data:`FULL_EVERY`
seconds after the last under constant load, which bounds how long cyclic garbage waits.
Measured (``make up`` cluster, one quiet machine, PostMark 1 000 files / 10 000
transactions, 3 runs each, interleaved): the daemon's CPU 10.0, 11.0, 10.5 s against
12.3, 11.0, 10.9 s with CPython's rule; the same copy of 2 200 files made one full
collection instead of 10-11.  A node is quiet when no client request has been in flight
for :data:`QUIET` seconds (``Server.client_inflight``; ``node/main.py``): a node's full
collections were a tenth of its samples (py-spy ``--native``) beside a reader looking
over a writer's directory (issue 64).

**Back off while they find nothing.**  A full collection walks everything the process
holds whether or not any of it is garbage, and in a mount or a node little is: cycles
die young, in the young generations.  On issue 62's aged cluster (22 minutes of work)
the mount's full collection took 0.7 s and freed nothing, every 30 s under load; a
mount that had appended to 20 000 files ran 19 in ten minutes, the longest 1.05 s, each a
stall of every request.  So a collection that finds fewer than :data:`FEW` unreachable
objects doubles the rest before the next (none, quiet or not, before it ends), from
:data:`FULL_EVERY` up to :data:`LONGEST_REST`; one that finds more starts over.  Garbage
that reached the old generation waits at most that long, unless the process's resident
memory grew by :data:`GROWTH` since the last collection (a few cycles can hold big
buffers): then the rest is waived.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable

import trio

#: Seconds without a request in flight that make the process quiet.
QUIET = 0.05
#: Under constant load, a full collection at least this often (seconds).
FULL_EVERY = 30.0
#: How often the pacer looks (seconds): a quiet spell shorter than this may be missed.
CHECK = 0.5
#: Collections of the young generations since the last full one before another is worth
#: running (CPython's default third threshold).
MIN_YOUNG = 10
#: A third threshold no count reaches: no automatic full collection.
NEVER = 1 << 30
#: A full collection that found fewer unreachable objects than this found next to nothing.
FEW = 1000
#: The longest rest after full collections that found next to nothing (seconds).
LONGEST_REST = 16 * FULL_EVERY
#: Bytes of resident memory grown since the last full collection that waive its rest.
GROWTH = 256 << 20


def resident_bytes() -> int:
    """This process's resident memory (``/proc/self/statm``; 0 where there is none)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def take_over() -> None:
    """Freeze what the process holds before serving (modules, classes, the configuration:
    they live as long as it, so no collection needs to walk them again) and stop CPython's
    automatic full collections; the young generations keep their thresholds."""
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, NEVER)


class FullCollections:
    """A process's full collections (see the module docstring).

    Args:
        quiet: whether no request has been in flight for ``QUIET`` seconds at a trio time.
        pending: collections of the young generations since the last full one.
        collect: runs a full collection (the number of objects it freed).
        resident: the process's resident memory in bytes.
    """

    def __init__(
        self,
        quiet: Callable[[float], bool],
        *,
        pending: Callable[[], int] = lambda: gc.get_count()[2],
        collect: Callable[[], int] = gc.collect,
        resident: Callable[[], int] = resident_bytes,
    ) -> None:
        self.quiet = quiet
        self.pending = pending
        self.collect = collect
        self.resident = resident
        #: Full collections run (while quiet, and forced under load), their seconds, the
        #: longest, and the rest now taken after each (seconds).
        self.stats = {"quiet": 0, "forced": 0, "seconds": 0.0, "longest": 0.0, "rest": 0.0}

    async def run(self) -> None:
        """Run full collections for the process's life (a task of its nursery)."""
        last = trio.current_time()
        rest = 0.0  # none before the first
        held = self.resident()  # at the last collection
        while True:
            await trio.sleep(CHECK)
            now = trio.current_time()
            if self.pending() < MIN_YOUNG:
                continue
            waits = rest if now - last < rest and self.resident() - held < GROWTH else 0.0
            if now - last < waits:
                continue
            quiet = self.quiet(now)
            if not quiet and now - last < max(FULL_EVERY, waits):
                continue
            freed = self.collect()
            last = trio.current_time()
            held = self.resident()
            rest = min(2 * max(rest, FULL_EVERY / 2), LONGEST_REST) if freed < FEW else 0.0
            self.stats["quiet" if quiet else "forced"] += 1
            self.stats["seconds"] += last - now
            self.stats["longest"] = max(self.stats["longest"], last - now)
            self.stats["rest"] = rest
