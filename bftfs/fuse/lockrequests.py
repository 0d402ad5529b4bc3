"""The kernel's lock requests (issue 37; the handlers of ``scripts/pyfuse3-locks.patch``)
carried out: ``Operations.getlk``, ``setlk``, ``flock``, ``unlock_owner`` and a release's
locks, over the mount's :class:`~bftfs.fs.locks.LockManager` (the translation of kinds
and ranges is :mod:`bftfs.fuse.kernellocks`)."""

from __future__ import annotations

import errno
import fcntl

import pyfuse3
import trio

from bftfs.fs.api import FileSystemAPI
from bftfs.fs.locks import FLOCK, OFFSET_MAX, POSIX, UNLOCK, WRITE, LockManager
from bftfs.fuse.kernelattrs import KernelAttrs
from bftfs.fuse.kernellocks import FLOCK_KINDS, KINDS, byte_range, conflict_answer, lock_kind


def drop_pages(ino: int) -> None:
    """Have the kernel drop ``ino``'s cached pages and attributes.  Called on a worker
    thread, never the loop's: a program's shared ``mmap`` leaves dirty pages even with the
    writeback cache off, and the kernel writes them back (``WRITE`` requests this daemon
    must answer) before it drops them; from the loop's thread that waited forever (SQLite
    in WAL mode hung the mount)."""
    pyfuse3.invalidate_inode(ino, attr_only=False)


#: libfuse's lock: type, start, length, pid.
KernelLock = tuple[int, int, int, int]


class LockRequests:
    """The kernel's lock requests for one mount.

    Args:
        fs: the file system (what a lock waits to have written, and re-reads).
        locks: the mount's lock manager; None: the kernel keeps locks itself, and a lock
            request here is answered ENOSYS.
        attrs: what the kernel was told (forgotten when a lock is taken).
    """

    def __init__(self, fs: FileSystemAPI, locks: LockManager | None, attrs: KernelAttrs) -> None:
        self.fs = fs
        self.locks = locks
        self.attrs = attrs

    def _manager(self) -> LockManager:
        if self.locks is None:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        return self.locks

    async def _lock(
        self, ino: int, fh: int, domain: int, owner: int, kind: int, span: tuple[int, int],
        *, wait: bool, pid: int,
    ) -> None:  # fmt: skip
        """Take, change or drop a lock.  What this mount wrote to the file reaches the
        servers before a lock is dropped or changed; once one is taken the open file takes
        the servers' current version and the kernel's cached pages and attributes of the
        file go: a program that locks, reads, writes and unlocks sees what the previous
        holder on any mount wrote."""
        locks = self._manager()
        if kind != WRITE:
            await self.fs.fsync(fh)
        await locks.lock(ino, fh, domain, owner, kind, span[0], span[1], wait=wait, pid=pid)
        if kind != UNLOCK:
            await self.fs.revalidate(fh)
            self.attrs.forget([ino])
            await trio.to_thread.run_sync(drop_pages, ino)

    async def getlk(self, inode: int, owner: int, lock: KernelLock) -> KernelLock:
        """``F_GETLK``: the conflicting lock, as the kernel reports it."""
        kind, start, length, _ = lock
        lo, hi = byte_range(start, length)
        got = await self._manager().test(inode, POSIX, owner, lock_kind(KINDS, kind), lo, hi)
        return conflict_answer(got, lock)

    async def setlk(self, inode: int, fh: int, owner: int, lock: KernelLock, sleep: bool) -> None:
        """``F_SETLK`` (``F_SETLKW`` with ``sleep``)."""
        kind, start, length, pid = lock
        span = byte_range(start, length)
        await self._lock(inode, fh, POSIX, owner, lock_kind(KINDS, kind), span, wait=sleep, pid=pid)

    async def flock(self, inode: int, fh: int, owner: int, op: int) -> None:
        """``flock(2)``."""
        kind = lock_kind(FLOCK_KINDS, op & ~fcntl.LOCK_NB)
        wait = not op & fcntl.LOCK_NB
        await self._lock(inode, fh, FLOCK, owner, kind, (0, OFFSET_MAX), wait=wait, pid=0)

    async def unlock_owner(self, inode: int, fh: int, owner: int) -> None:
        """A close: the closing process's POSIX locks on the file go, after what it wrote
        reached the servers (pyfuse3 calls ``flush`` next; it then has nothing to send)."""
        if self.locks is not None and self.locks.holds(inode, owner):
            await self.fs.flush(fh)
            await self.locks.unlock_owner(inode, owner)

    async def release(self, fh: int) -> None:
        """An open file's release: its flock and OFD locks go with it."""
        if self.locks is not None:
            await self.locks.release(fh)
