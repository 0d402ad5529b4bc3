"""The file-system interface the FUSE layer calls (:mod:`bftfs.fuse.operations`).

Three classes implement it: :class:`~bftfs.fs.filesystem.FileSystem` (the live tree, one
mount's client), :class:`~bftfs.fs.history.view.PastView` (the tree as it was at one moment,
read-only: ``bftfs mount --at``) and :class:`~bftfs.fs.history.snapshots.SnapshotBrowser` (what
a live mount serves: the first, with each snapshot as a second under ``/.snapshots``).
The FUSE layer knows only this protocol, so it asks the file system what it needs to know
(:attr:`FileSystemAPI.close_to_open`, :meth:`FileSystemAPI.lease_remaining`) instead of
testing which class it holds.  mypy
checks each class against it (the assignments at the end of :mod:`bftfs.fs.history.view`,
:mod:`bftfs.fs.filesystem` and :mod:`bftfs.fs.history.snapshots`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from bftfs.fs.files import Attr


class FileSystemAPI(Protocol):
    """What a mount serves: inode-level calls, inode numbers being object ids."""

    @property
    def close_to_open(self) -> bool:
        """Whether ``open`` re-reads the file's attributes and ``getattr`` of the open file
        answers them from memory (no round): the FUSE layer then compares them with what
        the kernel was told and keeps the kernel's attributes when they agree.  False: an
        open always invalidates the kernel's attributes."""
        ...

    def lease_remaining(self, ino: int, since: float) -> float:
        """Seconds left on this mount's lease on ``ino`` if it was granted by ``since``
        (trio time: a request's start, so whatever the request answers was read under
        it); 0 without one.  The kernel may cache what a lease covers that long."""
        ...

    def on_lease_recall(self, forget: Callable[[list[int]], Awaitable[None]]) -> None:
        """Have ``forget(inos)`` run when leases are recalled, before they are released:
        the kernel drops what it cached under them."""
        ...

    def known_xattrs(self, ino: int) -> frozenset[bytes] | None:
        """The names of ``ino``'s extended attributes when this mount knows them whole
        without a round (``fs/attributes.py``), else None: an empty set lets the FUSE
        layer answer the kernel's ``getxattr`` of the inode before any handler runs
        (``fuse/absentxattrs.py``)."""
        ...

    def keep_cache(self, fh: int) -> bool: ...

    def content_version(self, fh: int) -> tuple[int, int, int] | None:
        """``(d, v, size)`` naming the content of the handle's file as the servers hold
        it, or None when this mount holds changes of it not sent yet (or cannot say):
        what a copy of the file is checked against (``fuse/passthrough.py``)."""
        ...

    # Namespace -------------------------------------------------------------------------

    async def lookup(self, parent: int, name: bytes) -> Attr: ...

    async def getattr(
        self, ino: int, *, reached_by_name: bool = False, within: float | None = None
    ) -> Attr: ...

    async def setattr(
        self,
        ino: int,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
        fh: int | None = None,
        reached_by_name: bool = False,
    ) -> Attr: ...

    async def readdir(self, ino: int) -> list[tuple[bytes, Attr]]: ...

    def held_names(self, ino: int) -> list[tuple[bytes, int, int]] | None:
        """Directory ``ino``'s entries as ``(name, object id, type code: mode >> 12)``
        when the mount has them without a round (None: ask :meth:`readdir`).
        Synchronous: the mount answers such a listing in the kernel's request callback,
        without its event loop (pyfuse3 patch 7)."""
        ...

    def known_attr(self, ino: int) -> Attr | None:
        """``ino``'s attributes when the mount has them without a round (None: ask
        :meth:`getattr`); synchronous, as :meth:`held_names`."""
        ...

    def listing_heads(self, ino: int) -> tuple[Attr, Attr] | None:
        """The ``.`` and ``..`` entries of directory ``ino``'s listing when the mount can
        give them without a round (None: ask :meth:`getattr` and :meth:`lookup`)."""
        ...

    async def readlink(self, ino: int) -> bytes: ...

    async def statfs(self) -> dict[str, int]: ...

    async def mknod(
        self,
        parent: int,
        name: bytes,
        mode: int,
        rdev: int,
        uid: int,
        gid: int,
        *,
        lease: bool = False,
    ) -> Attr: ...

    async def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Attr: ...

    async def symlink(
        self, parent: int, name: bytes, target: bytes, uid: int, gid: int
    ) -> Attr: ...

    async def link(self, ino: int, new_parent: int, new_name: bytes) -> Attr: ...

    async def unlink(self, parent: int, name: bytes) -> None: ...

    async def rmdir(self, parent: int, name: bytes) -> None: ...

    async def rename(
        self, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int = 0
    ) -> None: ...

    # Files -----------------------------------------------------------------------------

    async def open(
        self, ino: int, flags: int, *, reached_by_name: bool = False, looked_up: bool = False
    ) -> int: ...

    async def create(
        self,
        parent: int,
        name: bytes,
        mode: int,
        uid: int,
        gid: int,
        flags: int,
        *,
        known_missing: bool = True,
    ) -> tuple[int, Attr]: ...

    async def read(self, fh: int, offset: int, size: int) -> bytes: ...

    async def read_reply(self, fh: int, offset: int, size: int) -> bytes | memoryview:
        """:meth:`read` for a FUSE reply, which may be a view of a cached block (valid
        until the caller's next ``await``: pyfuse3 replies from it at once)."""
        ...

    async def write(self, fh: int, offset: int, data: bytes) -> int: ...

    async def flush(self, fh: int) -> None: ...

    async def fsync(self, fh: int) -> None: ...

    async def revalidate(self, fh: int) -> None:
        """Take the servers' current version of the handle's file, as an open does (a lock
        was just taken: what another mount wrote before it unlocked must be read)."""
        ...

    async def write_back(self) -> None: ...

    async def sync_directory(self, ino: int) -> None: ...

    async def release(self, fh: int) -> None: ...

    # Extended attributes ---------------------------------------------------------------

    async def getxattr(self, ino: int, name: bytes) -> bytes: ...

    async def listxattr(self, ino: int) -> list[bytes]: ...

    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None: ...

    async def removexattr(self, ino: int, name: bytes) -> None: ...
