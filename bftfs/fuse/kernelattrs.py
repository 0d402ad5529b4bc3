"""The attributes the kernel is answered and what the mount knows it holds.

:meth:`KernelAttrs.entry` builds pyfuse3's ``EntryAttributes`` with the timeouts the kernel
may cache them for (the mount's, or a lease's, ``fuse/leasecache.py``) and remembers per
inode the attributes the kernel was last answered: an ``open`` that reads exactly those
leaves the kernel's cache (and its timer) alone instead of dropping it
(``Operations.open``, close-to-open for sizes).  An inode known to have no extended
attribute is noted for as long (``fuse/absentxattrs.py``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pyfuse3

from bftfs.fs.api import FileSystemAPI
from bftfs.fs.files import Attr
from bftfs.fuse.absentxattrs import AbsentXattrs
from bftfs.fuse.kernelheld import KernelHeld
from bftfs.fuse.leasecache import LeaseCache

#: Inodes whose attributes the kernel was last answered that are remembered (then
#: forgotten all at once: an open of one of them drops the kernel's attributes, as before).
TOLD_LIMIT = 100_000


def told_key(a: Attr) -> tuple[int, ...]:
    """Everything of ``a`` the kernel caches as attributes."""
    return (a.mode, a.nlink, a.uid, a.gid, a.rdev, a.size, a.blocks, a.atime_ns,
            a.mtime_ns, a.ctime_ns)  # fmt: skip


class KernelAttrs:
    """Entries for the kernel, their timeouts, and what it was last told per inode.

    Args:
        fs: the file system.
        timeout: the mount's attribute timeout.
        entry_timeout: how long the kernel caches a name it found.
    """

    def __init__(self, fs: FileSystemAPI, *, timeout: float, entry_timeout: float) -> None:
        self.fs = fs
        self.timeout = timeout
        self.entry_timeout = entry_timeout
        #: The attributes the kernel was last answered per inode (:func:`told_key`), or
        #: None when it was shown others it may not have taken (a listing): an open that
        #: reads the same leaves the kernel's cache alone (its timer too).
        self._told: dict[int, tuple[int, ...] | None] = {}
        #: Whose attributes the kernel holds valid (listed bare: ``fuse/kernelheld.py``).
        self.held = KernelHeld()
        #: What the kernel may cache under leases, and forgets at a recall.
        self.leased = LeaseCache(fs, self.forget)
        #: Inodes with no extended attribute, answered before the handlers.
        self.absent = AbsentXattrs()
        #: Inode -> the inodes listed with it, noted in :attr:`absent` together at the
        #: first ``getxattr`` of one of them (:meth:`listed`).
        self._siblings: dict[int, list[int]] = {}

    def entry(self, a: Attr, *, taken: bool = True) -> pyfuse3.EntryAttributes:
        """``a`` as the kernel's ``EntryAttributes``.  ``taken``: the kernel takes these
        attributes into its cache (a lookup, getattr, setattr or create answer), as far as
        this mount knows; an answer it may not take (readdirplus) makes what it holds
        unknown."""
        if len(self._told) > TOLD_LIMIT:
            self._told.clear()
        key = told_key(a)
        if taken:
            # The kernel replaces its attributes with each answer, except one to a request
            # older than an attribute change it has applied since (its attr_version): it
            # keeps that newer state then, never one older than ours, so an open that reads
            # exactly ``key`` can trust the kernel to hold it.
            self._told[a.ino] = key
        elif self._told.get(a.ino) != key:
            self._told[a.ino] = None  # it may or may not have taken these
        e = pyfuse3.EntryAttributes()
        e.st_ino = a.ino
        e.generation = a.generation
        e.entry_timeout = self.entry_timeout
        e.attr_timeout = self.leased.attr_timeout(a.ino, self.timeout)
        if e.attr_timeout > self.timeout:  # under a lease: another's change recalls it
            self.held.told(a.ino, e.attr_timeout)
        else:  # (a listing must show the attributes another client changed meanwhile)
            self.held.dropped((a.ino,))
        if taken:
            self._note_if_none(a.ino, e.attr_timeout)
        e.st_mode = a.mode
        e.st_nlink = a.nlink
        e.st_uid = a.uid
        e.st_gid = a.gid
        e.st_rdev = a.rdev
        e.st_size = a.size
        e.st_blksize = a.blksize
        e.st_blocks = a.blocks
        e.st_atime_ns = a.atime_ns
        e.st_mtime_ns = a.mtime_ns
        e.st_ctime_ns = a.ctime_ns
        return e

    def holds(self, ino: int, a: Attr) -> bool:
        """Whether the kernel was last answered exactly ``a`` for ``ino``."""
        return self._told.get(ino) == told_key(a)

    def listed(self, inos: list[int]) -> None:
        """``inos`` were listed together (a directory's entries): the first ``getxattr`` of
        one of them that finds none notes every one known to have none (:meth:`no_xattrs`).
        ``ls -l`` asks each entry right after the listing, and ``find`` or a walk asks
        none: noting each entry as it was listed cost every listing the check."""
        if not self.absent.enabled:
            return
        if len(self._siblings) + len(inos) > TOLD_LIMIT:
            self._siblings.clear()
        for ino in inos:
            self._siblings[ino] = inos

    def no_xattrs(self, ino: int) -> None:
        """A ``getxattr`` or ``listxattr`` of ``ino`` found none: the next ones are answered
        before the handlers while what the mount knows says so (``fuse/absentxattrs.py``),
        and so are those of the entries listed with it."""
        if not self.absent.enabled:
            return
        for each in self._siblings.pop(ino, None) or [ino]:
            self._siblings.pop(each, None)
            self._note_if_none(each)

    def _note_if_none(self, ino: int, seconds: float | None = None) -> None:
        """Note ``ino`` in :attr:`absent` if the mount knows it has no extended attribute,
        for ``seconds`` (None: as long as the kernel may keep its attributes now)."""
        if self.absent.enabled and self.fs.known_xattrs(ino) == frozenset():
            if seconds is None:
                seconds = self.leased.attr_timeout(ino, self.timeout)
            self.absent.note(ino, seconds)

    @contextlib.contextmanager
    def changing_xattrs(self, ino: int) -> Iterator[None]:
        """Around this mount's change of ``ino``'s extended attributes: it is no longer
        known to have none, from before the change is sent (a ``getxattr`` after the
        call must not be answered "none" before the handlers) and again once it is
        answered (an answer given meanwhile may have noted it again)."""
        self.absent.forget([ino])
        try:
            yield
        finally:
            self.absent.forget([ino])

    def forget(self, inos: list[int]) -> None:
        """The kernel no longer holds what it was told of ``inos``."""
        for ino in inos:
            self._told.pop(ino, None)
        self.held.dropped(inos)
        self.absent.forget(inos)
