"""Which inodes' attributes the kernel holds valid, as far as the mount can tell.

A listing (readdirplus) carries every entry's attributes, and the kernel takes them into
its cache: computing them is most of what a listing costs the mount (a few microseconds
an entry: its lease, its held-back create, its open file), and after a copy the kernel
already holds every file's, from the answer to the copy's last ``chmod``.  An entry whose
attributes the kernel holds valid is listed with its name, number and type alone (a
readdirplus record with node id 0, which the kernel lists without touching its cache:
pyfuse3 patch 7), the others with their attributes.

Only attributes told under a lease count (an answer whose timeout is what is left of a
lease, ``fuse/leasecache.py``): another client's change recalls the lease first and the
mount forgets them, so a listing still shows every change made elsewhere, as when it
carried every entry's attributes (told with the plain attribute timeout, the kernel
would keep another client's older answer).  Past that, being wrong costs speed, never
correctness: an entry listed bare whose attributes the kernel had dropped is asked for by
the next ``stat`` (a ``getattr``).  The record follows what the kernel is told (the
lease's time) and the requests after which it drops attributes itself: a write or read
through a handle (size, times), a change of a directory's entries (the directory's), a
link, a change of extended attributes (ctime), an open that truncates; a recall and the
kernel's ``forget`` drop them too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

from bftfs.fuse.paths import KnownPaths

#: Inodes recorded at most (past it the record starts over: entries are listed with
#: their attributes until the kernel is told them again).
LIMIT = 200_000

#: Handlers after which the kernel drops the attributes of the inode they name first.
_DROPS_FIRST = frozenset(
    {"mknod", "mkdir", "unlink", "rmdir", "symlink", "create", "setxattr", "removexattr"}
)


class KernelHeld:
    """Inode -> until when (``time.monotonic()``) the kernel holds its attributes."""

    def __init__(self) -> None:
        self._until: dict[int, float] = {}

    def told(self, ino: int, seconds: float) -> None:
        """The kernel was given ``ino``'s attributes to keep for ``seconds``."""
        if len(self._until) >= LIMIT:
            self._until.clear()
        self._until[ino] = time.monotonic() + seconds

    def holds(self, ino: int, now: float | None = None) -> bool:
        """Whether the kernel holds ``ino``'s attributes valid (as far as known here) at
        ``now`` (``time.monotonic()``; read here if None: a listing reads it once)."""
        until = self._until.get(ino)
        return until is not None and until > (time.monotonic() if now is None else now)

    def dropped(self, inos: Iterable[int]) -> None:
        """The kernel no longer holds (or may not hold) the attributes of ``inos``."""
        for ino in inos:
            self._until.pop(ino, None)

    def after(self, paths: KnownPaths, handler: str, args: tuple[Any, ...]) -> None:
        """Handler ``handler`` (``args`` as the wrapper saw them, ``self`` first) was
        answered: drop what the kernel drops after it."""
        if handler in _DROPS_FIRST:
            self._until.pop(args[1], None)
        elif handler in ("read", "write"):
            ino = paths.inode_of(args[1])
            if ino is not None:
                self._until.pop(ino, None)
        elif handler == "rename":
            self.dropped((args[1], args[3]))
        elif handler == "link":
            self.dropped((args[1], args[2]))
        elif handler == "open" and args[2] & os.O_TRUNC:
            self._until.pop(args[1], None)
