"""The cluster's snapshots as read-only directories inside a live mount (issue 36):
``mount/.snapshots/NAME`` is the tree as it was at snapshot ``NAME``'s moment, as ZFS's
``.zfs/snapshot/NAME`` or a NILFS2 checkpoint mount show theirs.

:class:`SnapshotBrowser` is the file system a live mount serves: it answers the FUSE
layer's calls (:class:`~bftfs.fs.api.FileSystemAPI`) for live inodes from the live
:class:`~bftfs.fs.filesystem.FileSystem` and for everything under ``.snapshots`` from one
:class:`~bftfs.fs.history.view.PastView` per snapshot (``bftfs mount --at``'s view), composed,
so neither knows of the other.  Inode numbers of the views are kept apart from live ones
by :mod:`bftfs.fs.history.snapinodes`.

- ``.snapshots`` is hidden: the root's listing leaves it out (scripts walking the tree do
  not descend into every snapshot, as ZFS's ``snapdir=hidden``), a lookup of the name finds
  it.  Its listing is the cluster's snapshot list (the ``fs.snapshots`` query) as it is at
  each ``readdir`` and each lookup of a name in it, so a snapshot made while the mount runs
  appears there.
- Everything that would change ``.snapshots`` or anything under it answers ``EROFS``;
  creating the name ``.snapshots`` in the live root answers ``EEXIST`` (the name is taken),
  removing or renaming it ``EROFS``.  A live entry of that name in the root (made before
  mounts served snapshots) is shadowed: listings leave it out, lookups find the snapshot
  directory; ``bftfs cat``/``restore --to`` still reach it.
- Files and handles: a view's file handles are numbered from :data:`PAST_FH` up (the live
  file system's count up from 1), so a handle alone says where it goes.
"""

from __future__ import annotations

import dataclasses
import logging
import stat as st
from collections.abc import Awaitable, Callable, Hashable

import trio

from bftfs.fs.api import FileSystemAPI
from bftfs.fs.errors import BadHandle, Exists, FsError, IsDir, NoAttr, NotFound, ReadOnly
from bftfs.fs.files import Attr
from bftfs.fs.history.past import Past
from bftfs.fs.history.snapinodes import SNAPDIR, InodeMap, is_live
from bftfs.fs.history.versions import PastError
from bftfs.fs.history.view import PastView
from bftfs.fsobjects import ROOT

log = logging.getLogger(__name__)

#: The hidden directory's name in the mount's root.
SNAPDIR_NAME = b".snapshots"
#: The first file handle of an open file of a snapshot (the live file system's handles
#: count up from 1 and never get there).
PAST_FH = 1 << 63
#: Snapshot roots read at a time for a listing of ``.snapshots``.
PARALLEL = 16

#: A snapshot as one view: its name and moment (a snapshot deleted and made again under
#: its name at another moment is another view).
ViewKey = tuple[str, int]


class SnapshotBrowser:
    """The live file system ``live`` with the snapshots of ``past``'s cluster under
    ``/.snapshots``, read-only."""

    def __init__(self, live: FileSystemAPI, past: Past, block_size: int) -> None:
        self.live = live
        self.past = past
        self.bs = block_size
        self.inodes = InodeMap()
        self._views: dict[ViewKey, PastView] = {}
        #: Handle -> (view, the view's own handle).
        self._handles: dict[int, tuple[PastView, int]] = {}
        self._next_fh = PAST_FH

    # Routing ------------------------------------------------------------------------------

    def _view(self, key: ViewKey) -> PastView:
        view = self._views.get(key)
        if view is None:
            view = self._views[key] = PastView(self.past, key[1], self.bs)
        return view

    def _past(self, ino: int) -> tuple[ViewKey, PastView, int]:
        """The view and object id of a snapshot inode (not :data:`SNAPDIR`)."""
        found = self.inodes.lookup(ino)
        if found is None:
            raise NotFound(f"inode {ino} is no object of a snapshot")
        key, oid = found
        assert isinstance(key, tuple)
        return key, self._view(key), oid

    def _outer(self, key: Hashable, a: Attr) -> Attr:
        """A view's attributes with the kernel's inode number."""
        return dataclasses.replace(a, ino=self.inodes.inode(key, a.ino))

    def _handle(self, fh: int) -> tuple[PastView, int]:
        got = self._handles.get(fh)
        if got is None:
            raise BadHandle(f"file handle {fh} is not open")
        return got

    @staticmethod
    def _is_snapdir_name(parent: int, name: bytes) -> bool:
        return parent == ROOT and name == SNAPDIR_NAME

    async def _snapdir_attr(self) -> Attr:
        """``.snapshots``: a directory nobody may write, owned and dated as the root."""
        root = await self.live.getattr(ROOT)
        return dataclasses.replace(
            root, ino=SNAPDIR, mode=st.S_IFDIR | 0o555, nlink=2, size=0, blocks=0
        )

    async def _snapshot_root(self, key: ViewKey) -> Attr:
        return self._outer(key, await self._view(key).getattr(ROOT))

    async def _snapshots(self) -> dict[str, int]:
        return await self.past.snapshots()

    # What the FUSE layer asks of any file system --------------------------------------------

    @property
    def close_to_open(self) -> bool:
        return self.live.close_to_open

    def lease_remaining(self, ino: int, since: float) -> float:
        return self.live.lease_remaining(ino, since) if is_live(ino) else 0.0

    def on_lease_recall(self, forget: Callable[[list[int]], Awaitable[None]]) -> None:
        self.live.on_lease_recall(forget)

    def known_xattrs(self, ino: int) -> frozenset[bytes] | None:
        return self.live.known_xattrs(ino) if is_live(ino) else None

    def keep_cache(self, fh: int) -> bool:
        return True if fh >= PAST_FH else self.live.keep_cache(fh)

    def content_version(self, fh: int) -> tuple[int, int, int] | None:
        return None if fh >= PAST_FH else self.live.content_version(fh)

    # Namespace ----------------------------------------------------------------------------

    async def lookup(self, parent: int, name: bytes) -> Attr:
        if is_live(parent):
            if self._is_snapdir_name(parent, name):
                return await self._snapdir_attr()
            return await self.live.lookup(parent, name)
        if parent == SNAPDIR:
            if name == b".":
                return await self._snapdir_attr()
            if name == b"..":
                return await self.live.getattr(ROOT)
            moment = (await self._snapshots()).get(name.decode(errors="surrogateescape"))
            if moment is None:
                raise NotFound()
            return await self._snapshot_root((name.decode(errors="surrogateescape"), moment))
        key, view, oid = self._past(parent)
        if oid == ROOT and name == b"..":
            return await self._snapdir_attr()
        return self._outer(key, await view.lookup(oid, name))

    async def getattr(
        self, ino: int, *, reached_by_name: bool = False, within: float | None = None
    ) -> Attr:
        if is_live(ino):
            return await self.live.getattr(ino, reached_by_name=reached_by_name, within=within)
        if ino == SNAPDIR:
            return await self._snapdir_attr()
        key, view, oid = self._past(ino)
        return self._outer(key, await view.getattr(oid))

    def listing_heads(self, ino: int) -> tuple[Attr, Attr] | None:
        return self.live.listing_heads(ino) if is_live(ino) else None

    def held_names(self, ino: int) -> list[tuple[bytes, int, int]] | None:
        names = self.live.held_names(ino) if is_live(ino) else None
        if names is not None and ino == ROOT:
            names = [entry for entry in names if entry[0] != SNAPDIR_NAME]
        return names

    def known_attr(self, ino: int) -> Attr | None:
        return self.live.known_attr(ino) if is_live(ino) else None

    async def readdir(self, ino: int) -> list[tuple[bytes, Attr]]:
        if is_live(ino):
            entries = await self.live.readdir(ino)
            if ino == ROOT:
                entries = [(n, a) for n, a in entries if n != SNAPDIR_NAME]
            return entries
        if ino == SNAPDIR:
            return await self._list_snapshots()
        key, view, oid = self._past(ino)
        return [(n, self._outer(key, a)) for n, a in await view.readdir(oid)]

    async def _list_snapshots(self) -> list[tuple[bytes, Attr]]:
        """Each snapshot with its root's attributes, oldest first (read :data:`PARALLEL` at
        a time: each is a walk of the root's history).  A root that cannot be read (its
        version reclaimed, or of unknown time) is listed as a bare read-only directory
        dated at the snapshot's moment; entering it answers why."""
        snaps = sorted((await self._snapshots()).items(), key=lambda kv: (kv[1], kv[0]))
        found: dict[ViewKey, Attr] = {}
        limiter = trio.CapacityLimiter(PARALLEL)
        fallback = await self._snapdir_attr()

        async def one(key: ViewKey) -> None:
            async with limiter:
                try:
                    found[key] = await self._snapshot_root(key)
                except (FsError, PastError) as e:
                    log.info("snapshot %s: its root cannot be read: %s", key[0], e)
                    t = key[1]
                    found[key] = dataclasses.replace(
                        fallback,
                        ino=self.inodes.inode(key, ROOT),
                        atime_ns=t,
                        mtime_ns=t,
                        ctime_ns=t,
                    )

        async with trio.open_nursery() as nursery:
            for key in snaps:
                nursery.start_soon(one, key)
        return [(name.encode(errors="surrogateescape"), found[(name, t)]) for name, t in snaps]

    async def readlink(self, ino: int) -> bytes:
        if is_live(ino):
            return await self.live.readlink(ino)
        if ino == SNAPDIR:
            raise NotFound()
        _, view, oid = self._past(ino)
        return await view.readlink(oid)

    async def statfs(self) -> dict[str, int]:
        return await self.live.statfs()

    # Files --------------------------------------------------------------------------------

    async def open(
        self, ino: int, flags: int, *, reached_by_name: bool = False, looked_up: bool = False
    ) -> int:
        if is_live(ino):
            return await self.live.open(
                ino, flags, reached_by_name=reached_by_name, looked_up=looked_up
            )
        if ino == SNAPDIR:
            raise IsDir()
        _, view, oid = self._past(ino)
        inner = await view.open(oid, flags)
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = (view, inner)
        return fh

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        if fh < PAST_FH:
            return await self.live.read(fh, offset, size)
        view, inner = self._handle(fh)
        return await view.read(inner, offset, size)

    async def read_reply(self, fh: int, offset: int, size: int) -> bytes | memoryview:
        if fh < PAST_FH:
            return await self.live.read_reply(fh, offset, size)
        return await self.read(fh, offset, size)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        if fh < PAST_FH:
            return await self.live.write(fh, offset, data)
        raise ReadOnly()

    async def flush(self, fh: int) -> None:
        if fh < PAST_FH:
            await self.live.flush(fh)
        else:
            self._handle(fh)

    async def fsync(self, fh: int) -> None:
        if fh < PAST_FH:
            await self.live.fsync(fh)
        else:
            self._handle(fh)

    async def revalidate(self, fh: int) -> None:
        if fh < PAST_FH:
            await self.live.revalidate(fh)
        else:
            self._handle(fh)  # the past does not change

    async def write_back(self) -> None:
        await self.live.write_back()

    async def sync_directory(self, ino: int) -> None:
        if is_live(ino):  # (the past holds nothing back)
            await self.live.sync_directory(ino)

    async def release(self, fh: int) -> None:
        if fh < PAST_FH:
            await self.live.release(fh)
            return
        got = self._handles.pop(fh, None)
        if got is not None:
            await got[0].release(got[1])

    # Extended attributes ------------------------------------------------------------------

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        if is_live(ino):
            return await self.live.getxattr(ino, name)
        if ino == SNAPDIR:
            raise NoAttr()
        _, view, oid = self._past(ino)
        return await view.getxattr(oid, name)

    async def listxattr(self, ino: int) -> list[bytes]:
        if is_live(ino):
            return await self.live.listxattr(ino)
        if ino == SNAPDIR:
            return []
        _, view, oid = self._past(ino)
        return await view.listxattr(oid)

    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        _live_only(ino)
        await self.live.setxattr(ino, name, value, flags)

    async def removexattr(self, ino: int, name: bytes) -> None:
        _live_only(ino)
        await self.live.removexattr(ino, name)

    # Changes: live only, never of ``.snapshots`` ------------------------------------------

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
        _live_only(ino)
        if fh is not None and fh >= PAST_FH:
            raise ReadOnly()
        return await self.live.setattr(
            ino,
            mode=mode,
            uid=uid,
            gid=gid,
            size=size,
            atime_ns=atime_ns,
            mtime_ns=mtime_ns,
            fh=fh,
            reached_by_name=reached_by_name,
        )

    def _creating(self, parent: int, name: bytes) -> None:
        _live_only(parent)
        if self._is_snapdir_name(parent, name):
            raise Exists(".snapshots in the root is the snapshots' directory")

    def _removing(self, parent: int, name: bytes) -> None:
        _live_only(parent)
        if self._is_snapdir_name(parent, name):
            raise ReadOnly(".snapshots in the root is the snapshots' directory")

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
        self._creating(parent, name)
        return await self.live.mknod(parent, name, mode, rdev, uid, gid, lease=lease)

    async def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Attr:
        self._creating(parent, name)
        return await self.live.mkdir(parent, name, mode, uid, gid)

    async def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int) -> Attr:
        self._creating(parent, name)
        return await self.live.symlink(parent, name, target, uid, gid)

    async def link(self, ino: int, new_parent: int, new_name: bytes) -> Attr:
        _live_only(ino)
        self._creating(new_parent, new_name)
        return await self.live.link(ino, new_parent, new_name)

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
        self._creating(parent, name)
        return await self.live.create(
            parent, name, mode, uid, gid, flags, known_missing=known_missing
        )

    async def unlink(self, parent: int, name: bytes) -> None:
        self._removing(parent, name)
        await self.live.unlink(parent, name)

    async def rmdir(self, parent: int, name: bytes) -> None:
        self._removing(parent, name)
        await self.live.rmdir(parent, name)

    async def rename(
        self, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int = 0
    ) -> None:
        self._removing(parent, name)
        self._removing(new_parent, new_name)  # it would replace the snapshots' directory
        await self.live.rename(parent, name, new_parent, new_name, flags)


def _live_only(ino: int) -> None:
    """Refuse a change of ``.snapshots`` or of anything in a snapshot."""
    if not is_live(ino):
        raise ReadOnly()


def _implements_api(browser: SnapshotBrowser) -> FileSystemAPI:
    """(Never called: mypy checks here that the browser implements the interface.)"""
    return browser
