"""Sending one pending create (write-behind, :mod:`bftfs.fs.writeback.creates`): the update that
makes it, and what a send finds when it is not the first - another client's file under
the name (collided: open that file and move the writes onto it), or an earlier send of its
own that a later round completed (made before), or a refusal for space that was
nevertheless established (settled made).  The rules are in the docstring of
:mod:`bftfs.fs.writeback.creates`; this module is the mechanism.
"""

from __future__ import annotations

import logging
import os
import stat as st
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from bftfs.fs.caches import MetadataCache, content_version
from bftfs.fs.clients import LEASE_NS, MAX_ATTEMPTS, IdTaken, Meta
from bftfs.fs.errors import Exists, FsError, NoSpace, NotFound, Unavailable
from bftfs.fs.files import Attr, OpenFile
from bftfs.fs.files.flush import FlushEngine
from bftfs.fs.files.table import HandleTable
from bftfs.fsobjects.leases import INHERIT
from bftfs.outcome import ClusterUnavailable

log = logging.getLogger(__name__)

#: Object ids of created files that turned out to collide, or whose create failed for
#: good, kept to answer ESTALE (the kernel then looks the name up again); forgetting one
#: only turns that into ENOENT.
MOVED_LIMIT = 10_000

#: Opening another client's file found under a pending create's name, as a synchronous
#: create would (``Handles.open_existing``, given by the file system): ``(parent, name,
#: uid, gid, flags)`` -> its handle and attributes, or None when it may not be opened so;
#: raises ``NotFound`` when the name is gone again.  The one thing a send needs from a
#: part above it, so it is declared here and given, not imported.
OpenExisting = Callable[[int, bytes, int, int, int], Awaitable[tuple[int, Attr] | None]]


@dataclass(eq=False)
class PendingCreate:
    """A create answered to the kernel but not sent yet (see the module docstring)."""

    parent: int
    name: bytes
    oid: int
    #: ``fs.create``'s argument (regular file, no lease).
    arg: dict[str, Any]
    uid: int
    gid: int
    flags: int
    #: The task sending it (None: not being sent).
    sender: trio.lowlevel.Task | None = None
    done: trio.Event = field(default_factory=trio.Event)
    #: Sends that failed for want of a quorum, and when (trio time) a call on the
    #: directory sends it again (:data:`RESEND_FIRST`).
    failures: int = 0
    resend_at: float = 0.0
    #: When (trio time) its file's last close left it to write-back (-inf: never): a
    #: reader's publication makes a file closed longer than ``CLOSED_IDLE`` ago without
    #: this mount's lease (``CreateSends.send_deferred``).
    closed_at: float = float("-inf")


class CreateSender:
    """Makes a pending create on the servers (:meth:`send_now`).  Given the protocol calls,
    the cache, the handle table, the flush engine, how to open another client's file as a
    synchronous create would (:data:`OpenExisting`) and the pending creates' record of
    moved files."""

    def __init__(
        self,
        meta: Meta,
        cache: MetadataCache,
        table: HandleTable,
        engine: FlushEngine,
        open_existing: OpenExisting,
        moved: dict[int, OpenFile],
        made_parent: Callable[[int], Awaitable[None]],
    ) -> None:
        """``made_parent``: sends the mkdir of a directory and the renames in it if they
        wait in write-back (``fs/writeback/mkdirs.py``, ``fs/writeback/renames.py``): a
        create in it goes after them, and is not gated."""
        self.meta = meta
        self.cache = cache
        self.table = table
        self.engine = engine
        self._open_existing = open_existing
        self.inline = cache.inline
        self.lease_token = meta.lease_token
        #: (``CreateTable.moved_files``: a create that met another client's file -> that file)
        self._moved = moved
        self._made_parent = made_parent

    async def send_now(self, p: PendingCreate) -> None:
        """One update making ``p``; on a name another client made meanwhile, open that
        file instead (:meth:`collided`)."""
        await self._made_parent(p.parent)
        for _ in range(MAX_ATTEMPTS):
            f = self.cache.files.get(p.oid)
            try:
                if f is not None and f.size <= self.inline:
                    await self._create_with_content(p, f)
                else:
                    await self._create_plain(p, f)
                return
            except Exists:
                if await self.collided(p, f):
                    return
            except IdTaken:
                if await self._made_before(p, f):
                    return
                raise FsError("a new object id was taken (drawn twice?)") from None
            except NoSpace:
                # More than b nodes refused it; the others may have taken it, enough of
                # them for any client's next round to complete it (with the data it
                # carried).  Settled now: made (established) or not, never later.
                if await self._settled_made(p, f):
                    return
                raise
        raise Exists(f"{p.name!r} keeps being created and removed by other clients")

    async def _settled_made(self, p: PendingCreate, f: OpenFile | None) -> bool:
        """After a send of ``p`` refused for space: whether it was made nevertheless.

        Nodes judge space and quota each alone, so near a limit some may take what more
        than ``b`` others refuse.  Taken by enough of them, any client's next round
        completed it: the file appeared later on every mount with the data whose close
        had said EDQUOT.  A repair round (:meth:`QUClient.settle`) decides it now - made,
        with the data the send carried, or abandoned for good - and the lookup says which.
        """
        try:
            await self.meta.qu.settle([p.parent, p.oid])
            return await self._made_before(p, f)
        except (Unavailable, ClusterUnavailable):
            return False  # no answer now: as the servers said (a later round may decide)

    async def _made_before(self, p: PendingCreate, f: OpenFile | None) -> bool:
        """Whether an earlier send of ``p`` made it, and if so take it as made.

        A send that reached fewer than ``q`` nodes (an outage beyond ``t``) failed here,
        and ``p`` stayed pending; but the nodes that took it keep it as a candidate, and
        any client's later round repairs it to completion.  Sent again, ``p`` then finds
        its own object id taken (issue 31, item 5: the file answered EIO here for good).
        The directory's entry ``p.name`` naming that id, a regular file, shows it is
        ``p``'s (ids are 63-bit random draws of this mount).  The file's buffered writes
        are re-applied on whatever that earlier send left (as on another client's new
        content) and go out with the next flush, as they would have."""
        arg = {"p": p.parent, "o": p.oid, "name": p.name}
        try:
            got = await self.meta.query_now([p.parent, p.oid], "fs.lookupstat", arg)
        except NotFound:
            return False
        s = got["s"]
        if got["e"][0] != p.oid or s is None or s["k"] != "f" or not st.S_ISREG(s["mode"]):
            return False
        opened = await self.meta.query_now(p.oid, "fs.open")
        if self.cache.kernel_content.get(p.oid) == (p.arg["d"], 0):
            self.cache.kernel_content[p.oid] = content_version(opened)
        self.cache.observed(p.oid, opened)
        self.cache.learn(p.parent, p.name, p.oid, st.S_IFREG >> 12)
        if f is not None:
            await self.engine.adopt(f, opened)
        log.info("create of %r: an earlier send had made it", p.name)
        return True

    async def _create_with_content(self, p: PendingCreate, f: OpenFile) -> None:
        """``fs.createwrite``: the entry, the attribute object and its content at once
        (the bookkeeping after it is :meth:`FlushEngine._flush_inline`'s)."""
        arg, sent = self._with_content(p, f)
        inherit = self._inherit(p.parent, arg)
        child, pst = await self.meta.update_now([p.parent, p.oid], "fs.createwrite", arg)
        self._inherited(inherit, p.parent, [p.oid])
        self._made_with_content(p, f, child, pst, sent)

    def _inherit(self, parent: int, arg: dict[str, Any]) -> float | None:
        """Ask, in a create's ``arg``, that its new files come leased to this mount, when it
        holds ``parent`` exclusively (``fs/writeback/held.py``); when it asked (trio time),
        or None."""
        leases = self.meta.leases
        if leases is None or leases.exclusive_left(parent) <= 0:
            return None
        arg[INHERIT] = 1
        return trio.current_time()

    def _inherited(self, asked: float | None, parent: int, oids: list[int]) -> None:
        """The create asked at ``asked`` made ``oids``: held here with the directory's
        lease, and unseen while that holding lasts (``leases/unseen.py``)."""
        if asked is not None and self.meta.leases is not None:
            self.meta.leases.inherit(parent, oids, asked=asked)

    async def send_many(self, ps: list[PendingCreate], *, inherit: bool = True) -> None:
        """``fs.createmany``: several files of one directory in one update (directory
        write-back, ``fs/writeback/schedule.py``), a small one with its content, a bigger one
        empty and with the write lease, so that its blocks (written next, by the caller:
        ``CreateSends._write_back_closed``) need no ``fs.lock``; all made, or none (the
        caller then sends each alone, where every special case is handled).  ``inherit``
        False: made without this mount's lease even where it holds the directory (files
        handed to a reader as they go, ``CreateSends.send_deferred``)."""
        parent = ps[0].parent
        await self._made_parent(parent)
        files = [self.cache.files[p.oid] for p in ps]
        made = [self._item(p, f) for p, f in zip(ps, files, strict=True)]
        items = [{k: v for k, v in arg.items() if k != "p"} for arg, _ in made]
        arg = {"p": parent, "now": max(item["now"] for item in items), "files": items}
        asked = self._inherit(parent, arg) if inherit else None
        stats, pst = await self.meta.update_now(
            [parent, *(p.oid for p in ps)], "fs.createmany", arg
        )
        self._inherited(asked, parent, [p.oid for p in ps])
        for p, f, child, (_, sent) in zip(ps, files, stats, made, strict=True):
            if sent is None:
                self._made(p, child, pst)
                f.lease_until = p.arg["now"] + LEASE_NS
            else:
                self._made_with_content(p, f, child, pst, sent)

    def _item(self, p: PendingCreate, f: OpenFile) -> tuple[dict[str, Any], tuple | None]:
        """``p``'s item of an ``fs.createmany``, and what :meth:`_made_with_content` needs
        once it is made (None: a file past the inline limit, made empty with the lease)."""
        if f.size <= self.inline:
            return self._with_content(p, f)
        return dict(p.arg, tok=self.lease_token, lease=LEASE_NS), None

    def _with_content(self, p: PendingCreate, f: OpenFile) -> tuple[dict[str, Any], tuple]:
        """``fs.createwrite``'s argument for ``p`` with ``f``'s content, and what
        :meth:`_made_with_content` needs once it is made."""
        logged = len(f.log)
        content = f.assemble(0, f.size).ljust(f.size, b"\0")
        snapshot = {k: (bytes(buf), f.gen[k]) for k, buf in f.dirty.items()}
        mtime = f.mtime if f.mtime is not None else p.arg["now"]
        attrs = dict(f.attrs)
        arg = dict(p.arg, i=content, mtime=mtime, attrs=attrs)
        return arg, (logged, content, snapshot, mtime, attrs)

    def _made_with_content(
        self, p: PendingCreate, f: OpenFile, child: dict[str, Any], pst: dict[str, Any], sent: tuple
    ) -> None:
        logged, content, snapshot, mtime, attrs = sent
        self._made(p, child, pst)
        f.base = content_version(child)
        self.engine.flushed(f, snapshot, mtime, attrs)
        f.log.sent(logged)
        if 0 not in f.dirty:
            f.remember(0, content)

    async def _create_plain(self, p: PendingCreate, f: OpenFile | None) -> None:
        """``fs.create`` with the write lease (the ordinary flush follows), as a
        synchronous create does: a file grown past the inline limit before its first flush."""
        arg = dict(p.arg)
        writable = f is not None and p.flags & os.O_ACCMODE != os.O_RDONLY
        if writable:
            arg.update(tok=self.lease_token, lease=LEASE_NS)
        inherit = self._inherit(p.parent, arg)
        child, pst = await self.meta.update_now([p.parent, p.oid], "fs.create", arg)
        self._inherited(inherit, p.parent, [p.oid])
        self._made(p, child, pst)
        if f is not None and writable:
            f.lease_until = p.arg["now"] + LEASE_NS

    def _made(self, p: PendingCreate, child: dict[str, Any], pst: dict[str, Any]) -> None:
        """The servers made ``p``: their answers become this mount's state."""
        if self.cache.kernel_content.get(p.oid) == (p.arg["d"], 0):
            self.cache.kernel_content[p.oid] = content_version(child)
        self.cache.own_stat(p.oid, child)
        self.cache.own_stat(p.parent, pst)
        self.cache.learn(p.parent, p.name, p.oid, st.S_IFREG >> 12)

    async def collided(self, p: PendingCreate, f: OpenFile | None) -> bool:
        """Another client made ``p``'s name before it was sent: open that file as a
        synchronous create would (:data:`OpenExisting`) and move this file's
        buffered writes and handles onto it.  False: the name is gone again (retry).

        Raises:
            Exists: the existing file may not be opened so (the kernel would have
                checked it, not this mount): the flush and close fail with EEXIST.
        """
        try:
            opened = await self._open_existing(p.parent, p.name, p.uid, p.gid, p.flags)
        except NotFound:
            return False
        if opened is None:
            raise Exists(f"{p.name!r} was made by another client before this create was sent")
        fh, _ = opened
        g, _ = self.table.handles.pop(fh)
        g.opens -= 1
        self.table.cache_current.discard(fh)
        if f is not None:
            await self._move_writes(f, g)
        if len(self._moved) > MOVED_LIMIT:
            self._moved.clear()
        self._moved[p.oid] = g
        self.cache.forget(p.parent, p.name)
        return True

    async def _move_writes(self, f: OpenFile, g: OpenFile) -> None:
        """Re-apply ``f``'s buffered writes and held-back attributes on ``g`` (as a flush
        re-applies them on another client's new content) and turn ``f``'s handles into
        handles of ``g``."""
        mtime = f.mtime if f.mtime is not None else self.meta.now()
        for offset, data, appended in f.log:
            if appended:
                offset = g.size
            need = g.blocks_to_read_for_write(offset, len(data))
            if need:
                await self.engine.fetch(g, need)
            g.apply_write(offset, data, mtime)
            g.log.record(offset, data, appended)
        g.attrs.update(f.attrs)
        for fh, (h, flags) in list(self.table.handles.items()):
            if h is f:
                self.table.handles[fh] = (g, flags)
                self.table.cache_current.discard(fh)
                g.opens += 1
                f.opens -= 1
        self.cache.files[f.ino] = g  # fstat of the handles answers the file they write
