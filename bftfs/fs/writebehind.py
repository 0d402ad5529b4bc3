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
  pending file itself, sends those creates first (:meth:`~bftfs.fs.callorder.CallOrder.before_call`,
  the hook of :class:`~bftfs.fs.meta.Meta`): lookups of other names, readdir, unlink, rename, mkdir,
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

import logging
import os
import stat as st
from typing import TYPE_CHECKING, Any

from bftfs import fsobjects as obj
from bftfs.fs.attrs import Attr
from bftfs.fs.caches import MetadataCache
from bftfs.fs.createsend import MOVED_LIMIT, CreateSender, PendingCreate
from bftfs.fs.createsends import CreateSends
from bftfs.fs.errors import FsError, StaleView, from_refusal
from bftfs.fs.filedata import FlushEngine
from bftfs.fs.files import OpenFile
from bftfs.fs.handletable import HandleTable
from bftfs.fs.meta import Meta
from bftfs.fs.writeback import WriteBack
from bftfs.qu.objects import MethodRefused

if TYPE_CHECKING:
    from bftfs.fs.handles import Handles
    from bftfs.fs.heldfiles import HeldFiles
    from bftfs.fs.unlinkback import PendingUnlinks

log = logging.getLogger(__name__)


class PendingCreates:
    """Pending creates, and the calls that must send them first.  Given the protocol
    calls, the cache, the handle table and the flush engine; it hooks itself in before
    every gated call to the servers (:class:`~bftfs.fs.meta.CallGate`), and is called by
    :class:`Handles` at create, read, flush (:meth:`made_file`) and release, and by
    :class:`Attributes` before a truncation's flush.  One call goes back up, to the
    handles (given by :meth:`attach`): a create that meets another client's file under
    its name opens that file as a synchronous create would (:meth:`Handles.open_existing`,
    through :class:`CreateSender`)."""

    #: Directory id -> {name: pending create}.
    _pending: dict[int, dict[bytes, PendingCreate]]
    #: New object id -> its pending create.
    _pending_oids: dict[int, PendingCreate]
    #: Object id of a create that met an existing name -> the existing file's state.
    _moved: dict[int, OpenFile]
    #: Object id -> why its create could not be made (its flush and close say so), and
    #: the create itself (forgotten at the file's last close).
    _failed: dict[int, tuple[FsError, PendingCreate]]
    # (The object ids of creates that failed for good, ``cache.unmade``, and the
    # directories' modes, ``cache.dir_modes``, are kept by the cache.)
    handles: Handles
    sender: CreateSender

    def __init__(
        self,
        meta: Meta,
        cache: MetadataCache,
        table: HandleTable,
        engine: FlushEngine,
        *,
        enabled: bool,
    ) -> None:
        self.meta = meta
        self.cache = cache
        self.table = table
        self.engine = engine
        self.bs = meta.bs
        self.inline = cache.inline
        self.write_behind = enabled
        self._pending = {}
        self._pending_oids = {}
        self._moved = {}
        self._failed = {}
        self.sends = CreateSends(self, cache, engine)
        #: Directory write-back (``fs/writeback.py``; None: every close sends).
        self.writeback: WriteBack | None = None
        #: The longest name a create may be held back with (shorter in a sealed cluster,
        #: ``fs/seal.py``): a longer one is refused by the synchronous create at once.
        self.name_max = obj.NAME_MAX
        #: Removals held back with it (``fs/unlinkback.py``), which calls follow too.
        self.unlinks: PendingUnlinks | None = None
        #: The files this mount holds exclusively (``fs/heldfiles.py``): their buffered
        #: writes go before any call on them.
        self.held: HeldFiles | None = None

    def attach(self, handles: Handles) -> None:
        """The handles above (a collided create opens the existing file through them)."""
        self.handles = handles
        self.sender = CreateSender(
            self.meta, self.cache, self.table, self.engine, handles, self._moved
        )

    # Creating ----------------------------------------------------------------------------

    async def create(
        self, parent: int, name: bytes, mode: int, uid: int, gid: int, flags: int
    ) -> tuple[int, Attr]:
        """Create and open a regular file, answered now and sent later (module docstring);
        :meth:`Handles.create` calls this when :meth:`may_defer` says so."""
        if self.unlinks is not None:  # a removal of the name held back goes first
            await self.unlinks.send_now(parent, name)
        arg: dict[str, Any] = {
            "p": parent,
            "o": self.meta.new_oid(near=parent),
            "name": name,
            "mode": st.S_IFREG | (mode & 0o7777),
            "uid": uid,
            "gid": gid,
            "rdev": 0,
            "d": self.meta.new_oid(),
            "alloc": self.meta.initial_reserve(),
            "i": b"",
            "now": self.meta.now(),
        }
        try:
            s = obj.created_stat(arg, *self.cache.dir_modes[parent])
        except MethodRefused as e:
            raise from_refusal(e.code, e.message) from None
        p = PendingCreate(parent, name, arg["o"], arg, uid, gid, flags)
        self._pending.setdefault(parent, {})[name] = p
        self._pending_oids[p.oid] = p
        self.cache.learn(parent, name, p.oid, st.S_IFREG >> 12)
        self.cache.kernel_saw(p.oid, s)  # a new inode: the kernel holds no pages of it
        f = self.cache.files[p.oid] = OpenFile.from_stat(p.oid, s, self.bs)
        return self.table.new_handle(f, flags), self.cache.attr(p.oid, s)

    def defers(self, f: OpenFile) -> bool:
        """Whether the close of ``f`` may leave its create pending (directory write-back,
        ``fs/writeback.py``): a new file's create, never sent yet, in a directory this
        mount holds an exclusive lease on; a file past the inline limit keeps its blocks
        buffered with it (``writeback.MAX_FILE``), written when the create is sent."""
        p = self._pending_oids.get(f.ino)
        return (
            p is not None
            and self.writeback is not None
            and p.sender is None
            and p.failures == 0
            and f.ino not in self._moved
            and f.behind is None
            and self.writeback.defer(p, f.size)
        )

    def deferred_stat(self, ino: int) -> dict[str, Any] | None:
        """The attributes of ``ino`` when its create is left to write-back and not being
        sent: no server holds the file yet, so what this mount knows of it is all there is
        (a ``stat`` of a file just written, as ``make`` does, need not send it)."""
        p = self._pending_oids.get(ino)
        if p is None or p.sender is not None or self.writeback is None:
            return None
        f = self.cache.files.get(ino)
        return f.st if f is not None and self.writeback.deferred(ino) else None

    def reopen_deferred(self, ino: int) -> bool:
        """Whether an open of ``ino`` is answered by this mount: its create waits in
        directory write-back (:meth:`deferred_stat`), so the file is this mount's alone
        and no server could say more of it.  Its create then waits for the new handle's
        close, as when the file was made (``WriteBack.reopened``)."""
        if self.deferred_stat(ino) is None:
            return False
        assert self.writeback is not None
        self.writeback.reopened(ino)
        return True

    def may_defer(self, parent: int, name: bytes, flags: int) -> bool:
        """Whether a create may be answered now and sent later (module docstring).  An
        ``O_EXCL`` create may too when the directory's listing, known whole under this
        mount's exclusive lease, lacks the name: nobody else can make it meanwhile, so the
        servers cannot answer EEXIST (``cp -r`` creates so)."""
        return (
            self.write_behind
            and self.inline > 0
            and (not flags & os.O_EXCL or self._surely_new(parent, name))
            and parent in self.cache.dir_modes
            and name not in self._pending.get(parent, {})
            and isinstance(name, bytes)
            and name not in (b"", b".", b"..")
            and b"/" not in name
            and b"\0" not in name
            and len(name) <= self.name_max
        )

    def _surely_new(self, parent: int, name: bytes) -> bool:
        leases = self.meta.leases
        return (
            leases is not None
            and leases.exclusive_left(parent) > 0
            and leases.known_absent(parent, name)
        )

    def created_now(self, parent: int) -> None:
        """A create in ``parent`` went to the servers at once (``O_EXCL``, ...): with
        directory write-back, it counts towards the directory's exclusive lease as a
        deferred one does, so that later creates there may wait."""
        if self.writeback is not None:
            self.writeback.leases.want_exclusive(parent)

    # Sending -----------------------------------------------------------------------------

    async def made_file(self, f: OpenFile) -> OpenFile:
        """``f`` once its pending create (if any) is made: ``f`` itself, or the existing
        file its writes moved to (:meth:`CreateSender.collided`).

        Raises:
            FsError: the create could not be made (EEXIST, ...; ``Unavailable``: it stays
                pending).
        """
        failed = self._failed.get(f.ino)
        if failed is not None:
            raise failed[0]
        p = self._pending_oids.get(f.ino)
        if p is not None and self.writeback is not None and self.writeback.deferred(p.oid):
            await self.sends.send_one(p)  # with the directory's next five (a read of it)
            p = self._pending_oids.get(f.ino)
        if p is not None:
            await self.sends.send(p, quiet=False)
            failed = self._failed.get(f.ino)
            if failed is not None:
                raise failed[0]
        if f.ino in self.cache.unmade:  # failed for good while closed: the name leads elsewhere
            raise StaleView(f"object {f.ino} was never made: its create failed")
        return self._moved.get(f.ino, f)

    def is_deferred(self, oid: int) -> bool:
        """Whether ``oid``'s create waits in directory write-back, its file closed and
        the create not being sent, and carries the whole file: an inline one, made with
        its content in one update that nothing else follows.  (A file with blocks writes
        them after its create through gated calls on the file, which would wait for a
        removal waiting for that create.)"""
        f = self.cache.files.get(oid)
        return (
            f is not None
            and f.opens == 0
            and f.size <= self.inline
            and self.deferred_stat(oid) is not None
        )

    async def make(self, oids: list[int]) -> None:
        """Send the pending creates of ``oids`` (a deferred one with up to five more of
        its directory), as a call on them would."""
        for oid in oids:
            p = self._pending_oids.get(oid)
            if p is not None:
                await self.sends.send_one(p)

    def pending_in(self, parent: int) -> list[PendingCreate]:
        """The pending creates of directory ``parent``."""
        return list(self._pending.get(parent, {}).values())

    def pending_of(self, oid: int) -> PendingCreate | None:
        """``oid``'s pending create, if it was not sent yet."""
        return self._pending_oids.get(oid)

    def failure_of(self, oid: int) -> FsError | None:
        """Why ``oid``'s create could not be made, if it failed for good."""
        failed = self._failed.get(oid)
        return None if failed is None else failed[0]

    def moved_only(self, oid: int) -> bool:
        """Whether ``oid``'s create met another client's file and is no longer pending."""
        return oid in self._moved and oid not in self._pending_oids

    def fail(self, p: PendingCreate, e: FsError) -> None:
        """``p`` failed for good: its file's flush and close raise ``e``."""
        self._failed[p.oid] = (e, p)

    def moved(self, oid: int) -> bool:
        """Whether ``oid``'s create met another client's file under its name."""
        return oid in self._moved

    def holds_back_creates(self) -> bool:
        """Whether any create is pending, moved or failed (the gate's cheap test)."""
        return bool(self._pending_oids or self._moved or self.cache.unmade or self._failed)

    def is_pending(self, oid: int) -> bool:
        """Whether ``oid`` is a create this mount has not sent (or one whose name turned
        out taken)."""
        return oid in self._pending_oids or oid in self._moved

    def drop_pending(self, p: PendingCreate) -> None:
        if self.writeback is not None:
            self.writeback.sent(p.oid)
        names = self._pending.get(p.parent, {})
        if names.get(p.name) is p:
            del names[p.name]
            if not names:
                del self._pending[p.parent]
        self._pending_oids.pop(p.oid, None)

    # The hooks of Handles.read and Handles.release --------------------------------------

    def not_made(self, ino: int) -> bool:
        """Whether ``ino``'s create is pending or failed (a read sends it first)."""
        return ino in self._pending_oids or ino in self._failed

    def sure_to_be_made(self, ino: int) -> bool:
        """Whether ``ino``'s pending create cannot find its name taken: this mount holds a
        lease on the directory and knows its whole listing under it, which lacks the name,
        and nobody else can add one while the lease runs.  A read of the file may then be
        answered from what the mount holds, without sending the create first."""
        p = self._pending_oids.get(ino)
        leases = self.meta.leases
        return (
            p is not None
            and leases is not None
            and p.failures == 0
            and ino not in self._failed
            and ino not in self._moved
            and leases.known_absent(p.parent, p.name)
        )

    def aliases_of(self, f: OpenFile) -> list[int]:
        """The object ids of creates whose writes moved to ``f`` (:meth:`CreateSender.collided`)."""
        return [oid for oid, g in self._moved.items() if g is f]

    def closed(self, f: OpenFile, ino: int, alias: list[int]) -> None:
        """The last handle of ``f`` (file ``ino``) was released: a file whose create
        failed or moved is forgotten."""
        for oid in alias:
            if self.cache.files.get(oid) is f:
                del self.cache.files[oid]
        if ino in self._failed:
            self.abandon(ino)

    def open_here(self, ino: int) -> bool:
        f = self.cache.files.get(ino)
        return f is not None and f.opens > 0

    def abandon(self, ino: int) -> None:
        """Forget a file whose create failed for good, with its data (never sent again),
        and make its inode answer ESTALE: the name the kernel cached for it leads nowhere,
        so the kernel looks it up again and finds what the servers hold - nothing, and
        ``open(O_CREAT)`` creates the name anew (it answered ENOENT), or another client's
        file."""
        _, p = self._failed.pop(ino)
        self.cache.files.pop(ino, None)
        self.cache.kernel_content.pop(ino, None)
        if self.cache.names.get(p.parent, {}).get(p.name, (None,))[0] == ino:
            self.cache.forget(p.parent, p.name)
        if len(self.cache.unmade) > MOVED_LIMIT:
            self.cache.unmade.clear()
        if ino not in self._moved:
            self.cache.unmade.add(ino)
