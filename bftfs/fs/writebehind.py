"""Create write-behind: a new file's create travels with its first flush as one update.

A created file cost three rounds: the kernel's lookup (a miss), the create (a two-object
update) and the close's flush (an update of the new attribute object).  With write-behind
(``FileSystem(write_behind=True)``, the mount's default unless ``-o wsync``), a create
without ``O_EXCL`` draws the object id, answers the kernel at once with the attributes
the servers will make (``objects.created_stat``: the same code) and keeps a *pending
create* per directory.  The file's first flush, fsync or close sends it as one update:
``fs.createwrite`` (the entry, the attribute object and its inline content together)
for a small file, ``fs.create`` with the write lease and then the ordinary flush for a
file grown past the inline limit.  The rules (docs/fs.md, "Create write-behind"):

- **Order**: every call to the servers that names a directory with pending creates, or a
  pending file itself, sends those creates first (:meth:`WriteBehind._query`,
  :meth:`WriteBehind._update`): lookups of other names, readdir, unlink, rename, mkdir,
  link, symlink, a synchronous create, an open or truncation of the pending file.  So
  whatever this mount does in the directory sees the name, in the order it was made.
- **Synchronous creates**: ``O_EXCL`` (the servers must say EEXIST), a directory whose
  mode and group this mount has not seen yet (the new file's group may be inherited:
  set-group-ID), a name pending already, and mounts with inline files off.
- **Only on a fresh miss**: the FUSE layer defers a create only when this very call's
  lookup found the name missing on the servers (within ``FRESH_MISS``); on a name the
  kernel had cached as missing, another client may have made the file, and the open must
  read it - the kernel reads nothing past the size a create answered, so this cannot
  wait for the first read.  A read through a pending file's handle sends it first anyway.
- **Visibility**: other clients see the name from the first flush or close - what
  close-to-open promises them.  fsync and close return only once the name and the data
  are on a quorum.
- **A name another client made meanwhile** (found when sending): as a synchronous create
  finding it, the existing file is opened (``O_TRUNC`` applied) and this file's buffered
  writes are re-applied on it; the kernel's inode for the new file then answers ESTALE to
  lookups through the cached name, so the kernel finds the existing file.  When the
  existing file may not be opened so (mode bits, not a regular file), the flush and close
  fail with EEXIST: the data is not written, and the program is told.
- **A create that fails for good** (refused for space or quota, a collision that cannot
  take the data): the servers hold what they took and nothing more.  A send the servers
  refused that was nevertheless established (more than ``b`` refused, enough others took
  it) counts as made, with the data it carried; otherwise no file was made, the data is
  dropped and never sent again, and the file's inode answers ESTALE, so the kernel looks
  the name up again and ``open(O_CREAT)`` creates it anew (it answered ENOENT).  A made
  file whose data was refused for space keeps what was stored: the refused writes are
  dropped at its last close (:meth:`Handles.release`).
- **A mount that dies** with a pending create leaves nothing on the servers: neither the
  name nor the data, which were not flushed (a synchronous create left an empty file).
"""

from __future__ import annotations

import functools
import logging
import os
import stat as st
from dataclasses import dataclass, field
from typing import Any

import trio

from bftfs import fsobjects as obj
from bftfs.fs.attrs import Attr
from bftfs.fs.caches import NAME_CACHE_LIMIT
from bftfs.fs.errors import (
    Exists,
    FsError,
    NoSpace,
    NotFound,
    StaleView,
    Unavailable,
    from_refusal,
)
from bftfs.fs.filedata import FileData, _content_version, _spawn
from bftfs.fs.files import OpenFile
from bftfs.fs.handles import Handles
from bftfs.fs.meta import LEASE_NS, MAX_ATTEMPTS, _Taken
from bftfs.outcome import ClusterUnavailable
from bftfs.qu.objects import MethodRefused

log = logging.getLogger(__name__)

#: Object ids of created files that turned out to collide, or whose create failed for
#: good, kept to answer ESTALE (the kernel then looks the name up again); forgetting one
#: only turns that into ENOENT.
MOVED_LIMIT = 10_000

#: After a send of a pending create fails for want of a quorum, other calls on its
#: directory go on without sending it again for this long (seconds), doubling per failure
#: up to :data:`RESEND_MAX`; the file's own flush, fsync and close always send it.
RESEND_FIRST = 1.0
RESEND_MAX = 30.0


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


class WriteBehind(Handles, FileData):
    """Pending creates, and the calls that must send them first."""

    write_behind: bool
    #: Directory id -> {name: pending create}.
    _pending: dict[int, dict[bytes, PendingCreate]]
    #: New object id -> its pending create.
    _pending_oids: dict[int, PendingCreate]
    #: Object id of a create that met an existing name -> the existing file's state.
    _moved: dict[int, OpenFile]
    #: Object id -> why its create could not be made (its flush and close say so), and
    #: the create itself (forgotten at the file's last close).
    _failed: dict[int, tuple[FsError, PendingCreate]]
    #: Object ids of creates that failed for good: no such object was made, and a call
    #: reaching one by the name the kernel cached answers ESTALE (the kernel looks again).
    _unmade: set[int]
    #: Directory id -> (mode, gid) as last seen: a new file's group and mode follow them.
    _dir_modes: dict[int, tuple[int, int]]
    #: Tasks sending a pending create now (they never wait for another one: no deadlock).
    _senders: set[trio.lowlevel.Task]

    def _init_write_behind(self, enabled: bool) -> None:
        self.write_behind = enabled
        self._pending = {}
        self._pending_oids = {}
        self._moved = {}
        self._failed = {}
        self._unmade = set()
        self._dir_modes = {}
        self._senders = set()

    # Remembering directories' modes ------------------------------------------------------

    def _own_stat(self, oid: int, s: dict[str, Any]) -> None:
        super()._own_stat(oid, s)
        self._dir_mode(oid, s)

    def _observed(self, oid: int, s: dict[str, Any]) -> None:
        super()._observed(oid, s)
        self._dir_mode(oid, s)

    def _dir_mode(self, oid: int, s: dict[str, Any]) -> None:
        if s["k"] == "d":
            if len(self._dir_modes) > NAME_CACHE_LIMIT:
                self._dir_modes.clear()  # forgetting costs one synchronous create each
            self._dir_modes[oid] = (s["mode"], s["gid"])

    # Creating ----------------------------------------------------------------------------

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
        """Create and open a regular file; deferred when the rules allow (module
        docstring), else synchronous (:meth:`Handles.create`).

        ``known_missing``: the servers said just now that the name is missing (the
        kernel's lookup in this very call).  A create on a name the kernel had cached as
        missing is synchronous: another client may have made it, and the open must then
        read that file (the kernel reads nothing past the size a create answered)."""
        if not (known_missing and self._may_defer(parent, name, flags)):
            return await super().create(parent, name, mode, uid, gid, flags)
        arg: dict[str, Any] = {
            "p": parent,
            "o": self._new_oid(near=parent),
            "name": name,
            "mode": st.S_IFREG | (mode & 0o7777),
            "uid": uid,
            "gid": gid,
            "rdev": 0,
            "d": self._new_oid(),
            "alloc": self._initial_reserve(),
            "i": b"",
            "now": self._now(),
        }
        try:
            s = obj.created_stat(arg, *self._dir_modes[parent])
        except MethodRefused as e:
            raise from_refusal(e.code, e.message) from None
        p = PendingCreate(parent, name, arg["o"], arg, uid, gid, flags)
        self._pending.setdefault(parent, {})[name] = p
        self._pending_oids[p.oid] = p
        self._learn(parent, name, p.oid, st.S_IFREG >> 12)
        self._kernel_saw(p.oid, s)  # a new inode: the kernel holds no pages of it
        f = self._files[p.oid] = OpenFile.from_stat(p.oid, s, self.bs)
        return self._new_handle(f, flags), self._attr(p.oid, s)

    def _may_defer(self, parent: int, name: bytes, flags: int) -> bool:
        return (
            self.write_behind
            and self.inline > 0
            and not flags & os.O_EXCL
            and parent in self._dir_modes
            and name not in self._pending.get(parent, {})
            and isinstance(name, bytes)
            and name not in (b"", b".", b"..")
            and b"/" not in name
            and b"\0" not in name
            and len(name) <= obj.NAME_MAX
        )

    # Sending -----------------------------------------------------------------------------

    async def _flush(self, f: OpenFile) -> None:
        """A flush sends the file's pending create first (with the content, when small)."""
        await super()._flush(await self._made_file(f))

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        """A read through a pending file's handle sends its create first: if another client
        made the name meanwhile (the kernel decided to create on a name it had cached as
        missing), the read must see that file, as after a synchronous create."""
        f, _ = self._handle(fh)
        if f.ino in self._pending_oids or f.ino in self._failed:
            await self._made_file(f)
        return await super().read(fh, offset, size)

    async def _made_file(self, f: OpenFile) -> OpenFile:
        """``f`` once its pending create (if any) is made: ``f`` itself, or the existing
        file its writes moved to (:meth:`_collided`).

        Raises:
            FsError: the create could not be made (EEXIST, ...; ``Unavailable``: it stays
                pending).
        """
        failed = self._failed.get(f.ino)
        if failed is not None:
            raise failed[0]
        p = self._pending_oids.get(f.ino)
        if p is not None:
            await self._send(p, quiet=False)
            failed = self._failed.get(f.ino)
            if failed is not None:
                raise failed[0]
        if f.ino in self._unmade:  # failed for good while closed: the name leads elsewhere
            raise StaleView(f"object {f.ino} was never made: its create failed")
        return self._moved.get(f.ino, f)

    async def _query(self, oid: int | list[int], method: str, arg: Any = None) -> Any:
        if self._pending_oids or self._moved or self._unmade or self._failed:
            await self._before(oid if isinstance(oid, list) else [oid], _names_in(arg))
        return await super()._query(oid, method, arg)

    async def _update(self, objects: Any, method: str, arg: Any) -> Any:
        objects = list(objects)
        if self._pending_oids or self._moved or self._unmade or self._failed:
            await self._before(objects, _names_in(arg))
        return await super()._update(objects, method, arg)

    async def _before(
        self, objects: list[int], names: set[bytes] | frozenset = frozenset()
    ) -> None:
        """Send the pending creates a call on ``objects`` (about ``names`` in them) must
        follow: those of a directory among them, and a pending file among them.  A create
        whose last send failed for want of a quorum is not sent again ahead of calls on
        its directory that name neither its file nor its name until its
        :attr:`PendingCreate.resend_at` (issue 31, item 11: one such create was re-sent
        ahead of every call on the directory for minutes, each waiting out its patience
        and failing; its flush and close said EIO already, and the directory does not hold
        the name meanwhile, so no call about another name depends on it)."""
        for oid in objects:
            if oid in self._moved and oid not in self._pending_oids:
                raise StaleView(f"object {oid} was never made: its name was taken")
            p = self._pending_oids.get(oid)
            if p is not None:
                await self._send(p)
            failed = self._failed.get(oid)
            if failed is not None:  # open here: its calls say why
                raise failed[0]
            if oid in self._unmade:  # reached by a name the kernel cached: look again
                raise StaleView(f"object {oid} was never made: its create failed")
            for p in list(self._pending.get(oid, {}).values()):
                if p.oid in objects or p.name in names or trio.current_time() >= p.resend_at:
                    await self._send(p)

    async def _send(self, p: PendingCreate, *, quiet: bool = True) -> None:
        """Make ``p`` on the servers, once: a call of another task waits for it, a call
        made while sending it (or another one: no circular wait) goes on.  Failures reach
        the file's flush and close (``_failed``, or pending again if the cluster was
        unavailable); ``quiet``: a call on the directory goes on after logging them."""
        me = trio.lowlevel.current_task()
        if p.sender is not None:
            if p.sender is not me and me not in self._senders:
                await p.done.wait()
            return
        if self._pending_oids.get(p.oid) is not p:
            return
        p.sender = me
        self._senders.add(me)
        settled = False  # made, or failed for good (else pending again)
        made = False
        try:
            await self._send_now(p)
            settled = made = True
        except Unavailable as e:  # the cluster did not answer: try again at the next flush
            p.failures += 1
            wait = min(RESEND_MAX, RESEND_FIRST * 2 ** min(p.failures - 1, 16))
            p.resend_at = trio.current_time() + wait
            if p.failures == 1:
                _spawn(functools.partial(self._resend_later, p))
            if not quiet:
                raise
            log.warning("pending create of %r not sent yet (again in %g s): %s", p.name, wait, e)
        except FsError as e:
            settled = True
            self._failed[p.oid] = (e, p)
            log.warning("create of %r failed when sent: %s", p.name, e)
        finally:
            self._senders.discard(me)
            p.sender = None
            if settled:
                self._drop_pending(p)
            done, p.done = p.done, trio.Event()
            done.set()
        if made:
            await self._write_back_closed(p)
        elif settled and not self._open_here(p.oid):
            self._abandon(p.oid)  # closed already (a resend): nothing will release it

    async def _resend_later(self, p: PendingCreate) -> None:
        """Send ``p`` again at its resend times until it is made or fails for good (a
        background task, started by its first failed send): once the cluster is back,
        every mount sees the file and its data without this mount doing anything more
        (issue 31, item 5).  Errors are logged by :meth:`_send`; nothing escapes."""
        while self._pending_oids.get(p.oid) is p:
            await trio.sleep_until(p.resend_at)
            if self._pending_oids.get(p.oid) is not p or trio.current_time() < p.resend_at:
                continue  # made meanwhile, or failed again and rescheduled
            try:
                await self._send(p)
            except Exception as e:  # a system task must not raise (filedata._spawn)
                log.warning("resending the create of %r failed: %s", p.name, e)
                return

    async def _write_back_closed(self, p: PendingCreate) -> None:
        """After ``p`` was made: a file already closed with writes still buffered (its
        close failed, the cluster unavailable) has them sent now, so that this mount and
        the others read the same file (issue 31, item 5: 2 bytes here, 0 elsewhere)."""
        f = self._files.get(p.oid)
        if f is None or f.opens or not f.buffered:
            return
        try:
            await super()._flush(f)
        except NoSpace as e:  # refused for good: the file keeps what was stored
            log.warning("writes of closed %r refused, dropped: %s", p.name, e)
            self._drop_refused_writes(f)
        except FsError as e:
            log.warning("writes of closed %r not sent yet: %s", p.name, e)

    def _drop_pending(self, p: PendingCreate) -> None:
        names = self._pending.get(p.parent, {})
        if names.get(p.name) is p:
            del names[p.name]
            if not names:
                del self._pending[p.parent]
        self._pending_oids.pop(p.oid, None)

    async def _send_now(self, p: PendingCreate) -> None:
        """One update making ``p``; on a name another client made meanwhile, open that
        file instead (:meth:`_collided`)."""
        for _ in range(MAX_ATTEMPTS):
            f = self._files.get(p.oid)
            try:
                if f is not None and f.size <= self.inline:
                    await self._create_with_content(p, f)
                else:
                    await self._create_plain(p, f)
                return
            except Exists:
                if await self._collided(p, f):
                    return
            except _Taken:
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
            await self.qu.settle([p.parent, p.oid])
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
            got = await super()._query([p.parent, p.oid], "fs.lookupstat", arg)
        except NotFound:
            return False
        s = got["s"]
        if got["e"][0] != p.oid or s is None or s["k"] != "f" or not st.S_ISREG(s["mode"]):
            return False
        opened = await super()._query(p.oid, "fs.open")
        if self._kernel_content.get(p.oid) == (p.arg["d"], 0):
            self._kernel_content[p.oid] = _content_version(opened)
        self._observed(p.oid, opened)
        self._learn(p.parent, p.name, p.oid, st.S_IFREG >> 12)
        if f is not None:
            await self._adopt(f, opened)
        log.info("create of %r: an earlier send had made it", p.name)
        return True

    async def _create_with_content(self, p: PendingCreate, f: OpenFile) -> None:
        """``fs.createwrite``: the entry, the attribute object and its content at once
        (the bookkeeping after it is :meth:`FileData._flush_inline`'s)."""
        logged = len(f.log)
        content = f.assemble(0, f.size).ljust(f.size, b"\0")
        snapshot = {k: (bytes(buf), f.gen[k]) for k, buf in f.dirty.items()}
        mtime = f.mtime if f.mtime is not None else p.arg["now"]
        attrs = dict(f.attrs)
        arg = dict(p.arg, i=content, mtime=mtime, attrs=attrs)
        child, pst = await super()._update([p.parent, p.oid], "fs.createwrite", arg)
        self._made(p, child, pst)
        f.base = _content_version(child)
        self._flushed(f, snapshot, mtime, attrs)
        f.sent(logged)
        if 0 not in f.dirty:
            f.remember(0, content)

    async def _create_plain(self, p: PendingCreate, f: OpenFile | None) -> None:
        """``fs.create`` with the write lease (the ordinary flush follows), as a
        synchronous create does: a file grown past the inline limit before its first flush."""
        arg = dict(p.arg)
        writable = f is not None and p.flags & os.O_ACCMODE != os.O_RDONLY
        if writable:
            arg.update(tok=self.lease_token, lease=LEASE_NS)
        child, pst = await super()._update([p.parent, p.oid], "fs.create", arg)
        self._made(p, child, pst)
        if f is not None and writable:
            f.lease_until = p.arg["now"] + LEASE_NS

    def _made(self, p: PendingCreate, child: dict[str, Any], pst: dict[str, Any]) -> None:
        """The servers made ``p``: their answers become this mount's state."""
        if self._kernel_content.get(p.oid) == (p.arg["d"], 0):
            self._kernel_content[p.oid] = _content_version(child)
        self._own_stat(p.oid, child)
        self._own_stat(p.parent, pst)
        self._learn(p.parent, p.name, p.oid, st.S_IFREG >> 12)

    async def _collided(self, p: PendingCreate, f: OpenFile | None) -> bool:
        """Another client made ``p``'s name before it was sent: open that file as a
        synchronous create would (:meth:`Handles._open_existing`) and move this file's
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
        g, _ = self._handles.pop(fh)
        g.opens -= 1
        self._cache_current.discard(fh)
        if f is not None:
            await self._move_writes(f, g)
        if len(self._moved) > MOVED_LIMIT:
            self._moved.clear()
        self._moved[p.oid] = g
        self._forget(p.parent, p.name)
        return True

    async def _move_writes(self, f: OpenFile, g: OpenFile) -> None:
        """Re-apply ``f``'s buffered writes and held-back attributes on ``g`` (as a flush
        re-applies them on another client's new content) and turn ``f``'s handles into
        handles of ``g``."""
        mtime = f.mtime if f.mtime is not None else self._now()
        for offset, data, appended in f.log:
            if appended:
                offset = g.size
            need = g.blocks_to_read_for_write(offset, len(data))
            if need:
                await self._fetch(g, need)
            g.apply_write(offset, data, mtime)
            g.record(offset, data, appended)
        g.attrs.update(f.attrs)
        for fh, (h, flags) in list(self._handles.items()):
            if h is f:
                self._handles[fh] = (g, flags)
                self._cache_current.discard(fh)
                g.opens += 1
                f.opens -= 1
        self._files[f.ino] = g  # fstat of the handles answers the file they write

    async def release(self, fh: int) -> None:
        """Close a handle; a file whose create failed or moved is forgotten at its last."""
        f, _ = self._handle(fh)
        ino = f.ino
        alias = [oid for oid, g in self._moved.items() if g is f]
        try:
            await super().release(fh)
        finally:
            if f.opens == 0:
                for oid in alias:
                    if self._files.get(oid) is f:
                        del self._files[oid]
                if ino in self._failed:
                    self._abandon(ino)

    def _open_here(self, ino: int) -> bool:
        f = self._files.get(ino)
        return f is not None and f.opens > 0

    def _abandon(self, ino: int) -> None:
        """Forget a file whose create failed for good, with its data (never sent again),
        and make its inode answer ESTALE: the name the kernel cached for it leads nowhere,
        so the kernel looks it up again and finds what the servers hold - nothing, and
        ``open(O_CREAT)`` creates the name anew (it answered ENOENT), or another client's
        file."""
        _, p = self._failed.pop(ino)
        self._files.pop(ino, None)
        self._kernel_content.pop(ino, None)
        if self._names.get(p.parent, {}).get(p.name, (None,))[0] == ino:
            self._forget(p.parent, p.name)
        if len(self._unmade) > MOVED_LIMIT:
            self._unmade.clear()
        if ino not in self._moved:
            self._unmade.add(ino)

    def _learn(self, parent: int, name: bytes, oid: int, code: int) -> None:
        """A name found to lead to ``oid`` makes it usable again, should an abandoned
        create's object exist after all."""
        super()._learn(parent, name, oid, code)
        if self._unmade:
            self._unmade.discard(oid)


def _names_in(arg: Any) -> set[bytes]:
    """The entry names a file-system method's argument is about (``fs.lookup``'s name,
    ``name``, a rename's ``sn`` and ``dn``; an xattr's name too: one send too many)."""
    if isinstance(arg, bytes):
        return {arg}
    if isinstance(arg, dict):
        return {v for k in ("name", "sn", "dn") if isinstance(v := arg.get(k), bytes)}
    return set()
