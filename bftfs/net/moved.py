"""Who hears, in this process, that a node was replaced (a view or a layout gave it a new
machine and a new key: docs/membership.md, docs/layout.md).

:meth:`bftfs.net.endpoint.Endpoint.moved` announces it, naming itself as the source; a
protocol client whose cached state came from the old machine listens (the Q/U clients'
cached histories, ``qu/ohscache.py``: authenticated under the old key, the servers would
drop them).  A process-wide list, because the protocol clients are built by layers the
transport cannot name; each listener acts only on announcements of the endpoint it talks
through.  Node ids are an endpoint's own (a group's index of a node): a mount's three
groups each have a node 2, and the replacement of group 1's made the caches of groups 0
and 2 forget their node 2 and stop counting its culls.  No trio, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable

_listeners: list[Callable[[object, int], None]] = []


def listen(fn: Callable[[object, int], None]) -> None:
    """Call ``fn(source, node)`` whenever ``source`` (an endpoint) announces its node
    ``node`` replaced (once per function)."""
    if fn not in _listeners:
        _listeners.append(fn)


def announce(source: object, node: int) -> None:
    """``source``'s node ``node`` has a new machine: tell every listener."""
    for fn in list(_listeners):
        fn(source, node)
