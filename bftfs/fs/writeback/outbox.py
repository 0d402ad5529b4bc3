"""The outbox: everything this mount answered and holds back from the servers, built whole.

:class:`Outbox` owns the pending creates (write-behind, ``creates.py``) and, with directory
write-back (leases on, ``commit`` > 0, write-behind on), a :class:`HeldBack`: the schedule
of what is due (``schedule.py``), the held-back removals (``unlinks.py``), mkdirs
(``mkdirs.py``) and renames (``renames.py``), and the files held exclusively
(``held.py``).  Each part is given, at construction, what it calls of the others - the
schedule sends through the held-back parts' :class:`~bftfs.fs.writeback.schedule.Senders`
face (:class:`HeldBack` is one), and a part that needs one built after it is given a method
of :class:`HeldBack` that reaches it - so nothing is wired in from outside afterwards.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bftfs.fs.caches import MetadataCache
from bftfs.fs.clients import Meta
from bftfs.fs.errors import FsError, NoSpace, Unavailable
from bftfs.fs.files import OpenFile
from bftfs.fs.files.flush import FlushEngine
from bftfs.fs.files.reclaim import Reclaimer
from bftfs.fs.files.table import HandleTable
from bftfs.fs.leases import Leases
from bftfs.fs.writeback.covered import HeldBackCover
from bftfs.fs.writeback.creates import PendingCreates
from bftfs.fs.writeback.creates_update import OpenExisting, PendingCreate
from bftfs.fs.writeback.dirattrs import DirAttrs
from bftfs.fs.writeback.held import HeldFiles
from bftfs.fs.writeback.links import KIND as LINK
from bftfs.fs.writeback.links import PendingLinks
from bftfs.fs.writeback.mkdirs import PendingMkdirs
from bftfs.fs.writeback.renames import PendingRenames
from bftfs.fs.writeback.schedule import PendingUnlink, WriteBack, batch_size
from bftfs.fs.writeback.unlinks import PendingUnlinks, about_another_entry
from bftfs.fs.writeback.writemany import write_inline_many

log = logging.getLogger(__name__)

#: Starts a task in the file system's background (``Background.spawn``).
Spawn = Callable[[Callable[[], Awaitable[None]]], None]


class HeldBack:
    """Directory write-back (issue 33), its parts wired at construction: under an exclusive
    lease, closes of new files, removals, mkdirs and renames return before the servers take
    them, and the files made there are held (``docs/fs.md``).  Implements the schedule's
    :class:`~bftfs.fs.writeback.schedule.Senders`."""

    def __init__(
        self,
        meta: Meta,
        cache: MetadataCache,
        engine: FlushEngine,
        reclaimer: Reclaimer,
        creates: PendingCreates,
        leases: Leases,
        *,
        commit: float,
        hard: bool,
        flush_file: Callable[[OpenFile], Awaitable[None]],
        spawn: Spawn,
    ) -> None:
        """``flush_file``: sends a file's buffered writes (``Handles.flush_file``);
        ``hard``: a hard mount tries a call the cluster did not answer again, so what it
        held back stays for that (a soft one answers EIO and drops it: docs/fs.md)."""
        self.creates = creates
        # Closes of new files leave their create pending (fs/writeback/schedule.py) ...
        self.schedule = WriteBack(
            leases,
            commit,
            self,
            spawn=spawn,
            answers_eio=not hard,
            deferral=creates.creates.deferral,
            batch=batch_size(meta.config.max_objects),
        )
        # ... the files made there are leased here too: their opens, attributes and
        # written closes stay in the mount (fs/writeback/held.py) ...
        self.held = HeldFiles(
            leases,
            commit,
            cache.files,
            flush_file,
            functools.partial(write_inline_many, meta, engine),
            spawn=spawn,
        )
        # ... a directory's own attributes wait with its entries (fs/writeback/dirattrs.py) ...
        self.dir_attrs = DirAttrs(
            meta, cache, self.schedule, about_another_entry, self.entries_first, creates.is_pending
        )
        # ... removals return before they are sent (fs/writeback/unlinks.py) ...
        self.unlinks = PendingUnlinks(
            meta,
            cache,
            reclaimer,
            self.schedule,
            is_pending_create=creates.is_pending,
            is_deferred_create=creates.is_deferred,
            make_creates=creates.make,
            cancellable=creates.cancellable,
            cancel=creates.cancel,
            discard_held=self.held.discard,
            made_dir=self.entries_first,
            dir_attrs=self.dir_attrs,
        )
        # ... and so do mkdirs (fs/writeback/mkdirs.py) and renames within such a
        # directory (fs/writeback/renames.py).
        self.mkdirs = PendingMkdirs(
            meta, cache, self.schedule, held_name=self.held_name, renames_in=self.renames_in
        )
        self.renames = PendingRenames(
            meta,
            cache,
            self.schedule,
            held_name=self.held_name,
            is_pending_create=creates.is_pending,
            made_dir=self.mkdirs.made,
        )
        # ... and links to files whose create waits there (fs/writeback/links.py).
        self.links = PendingLinks(
            meta,
            cache,
            self.schedule,
            creates,
            held_name=self.held_name,
            touch=self.dir_attrs.touch,
            made_dir=self.entries_first,
        )

    def held_name(self, parent: int, name: bytes) -> bool:
        """Whether a create, removal, mkdir or rename of ``name`` in ``parent`` waits in
        write-back (a mkdir or rename of that name then goes at once)."""
        return (
            self.creates.creates.named(parent, name)
            or self.unlinks.pending(parent, name) is not None
            or self.mkdirs.named(parent, name)
            or self.renames.names_held(parent, name)
            or self.links.names_held(parent, name)
        )

    def rmdir_here(self, parent: int, name: bytes) -> bool:
        """``rmdir(parent, name)`` answered in the mount when the directory's mkdir waits
        here, not being sent, and nothing is held back in it: no server ever held it and
        nothing was made in it that went, so the mkdir and the rmdir cancel (``rm -rf``
        of a tree just made, git's ``objects/xx``), as a create and its removal do; the
        parent's times move by a held-back touch.  Whether it did."""
        m = self.mkdirs.pending_named(parent, name)
        if (
            m is None
            or m.once.busy
            or self.creates.pending_in(m.oid)
            or self.mkdirs.holds_in(m.oid)
            or self.links.names_in(m.oid)
            or self.renames.names_in(m.oid)
            or not self.dir_attrs.touch(parent)
        ):
            return False
        self.dir_attrs.untouch(m.oid)
        self.mkdirs.cancel(m)
        return True

    async def renames_in(self, directory: int) -> None:
        """Send the renames held back in ``directory`` (a mkdir of a name one moved away
        goes after it)."""
        await self.renames.made_in(directory)

    async def entries_first(self, directory: int) -> None:
        """What an ungated update of ``directory``'s entries must follow: its own held-back
        mkdir, and the renames held back in it."""
        await self.mkdirs.made(directory)
        await self.renames.made_in(directory)

    # The schedule's Senders ----------------------------------------------------------------

    async def send_creates(self, ps: list[PendingCreate]) -> None:
        await self.creates.sends.send_deferred(ps)

    async def send_creates_in(self, parent: int) -> list[PendingCreate]:
        return await self.creates.sends.send_directory(parent)

    def drop_create(self, p: PendingCreate, e: FsError) -> None:
        self.creates.sends.give_up(p, e)

    async def send_unlinks(self, us: list[PendingUnlink]) -> None:
        await self.unlinks.send(us)

    async def send_touches(self, parents: list[int]) -> None:
        await self.dir_attrs.send(parents)

    def drop_touch(self, parent: int, e: FsError) -> None:
        self.dir_attrs.drop(parent, e)

    def drop_unlink(self, u: PendingUnlink, e: FsError) -> None:
        self.unlinks.drop(u, e)

    async def send_entry(self, kind: str, update: Any) -> None:
        if kind == "mkdir":
            await self.mkdirs.send(update)
        elif kind == LINK:
            await self.links.send(update)
        else:
            await self.renames.send(update)

    async def send_entries(self, kind: str, updates: list[Any]) -> None:
        if kind == "mkdir":
            await self.mkdirs.send_many(updates)
            return
        for update in updates:
            await self.send_entry(kind, update)

    def drop_entry(self, kind: str, update: Any, e: FsError) -> None:
        if kind == "mkdir":
            self.mkdirs.drop(update, e)
        elif kind == LINK:
            self.links.drop(update, e)
        else:
            self.renames.drop(update, e)


@dataclass(frozen=True)
class HeldBackCreates:
    """What directory write-back holds back of creates now (``Outbox.held_back``): the
    closes of new files answered before the servers took them, which a crash of the mount
    loses (docs/fs.md)."""

    #: How many creates, and the bytes of their files (when their close deferred them).
    count: int
    bytes: int
    #: The client time (ns, ``Meta.now``) the oldest of them was created; None: none.
    oldest_ns: int | None


class Outbox:
    """What this mount holds back from the servers (module docstring): the pending creates
    always, the directory write-back parts (:attr:`back`) when enabled.  The file system
    builds it in one call; the gate (``CallOrder``), the names, the handles and the cache
    are given its parts."""

    def __init__(
        self,
        meta: Meta,
        cache: MetadataCache,
        table: HandleTable,
        engine: FlushEngine,
        reclaimer: Reclaimer,
        *,
        open_existing: OpenExisting,
        flush_file: Callable[[OpenFile], Awaitable[None]],
        spawn: Spawn,
        write_behind: bool,
        commit: float,
        hard: bool,
    ) -> None:
        """``open_existing``: opens another client's file found under a pending create's
        name (``Handles.open_existing``); ``flush_file``: sends a file's buffered writes
        (``Handles.flush_file``); ``spawn``: starts a background task
        (``Background.spawn``); ``write_behind``: creates may be answered before they are
        sent; ``commit``: seconds directory write-back holds work back (0: none); ``hard``:
        a hard mount, whose held-back work stays after a call the cluster did not answer."""
        #: Whether an error of a directory's ``fsync`` is answered EIO (a soft mount): what
        #: it could not send is then dropped (docs/fs.md, "What EIO means").
        self.answers_eio = not hard
        #: The mount's open and cached files: a closed one may still hold writes a
        #: background send could not deliver (:meth:`send_closed`).
        self._cache = cache
        self._flush_file = flush_file
        self.creates = PendingCreates(
            meta,
            cache,
            table,
            engine,
            enabled=write_behind,
            open_existing=open_existing,
            others=self,
            made_parent=self.entries_first,
            spawn=spawn,
        )
        leases = meta.leases
        #: Directory write-back (None: off, every close and removal is sent at once).
        self.back = (
            HeldBack(
                meta,
                cache,
                engine,
                reclaimer,
                self.creates,
                leases,
                commit=commit,
                hard=hard,
                flush_file=flush_file,
                spawn=spawn,
            )
            if leases is not None and commit > 0 and write_behind
            else None
        )
        back = self.back
        self.writeback: WriteBack | None = None if back is None else back.schedule
        self.unlinks: PendingUnlinks | None = None if back is None else back.unlinks
        self.held: HeldFiles | None = None if back is None else back.held
        self.mkdirs: PendingMkdirs | None = None if back is None else back.mkdirs
        self.renames: PendingRenames | None = None if back is None else back.renames
        self.links: PendingLinks | None = None if back is None else back.links
        #: How long the kernel may keep a held-back object's attributes (None: nothing
        #: is held back under a lease).
        self.cover = (
            None if back is None or leases is None else HeldBackCover(leases, self.held_back_in)
        )

    async def entries_first(self, directory: int) -> None:
        """What a create in ``directory`` must follow (``HeldBack.entries_first``)."""
        if self.back is not None:
            await self.back.entries_first(directory)

    def held_back(self) -> HeldBackCreates:
        """The creates directory write-back holds back now (read only; all zero when it
        is off): the mount's ``bftfs_mount_heldback_*`` metrics and its status."""
        waiting = [] if self.writeback is None else self.writeback.deferred_creates()
        times = [p.arg["now"] for p, _ in waiting if isinstance(p.arg.get("now"), int)]
        return HeldBackCreates(
            count=len(waiting),
            bytes=sum(size for _, size in waiting),
            oldest_ns=min(times) if times else None,
        )

    def pending_names(self, directory: int) -> list[bytes]:
        """The names of the creates and links this mount has not sent in ``directory``."""
        linked = [] if self.links is None else self.links.names_in(directory)
        return [p.name for p in self.creates.pending_in(directory)] + linked

    def local_stat(self, oid: int) -> dict[str, Any] | None:
        """The attributes of an object no server holds yet (a held-back mkdir's directory,
        a file whose create waits in write-back), or None."""
        made = None if self.mkdirs is None else self.mkdirs.stat_of(oid)
        return made or self.creates.deferred_stat(oid)

    def held_back_entry(self, parent: int, name: bytes, oid: int) -> dict[str, Any] | None:
        """The attributes of file ``oid`` when ``name`` in ``parent`` names it in this mount
        only: its create waits in write-back under that name, and the directory's listing,
        known whole under this mount's lease, lacks the name on the servers (nobody else
        can make it meanwhile: ``PendingCreates.sure_to_be_made``).  A lookup of the name
        is then answered here: sent, it sent the create first with five more, each of
        which its removal would have cancelled (``rm -rf`` of files just written, once the
        kernel's cached names timed out: issue 62).  Else None."""
        p = self.creates.creates.pending_of(oid)
        if p is None or p.parent != parent or p.name != name:
            return None
        if not self.creates.sure_to_be_made(oid):
            return None
        return self.creates.deferred_stat(oid)

    def held_back_in(self, oid: int) -> int | None:
        """The directory ``oid`` waits in when no server holds it yet (a held-back mkdir's
        directory, a file whose create waits in write-back), else None."""
        if self.local_stat(oid) is None:
            return None
        made = None if self.mkdirs is None else self.mkdirs.pending_of(oid)
        p = made or self.creates.creates.pending_of(oid)
        return None if p is None else p.parent

    def links_in(self, directory: int) -> int:
        """Links the held-back mkdirs in ``directory`` add to its link count."""
        return 0 if self.mkdirs is None else self.mkdirs.links_in(directory)

    async def send_all(self, parallel: int = 1) -> None:
        """Send everything directory write-back holds (creates, removals, mkdirs, renames),
        then the creates still pending after a failed send, then the writes held files'
        closes left, then those of any other closed file (:meth:`send_closed`);
        ``parallel``: directories sent at once."""
        if self.back is not None:
            await self.back.schedule.send_all(parallel)
        await self.send_pending_creates()
        if self.back is not None:
            await self.back.held.send_all()
        await self.send_closed()

    async def send_pending_creates(self) -> None:
        """Send the creates still pending after the above: answered, sent once, and not
        made because the cluster did not answer (kept for a resend, whose next try may
        be up to ``RESEND_MAX`` away).  Their files' blocks go after them.  Failures are
        logged and the creates kept, as a resend's are."""
        table = self.creates.creates
        for parent in table.pending_parents():
            await self.creates.sends.send_directory(parent)

    def unsent(self) -> int:
        """How many changes this mount still holds back from the servers: pending
        creates, held-back removals, renames, mkdirs and directory times, and files with
        writes not sent (held, or closed after a failed send).  The unmount sends until
        it is 0 (``fs/session.py``); a decrease is its measure of progress."""
        n = self.creates.creates.pending_count()
        files = {f.ino for f in self._cache.files.values() if f.opens == 0 and f.buffered}
        if self.back is not None:
            schedule = self.back.schedule  # its creates are counted as pending above
            n += schedule.held() - len(schedule.deferred_creates())
            files |= self.back.held.due_files()
        return n + len(files)

    async def send_closed(self) -> None:
        """Send the buffered writes of every closed file that still has some: a background
        send that failed keeps them (the blocks of a held-back create, sent after it;
        a held file's write-back past its tries; a hard mount's close the cluster did
        not answer), and nothing else sends them again.  Left out, the unmount lost them:
        the servers kept the file as its create made it, empty (``t4_machines``' node
        replacement, ``t4_unmount_flush.py``).  A file whose close was answered EIO has
        none (dropped then, docs/fs.md "What EIO means").  Failures are logged and the
        writes kept, as for the other background sends."""
        for f in [f for f in self._cache.files.values() if f.opens == 0 and f.buffered]:
            try:
                await self._flush_file(f)
            except NoSpace as e:  # refused for good: the file keeps what was stored
                log.warning("writes of closed file %d refused, dropped: %s", f.ino, e)
                self._cache.drop_refused_writes(f)
            except FsError as e:
                log.warning("writes of closed file %d not sent yet: %s", f.ino, e)

    async def sync_directory(self, ino: int) -> None:
        """``fsync`` of directory ``ino``: its held-back entries are on a quorum when it
        returns, and an error says they are not - and, answered EIO, that they were
        dropped (``WriteBack.sync_directory``).  Then the rest this mount holds back goes
        too, its failures logged and kept for a later send."""
        if self.back is not None:
            await self.back.schedule.sync_directory(ino)
        else:  # no write-back: only creates kept after a failed send can wait
            unmade = await self.creates.sends.send_directory(ino)
            if unmade:
                names = [p.name for p in unmade]
                e = Unavailable(f"directory {ino}: creates not on a quorum: {names[:5]!r}")
                if self.answers_eio:
                    for p in unmade:
                        self.creates.sends.give_up(p, e)
                raise e
        await self.send_all()
