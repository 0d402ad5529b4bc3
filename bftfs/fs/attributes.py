"""Attributes: setattr (chmod, chown, utimens, truncation) and extended attributes.

A truncation is its own small protocol - flush, then a fresh data id (to zero), a lower
size (down), or cleared leftovers under the write lease before a higher size (up) - so it
lives here with the gap clearing it needs; attribute changes of a file with buffered state
join that state and go with its next flush (:meth:`Attributes.setattr`).
"""

from __future__ import annotations

import math
import stat as st
from typing import Any, cast

import trio

from bftfs import fsobjects as obj
from bftfs.fs.caches import MetadataCache
from bftfs.fs.clients import FLUSH_ATTEMPTS, LEASE_NS, LeaseHeld, Meta, OutOfDate
from bftfs.fs.errors import FsError, Invalid, IsDir, NoAttr, TooBig
from bftfs.fs.files.attr import Attr
from bftfs.fs.files.flush import FlushEngine
from bftfs.fs.files.openfile import OpenFile, initial_reserve
from bftfs.fs.files.reclaim import Reclaimer, dead_contents
from bftfs.fs.files.table import HandleTable
from bftfs.fs.names import Names
from bftfs.fs.names.held import held_here, own_made_dir
from bftfs.fs.writeback import PendingCreates
from bftfs.rw.messages import block_id


class Attributes:
    """setattr, truncation and extended attributes.  Given the protocol calls, the cache,
    the handle table (a change through a handle), the names (a change reached by a name
    is checked), the flush engine and the pending creates (a truncation flushes first)
    and the reclaimer."""

    def __init__(
        self,
        meta: Meta,
        cache: MetadataCache,
        table: HandleTable,
        names: Names,
        engine: FlushEngine,
        reclaimer: Reclaimer,
        pending: PendingCreates,
    ) -> None:
        self.meta = meta
        self.cache = cache
        self.table = table
        self.names = names
        self.engine = engine
        self.reclaimer = reclaimer
        self.pending = pending
        self.bs = meta.bs
        self.inline = cache.inline
        self.lease_token = meta.lease_token

    # Attributes ----------------------------------------------------------------------------

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
        """chmod/chown/utimens in one update; a size change truncates (see :meth:`truncate`).

        ``reached_by_name``: as for :meth:`getattr` (``truncate``, ``chmod`` by path): a
        removed object is refused (ESTALE) unless it is open here, so the kernel walks the
        path again and changes the file the name leads to now.  Without this a truncation
        through a name another client had renamed a file over went to the removed file and
        was lost (the consistency checker, seed 12).

        Write-back of attributes: while a regular file has buffered state here (dirty data,
        a pending mtime) or the change comes through an open handle ``fh``, chmod/chown/
        utimens join that state and the next flush (close, fsync) sends them with the data
        in its one update - other clients see them when they see the data (close-to-open).
        This is what ``cp -a`` (futimens, fchmod after writing) and the kernel's writeback
        cache (an mtime through the handle before every flush) do per file; each was an
        update of its own.  So do those of a file whose create still waits in the mount,
        open or closed (``cp -p`` sets an empty file's times and mode through its
        descriptor, which FUSE does not name; ``tar x`` and ``shutil.copy2`` by its name
        after closing it): the create carries them.  An mtime alone that the servers
        already hold (fresh attributes) is a no-op: the kernel repeats it when it writes
        the inode back.

        Times must be within ``[objects.MIN_TIME, objects.MAX_TIME]`` (ext4's range, 1901 to
        2446), else Invalid - checked here, before a held-back time could fail a flush.
        """
        for t in (atime_ns, mtime_ns):
            if t is not None and not obj.MIN_TIME <= t <= obj.MAX_TIME:
                raise Invalid("time outside 1901-12-13 .. 2446-05-10")
        f = self.cache.files.get(ino)
        by_name = reached_by_name and fh is None and not (f is not None and f.opens)
        if size is not None:
            await self.truncate(ino, size, mtime_ns, reached_by_name=by_name)
        if mode is None and uid is None and gid is None and atime_ns is None and mtime_ns is None:
            return await self.names.getattr(ino)
        handle = self.table.handles.get(fh) if fh is not None else None
        through_handle = handle is not None and handle[0] is f
        held_back = f is not None and self.pending.unsent(ino)
        if size is None and f is not None and (f.buffered or through_handle or held_back):
            changes = {"mode": mode, "uid": uid, "gid": gid, "atime": atime_ns}
            f.attrs.update({k: v for k, v in changes.items() if v is not None})
            if mtime_ns is not None:
                f.mtime = mtime_ns
            return self.cache.attr(ino, f.st)
        wanted = {"mode": mode, "uid": uid, "gid": gid, "atime": atime_ns, "mtime": mtime_ns}
        held = None if size is not None else self._hold_dir_change(ino, wanted)
        if held is not None:
            return held
        if mode is None and uid is None and gid is None and atime_ns is None and size is None:
            fresh = self.cache.fresh(ino)
            pending = self.cache.files[ino].mtime if ino in self.cache.files else None
            if fresh is not None and fresh["mt"] == mtime_ns and pending in (None, mtime_ns):
                return self.cache.attr(ino, fresh)
        arg = {
            "mode": mode,
            "uid": uid,
            "gid": gid,
            "atime": atime_ns,
            "mtime": mtime_ns,
            "now": self.meta.now(),
        }
        s = await self.meta.update([ino], "fs.setattr", arg)
        self.cache.own_stat(ino, s)
        if by_name:  # changed a removed object (harmless): change the named one instead
            self.names.check_reached(ino, s)
        f = self.cache.files.get(ino)
        if f is not None and mtime_ns is not None:
            f.mtime = None  # an explicit mtime wins over buffered writes' times
        return self.cache.attr(ino, s)

    def _hold_dir_change(self, ino: int, wanted: dict[str, int | None]) -> Attr | None:
        """Answer a chmod, chown or utimens of directory ``ino`` here and hold it back
        with the directory's entries (``fs/writeback/dirattrs.py``), when this mount holds
        the directory exclusively and knows its attributes; else None (it is sent now)."""
        unlinks = self.pending.unlinks
        if unlinks is None:
            return None
        base = self._known_here(ino)
        if base is None or base["k"] != "d":
            return None
        changes = {k: v for k, v in wanted.items() if v is not None}
        if "mode" in changes:
            changes["mode"] &= 0o7777
        if not unlinks.dir_attrs.hold(ino, base, changes):
            return None
        return self.cache.attr(ino, base)

    def _known_here(self, ino: int) -> dict[str, Any] | None:
        """Attributes of ``ino`` that are its own now, known without a round: a create or
        mkdir this mount has not sent, its own update's within the attribute timeout, a
        directory it made and holds; else None."""
        return (
            self.cache.local_stat(ino)
            or self.cache.fresh(ino)
            or own_made_dir(self.cache, self.meta.leases, ino)
        )

    async def truncate(
        self, ino: int, size: int, mtime_ns: int | None, *, reached_by_name: bool = False
    ) -> dict[str, Any]:
        """Truncate to ``size``: flush buffered writes, then (to zero) switch to a fresh data
        id, (down) lower the size, (up) clear possible leftovers in ``[size, alloc)`` and then
        raise the size.  The size update comes last in every case.  Returns the file's
        stat after it (without inline content, which after a truncation to zero is empty)."""
        if size > obj.MAX_SIZE:
            raise TooBig("file size limit")
        f = self.cache.files.get(ino)
        if f is not None:
            await self.engine.flush(await self.pending.made_file(f))
        lock = f.lock if f is not None else trio.Lock()
        async with lock:
            for attempt in range(FLUSH_ATTEMPTS):
                s = before = await self.meta.query(ino, "fs.open")
                if s["k"] == "d":
                    raise IsDir()
                if reached_by_name:
                    self.names.check_reached(ino, s)
                if not st.S_ISREG(s["mode"]):
                    raise Invalid("not a regular file")
                arg: dict[str, Any] = {"size": size, "mtime": mtime_ns, "now": self.meta.now()}
                arg["tok"] = self.lease_token
                if size == 0:
                    arg.update(d=self.meta.new_oid(), alloc=initial_reserve(self.meta.bs))
                    if self.inline:
                        arg["i"] = b""
                else:
                    arg["d"] = s["d"]
                    if s["inl"] and size <= self.inline:
                        arg["i"] = s["i"][:size].ljust(size, b"\0")
                    elif s["inl"] or size > s["size"]:
                        # Leaving inline (block 0 gets the content) or growing: blocks
                        # are written, under the write lease like a flush's.
                        try:
                            bt = await self._locked_clear_gap(ino, s, size)
                        except (OutOfDate, LeaseHeld):
                            await self.meta.back_off(attempt)
                            continue
                        if s["inl"]:
                            arg["blocks"] = True
                        if bt:
                            arg["bt"] = bt
                try:
                    s = await self.meta.update([ino], "fs.setattr", arg)
                except (OutOfDate, LeaseHeld):
                    await self.meta.back_off(attempt)
                    continue
                if f is not None:
                    f.truncate_cache(size)
                self.cache.own_stat(ino, s)
                if size == 0:  # the old data id is gone
                    await self.reclaimer.reclaim(dead_contents(before, self.bs))
                return s
        raise FsError("truncate: file kept changing")

    async def _locked_clear_gap(self, ino: int, s: dict[str, Any], size: int) -> int:
        """Take the write lease on the version ``s`` and clear the gap up to ``size``
        (the size update that follows ends the lease; if that never comes, it expires);
        the newest block Time written (0: none)."""
        arg = self.engine.lease_arg(s["d"], s["v"])
        arg["lease"] = LEASE_NS
        # What may stay behind if this dies: block 0 with an inline content (zeros,
        # elsewhere, are harmless).
        arg["z"] = [[0, len(s["i"])]] if s["inl"] and s["i"] else []
        self.cache.own_stat(ino, await self.meta.update([ino], "fs.lock", arg))
        return await self._clear_gap(s, s["size"], size)

    async def _clear_gap(self, s: dict[str, Any], valid: int, new_size: int) -> int:
        """Write zeros over the stale blocks in ``[valid, min(new_size, alloc))`` (see
        files.OpenFile.gap_blocks: what the file records as possibly written there, not
        the whole gap); for an inline file (``s`` from ``fs.open``) block 0 gets its
        content first.  The newest block Time written (0: none), for the size update's
        ``bt``."""
        tmp = OpenFile.from_stat(0, s, self.bs)
        tmp.valid = valid
        blocks: dict[int, bytes] = {}
        if s["inl"]:
            blocks[0] = s["i"]
            tmp.dirty[0] = bytearray(s["i"])
        partial, empty = tmp.gap_blocks(new_size)
        after = s.get("bt", 0)
        newest = await self.meta.write_empty_blocks(s["d"], empty, after)
        if partial:
            got = await self.meta.blocks(
                self.meta.rw.read_blocks([block_id(s["d"], k) for k in partial])
            )
            for k in partial:  # (a bytearray as read: ``remember`` keeps it as it is)
                blocks[k] = tmp.remember(k, cast(bytes, got[block_id(s["d"], k)]))
        if not blocks:
            return newest
        written = await self.meta.blocks(
            self.meta.rw.write_blocks(
                {block_id(s["d"], k): v for k, v in blocks.items()}, after=after
            )
        )
        return max(newest, *(ts.time for ts in written.values()))

    # Extended attributes -------------------------------------------------------------------

    def known_xattrs(self, ino: int) -> frozenset[bytes] | None:
        """The names of ``ino``'s extended attributes when this mount knows them whole
        without a round, else None (issue 62: ``ls -l`` asks every file for
        ``security.selinux``, and each was a query).  Known from attributes that are the
        object's now: an open file's (close-to-open) or a file held here exclusively, a
        create or mkdir this mount has not sent (no server holds it: it has none), its own
        update's within the attribute timeout, a directory it made and holds, the servers'
        answer within it (:meth:`MetadataCache.no_xattrs_seen`); or from an
        answer kept under a lease on it (``LeasedAnswers.xattrs``): a stat saying it has
        none (``nx == 0``), an ``fs.listxattr``.  Changing them here (:meth:`setxattr`)
        forgets what was known."""
        if self.cache.no_xattrs_seen(ino):  # (first: the cheapest, and a listing's case)
            return frozenset()
        leases = self.meta.leases
        f = self.cache.files.get(ino)
        s = f.st if f is not None and (f.opens or held_here(leases, ino)) else None
        if s is None:
            s = self._known_here(ino)
        if s is not None and s.get("nx") == 0:
            return frozenset()
        if leases is not None and leases.remaining(ino, math.inf) > 0:
            return leases.answers.xattrs.get(ino)
        return None

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        """One query, unless the object's names are known here (:meth:`known_xattrs`) and
        ``name`` is not one of them: "no such attribute" at once, and nothing held back is
        sent for it (the query would first send the held-back creates it must follow)."""
        known = self.known_xattrs(ino)
        if known is not None and name not in known:
            self.meta.methods["known fs.getxattr"] += 1
            raise NoAttr()
        return await self.meta.query(ino, "fs.getxattr", name)

    async def listxattr(self, ino: int) -> list[bytes]:
        known = self.known_xattrs(ino)
        if known is not None:
            self.meta.methods["known fs.listxattr"] += 1
            return sorted(known)
        return list(await self.meta.query(ino, "fs.listxattr"))

    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        if len(value) > obj.XATTR_SIZE_MAX:  # the nodes allow a sealed value's overhead more
            raise TooBig()
        arg = {"name": name, "value": bytes(value), "flags": flags, "now": self.meta.now()}
        try:
            await self.meta.update([ino], "fs.setxattr", arg)
        finally:
            self._xattrs_changed(ino)

    async def removexattr(self, ino: int, name: bytes) -> None:
        try:
            await self.meta.update([ino], "fs.removexattr", {"name": name, "now": self.meta.now()})
        finally:
            self._xattrs_changed(ino)

    def _xattrs_changed(self, ino: int) -> None:
        """This mount changed (or may have changed) ``ino``'s extended attributes: the
        attributes it keeps of it no longer tell their number.  An open file's kept its
        ``nx`` before, and a ``getxattr`` of the name just set answered ENODATA while the
        file was open."""
        self.cache.own.pop(ino, None)
        self.cache.xattrs_changed_here(ino)
        f = self.cache.files.get(ino)
        if f is not None and f.st.get("nx") is not None:
            f.st = {**f.st, "nx": None}
