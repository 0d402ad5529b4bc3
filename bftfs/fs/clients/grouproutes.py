"""The clients a mount over groups routes to (issue 66, docs/layout.md): one per group,
as a newer layout adds groups, and what stands in for a group while partitions move to
it.  Shared by :class:`~bftfs.fs.clients.groups.GroupedQU` and ``GroupedRW``.

- A layout taken while mounted may add groups: their clients are opened by the session
  in the background (``fs/session.py``), and a call routed to a group not opened yet
  waits for it (:meth:`GroupRoutes.get`).
- While partitions move to a group, the session sets its *target* client (the routers of
  ``fs/generations/partitions.py``), which brings moving ids over first.
- A call refused ``moved`` (the nodes hold a newer layout moving the id away) waits for
  the mount to take a newer layout (:meth:`GroupRoutes.newer`) and runs again routed by
  it: the nodes push their version to their clients, which fetch it at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import trio

C = TypeVar("C")

#: Longest a call refused ``moved`` waits for a newer layout before the refusal is
#: raised (s): the nodes that refused hold it and push it, so it comes in a round trip
#: unless the mount is cut off from all of them.
NEWER_LAYOUT_WAIT = 120.0


class GroupRoutes(Generic[C]):
    """One client per group (module docstring)."""

    def __init__(self, clients: Sequence[C]) -> None:
        #: Each group's own client, by group id.
        self.plain: list[C] = list(clients)
        #: What a group's calls go through instead while partitions move to it.
        self.targets: dict[int, C] = {}
        self._added = trio.Event()
        self._changed = trio.Event()

    def add(self, client: C) -> None:
        """The next group's client is open: calls waiting for it go on."""
        self.plain.append(client)
        self._added.set()
        self._added = trio.Event()

    def now(self, group: int) -> C:
        """Group ``group``'s route (its target client, else its own).

        Raises:
            LookupError: the group's client is not open yet.
        """
        if group >= len(self.plain):
            raise LookupError(f"group {group}'s client is not open yet")
        return self.targets.get(group, self.plain[group])

    async def get(self, group: int) -> C:
        """:meth:`now`, waiting while the group's client is being opened."""
        while group >= len(self.plain):
            await self._added.wait()
        return self.now(group)

    def changed(self) -> None:
        """A newer layout was taken: calls waiting in :meth:`newer` go on."""
        self._changed.set()
        self._changed = trio.Event()

    async def newer(self, version: Callable[[], int], than: int) -> bool:
        """Wait until ``version()`` is above ``than``, at most :data:`NEWER_LAYOUT_WAIT`;
        whether it is."""
        with trio.move_on_after(NEWER_LAYOUT_WAIT):
            while version() <= than:
                await self._changed.wait()
        return version() > than
