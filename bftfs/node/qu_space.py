"""How much space Q/U history takes on this node (``bftfs status``; issue 36).

The store keeps no running count of it: which version is an object's newest changes with
every update, and a count kept at each would cost the update path.  So a task measures it
(:func:`bftfs.qu.retention.history_space`): the whole store a page of objects at a time,
at start and every :data:`EVERY` seconds, and publishes the last complete figure in
``progress["qu.history"]`` (``bytes``, ``older_versions``, ``thinned``, ``measured_ns``:
node clock).  Between two measures the figure is up to :data:`EVERY` old; a page is one
read transaction of :data:`PAGE` objects, so serving goes on between pages.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import trio

from bftfs.qu.retention import HistorySpace, history_space

if TYPE_CHECKING:
    from bftfs.node.parts import NodeParts

#: Objects one read transaction measures.
PAGE = 512
#: Seconds between two measures.
EVERY = 300.0
#: Where the figure is published.
PROGRESS_KEY = "qu.history"


async def measure(node: NodeParts) -> HistorySpace:
    """Measure the Q/U history of ``node``'s store now, publish it and return it."""
    total = HistorySpace()
    after: int | None = None
    while True:
        page, after = node.store.read(functools.partial(history_space, after=after, limit=PAGE))
        total.add(page)
        if after is None:
            break
        await trio.lowlevel.checkpoint()  # let requests in between pages
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
    """Measure at start and every :data:`EVERY` seconds (never returns while the node
    runs); a failed measure is logged and tried again at the next."""
    while True:
        try:
            await measure(node)
        except Exception:
            node.stats["internal_errors"] += 1
            node.log.exception("node %s: measuring Q/U history", node.id)
        await trio.sleep(EVERY)
