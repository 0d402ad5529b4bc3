"""Open files as the kernel sees them: the handle table, create and open (close-to-open
consistency, O_TRUNC, O_APPEND), read, write, flush and release, and whether the kernel may
keep its cached pages of a file.

The data itself moves in :mod:`bftfs.fs.files.fetch` and :mod:`bftfs.fs.files.flush`;
this part is what a handle means: which file, which flags, and what an open checks.
"""

from __future__ import annotations

import logging
import os
import stat as st
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from bftfs import fsobjects as obj
from bftfs.fs.attributes import Attributes
from bftfs.fs.caches import MetadataCache
from bftfs.fs.clients import LEASE_NS, MAX_ATTEMPTS, Meta
from bftfs.fs.errors import (
    Exists,
    Invalid,
    IsDir,
    NoSpace,
    NotFound,
    StaleView,
    TooBig,
    Unavailable,
)
from bftfs.fs.files.attr import Attr
from bftfs.fs.files.flush import FlushEngine
from bftfs.fs.files.openfile import OpenFile
from bftfs.fs.files.reclaim import Reclaimer
from bftfs.fs.files.table import HandleTable
from bftfs.fs.names import Names
from bftfs.fs.writeback import HeldFiles, PendingCreates, behind_done, flush_behind

log = logging.getLogger(__name__)


def _may_open(s: dict[str, Any], uid: int, gid: int, flags: int) -> bool:
    """Whether the mode bits of ``s`` let ``uid``/``gid`` open it with ``flags`` (the
    owner's, group's or others' bits, as the kernel's check; root may always; without
    the caller's supplementary groups, so a group-only grant to one of those says no)."""
    if uid == 0:
        return True
    acc = flags & os.O_ACCMODE
    need = (4 if acc != os.O_WRONLY else 0) | (2 if acc != os.O_RDONLY or flags & os.O_TRUNC else 0)
    shift = 6 if s["uid"] == uid else 3 if s["gid"] == gid else 0
    return (s["mode"] >> shift) & need == need


def stays(f: OpenFile, held: HeldFiles | None, pending: PendingCreates) -> bool:
    """Whether the closed, clean ``f`` stays in the mount: held (``fs/writeback/held.py``),
    or made by a create that waits in directory write-back, which sends it with the
    attributes a later chmod or utime by name gave it (``Attributes.setattr``) and with
    the other creates of its directory in one update."""
    kept = held is not None and held.keep(f)
    return kept or pending.deferred_stat(f.ino) is not None


class Handles:
    """File handles and the calls made through them.  Given every part below it: the
    protocol calls, the cache, the handle table, the names (create, a stale name), the
    attributes (O_TRUNC), the flush engine, the reclaimer (a removed file's last close),
    and the pending creates, which it calls at three points: create (defer?), read (send
    first?) and release (forget a failed create?)."""

    def __init__(
        self,
        meta: Meta,
        cache: MetadataCache,
        table: HandleTable,
        names: Names,
        attributes: Attributes,
        engine: FlushEngine,
        reclaimer: Reclaimer,
        pending: PendingCreates,
        *,
        dirty_limit: int,
        behind_limit: int,
        held: HeldFiles | None = None,
        answers_eio: bool = True,
    ) -> None:
        self.meta = meta
        self.cache = cache
        self.table = table
        self.names = names
        self.attributes = attributes
        self.engine = engine
        self.reclaimer = reclaimer
        self.pending = pending
        self.bs = meta.bs
        self.fetcher = engine.fetcher
        self.dirty_limit = dirty_limit
        #: Buffered bytes of a sequentially written file at which a write waits for the
        #: background flush; 0: no write-behind of big files (every flush in the write).
        self.behind_limit = behind_limit
        #: Whether a flush that fails for want of the cluster is answered EIO (a ``soft``
        #: mount): the file's held-back work is then dropped (:meth:`_unsent`, docs/fs.md
        #: "What EIO means").  False on a ``hard`` mount, which tries the call again.
        self.answers_eio = answers_eio
        #: The files this mount holds exclusively (``fs/writeback/held.py``; None: leases or
        #: write-back are off).
        self.held = held

    def keep_cache(self, fh: int) -> bool:
        """Whether the kernel may keep its cached pages of this handle's file (FUSE
        ``keep_cache``), decided at open.

        Close-to-open as NFS does it: every open asks the servers, and the cached pages stay
        only if the file is the very version they were filled from.  A file's version
        counter ``v`` goes up with every update of it, so ``(d, v)`` names one content.
        The record moves only at an open (the kernel then drops its pages, or they are of
        that version) and at our own flushes, which the servers take only on the version
        the client wrote from (``v`` in ``fs.reserve``/``fs.write``); any other change,
        ours or another client's, leaves it behind and the next open drops the pages.
        """
        return fh in self.table.cache_current

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
        """Create and open a regular file; deferred when the rules of write-behind allow
        (:meth:`PendingCreates.create`), else synchronous (:meth:`_create_now`).

        ``known_missing``: the servers said just now that the name is missing (the
        kernel's lookup in this very call).  A create on a name the kernel had cached as
        missing is synchronous: another client may have made it, and the open must then
        read that file (the kernel reads nothing past the size a create answered)."""
        if known_missing and self.pending.may_defer(parent, name, flags):
            return await self.pending.create(parent, name, mode, uid, gid, flags)
        self.pending.created_now(parent)
        return await self._create_now(parent, name, mode, uid, gid, flags)

    async def _create_now(
        self, parent: int, name: bytes, mode: int, uid: int, gid: int, flags: int
    ) -> tuple[int, Attr]:
        """Create a regular file and open it: one two-object update, no further round trip.

        Raises:
            Exists: the name exists and ``flags`` has ``O_EXCL``.
            StaleView: the name exists and ``flags`` has no ``O_EXCL``: the caller decided
                to create on a view that is out of date (the kernel, on a cached negative
                entry or a lookup another client's create overtook).  ``open(O_CREAT)``
                must then open the existing file - after the kernel's own checks of it
                (permissions, symbolic links, O_TRUNC) - so the kernel is told to look
                again rather than answered EEXIST.
        """
        for _ in range(MAX_ATTEMPTS):
            try:
                started = self.meta.now()
                writable = flags & os.O_ACCMODE != os.O_RDONLY
                a = await self.names.mknod(
                    parent, name, st.S_IFREG | (mode & 0o7777), 0, uid, gid, lease=writable
                )
                break
            except Exists:
                if flags & os.O_EXCL:
                    raise
            try:
                opened = await self.open_existing(parent, name, uid, gid, flags)
            except NotFound:  # removed again meanwhile: create it after all
                continue
            if opened is None:
                raise StaleView(f"{name!r} exists: created since this client looked")
            return opened
        else:
            raise StaleView(f"{name!r} keeps being created and removed")
        s = self.cache.own[a.ino][0]
        self.cache.kernel_saw(a.ino, s)  # a new inode: the kernel holds no pages of it
        f = self.cache.files[a.ino] = OpenFile.from_stat(a.ino, s, self.bs)
        if writable:
            f.lease_until = started + LEASE_NS
        return self.table.new_handle(f, flags), a

    async def open_existing(
        self, parent: int, name: bytes, uid: int, gid: int, flags: int
    ) -> tuple[int, Attr] | None:
        """``open(O_CREAT)`` without ``O_EXCL`` of a name another client created since the
        kernel looked: open that file, as an NFS server's unchecked CREATE does, when the
        kernel's own checks of an existing file could not refuse it - a regular file the
        caller may open so by its mode bits (the kernel skips them for a file it thinks it
        created; O_TRUNC is then ours too).  Otherwise None: the caller answers ESTALE and
        the kernel looks again and checks (two clients creating and removing one name kept
        making that second look fail too, and ESTALE reached applications).

        Raises:
            NotFound: the name is gone again.
        """
        oid, code = await self.cache.entry(parent, name, fresh=True)
        if code != st.S_IFREG >> 12:
            return None
        s = await self.meta.query(oid, "fs.stat")
        if s["nl"] == 0:
            raise NotFound(f"{name!r} removed again")
        if not _may_open(s, uid, gid, flags):
            return None
        try:
            fh = await self.open_file(oid, flags, reached_by_name=True)
        except StaleView:
            raise NotFound(f"{name!r} removed again") from None
        f, _ = self.table.handles[fh]
        return fh, self.cache.attr(oid, f.st)

    async def open_file(
        self, ino: int, flags: int, *, reached_by_name: bool = False, looked_up: bool = False
    ) -> int:
        """Open ``ino``: re-read its attributes (close-to-open consistency); O_TRUNC
        truncates (and its update's answer is the fresh attributes, so no further round),
        O_APPEND makes every write of this handle go to the end.  ``reached_by_name``: as
        for :meth:`getattr`.  ``looked_up``: the caller found ``ino`` by its name in this
        very call (the kernel's lookup right before this open): a removal by another client
        since then is ordered after the open, as a local file system orders an open that
        raced an unlink, and the removed file is opened instead of refused."""
        if looked_up:
            self.names.used_after_lookup(ino)
        reached_by_name = reached_by_name and not looked_up
        truncating = bool(flags & os.O_TRUNC and flags & (os.O_WRONLY | os.O_RDWR))
        f = self.cache.files.get(ino)
        if f is not None and not truncating and self.pending.reopen_deferred(ino):
            current = self.cache.kernel_saw_at(ino, f.base)  # new, not sent: all is here
            return self.table.new_handle(f, flags, pages_current=current)
        kept = self.held.reopen(ino) if self.held is not None and not truncating else None
        if kept is not None:
            current = self.cache.kernel_saw_at(ino, kept.base)  # leased here alone: all here
            return self.table.new_handle(kept, flags, pages_current=current)
        if f is not None and f.buffered:
            await self._flush_file(f)
        asked = trio.current_time()
        if truncating:
            s = await self.attributes.truncate(ino, 0, None, reached_by_name=reached_by_name)
        else:
            s = await self.meta.query(ino, "fs.open")
            self.cache.observed(ino, s)
            if s["k"] == "d":
                raise IsDir()
            if reached_by_name:
                self.names.check_reached(ino, s)
        f = self.cache.files.get(ino)
        if f is None:
            f = self.cache.files[ino] = OpenFile.from_stat(ino, s, self.bs)
        else:
            f.reset(s)
        f.adopted = asked
        return self.table.new_handle(f, flags, pages_current=self.cache.kernel_saw(ino, s))

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (short only at end of file; holes are zeros).

        A read through a pending file's handle sends its create first: if another client
        made the name meanwhile (the kernel decided to create on a name it had cached as
        missing), the read must see that file, as after a synchronous create.  Unless the
        create cannot meet such a name (:meth:`PendingCreates.sure_to_be_made`): then what
        the mount holds is the file."""
        return (await self._fetched(fh, offset, size)).assemble(offset, size)

    async def read_reply(self, fh: int, offset: int, size: int) -> bytes | memoryview:
        """:meth:`read` for a FUSE reply: a read inside one clean block is answered with a
        view of it (:meth:`OpenFile.reply`; valid until the caller's next ``await``)."""
        return (await self._fetched(fh, offset, size)).reply(offset, size)

    async def _fetched(self, fh: int, offset: int, size: int) -> OpenFile:
        """The file of ``fh`` with the blocks of ``[offset, offset + size)`` cached."""
        f, _ = self.table.handle(fh)
        if self.pending.not_made(f.ino) and not self.pending.sure_to_be_made(f.ino):
            await self.pending.made_file(f)
        f, _ = self.table.handle(fh)
        if offset < 0 or size < 0:
            raise Invalid("negative offset or size")
        if self.fetcher.readahead_max:
            await self.fetcher.read_ahead(f, offset, size)
            need = f.blocks_to_fetch(offset, size, 0)
        else:
            need = f.blocks_to_fetch(offset, size, self.fetcher.readahead)
        if need:
            await self.fetcher.fetch(f, need)
        return f

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        """Buffer ``data`` at ``offset`` (at the end for O_APPEND handles); flushes when the
        file's dirty data passes ``dirty_limit``: in the background when the writes are
        sequential (write-behind, ``behind_limit`` > 0; a write waits only while the
        buffered bytes are past ``behind_limit``), else before returning.  An error of a
        background flush is raised here (the data it did not send stays buffered)."""
        f, flags = self.table.handle(fh)
        if f.behind_error is not None:
            async with self._unsent(f, fh):  # answered EIO: what it held back is dropped
                await behind_done(f, report=True)
        if flags & os.O_APPEND:
            offset = f.size
            self.cache.kernel_content.pop(f.ino, None)  # direct: its pages may not follow
        if offset < 0:
            raise Invalid("negative offset")
        if not data:
            return 0
        if offset + len(data) > obj.MAX_SIZE:
            raise TooBig("file size limit")
        need = f.blocks_to_read_for_write(offset, len(data))
        if need:
            await self.fetcher.fetch(f, need)
            if flags & os.O_APPEND and offset != f.size:  # the file grew meanwhile
                offset = f.size
            need = f.blocks_to_read_for_write(offset, len(data))
            if need:
                await self.fetcher.fetch(f, need)
        sequential = offset == f.last_write or (offset == 0 and f.last_write < 0)
        f.apply_write(offset, data, self.meta.now())
        f.log.record(offset, data, bool(flags & os.O_APPEND))
        if sequential and self.behind_limit:
            # Blocks this write filled are encoded now, while the flush in progress runs.
            for k in range(offset // f.bs, (offset + len(data)) // f.bs):
                self.engine.encode_ahead(f, k)
        if f.dirty_bytes > self.dirty_limit:
            if self.behind_limit and sequential:
                flush_behind(f, self._flush_file, self.engine.streaming, self.engine.spawn)
                limit = self.engine.pace.limit(self.behind_limit)  # (up to behind_max: pace.py)
                while f.behind is not None and f.dirty_bytes > limit:
                    await f.behind.wait()  # backpressure
                    if f.behind_error is not None:
                        break  # buffered; the error is reported at the next call
                    if f.dirty_bytes > self.dirty_limit:
                        flush_behind(f, self._flush_file, self.engine.streaming, self.engine.spawn)
            else:
                await behind_done(f, report=False)
                async with self._unsent(f, fh):
                    await self._flush_file(f)
        return len(data)

    async def flush(self, fh: int, *, durable: bool = False) -> None:
        """Make this file's buffered writes durable: blocks, then size and mtime.  Waits
        for a background flush first and reports its error (after sending what is still
        buffered: the error says an earlier write may not have reached the servers).  A
        close (not ``durable``) of a small new file in a directory leased here exclusively
        leaves its create to write-back (``fs/writeback/``; at its bound: ``room.py``)."""
        f, _ = self.table.handle(fh)
        if fh in f.dropped_for:
            f.dropped_for.discard(fh)
            raise Unavailable(f"writes of file {f.ino} were dropped: another call answered EIO")
        await self._sync(f, durable=durable, fh=fh)

    async def _sync(self, f: OpenFile, *, durable: bool = True, fh: int | None = None) -> None:
        """Wait for the background flush, flush what is buffered, then raise the
        background flush's error if it failed (never lost silently)."""
        await behind_done(f, report=False)
        failed, f.behind_error = f.behind_error, None
        f.invalidate_prefetch()
        if failed is not None or durable or not self._may_defer(f):
            async with self._unsent(f, fh):
                await self._flush_file(f)
        if failed is not None and not isinstance(failed, Unavailable):
            raise failed
        # (A background flush that found no quorum kept its bytes buffered: the flush
        # just made stored them, so nothing is lost and nothing is answered.)

    @asynccontextmanager
    async def _unsent(self, f: OpenFile, fh: int | None = None) -> AsyncIterator[None]:
        """A flush of ``f`` answering the program: when it fails for want of the cluster
        and that is answered EIO (:attr:`answers_eio`), what it held back is dropped -
        its pending create and its buffered writes - so that EIO means not applied and
        nothing sends it later (issue 60, item 13: a close answered EIO, and the bytes
        appeared once the nodes were back; a program retrying appended twice).  ``fh``:
        the handle of the call; the file's other handles are told once (``dropped_for``)."""
        try:
            yield
        except Unavailable as e:
            if self.answers_eio:
                self._drop_unsent(f, e, fh)
            raise

    def _drop_unsent(self, f: OpenFile, e: Unavailable, fh: int | None) -> None:
        p = self.pending.creates.pending_of(f.ino)
        if p is not None:
            self.pending.sends.give_up(p, e)
        if f.buffered:
            log.warning("writes of file %d dropped: answered %s", f.ino, e)
            f.discard_buffered()
            self.cache.kernel_content.pop(f.ino, None)  # the kernel's pages: dropped at open
            others = {h for h, (g, _) in self.table.handles.items() if g is f and h != fh}
            f.dropped_for |= others

    def _may_defer(self, f: OpenFile) -> bool:
        """Whether a close may leave ``f``'s writes for later (write-back, or held: held.py)."""
        if self.pending.defers(f):
            return True
        if self.held is None or not f.buffered or self.pending.not_made(f.ino):
            return False
        if self.held.defer(f):
            return True
        self.held.want(f)  # closes that send at once: after a few, lease it alone
        return False

    async def _flush_file(self, f: OpenFile) -> None:
        """Flush ``f``: its pending create first, if it has one (with the content, when
        small: :meth:`PendingCreates.made_file`), then the flush engine on the file the
        writes are in (``f``, or another client's file under the name)."""
        await self.engine.flush(await self.pending.made_file(f))

    async def fsync(self, fh: int) -> None:
        await self.flush(fh, durable=True)

    async def revalidate(self, fh: int) -> None:
        """Adopt the servers' current state of the handle's file, as :meth:`open_file` does
        (what this mount buffered goes first): called once a lock is taken, so that what
        another mount wrote before it unlocked is what reads see (POSIX locks coordinate
        data; NFS revalidates at a lock the same way).  Clean blocks stay if the file did
        not change."""
        f, _ = self.table.handle(fh)
        if f.buffered:
            await self._flush_file(f)
        asked = trio.current_time()
        s = await self.meta.query(f.ino, "fs.open")
        self.cache.observed(f.ino, s)
        f.reset(s)
        f.adopted = asked

    async def release(self, fh: int) -> None:
        """Close a handle (flushing); the file's clean blocks stay cached for a re-open,
        which keeps them only if the file did not change meanwhile.  The last close of a
        file whose writes the servers refused for space or quota drops them
        (:meth:`MetadataCache.drop_refused_writes`).  A file whose create failed or moved
        is forgotten at its last close (:meth:`PendingCreates.closed`)."""
        f, _ = self.table.handle(fh)
        ino = f.ino
        alias = self.pending.aliases_of(f)
        try:
            await self._release(fh)
        finally:
            if f.opens == 0:
                self.pending.closed(f, ino, alias)

    async def _release(self, fh: int) -> None:
        f, _ = self.table.handle(fh)
        try:
            await self._sync(f, durable=False, fh=fh)
            if f.lease_until is not None and f.opens == 1 and not f.buffered:
                # Created, never written (a held file's writes left for later use it).
                f.lease_until = None
                await self.engine.unlock(f)
        except NoSpace:
            if f.opens == 1:
                self.cache.drop_refused_writes(f)
            raise
        finally:
            del self.table.handles[fh]
            self.table.cache_current.discard(fh)
            f.dropped_for.discard(fh)
            f.opens -= 1
            if f.opens == 0 and not f.dirty and not stays(f, self.held, self.pending):
                self.cache.files.pop(f.ino, None)
        if f.opens == 0:
            await self.reclaimer.released(f.ino)
