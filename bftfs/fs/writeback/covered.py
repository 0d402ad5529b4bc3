"""How long the kernel may keep what it was told of an object this mount holds back
(issue 62), and which objects it must forget at a recall.

A create or mkdir left to directory write-back is known to no server: nobody but this
mount can change the object while the exclusive lease it waits under runs without a break
(its directory's, or for one made in a held-back mkdir, the nearest directory up that is
leased).  Once that lease is recalled the object is sent with the release and is any
client's to change.  So the kernel may keep its attributes (and a held-back directory's
missing names and listing) for what is left of that lease, as it keeps a leased object's
(``fuse/leasecache.py``), if it forgets them at the recall: :meth:`HeldBackCover.left`
answers the time and records the object under the leased directory, and
:meth:`HeldBackCover.told_under` hands the recorded objects to the recall's forgetting.
Before this a ``stat`` of a file just copied (its create held back) told the kernel the
1 s attribute timeout, and the ``ls -l`` after asked every file again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from bftfs.fs.leases import Leases

#: Objects recorded at most (past it, those under directories no longer leased go; while
#: it stays full, held-back objects get the plain attribute timeout).
LIMIT = 100_000
#: Held-back mkdirs walked up at most to find the leased directory.
MAX_DEPTH = 64


class HeldBackCover:
    """The leases held-back objects wait under (module docstring).  ``held_back_in``:
    the directory an object waits in, held back, or None when it is not held back."""

    def __init__(self, leases: Leases, held_back_in: Callable[[int], int | None]) -> None:
        self._leases = leases
        self._held_back_in = held_back_in
        #: Leased directory -> the held-back objects the kernel was told a time for under it.
        self._told: dict[int, set[int]] = {}
        self._count = 0

    def left(self, oid: int) -> float:
        """Seconds the kernel may keep what it is told of ``oid`` now, recorded for
        forgetting: what is left of the exclusive lease it is held back under, or 0."""
        d = oid
        for _ in range(MAX_DEPTH):
            parent = self._held_back_in(d)
            if parent is None:
                return 0.0
            left = self._leases.remaining(parent, math.inf)
            if left > 0 and self._leases.exclusive_left(parent) > 0:
                return left if self._record(parent, oid) else 0.0
            d = parent
        return 0.0

    def _record(self, leased: int, oid: int) -> bool:
        told = self._told.get(leased)
        if told is not None and oid in told:
            return True
        if self._count >= LIMIT:  # the times told under ended leases have run out
            for d in [d for d in self._told if self._leases.exclusive_left(d) <= 0]:
                self._count -= len(self._told.pop(d))
            if self._count >= LIMIT:
                return False
        self._told.setdefault(leased, set()).add(oid)
        self._count += 1
        return True

    def told_under(self, leased: Iterable[int]) -> list[int]:
        """The objects recorded under the directories ``leased``, whose leases are
        recalled (forgotten here: the kernel forgets them with the directories)."""
        out: list[int] = []
        for d in leased:
            got = self._told.pop(d, None)
            if got:
                self._count -= len(got)
                out.extend(got)
        return out
