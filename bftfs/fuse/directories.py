"""Open directories: their handles, the listing each reads, and the answers given without
the event loop.

A listing is a snapshot per handle, read at ``opendir`` (or at the first ``readdir`` when
the kernel may keep the last one), so ``readdir`` offsets stay stable while entries are
created and removed (pyfuse3 requires stable ``next_id``): an offset is a position in the
handle's listing plus one (0: from the start).

A walk (``ls -R``, ``find``, a build's scans) sends ``opendir``, ``readdir`` and
``releasedir`` for every directory.  Through the async handlers each cost a task on the
event loop and about 100 us of the daemon's CPU; for a directory whose listing the mount
holds under a lease the answer is known at once.  Our pyfuse3 (patch 7) asks the
synchronous :meth:`OpenDirectories.opendir_now`, :meth:`readdir_now` and
:meth:`releasedir_now` first, in the request's own callback; None sends the request to the
async handler (``Operations.opendir`` and ``readdir``), which may wait for the cluster.
Both paths share one handle table and give the same answers.
"""

from __future__ import annotations

import stat
import time
from typing import Any

import pyfuse3
import trio

from bftfs.fs.api import FileSystemAPI
from bftfs.fs.files import Attr
from bftfs.fuse.kernelattrs import KernelAttrs
from bftfs.fuse.leasecache import STARTED
from bftfs.fuse.recentlookups import RecentLookups

#: Bytes the smallest readdirplus record takes (``fuse_direntplus``: a 128-byte entry and
#: a 24-byte dirent, its name padded to 8): at most ``size // RECORD + 1`` entries fit a
#: reply of ``size`` bytes, so no more are turned into the kernel's attributes.
RECORD = 152

#: A listing as read: each entry's name and either its attributes, or (held here, read
#: without a round) its object id and type code (``mode >> 12``).
Entry = tuple[bytes, Attr] | tuple[bytes, int, int]
Listing = list[Entry]

#: The first directory handle: far from files' (counted from 1, ``fs/files/table.py``)
#: and past views' (from ``1 << 63``), so a handle names one thing (``fuse/paths.py``).
FIRST_FH = 1 << 62

#: A directory's type code in a listing.
DIR_CODE = stat.S_IFDIR >> 12


class OpenDirectories:
    """The mount's open directory handles (``opendir`` to ``releasedir``)."""

    def __init__(self, fs: FileSystemAPI, attrs: KernelAttrs, lookups: RecentLookups) -> None:
        self.fs = fs
        self.attrs = attrs
        self.lookups = lookups
        #: Handle -> its directory, and the listing read for it (None: not read yet).
        self._open: dict[int, tuple[int, Listing | None]] = {}
        self._next_fh = FIRST_FH
        #: Whether the mount's client may still ask the cluster (revoked: every request goes
        #: to the handlers, which answer EACCES); the mount sets it (``Operations``).
        self.usable = lambda: True

    def inode_of(self, fh: int) -> int | None:
        """The directory open as ``fh`` (None: not open)."""
        handle = self._open.get(fh)
        return None if handle is None else handle[0]

    def kept(self, inode: int) -> bool:
        """Whether the kernel may answer ``inode``'s listing from what it kept of the last
        one read (``LeaseCache.keeps_listing``): its handle's listing is then read only if
        the kernel sends a ``readdir``."""
        return self.attrs.leased.keeps_listing(inode)

    def open(self, inode: int, entries: Listing | None) -> int:
        """A new handle on ``inode`` with the listing read for it (None: at its first
        ``readdir``)."""
        fh = self._next_fh
        self._next_fh += 1
        self._open[fh] = (inode, entries)
        return fh

    async def listing(self, inode: int) -> Listing:
        """``inode``'s listing, with ``.`` and ``..`` (POSIX readdir returns them, and the
        kernel does not add them), read now: held here, or asked of the cluster."""
        heads = self.fs.listing_heads(inode)
        names = None if heads is None else self.fs.held_names(inode)
        self.attrs.leased.listed(inode)  # (before any wait: a recall meanwhile forgets it)
        if heads is not None and names is not None:
            return self._listed(inode, heads[1].ino, names)
        if heads is None:
            heads = (
                await self.fs.getattr(inode, reached_by_name=True),
                await self.fs.lookup(inode, b".."),
            )
        return self._listed(inode, heads[1].ino, await self.fs.readdir(inode))

    def _held_listing(self, inode: int) -> Listing | None:
        """:meth:`listing` when the mount holds it whole (no round, no wait), else None."""
        heads = self.fs.listing_heads(inode)
        names = None if heads is None else self.fs.held_names(inode)
        if heads is None or names is None:
            return None
        self.attrs.leased.listed(inode)
        return self._listed(inode, heads[1].ino, names)

    def _listed(self, inode: int, parent: int, names: list[Any]) -> Listing:
        """The listing of ``inode`` (parent ``parent``) of ``names``, ``.`` and ``..``
        first (bare: the kernel takes nothing but their number and type), their numbers
        noted as told the kernel (``KernelAttrs.listed``)."""
        entries: Listing = [(b".", inode, DIR_CODE), (b"..", parent, DIR_CODE), *names]
        self.attrs.listed([_ino(e) for e in entries])
        return entries

    async def entries(self, fh: int) -> Listing | None:
        """Handle ``fh``'s listing, read now if it was not yet (None: no such handle)."""
        handle = self._open.get(fh)
        if handle is None:
            return None
        inode, entries = handle
        if entries is None:
            entries = await self.listing(inode)
            self._open[fh] = (inode, entries)
        return entries

    def release(self, fh: int) -> None:
        self._open.pop(fh, None)

    def answered(self) -> int:
        """Directory requests answered in their callback so far (pyfuse3 patch 7)."""
        return int(pyfuse3.fast_dir_answers())

    def _record(self, entry: Entry, offset: int, now: float) -> tuple[Any, ...]:
        """The kernel's record of ``entry`` (next offset ``offset``, the time ``now``:
        ``time.monotonic()`` read once a reply): ``(name, ino, type
        code, offset)`` bare, where the kernel holds the entry's attributes or they are not
        known here (it asks them at the next ``stat``: ``fuse/kernelheld.py``), else
        ``(name, EntryAttributes, offset)``.  ``.`` and ``..`` are always bare: the kernel
        takes nothing but their number and type."""
        name = entry[0]
        if len(entry) == 3:
            ino, code = entry[1], entry[2]
            if name in (b".", b"..") or self.attrs.held.holds(ino, now):
                return name, ino, code, offset
            attr = self.fs.known_attr(ino)
            if attr is None:
                return name, ino, code, offset
        else:
            attr = entry[1]
            if name in (b".", b"..") or self.attrs.held.holds(attr.ino, now):
                return name, attr.ino, attr.mode >> 12, offset
        return name, self.attrs.entry(attr, taken=False), offset

    # Answered in the request's callback (pyfuse3 patch 7) ---------------------------------

    def opendir_now(self, inode: int, ctx: Any) -> int | None:
        """A handle on ``inode`` when the kernel may keep its last listing (the kernel is
        then told so), else None: ``Operations.opendir`` reads the listing now."""
        if not self.usable():
            return None
        STARTED.set(trio.current_time())
        pid = getattr(ctx, "pid", 0)
        if pid and self.lookups.remembers_for("opendir"):
            self.lookups.other_request("opendir", pid)
        if not self.kept(inode):
            return None
        return self.open(inode, None)

    def readdir_now(self, fh: int, start: int, size: int) -> list[tuple[Any, ...]] | None:
        """The kernel's records of the entries from offset ``start`` that may fit ``size``
        bytes (:meth:`_record`), when the handle's listing is read or held here; None when
        it must be asked of the cluster (or the handle is unknown: the async handler
        answers EBADF)."""
        handle = self._open.get(fh)
        if handle is None or not self.usable():
            return None
        STARTED.set(trio.current_time())
        inode, entries = handle
        if entries is None:
            entries = self._held_listing(inode)
            if entries is None:
                return None
            self._open[fh] = (inode, entries)
        end = min(len(entries), start + size // RECORD + 1)
        now = time.monotonic()
        return [self._record(entries[i], i + 1, now) for i in range(start, end)]

    def releasedir_now(self, fh: int) -> bool:
        """The handle is closed (nothing to wait for)."""
        self.release(fh)
        return True

    async def reply(self, fh: int, start: int, token: Any) -> bool:
        """The async ``readdir``: entries from offset ``start`` into ``token`` (False: no
        such handle)."""
        entries = await self.entries(fh)
        if entries is None:
            return False
        now = time.monotonic()
        for i in range(start, len(entries)):
            record = self._record(entries[i], i + 1, now)
            if len(record) == 4:
                added = pyfuse3.readdir_reply_bare(token, *record)
            else:
                added = pyfuse3.readdir_reply(token, *record)
            if not added:
                break
        return True


def _ino(entry: Entry) -> int:
    return entry[1] if len(entry) == 3 else entry[1].ino
