"""What the protocol clients tell their callers when the cluster cannot answer.

Both protocol clients (``qu.client``, ``rw.client``) raise subclasses of
:class:`ClusterUnavailable` and nothing of the transport below them (no
``QuorumUnavailable``, ``TransportError`` or exception groups from their nurseries), so
their callers - the file system - handle one family and import nothing of the transport.
"""

from __future__ import annotations


class ClusterUnavailable(Exception):
    """Too few nodes answered validly (more faults than the configuration tolerates, or
    none in time): the operation did not complete, and may or may not have taken effect."""


class StorageFull(ClusterUnavailable):
    """More than ``b`` nodes refused a write for lack of space, so at least one correct node
    is full: the file system reports ENOSPC (not EIO), and deleting files frees space."""


def collapse(
    group: BaseExceptionGroup,
    make: type[ClusterUnavailable],
    also: tuple[type[BaseException], ...] = (),
) -> BaseException:
    """The one outcome error a group of concurrent failures means (the first, as ``make``
    when it is one of ``also``, the transport's errors), or the group itself when anything
    in it is neither (a cancellation, a bug)."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        e = stack.pop()
        if isinstance(e, BaseExceptionGroup):
            stack.extend(reversed(e.exceptions))
        else:
            leaves.append(e)
    kinds: tuple[type[BaseException], ...] = (ClusterUnavailable, *also)
    if not leaves or not all(isinstance(x, kinds) for x in leaves):
        return group
    first = leaves[0]
    if isinstance(first, ClusterUnavailable):
        return first
    return make(f"{type(first).__name__}: {first}")
