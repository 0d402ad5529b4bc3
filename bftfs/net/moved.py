"""Who hears, in this process, that a node was replaced (a view gave it a new machine and a
new key: docs/membership.md).

:meth:`bftfs.net.endpoint.Endpoint.moved` announces it; a protocol client whose cached
state came from the old machine listens (the Q/U clients' cached histories,
``qu/ohscache.py``: authenticated under the old key, the servers would drop them).  A
process-wide list, because the protocol clients are built by layers the transport cannot
name; a listener acts on its own state only, so hearing of another cluster's node costs
a cache refill, nothing more.  No trio, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable

_listeners: list[Callable[[int], None]] = []


def listen(fn: Callable[[int], None]) -> None:
    """Call ``fn(node)`` whenever a node is announced replaced (once per function)."""
    if fn not in _listeners:
        _listeners.append(fn)


def announce(node: int) -> None:
    """Node ``node`` has a new machine: tell every listener."""
    for fn in list(_listeners):
        fn(node)
