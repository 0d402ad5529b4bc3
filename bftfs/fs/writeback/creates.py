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
  pending file itself, sends those creates first
  (:meth:`~bftfs.fs.callorder.CallOrder.before_call`, the hook of
  :class:`~bftfs.fs.clients.calls.Meta`): lookups of other names, readdir, unlink, rename, mkdir,
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
  are on a quorum; one that answers EIO drops the create and its data (never sent again:
  docs/fs.md, "What EIO means"), and the inode answers ESTALE as below.
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
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from bftfs import fsobjects as obj
from bftfs.fs.caches import MetadataCache
from bftfs.fs.clients import Meta
from bftfs.fs.errors import StaleView, from_refusal
from bftfs.fs.files import Attr, OpenFile, initial_reserve
from bftfs.fs.files.flush import FlushEngine
from bftfs.fs.files.table import HandleTable
from bftfs.fs.writeback.creates_sending import CreateSends
from bftfs.fs.writeback.creates_table import CreateTable, HoldsBack
from bftfs.fs.writeback.creates_update import CreateSender, OpenExisting, PendingCreate
from bftfs.fs.writeback.schedule import WriteBack
from bftfs.fsobjects import RENAME_NOREPLACE
from bftfs.qu.objects import MethodRefused

if TYPE_CHECKING:
    from bftfs.fs.writeback.held import HeldFiles
    from bftfs.fs.writeback.unlinks import PendingUnlinks

log = logging.getLogger(__name__)


class PendingCreates:
    """The rules of write-behind: whether a create may be answered now, answering it, and
    what a close, open, read or flush of its file does while it is pending.  Given the
    protocol calls, the cache, the handle table, the flush engine and how to open another
    client's file (``open_existing``:
    :data:`~bftfs.fs.writeback.creates_update.OpenExisting`, given at construction,
    ``Handles.open_existing``); the creates themselves are kept below it
    (:class:`~bftfs.fs.writeback.creates_table.CreateTable`, ``creates``) and sent below
    it (:class:`~bftfs.fs.writeback.creates_sending.CreateSends`, ``sends``).  Called by
    :class:`Handles` at create, read, flush (:meth:`made_file`) and release, and by
    :class:`Attributes` before a truncation's flush."""

    def __init__(
        self,
        meta: Meta,
        cache: MetadataCache,
        table: HandleTable,
        engine: FlushEngine,
        *,
        enabled: bool,
        open_existing: OpenExisting,
        others: HoldsBack,
        made_parent: Callable[[int], Awaitable[None]],
        spawn: Callable[[Callable[[], Awaitable[None]]], None],
    ) -> None:
        """``others``: the parts that hold work back with the creates (the outbox);
        ``made_parent``: sends what a create in a directory must follow (its held-back
        mkdir and renames); ``spawn``: starts a background task (``Background.spawn``)."""
        self.meta = meta
        self.cache = cache
        self.handle_table = table
        self.bs = meta.bs
        self.inline = cache.inline
        self.write_behind = enabled
        self.creates = CreateTable(cache, others)
        self.sender = CreateSender(
            meta, cache, table, engine, open_existing, self.creates.moved_files, made_parent
        )
        self.sends = CreateSends(self.creates, self.sender, cache, engine, spawn=spawn)
        #: The longest name a create may be held back with (shorter in a sealed cluster,
        #: ``fs/clients/seal.py``): a longer one is refused by the synchronous create at once.
        self.name_max = obj.NAME_MAX

    # What holds work back with the creates (the outbox's other parts, found through the
    # table, where the gate and the sends find them too).

    @property
    def writeback(self) -> WriteBack | None:
        """Directory write-back (``fs/writeback/schedule.py``; None: every close sends)."""
        return self.creates.writeback

    @property
    def unlinks(self) -> PendingUnlinks | None:
        """Removals held back (``fs/writeback/unlinks.py``), which calls follow too."""
        return self.creates.unlinks

    @property
    def held(self) -> HeldFiles | None:
        """The files this mount holds exclusively (``fs/writeback/held.py``)."""
        return self.creates.held

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
            "alloc": initial_reserve(self.meta.bs),
            "i": b"",
            "now": self.meta.now(),
        }
        try:
            s = obj.created_stat(arg, *self.cache.dir_modes[parent])
        except MethodRefused as e:
            raise from_refusal(e.code, e.message) from None
        p = PendingCreate(parent, name, arg["o"], arg, uid, gid, flags)
        self.creates.add(p)
        self.cache.own_touch(parent, arg["now"])  # its times, as the create will leave them
        self.cache.learn(parent, name, p.oid, st.S_IFREG >> 12)
        self.cache.kernel_saw(p.oid, s)  # a new inode: the kernel holds no pages of it
        f = self.cache.files[p.oid] = OpenFile.from_stat(p.oid, s, self.bs)
        return self.handle_table.new_handle(f, flags), self.cache.attr(p.oid, s)

    def defers(self, f: OpenFile) -> bool:
        """Whether the close of ``f`` may leave its create pending (directory write-back,
        ``fs/writeback/schedule.py``): a new file's create, never sent yet, in a directory this
        mount holds an exclusive lease on; a file past the inline limit keeps its blocks
        buffered with it (``writeback.MAX_FILE``), written when the create is sent.  While
        another handle of the file is open, the create waits for the last close, which
        defers it with the file's size then.  One not held back yet, at write-back's
        bound, has the oldest held-back creates sent early (``WriteBack.room_for_create``)."""
        p = self._waiting(f.ino)
        if p is None or self.writeback is None or f.behind is not None:
            return False
        if not self.writeback.deferred(p.oid):
            self.writeback.room_for_create(p.parent)
            if f.opens > 1:
                return True  # another handle is open (:meth:`_open_again`): the last close decides
        if not self.writeback.defer(p, f.size):
            return False
        p.closed_at = trio.current_time()
        return True

    def deferred_stat(self, ino: int) -> dict[str, Any] | None:
        """The attributes of ``ino`` when its create is left to write-back and not being
        sent: no server holds the file yet, so what this mount knows of it is all there is
        (a ``stat`` of a file just written, as ``make`` does, need not send it)."""
        p = self.creates.pending_of(ino)
        if p is None or p.sender is not None or self.writeback is None:
            return None
        f = self.cache.files.get(ino)
        return f.st if f is not None and self.writeback.deferred(ino) else None

    def unsent(self, ino: int) -> bool:
        """Whether ``ino``'s create waits in this mount, open or closed, and is not being
        sent: what is set on the file meanwhile goes with it (``Attributes.setattr``)."""
        return self._waiting(ino) is not None and self.creates.failure_of(ino) is None

    def _waiting(self, ino: int) -> PendingCreate | None:
        """``ino``'s create when it waits here untouched: not being sent, never failed,
        not moved by a rename (what both deferring its close and joining a change to it
        need)."""
        p = self.creates.pending_of(ino)
        if p is None or p.sender is not None or p.failures != 0 or self.creates.moved(ino):
            return None
        return p

    def reopen_deferred(self, ino: int) -> bool:
        """Whether an open of ``ino`` is answered by this mount: its create waits in
        directory write-back (:meth:`deferred_stat`), so the file is this mount's alone
        and no server could say more of it.  Its create then waits for the new handle's
        close, as when the file was made (``WriteBack.reopened``).  So is another open
        while a handle of the file is open and its create waits for that close, unsent
        and sure to be made (:meth:`sure_to_be_made`): a linker opens each object file
        twice, and the second open sent the create with its blocks (15-38 ms a file at
        the end of Andrew's compile, the round the first open had saved)."""
        if self.deferred_stat(ino) is None:
            return self._open_again(ino)
        assert self.writeback is not None
        self.writeback.reopened(ino)
        return True

    def _open_again(self, ino: int) -> bool:
        p, f = self.creates.pending_of(ino), self.cache.files.get(ino)
        return (
            p is not None
            and p.sender is None
            and f is not None
            and f.opens > 0
            and self.writeback is not None
            and self.sure_to_be_made(ino)
        )

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
            and not self.creates.named(parent, name)
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
        failed = self.creates.failure_of(f.ino)
        if failed is not None:
            raise failed
        p = self.creates.pending_of(f.ino)
        if p is not None and self.writeback is not None and self.writeback.deferred(p.oid):
            await self.sends.send_one(p)  # with the directory's next five (a read of it)
            p = self.creates.pending_of(f.ino)
        if p is not None:
            await self.sends.send(p, quiet=False)
            failed = self.creates.failure_of(f.ino)
            if failed is not None:
                raise failed
        if f.ino in self.cache.unmade:  # failed for good while closed: the name leads elsewhere
            raise StaleView(f"object {f.ino} was never made: its create failed")
        return self.creates.moved_files.get(f.ino, f)

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

    def cancellable(self, oid: int) -> bool:
        """Whether ``oid``'s create may be dropped with its file when the file's only name
        is removed (``fs/writeback/unlinks.py``): it waits in write-back carrying the whole file
        (:meth:`is_deferred`), nobody is sending it, and the servers surely lack its name
        (:meth:`sure_to_be_made`: else the create would open another client's file, which
        the removal must then remove)."""
        p = self.creates.pending_of(oid)
        return (
            p is not None
            and p.sender is None
            and self.is_deferred(oid)
            and self.sure_to_be_made(oid)
        )

    async def rename_deferred(
        self, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int
    ) -> bool:
        """Rename in the mount a file whose create waits in write-back (:meth:`cancellable`:
        closed, inline, its old name surely absent on the servers) to another name of the
        same directory: no other client can see either name meanwhile, so the create going
        under the new name later is the rename's outcome, with no round for the rename (a
        download's ``.part``, a tool's temporary file).  A name the leased listing holds
        is cleared first (:meth:`_clear_target`: an editor's atomic save over the file it
        replaces), and must then be surely absent.  Whether it did; any other rename goes
        to the servers (``fs/names/rename.py``)."""
        if (
            parent != new_parent
            or name == new_name
            or flags & ~RENAME_NOREPLACE
            or self.unlinks is None
        ):
            return False
        known = self.cache.names.get(parent, {}).get(name)
        p = None if known is None else self.creates.pending_of(known[0])
        if p is None or (p.parent, p.name) != (parent, name) or not self.cancellable(p.oid):
            return False
        if self.creates.named(parent, new_name) or not self._surely_new(parent, new_name):
            if flags & RENAME_NOREPLACE or not await self._clear_target(parent, new_name):
                return False
            if (  # the wait for the target's removal let other calls run meanwhile
                self.creates.pending_of(p.oid) is not p
                or not self.cancellable(p.oid)
                or self.creates.named(parent, new_name)
                or not self._surely_new(parent, new_name)
            ):
                return False
        if not self.unlinks.dir_attrs.touch(parent):
            return False
        assert known is not None
        self.creates.rename(p, new_name)
        self.cache.forget(parent, name)
        self.cache.learn(parent, new_name, p.oid, known[1])
        return True

    async def _clear_target(self, parent: int, name: bytes) -> bool:
        """Remove what ``name`` in ``parent`` names, for a rename in the mount over it: a
        create that waits in write-back with it cancels (no round); a file the servers
        hold is unlinked now, one round (its create must not wait beside a removal of its
        name: the removal would reach the servers after the create and take it).  Only a
        non-directory that the unlink would leave to write-back (``PendingUnlinks.defer``:
        not open here, no buffered writes); whether the name is now surely absent."""
        target = self.cache.names.get(parent, {}).get(name)
        unlinks = self.unlinks
        if (
            target is None
            or target[1] == obj.DIR_TYPE
            or unlinks is None
            or (self.creates.named(parent, name) and not self.cancellable(target[0]))
        ):
            return False
        if not unlinks.defer(parent, name, *target):
            return False
        await unlinks.send_now(parent, name)
        return self._surely_new(parent, name) and unlinks.pending(parent, name) is None

    def cancel(self, oid: int) -> None:
        """Drop ``oid``'s create and its file (:meth:`cancellable`): neither the create nor
        its removal reaches the servers.  It holds no blocks (an inline file) and its
        object and data ids were never used, so nothing is left to reclaim."""
        p = self.creates.pending_of(oid)
        assert p is not None
        self.creates.drop_pending(p)
        self.cache.files.pop(oid, None)
        self.cache.kernel_content.pop(oid, None)

    async def make(self, oids: list[int]) -> None:
        """Send the pending creates of ``oids`` (a deferred one with up to five more of
        its directory), as a call on them would."""
        for oid in oids:
            p = self.creates.pending_of(oid)
            if p is not None:
                await self.sends.send_one(p)

    def pending_in(self, parent: int) -> list[PendingCreate]:
        """The pending creates of directory ``parent``."""
        return self.creates.pending_in(parent)

    def is_pending(self, oid: int) -> bool:
        """Whether ``oid`` is a create this mount has not sent (or one whose name turned
        out taken)."""
        return self.creates.is_pending(oid)

    # The hooks of Handles.read and Handles.release --------------------------------------

    def not_made(self, ino: int) -> bool:
        """Whether ``ino``'s create is pending or failed (a read sends it first)."""
        return self.creates.not_made(ino)

    def sure_to_be_made(self, ino: int) -> bool:
        """Whether ``ino``'s pending create cannot find its name taken: this mount holds a
        lease on the directory and knows its whole listing under it, which lacks the name,
        and nobody else can add one while the lease runs.  A read of the file may then be
        answered from what the mount holds, without sending the create first."""
        p = self.creates.pending_of(ino)
        leases = self.meta.leases
        return (
            p is not None
            and leases is not None
            and p.failures == 0
            and self.creates.failure_of(ino) is None
            and not self.creates.moved(ino)
            and leases.known_absent(p.parent, p.name)
        )

    def aliases_of(self, f: OpenFile) -> list[int]:
        """The object ids of creates whose writes moved to ``f`` (:meth:`CreateSender.collided`)."""
        return self.creates.aliases_of(f)

    def closed(self, f: OpenFile, ino: int, alias: list[int]) -> None:
        """The last handle of ``f`` (file ``ino``) was released: a file whose create
        failed or moved is forgotten."""
        for oid in alias:
            if self.cache.files.get(oid) is f:
                del self.cache.files[oid]
        if self.creates.failure_of(ino) is not None:
            self.creates.abandon(ino)
