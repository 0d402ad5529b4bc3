"""Extended attributes known to be absent, answered before any handler runs (issue 62).

``ls -l`` asks every entry for ``security.selinux`` and its POSIX ACL, and the kernel asks
a file for ``security.capability`` at each ``write()``: the kernel caches no extended
attribute, so each is a request, and the daemon's handler answered most of them "no such
attribute" from what the mount knew (``FileSystemAPI.known_xattrs``) for 70-90 us of CPU
a request.  Our pyfuse3 build (``scripts/pyfuse3-locks.patch``, patch 5) answers them in
its C callbacks instead, from a table the mount fills: inode -> until when (the monotonic
clock) it is known to have none.

An inode is put there when an answer to the kernel carries its attributes (a lookup,
``getattr``, a create) or a ``getxattr`` is answered "none", and then so are the entries
listed with it (``ls -l`` asks each entry right after the listing; a walk that asks none
pays nothing per entry), for as long as the kernel may keep those attributes (the
attribute timeout, or what is left of a lease granted before the request), so an extended
attribute another mount sets shows no later than a change of mode would.  It leaves the
table when this mount sets or removes one of its attributes (before the change is sent and
again once it is answered, so that no answer given meanwhile puts it back) and when a
recall makes the kernel forget its attributes.
Every ``system.*`` name (POSIX ACLs: bftfs has none, ``Operations.getxattr``) is absent
always.  A pyfuse3 without the patch leaves everything to the handlers.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import pyfuse3

#: Inodes the table holds at most (then it is emptied: forgetting costs only requests).
LIMIT = 100_000


class AbsentXattrs:
    """The table of inodes with no extended attribute (module docstring)."""

    def __init__(self) -> None:
        self._table: dict[int, float] | None = getattr(pyfuse3, "no_xattrs", None)

    @property
    def enabled(self) -> bool:
        """Whether this pyfuse3 answers from the table (patch 5)."""
        return self._table is not None

    def start(self) -> None:
        """After ``pyfuse3.init``: every ``system.*`` name is absent."""
        if self._table is not None:
            pyfuse3.no_system_xattrs(True)

    def note(self, ino: int, seconds: float) -> None:
        """``ino`` has no extended attribute for the next ``seconds``."""
        table = self._table
        if table is None or seconds <= 0:
            return
        if len(table) >= LIMIT:
            table.clear()
        table[ino] = time.monotonic() + seconds

    def forget(self, inos: Iterable[int]) -> None:
        """What was known of ``inos`` no longer holds (or may not)."""
        table = self._table
        if table is not None:
            for ino in inos:
                table.pop(ino, None)

    def answered(self) -> int:
        """Requests answered from the table so far (0 without the patch)."""
        return int(pyfuse3.fast_xattr_answers()) if self._table is not None else 0
