"""Calls run at once whose failure is raised as itself, not in an exception group.

A mount over groups splits one call into calls to several groups (``groups.py``,
``crossing.py``).  A trio nursery raises an :class:`ExceptionGroup` even for one failure,
and the layers above handle the bare exception: ``fs/clients/calls.py`` recalls another
client's lease on ``MethodRefused("leased")`` and tries again, the file system maps
``NotFound`` to ENOENT.  Wrapped, a ``leased`` refusal became EIO (the two-mount checker
over three groups, ``tests/t4_groups_consistency.py``).  So every call runs to its end
(none is cancelled half-way: a write to one group is not cut short by another group's
refusal) and the first failure is raised as it was."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import trio


async def at_once(calls: Sequence[Callable[[], Awaitable[object]]]) -> None:
    """Run ``calls`` at once (one alone: inline); raise the first exception one raised,
    after every call has ended."""
    if len(calls) == 1:
        await calls[0]()
        return
    errors: list[Exception] = []

    async def one(call: Callable[[], Awaitable[object]]) -> None:
        try:
            await call()
        except Exception as e:  # raised below, as itself, once all have ended
            errors.append(e)

    async with trio.open_nursery() as nursery:
        for call in calls:
            nursery.start_soon(one, call)
    if errors:
        raise errors[0]
