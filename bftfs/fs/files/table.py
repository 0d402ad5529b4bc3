"""The handle table: which open file and flags each FUSE file handle stands for.

State only, shared by the parts that act through handles (:mod:`bftfs.fs.handles`, the
attributes' change through a handle in :mod:`bftfs.fs.attributes`, and the pending
creates of :mod:`bftfs.fs.writeback.creates`, which move a collided file's handles).
"""

from __future__ import annotations

from bftfs.fs.errors import BadHandle
from bftfs.fs.files.openfile import OpenFile


class HandleTable:
    """File handle -> (open file, open flags)."""

    def __init__(self) -> None:
        self.handles: dict[int, tuple[OpenFile, int]] = {}
        self._next_fh = 1
        #: Handles whose open found the kernel's pages current (FUSE ``keep_cache``).
        self.cache_current: set[int] = set()

    def handle(self, fh: int) -> tuple[OpenFile, int]:
        try:
            return self.handles[fh]
        except KeyError:
            raise BadHandle(f"file handle {fh} is not open") from None

    def content_version(self, fh: int) -> tuple[int, int, int] | None:
        """``(d, v, size)`` of the handle's file as the servers hold it (the version
        ``keep_cache`` compares), or None while it holds changes of this mount's, or the
        handle is unknown (``bftfs.fs.api``)."""
        entry = self.handles.get(fh)
        if entry is None:
            return None
        f = entry[0]
        if f.buffered or f.log or f.size != f.st["size"]:
            return None
        return int(f.st["d"]), int(f.st["v"]), int(f.st["size"])

    def new_handle(self, f: OpenFile, flags: int, *, pages_current: bool = False) -> int:
        """A handle on ``f``.  ``pages_current``: the kernel's pages of the file are of the
        content this open sees (``MetadataCache.kernel_saw``), so they stay (``keep_cache``).
        An open answered by the mount alone (a file made here and not sent, or leased here
        alone) asks it too: every change since the kernel last read the file came through
        this mount, through those very pages, and the record follows the mount's own sends
        (``files/flush.py``) and is dropped by what goes around them (an O_APPEND write,
        writes dropped unsent).  Without it each such open made the kernel read the file
        again (a compile reopens each header once per object file)."""
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = (f, flags)
        f.opens += 1
        if pages_current:
            self.cache_current.add(fh)
        return fh
