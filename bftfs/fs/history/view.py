"""The whole tree as it was at one moment, read-only: what ``bftfs mount DIR --at WHEN``
serves (issue 17), like NILFS2 checkpoints or ``borg mount``.

:class:`PastView` answers the calls the FUSE layer makes of a
:class:`~bftfs.fs.filesystem.FileSystem` (``bftfs/fuse/operations.py``) from
:class:`~bftfs.fs.history.past.Past`: every object as it was at the moment (the newest version
stored at or before it, read through ``b + 1`` agreeing nodes), file contents read as of
their version's block Time.  Everything that would change the tree answers ``EROFS``.  The
past does not change, so answers are cached for the life of the mount.
"""

from __future__ import annotations

import os
import stat as st
from collections.abc import Awaitable, Callable
from typing import Any

from bftfs.fs.api import FileSystemAPI
from bftfs.fs.errors import BadHandle, IsDir, NoAttr, NotFound, ReadOnly
from bftfs.fs.files import Attr, attr_from_stat, file_block_size
from bftfs.fs.history.content import block_cap
from bftfs.fs.history.past import Past
from bftfs.fs.history.versions import Version
from bftfs.fsobjects import NAME_MAX, ROOT, stat_of
from bftfs.fsobjects.dirents import all_entries
from bftfs.rw.messages import block_id


class PastView:
    """A read-only file-system view of ``past`` at ``time_ns``."""

    def __init__(self, past: Past, time_ns: int, block_size: int) -> None:
        self.past = past
        self.time_ns = time_ns
        self.bs = block_size
        self._versions: dict[int, Version | None] = {}
        self._handles: dict[int, Version] = {}
        self._blocks: dict[tuple[int, int], bytes] = {}
        self._next_fh = 1

    async def _version(self, ino: int) -> Version:
        if ino not in self._versions:
            self._versions[ino] = await self.past.state_at(ino, self.time_ns)
        v = self._versions[ino]
        if v is None:
            raise NotFound()
        return v

    async def _state(self, ino: int) -> dict[str, Any]:
        s = (await self._version(ino)).state
        assert s is not None
        return s

    # What the FUSE layer asks of any file system (bftfs.fs.api) ---------------------------

    @property
    def close_to_open(self) -> bool:
        return False  # an open invalidates the kernel's attributes, as it always did here

    def lease_remaining(self, ino: int, since: float) -> float:
        return 0.0  # the past takes no leases

    def known_xattrs(self, ino: int) -> frozenset[bytes] | None:
        return None  # (each getxattr reads the past state)

    def on_lease_recall(self, forget: Callable[[list[int]], Awaitable[None]]) -> None:
        return None

    async def getattr(
        self, ino: int, *, reached_by_name: bool = False, within: float | None = None
    ) -> Attr:
        s = stat_of(await self._state(ino))
        return attr_from_stat(ino, s, file_block_size(s, self.bs))

    async def lookup(self, parent: int, name: bytes) -> Attr:
        s = await self._state(parent)
        if s.get("k") != "d":
            raise NotFound()
        if name == b".":
            return await self.getattr(parent)
        if name == b"..":
            return await self.getattr(ROOT if parent == ROOT else int(s["p"]))
        entry = all_entries(s["e"]).get(name)
        if entry is None:
            raise NotFound()
        return await self.getattr(int(entry[0]))

    def listing_heads(self, ino: int) -> tuple[Attr, Attr] | None:
        return None  # a past directory's own attributes are read with it

    def held_names(self, ino: int) -> list[tuple[bytes, int, int]] | None:
        return None  # read from the directory's past state (readdir)

    def known_attr(self, ino: int) -> Attr | None:
        return None  # (getattr)

    async def readdir(self, ino: int) -> list[tuple[bytes, Attr]]:
        s = await self._state(ino)
        if s.get("k") != "d":
            raise NotFound()
        out = []
        for name, entry in all_entries(s["e"]).items():
            try:
                out.append((name, await self.getattr(int(entry[0]))))
            except NotFound:
                continue  # an entry whose object is older than retention kept
        return out

    async def readlink(self, ino: int) -> bytes:
        s = await self._state(ino)
        return bytes(s.get("t") or b"")

    async def open(
        self, ino: int, flags: int, *, reached_by_name: bool = False, looked_up: bool = False
    ) -> int:
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise ReadOnly()
        v = await self._version(ino)
        assert v.state is not None
        if v.state.get("k") == "d":
            raise IsDir()
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = v
        return fh

    def _handle(self, fh: int) -> Version:
        v = self._handles.get(fh)
        if v is None:
            raise BadHandle()
        return v

    async def read_reply(self, fh: int, offset: int, size: int) -> bytes:
        return await self.read(fh, offset, size)

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        v = self._handle(fh)
        s = v.state
        assert s is not None
        total = int(s["size"])
        end = min(offset + size, total)
        if offset >= end:
            return b""
        if s.get("i") is not None or st.S_ISLNK(s["mode"]):
            return (await self.past.content(v))[offset:end]
        cap = block_cap(v)
        bs = file_block_size(s, self.bs)  # the block size of the file then (and now)
        out = bytearray()
        for k in range(offset // bs, (end - 1) // bs + 1):
            key = (int(s["d"]), k)
            if key not in self._blocks:
                data = await self.past.rw.read_as_of(block_id(s["d"], k), cap)
                self._blocks[key] = bytes(data).ljust(bs, b"\0")
            out += self._blocks[key]
        start = offset - (offset // bs) * bs
        return bytes(out[start : start + end - offset])

    def keep_cache(self, fh: int) -> bool:
        return True  # the past does not change

    def content_version(self, fh: int) -> tuple[int, int, int] | None:
        return None  # no copies of the past are kept (fuse/passthrough.py)

    async def flush(self, fh: int) -> None:
        self._handle(fh)

    async def fsync(self, fh: int) -> None:
        self._handle(fh)

    async def revalidate(self, fh: int) -> None:
        self._handle(fh)  # the past does not change

    async def write_back(self) -> None:
        return None  # the past holds nothing back

    async def sync_directory(self, ino: int) -> None:
        return None  # the past holds nothing back

    async def release(self, fh: int) -> None:
        self._handles.pop(fh, None)

    async def statfs(self) -> dict[str, int]:
        return {
            "f_bsize": self.bs,
            "f_frsize": self.bs,
            "f_blocks": 0,
            "f_bfree": 0,
            "f_bavail": 0,
            "f_files": 0,
            "f_ffree": 0,
            "f_favail": 0,
            "f_namemax": NAME_MAX,
        }

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        value = (await self._state(ino)).get("x", {}).get(name)
        if value is None:
            raise NoAttr()
        return bytes(value)

    async def listxattr(self, ino: int) -> list[bytes]:
        return sorted((await self._state(ino)).get("x", {}))

    # Everything that would change the past ----------------------------------------------------

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
    ) -> Attr:
        raise ReadOnly()

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
    ) -> Attr:
        raise ReadOnly()

    async def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Attr:
        raise ReadOnly()

    async def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int) -> Attr:
        raise ReadOnly()

    async def link(self, ino: int, new_parent: int, new_name: bytes) -> Attr:
        raise ReadOnly()

    async def unlink(self, parent: int, name: bytes) -> None:
        raise ReadOnly()

    async def rmdir(self, parent: int, name: bytes) -> None:
        raise ReadOnly()

    async def rename(
        self, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int = 0
    ) -> None:
        raise ReadOnly()

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
    ) -> tuple[int, Attr]:
        raise ReadOnly()

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        raise ReadOnly()

    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        raise ReadOnly()

    async def removexattr(self, ino: int, name: bytes) -> None:
        raise ReadOnly()


def _implements_api(view: PastView) -> FileSystemAPI:
    """(Never called: mypy checks here that the view implements the interface.)"""
    return view
