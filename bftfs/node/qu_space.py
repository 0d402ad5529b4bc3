"""How much space Q/U history takes on this node (``bftfs status``; issue 36).

The store keeps no running count of it: which version is an object's newest changes with
every update, and a count kept at each would cost the update path.  So a task measures it
(:func:`bftfs.qu.retention.history_space`): the whole store a page at a time, at start
and :data:`EVERY` seconds after each measure ends, and publishes the last complete
figure in ``progress["qu.history"]`` (``bytes``, ``older_versions``, ``thinned``,
``measured_ns``: node clock).

It is an operator's figure, never on a client's path, and its cost grows with the history
kept (every version of the retention window: after an hour of PostMark on a 2-core
machine, 124 000 older versions a node; walked 512 objects a page, 9.2 s of CPU a measure
and pages holding the node's loop up to 1.2 s).  So a page is :data:`PAGE` records (on that
store: 28 ms at most, 4.2 s a measure, blobs a batch's objects share counted once), each
a background step (``node/yielding.py``: client requests first), and the periodic measure
spends at most :data:`DUTY` of its wall time at it: after a page it sleeps what the page
took times ``1 / DUTY - 1``.  A page is read on a worker thread: on a store larger than
the machine's memory its reads wait on the disk (six such stores walked at once by the
loop threads held every node's loop for minutes: all six answered nothing and the mount
answered EIO), and its wall time, waits included, is what the pacing counts.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING

import trio

from bftfs.qu.retention import HistoryCursor, HistorySpace, history_space

if TYPE_CHECKING:
    from bftfs.node.parts import NodeParts

#: Stored records one read transaction measures (each ~70 us of CPU: a page ~20 ms).
PAGE = 256
#: Seconds between the end of one measure and the start of the next.
EVERY = 600.0
#: The share of its wall time the periodic measure may spend measuring.
DUTY = 0.02
#: Where the figure is published.
PROGRESS_KEY = "qu.history"


async def measure(node: NodeParts, duty: float = 1.0) -> HistorySpace:
    """Measure the Q/U history of ``node``'s store now, publish it and return it; each
    page a background step, and pages spaced so that measuring takes at most ``duty`` of
    the wall time (1: back to back, as a test wants it)."""
    total = HistorySpace()
    cursor: HistoryCursor | None = None
    while True:
        await node.gate.step()  # client requests first (node/yielding.py)
        started = time.monotonic()
        read = functools.partial(history_space, cursor=cursor, limit=PAGE)
        page, cursor = await trio.to_thread.run_sync(node.store.read, read)
        total.add(page)
        if cursor is None:
            break
        if duty < 1.0:
            await trio.sleep((time.monotonic() - started) * (1.0 / duty - 1.0))
    node.progress[PROGRESS_KEY] = {
        "bytes": total.bytes,
        "older_versions": total.older_versions,
        "older_bytes": total.older_bytes,
        "thinned": total.thinned,
        "thinned_bytes": total.thinned_bytes,
        "measured_ns": node.now_ns(),
    }
    return total


async def run(node: NodeParts) -> None:
    """Measure at start and every :data:`EVERY` seconds, at :data:`DUTY` (never returns
    while the node runs); a failed measure is logged and tried again at the next."""
    while True:
        try:
            await measure(node, DUTY)
        except Exception:
            node.stats["internal_errors"] += 1
            node.log.exception("node %s: measuring Q/U history", node.id)
        await trio.sleep(EVERY)
