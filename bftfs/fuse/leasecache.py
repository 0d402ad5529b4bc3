"""What the kernel may cache under this mount's leases (issue 33), and its forgetting.

While a lease on an object runs, no other client changes the object before the lease is
recalled, so the kernel may keep what the mount told it for as long as the lease runs
instead of the mount's attribute timeout: an object's attributes (``attr_timeout``) and a
directory's missing names (a negative entry's ``entry_timeout``).  Only what a request
answered under a lease granted before the request began qualifies (:data:`STARTED`): an
answer read before the grant may be older than a change the grant came after.

A directory's listing is the third: the kernel keeps what a listing answered
(``FOPEN_CACHE_DIR``, the ``(fh, cache)`` of ``opendir`` that ``scripts/pyfuse3-locks.patch``
adds) and answers the next opens' listings itself, with no request, while a lease granted
before that listing was read still runs (:meth:`LeaseCache.keeps_listing`).  The kernel
also drops it when the directory's modification time changes and after any change made
through this mount (``fuse_dir_changed``).

When leases are recalled the kernel is told to forget those attributes and names before
the leases are released (``fs/leases.py`` awaits :meth:`LeaseCache.forget`), from a
worker thread: a notification must never be sent from the loop that serves requests (the
kernel may hold a lock a request being served waits on; libfuse says so for
``fuse_lowlevel_notify_inval_entry``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextvars import ContextVar

import pyfuse3
import trio

from bftfs.fs.api import FileSystemAPI

#: When the request being served began (trio time; set by the handler wrapper).
STARTED: ContextVar[float] = ContextVar("started", default=float("-inf"))
#: Missing names kept per directory for forgetting at most (beyond, the plain timeout).
NEGATIVE_LIMIT = 10_000
#: Directories whose listings' times are remembered (then forgotten all at once: their
#: next opens read the listing again).
LISTED_LIMIT = 100_000


class LeaseCache:
    """Kernel timeouts under leases, and what to forget at a recall."""

    def __init__(self, fs: FileSystemAPI, on_forget: Callable[[list[int]], None]) -> None:
        """``on_forget``: told the inodes whose attributes the kernel forgets."""
        self.fs = fs
        self._on_forget = on_forget
        #: Names per directory told missing for as long as a lease on it runs.
        self._negative: dict[int, set[bytes]] = {}
        #: Per directory, when the request that last read its listing for the kernel began.
        self._listed: dict[int, float] = {}
        #: :attr:`_listed` was emptied for room: a directory not in it may have a listing
        #: kept from before.
        self._overflowed = False
        #: Also told the inodes of recalled leases (``fuse/passthrough.py`` drops copies).
        self.on_recall: list[Callable[[list[int]], None]] = []
        fs.on_lease_recall(self.forget)

    def attr_timeout(self, ino: int, base: float) -> float:
        """``base``, or what is left of a lease on ``ino`` granted before this request."""
        return max(base, self.fs.lease_remaining(ino, STARTED.get()))

    def negative_timeout(self, parent: int, name: bytes, base: float) -> float:
        """How long the kernel may cache ``name`` as missing in ``parent``."""
        leased = self.fs.lease_remaining(parent, STARTED.get())
        if leased <= base:
            return base
        names = self._negative.setdefault(parent, set())
        if len(names) >= NEGATIVE_LIMIT:
            return base
        names.add(name)
        return leased

    def listed(self, ino: int) -> None:
        """Directory ``ino``'s listing is being read for the kernel (this request)."""
        if len(self._listed) >= LISTED_LIMIT:
            self._listed.clear()
            self._overflowed = True
        self._listed[ino] = STARTED.get()

    def keeps_listing(self, ino: int) -> bool:
        """Whether the kernel may answer directory ``ino``'s listing from what it kept of
        the last one read: a lease on it granted before that read still runs, so nobody
        else changed the directory since (a lease granted later may follow a change the
        kept listing lacks).  A directory whose listing was never read here, or was
        forgotten at a recall, has nothing kept: it may keep the next one if leased."""
        since = self._listed.get(ino)
        if since is None:
            since = float("-inf") if self._overflowed else STARTED.get()
        return self.fs.lease_remaining(ino, since) > 0

    async def forget(self, inos: list[int]) -> None:
        """Leases on ``inos`` are recalled: the kernel drops their attributes, the
        missing names it was told under them and the listings it kept."""
        names = [(ino, n) for ino in inos for n in self._negative.pop(ino, ())]
        listings = [ino for ino in inos if self._listed.pop(ino, None) is not None]
        self._on_forget(inos)
        for hook in self.on_recall:
            hook(inos)
        await trio.to_thread.run_sync(_invalidate, inos, names, listings)


def _invalidate(inos: list[int], names: list[tuple[int, bytes]], listings: list[int]) -> None:
    """Tell the kernel to forget these missing names, these inodes' attributes and these
    directories' kept listings (one it does not know, or a mount going away, answers an
    OSError: nothing to forget)."""
    for parent, name in names:
        with contextlib.suppress(OSError):
            pyfuse3.invalidate_entry(parent, name)
    kept = set(listings)
    for ino in inos:
        with contextlib.suppress(OSError):
            pyfuse3.invalidate_inode(ino, attr_only=ino not in kept)
