"""Files no other client can have seen (issue 62, docs/fs.md "Removals are written back
too"): made by this mount in a directory under an exclusive lease on it that the mount has
held without a break since before the create was sent, and neither renamed nor linked
since.  Every other client reaches the directory's entries only by reading the directory,
which recalls that lease first; none knows such a file's id, so none can reach it by a
name its kernel cached, nor change it.  The mount then answers the file's attributes from
its own and lets its removal wait on the directory's lease alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

#: Files remembered at most; past it the oldest are forgotten (each then costs what any
#: leased file costs).
MAX_UNSEEN = 1 << 16


class UnseenFiles:
    """Which files no other client can have seen, and in which directory.

    Args:
        exclusive_from: when this mount's unbroken exclusive holding of an object began
            (``Holdings.exclusive_from``), None when it holds none: a file stays unseen
            while its directory's holding is the one it was made under.
    """

    def __init__(self, exclusive_from: Callable[[int], float | None]) -> None:
        self._exclusive_from = exclusive_from
        #: file -> (directory, when that holding began), oldest first.
        self._made: dict[int, tuple[int, float]] = {}
        #: Directories published under their holding that began then (``publish.py``).
        self._published: dict[int, float] = {}
        #: Told each directory whose holding a file's being unseen is relied on for (a use
        #: of that holding, which must then last: ``Taker.renew_if_due``); None: nobody.
        self.relied_on: Callable[[int], None] | None = None

    def made(self, parent: int, oids: Sequence[int], since: float) -> None:
        """``oids`` were made in ``parent`` under its holding that began at ``since``
        (none is unseen in a directory published under that holding)."""
        if self._published.get(parent) == since:
            return
        for oid in oids:
            self._made[oid] = (parent, since)
        while len(self._made) > MAX_UNSEEN:
            del self._made[next(iter(self._made))]

    def directory_of(self, oid: int) -> int | None:
        """The directory of file ``oid`` while no other client can have seen it, else None
        (forgotten once the directory's holding broke).  Asked when an answer relies on
        it: a use of the directory's holding (:attr:`relied_on`).  The kernel answers most
        lookups of a big tree itself, so the directory's own uses stop while its files'
        go on: its lease ended with 10 000 files in use, and every one of them then cost
        a round."""
        made = self._made.get(oid)
        if made is None:
            return None
        parent, since = made
        if self._exclusive_from(parent) != since:
            del self._made[oid]
            return None
        if self.relied_on is not None:
            self.relied_on(parent)
        return parent

    def publish(self, parent: int) -> None:
        """``parent`` is being published (``fs/leases/publish.py``): another client may
        list it, so no file made in it under this holding is unseen."""
        since = self._exclusive_from(parent)
        if since is None:
            return
        self._published[parent] = since
        while len(self._published) > MAX_UNSEEN:
            del self._published[next(iter(self._published))]
        for oid in [o for o, (p, _) in self._made.items() if p == parent]:
            del self._made[oid]

    def published_under_holding(self, parent: int) -> bool:
        """Whether ``parent`` was published under the exclusive holding it has now: another
        client may have listed it, so its files made here may have been seen."""
        since = self._exclusive_from(parent)
        return since is not None and self._published.get(parent) == since

    def seen(self, oids: Sequence[int]) -> None:
        """``oids`` may be reached by another client from now on (renamed or linked by this
        mount: named in another directory), or are gone: no longer unseen."""
        for oid in oids:
            self._made.pop(oid, None)
