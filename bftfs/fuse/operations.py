"""pyfuse3 ``Operations`` mapping the kernel's requests onto :class:`bftfs.fs.FileSystem`.

This layer is deliberately thin: every handler translates arguments, calls the file-system
model, and translates the answer into pyfuse3's types.  All protocol work (Q/U metadata,
PASIS blocks, the write-back cache, close-to-open consistency) lives in :mod:`bftfs.fs`.

Errors (STYLE.md section 3): one decorator wraps every handler (:mod:`bftfs.fuse.handler`);
the kernel's lock requests are translated by :mod:`bftfs.fuse.kernellocks`.

Kernel caching, chosen on purpose (``spec/pyfuse3-notes.md``):

* the kernel's writeback cache stays **off**.  With it the kernel owns a regular file's
  size and never takes the size the daemon answers again (libfuse #864): a second mount
  kept a file's old size forever after another client rewrote it longer or shorter, read
  the old bytes or zeros up to the old length, and computed ``O_APPEND`` offsets from that
  stale size, overwriting the other client's appends.  Without it every ``write()`` reaches
  the daemon (which buffers them; 1 MiB writes still arrive whole), the kernel takes sizes
  from our attributes, and ``O_APPEND`` is ours to place: such handles are opened
  ``direct_io`` so their writes bypass the kernel's pages, and the daemon appends at the
  end of the file as the servers hold it at flush time (``FileSystem.write``).
* at every ``open`` the kernel's cached attributes of the file are dropped (its pages only
  when they are not of the version the servers hold, ``keep_cache``), so ``fstat`` and
  reads after an open see the size of the last close on any mount (close-to-open for
  sizes too).
* attribute timeout of :data:`DEFAULT_TIMEOUT` seconds (``bftfs mount --attr-timeout``): a
  second mount sees another client's changes to attributes within that time, and to
  contents at the latest on open (close-to-open: ``open`` always asks the cluster, and the
  kernel keeps its cached pages of the file only if they are of the version the cluster
  holds, as NFS clients do; see ``FileSystem.keep_cache``).
* under a lease the kernel keeps attributes (and missing names) for what is left of the
  lease (``fuse/leasecache.py``), and forgets them when the lease is recalled, before the
  mount releases it: a change another client makes (a ``chmod`` too) waits for that, so the
  kernel's permission check never rests on a mode older than the change.  NFS's
  ``acregmin``/``acregmax`` longer timeouts, once mount options here, were folded into
  leases.
* names the kernel found are cached for :data:`DEFAULT_ENTRY_TIMEOUT` seconds (``bftfs
  mount --entry-timeout``), as NFS clients cache them (``acdirmin``): a path walk through
  a cached name costs no round, so reopening, stat-ing or removing a file named a while
  ago is one round less.  A cached name can only be stale in a way the servers notice: the
  object it leads to has no name any more (another client removed it, or replaced it by
  renaming over it, as an atomic save does), or it leads into a removed directory; ``open``,
  ``getattr`` and ``lookup`` then answer ESTALE, and the kernel walks the path again with
  fresh lookups (``LOOKUP_REVAL``) and finds what the name is now.  What stays stale for up
  to the timeout: a name another client renamed away still leads here to the renamed
  object (NFS behaves so too).
* missing names are cached for the attribute timeout: a name another client creates shows
  here within it.  A copy asks for a missing name up to four times before creating it
  (``shutil.copy``: isdir, samefile, stat, open), ``make`` and compilers probe many names
  that do not exist: each was a round to the servers.  An ``open(O_CREAT)`` decided on a
  missing name that another client has since created is answered ESTALE too
  (``FileSystem.create``).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import pyfuse3
import trio

from bftfs.fs.api import FileSystemAPI
from bftfs.fs.errors import NoAttr, NotFound, Removed
from bftfs.fs.locks import LockManager
from bftfs.fuse.callrecord import CallRecord
from bftfs.fuse.directories import OpenDirectories
from bftfs.fuse.handler import handler as _handler
from bftfs.fuse.kernelattrs import KernelAttrs
from bftfs.fuse.lockrequests import LockRequests
from bftfs.fuse.options import DEFAULT_ENTRY_TIMEOUT, DEFAULT_TIMEO, DEFAULT_TIMEOUT
from bftfs.fuse.passthrough import Passthrough
from bftfs.fuse.paths import KnownPaths
from bftfs.fuse.readreplies import configure as configure_read_replies
from bftfs.fuse.recentlookups import RecentLookups

log = logging.getLogger(__name__)


class Operations(pyfuse3.Operations):
    """The bftfs mount: inode numbers are Q/U object ids, the root is object 1."""

    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(
        self,
        fs: FileSystemAPI,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        entry_timeout: float = DEFAULT_ENTRY_TIMEOUT,
        read_only: bool = False,
        timeo: float | None = DEFAULT_TIMEO,
        hard: bool = False,
        soft: bool = False,
        locks: LockManager | None = None,
    ) -> None:
        """``timeo``: seconds a call waits for an unavailable cluster - fewer than a
        quorum of nodes live (None: the transport's own timeouts); ``hard``: then try
        again instead of answering EIO; ``soft``: unavailable means no call completed
        for ``timeo``, however many nodes are live (``bftfs.outcome.Patience``).
        ``locks``: the mount's lock manager; with it the kernel sends ``fcntl`` and
        ``flock`` locks here (every mount sees them), without it it keeps them itself."""
        super().__init__()
        self.fs = fs
        self.locks = locks
        self.supports_locks = locks is not None
        self.timeout = timeout
        #: The entries the kernel is answered, their timeouts (leases' too), and what it
        #: was last told per inode.
        self.attrs = KernelAttrs(fs, timeout=timeout, entry_timeout=entry_timeout)
        self.held = self.attrs.held
        self.read_only = read_only
        #: The view this mount's client was revoked in, or None (the mount sets it from
        #: its session's view tracker; ``fuse/handler.py`` answers EACCES once set).
        self.revoked_in: Callable[[], int | None] = lambda: None
        self.timeo = timeo
        self.hard = hard
        self.soft = soft
        #: Calls, seconds, EIO answers per handler; a hard mount's wait (``bftfs status``).
        self.record = CallRecord()
        configure_read_replies(self)  # big read replies from a worker thread (issue 63)
        #: What each process's latest request, a lookup, found (``open``, ``create``).
        self.lookups = RecentLookups()
        self.paths = KnownPaths()
        #: The kernel's lock requests, over ``locks``.
        self.lock_requests = LockRequests(fs, locks, self.attrs)
        #: Open directories, and their requests answered without the event loop: pyfuse3
        #: (patch 7) calls ``opendir_now``, ``readdir_now`` and ``releasedir_now`` first.
        self.dirs = OpenDirectories(fs, self.attrs, self.lookups)
        self.dirs.usable = lambda: self.revoked_in() is None
        self.opendir_now = self.dirs.opendir_now
        self.readdir_now = self.dirs.readdir_now
        self.releasedir_now = self.dirs.releasedir_now
        #: Set once the kernel's INIT is answered (what it negotiated, e.g. the read-ahead,
        #: may be raised only after: fuse/mount.py).
        self.initialised = trio.Event()
        #: Verified copies read by the kernel itself (mount option ``passthrough``), or None.
        self.passthrough: Passthrough | None = None

    def use_passthrough(self, passthrough: Passthrough) -> None:
        """Serve re-reads of verified files by FUSE passthrough (``fuse/passthrough.py``)."""
        self.passthrough = passthrough
        self.enable_passthrough = True  # asked of the kernel at INIT (pyfuse3 patch 4)
        self.attrs.leased.on_recall.append(passthrough.drop)

    def init(self) -> None:
        """The kernel's INIT: libfuse sends the answer right after this returns."""
        self.initialised.set()
        if self.passthrough is not None:
            self.passthrough.started()

    def statistics(self) -> str:
        """One line per handler: requests, total and mean milliseconds, busiest first."""
        return self.record.statistics()

    # Namespace -----------------------------------------------------------------------------

    @_handler
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        log.debug("lookup %d %r", parent_inode, name)
        try:
            a = await self.fs.lookup(parent_inode, name)
            if ctx is not None and ctx.pid:
                self.lookups.found(ctx.pid, a.ino)
            return self.attrs.entry(a)
        except Removed:  # the kernel reached a removed directory by a stale name
            raise pyfuse3.FUSEError(errno.ESTALE) from None
        except NotFound:
            if ctx is not None and ctx.pid:
                self.lookups.missing(ctx.pid, parent_inode, name)
            # A negative entry (inode 0), which the kernel caches for ``entry_timeout``:
            # while this mount's lease on the directory runs, until the lease is recalled.
            e = pyfuse3.EntryAttributes()
            e.st_ino = 0
            e.entry_timeout = self.attrs.leased.negative_timeout(parent_inode, name, self.timeout)
            return e

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        # Inode numbers are object ids: nothing per-inode is kept that needs forgetting,
        # but the kernel no longer holds these inodes' attributes.
        self.held.dropped(ino for ino, _ in inode_list)

    @_handler
    async def getattr(self, inode: int, ctx: Any = None) -> Any:
        return self.attrs.entry(await self.fs.getattr(inode, reached_by_name=True))

    @_handler
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any) -> Any:
        if log.isEnabledFor(logging.DEBUG):
            changed = [f for f in dir(fields) if f.startswith("update_") and getattr(fields, f)]
            log.debug("setattr %d fh=%s %s", inode, fh, changed)
        if self.passthrough is not None and fields.update_size:
            self.passthrough.changed(inode)
        a = await self.fs.setattr(
            inode,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            fh=fh,
            reached_by_name=True,
        )
        return self.attrs.entry(a)

    @_handler
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        return await self.fs.readlink(inode)

    @_handler
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> Any:
        return self.attrs.entry(
            await self.fs.mknod(parent_inode, name, mode, rdev, ctx.uid, ctx.gid)
        )

    @_handler
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Any:
        return self.attrs.entry(await self.fs.mkdir(parent_inode, name, mode, ctx.uid, ctx.gid))

    @_handler
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        await self.fs.unlink(parent_inode, name)

    @_handler
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        await self.fs.rmdir(parent_inode, name)

    @_handler
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> Any:
        return self.attrs.entry(await self.fs.symlink(parent_inode, name, target, ctx.uid, ctx.gid))

    @_handler
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: Any,
    ) -> None:
        await self.fs.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    @_handler
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> Any:
        return self.attrs.entry(await self.fs.link(inode, new_parent_inode, new_name))

    # Directories ---------------------------------------------------------------------------

    @_handler
    async def opendir(self, inode: int, ctx: Any) -> tuple[int, bool]:
        """A handle and its listing, read now (a directory gone is refused at its open,
        which the kernel's walk retries: ``Namespace.check_reached``) unless the kernel
        keeps the last one under this mount's lease (``fuse/leasecache.py``): it then
        sends no ``readdir``, and one it sends (its kept pages dropped) reads it then.
        Such an open is mostly answered before this handler (``fuse/directories.py``)."""
        keep = self.dirs.kept(inode)
        entries = None if keep else await self.dirs.listing(inode)
        return self.dirs.open(inode, entries), keep

    @_handler
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        if not await self.dirs.reply(fh, start_id, token):
            raise pyfuse3.FUSEError(errno.EBADF)

    async def releasedir(self, fh: int) -> None:
        self.dirs.release(fh)

    @_handler  # (it had none: an error escaped to pyfuse3's loop and ended the mount)
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        # Every namespace update is complete on a quorum before it returns, but the entries
        # directory write-back keeps (leases, fs/writeback/), which go now: 0 means the
        # directory's are on a quorum (then the rest of the mount's go too).
        inode = self.dirs.inode_of(fh)
        if inode is None:
            await self.fs.write_back()
        else:
            await self.fs.sync_directory(inode)

    # Files ---------------------------------------------------------------------------------

    def _file_info(self, fh: int, flags: int, *, new: bool = False) -> Any:
        """The kernel's view of a handle: ``O_APPEND`` writers go around the page cache (we
        choose where their bytes land), and cached pages stay only if current."""
        append = bool(flags & os.O_APPEND) and flags & os.O_ACCMODE != os.O_RDONLY
        keep = not new and not append and self.fs.keep_cache(fh)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep, direct_io=append)

    @_handler
    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        # The kernel's retry after ESTALE does not always look the name up again (seen with
        # a dentry its own walk had just looked up): the calling process's last request
        # being the lookup that found this inode is how this open knows it came by a name
        # found in this very call (``looked_up``), not by a name cached earlier.
        if self.read_only and (flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC):
            raise pyfuse3.FUSEError(errno.EROFS)
        looked_up = self.lookups.opened(ctx.pid, inode)
        if self.passthrough is not None:
            await self.passthrough.admit(inode, flags)
        fh = await self.fs.open(inode, flags, reached_by_name=True, looked_up=looked_up)
        self.lookups.forget_found(ctx.pid)
        # Close-to-open for sizes: the kernel's attributes may be of an older version
        # (another client's close since, or a lookup answered before it); dropping them
        # makes its next stat or read past the cached size ask us, and we answer the
        # attributes this open read.  Costs a getattr answered from memory, no round -
        # but the permission check of the next open after the file's close asked the
        # servers again (an open-and-close loop cost two rounds).  When the kernel was
        # last answered exactly what this open read, what it holds is current: kept.
        if not self.fs.close_to_open or not self.attrs.holds(
            inode,
            await self.fs.getattr(inode),  # the open file's: no round
        ):
            self.attrs.forget([inode])
            pyfuse3.invalidate_inode(inode, attr_only=True)
        info = self._file_info(fh, flags)
        if self.passthrough is not None:
            try:
                info.backing_id = await self.passthrough.opened(
                    inode, fh, flags, self.fs.content_version(fh)
                )
                if info.backing_id:  # the kernel refuses FOPEN_KEEP_CACHE beside it (EIO)
                    info.keep_cache = False
            except pyfuse3.FUSEError:
                await self.fs.release(fh)
                raise
        return info

    @_handler
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any) -> Any:
        # Write-behind only when this very call's lookup found the name missing (the
        # calling process's previous request, just now): on a name the kernel cached as
        # missing, another client may have made the file, and open(O_CREAT) must read it.
        fresh = self.lookups.fresh_miss(ctx.pid, parent_inode, name)
        fh, attr = await self.fs.create(
            parent_inode, name, mode, ctx.uid, ctx.gid, flags, known_missing=fresh
        )
        if self.passthrough is not None:  # (an existing file's copy, if any, is dropped)
            try:
                await self.passthrough.admit(attr.ino, flags | os.O_RDWR)
                await self.passthrough.opened(attr.ino, fh, flags | os.O_RDWR, None)
            except pyfuse3.FUSEError:
                await self.fs.release(fh)
                raise
        return self._file_info(fh, flags, new=True), self.attrs.entry(attr)

    @_handler
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:  # type: ignore[override]
        # A view (``OpenFile.reply``) is fine: pyfuse3 takes any contiguous buffer and
        # writes it to /dev/fuse without the GIL, a big one from a worker thread while
        # other tasks run (``fuse/readreplies.py``): a clean block is never changed in place.
        reply = await self.fs.read_reply(fh, off, size)
        self.record.read_bytes += len(reply)
        if self.passthrough is not None:
            self.passthrough.read(fh, off, reply)  # verified bytes, into the file's copy
        return reply

    @_handler
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        if self.passthrough is not None:
            self.passthrough.written(fh)
        written = await self.fs.write(fh, off, buf)
        self.record.written_bytes += written
        return written

    @_handler
    async def flush(self, fh: int) -> None:
        await self.fs.flush(fh)

    @_handler
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.fs.fsync(fh)

    @_handler
    async def release(self, fh: int) -> None:
        if self.passthrough is not None:
            self.passthrough.released(fh, self.fs.content_version(fh))
        try:
            await self.fs.release(fh)
        finally:
            await self.lock_requests.release(fh)  # its flock and OFD locks go with it

    # Locks (issue 37; the handlers of scripts/pyfuse3-locks.patch) --------------------------

    @_handler
    async def getlk(
        self, inode: int, fh: int, owner: int, lock: tuple[int, int, int, int]
    ) -> tuple[int, int, int, int]:
        return await self.lock_requests.getlk(inode, owner, lock)

    @_handler
    async def setlk(
        self, inode: int, fh: int, owner: int, lock: tuple[int, int, int, int], sleep: bool
    ) -> None:
        await self.lock_requests.setlk(inode, fh, owner, lock, sleep)

    @_handler
    async def flock(self, inode: int, fh: int, owner: int, op: int) -> None:
        await self.lock_requests.flock(inode, fh, owner, op)

    @_handler
    async def unlock_owner(self, inode: int, fh: int, owner: int) -> None:
        """A close: the closing process's POSIX locks on the file go (``LockRequests``)."""
        await self.lock_requests.unlock_owner(inode, fh, owner)

    # Everything else -----------------------------------------------------------------------

    @_handler
    async def statfs(self, ctx: Any) -> Any:
        st = await self.fs.statfs()
        out = pyfuse3.StatvfsData()
        for key, value in st.items():
            setattr(out, key, value)
        return out

    @_handler
    async def access(self, inode: int, mode: int, ctx: Any) -> bool:
        # Only called without default_permissions (we always mount with it); answer from
        # the attributes the same way the kernel would.
        a = await self.fs.getattr(inode)
        if ctx.uid == 0 or mode == os.F_OK:
            return True
        bits = (a.mode >> 6) if ctx.uid == a.uid else (a.mode >> 3) if ctx.gid == a.gid else a.mode
        return (bits & mode & 0o7) == (mode & 0o7)

    @_handler
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        # "system.*" names are interpreted by the file system (POSIX ACLs). bftfs has no
        # ACLs: storing them as plain data would make `cp -a` believe its ACL (and so the
        # mode) was applied and skip its fchmod, so they are refused as unsupported.
        if name.startswith(b"system."):
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        with self.attrs.changing_xattrs(inode):
            await self.fs.setxattr(inode, name, value)

    @_handler
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        if name.startswith(b"system."):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        try:
            return await self.fs.getxattr(inode, name)
        except NoAttr:
            self.attrs.no_xattrs(inode)
            raise

    @_handler
    async def listxattr(self, inode: int, ctx: Any) -> Sequence[bytes]:
        names = await self.fs.listxattr(inode)
        if not names:
            self.attrs.no_xattrs(inode)
        return names

    @_handler
    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        with self.attrs.changing_xattrs(inode):
            await self.fs.removexattr(inode, name)
