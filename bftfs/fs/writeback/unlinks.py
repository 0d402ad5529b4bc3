"""Directory write-back of removals (issue 33): unlinks that return before the servers
take them.

While this mount holds an **exclusive lease** on a directory (``fs/leases.py``), no other
client reads the directory without recalling the lease first, and the recall's release is a
gated update: whatever the mount holds back for the directory goes before it.  So an
``unlink`` there may return at once, the name gone from this mount's view (its names,
its leased listing), and the removal sent later (:class:`PendingUnlinks`), several of one
directory in one ``fs.unlinkmany`` update:

- **When**: by its *due* time (``commit`` seconds, or the lease's end less a margin:
  :class:`~bftfs.fs.writeback.schedule.WriteBack` keeps both), at ``fsync`` of the directory, at
  unmount, and before any call that must follow it (:meth:`PendingUnlinks.before`): one on
  the removed object, one about the removed name, and any other call on the directory but
  a lookup or an update of another name (a listing, the directory's attributes, the
  recall's release).
- **Which**: a name of a non-directory whose object this mount holds exclusively too
  (a file it made under the directory's lease inherits that lease: another client that
  reached the file by a name its kernel cached, without reading the directory, then
  recalls it and so has the removal sent first), and has neither open nor
  buffered writes for, nor knows to have other names (hard links), and that is not
  itself a create this mount has not sent (that one is sent first, as before: the
  unlink then follows it) unless that create waits in
  write-back too: then the removal waits with it, and its create is sent first when the
  removal goes (both batched: PostMark deletes files it made seconds before).
- **Cancelling**: a removal whose create still waits in write-back with all its content
  inline, in a directory whose listing the mount knows whole under the lease (so the
  servers surely lack the name), drops the create and is not sent either
  (``PendingCreates.cancellable``).  The directory's times still move to the removal's:
  a held-back touch (``fs/writeback/dirattrs.py``).
- **A refusal** when sent (the name gone, or naming another object: possible only once the
  lease lapsed and another client changed the directory) drops the removal, as a removal
  that lost a race; no answer from the cluster keeps it pending and tries again.
- **A crash** of the mount loses the removals of the last ``commit`` seconds (the files are
  there again), the promise a local file system makes for what was not ``fsync``ed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import trio

from bftfs import fsobjects as obj
from bftfs.fs.caches import MetadataCache
from bftfs.fs.clients import ENTRY_METHODS, Meta, OutOfDate
from bftfs.fs.errors import FsError, Unavailable
from bftfs.fs.files import OpenFile
from bftfs.fs.files.reclaim import Reclaimer
from bftfs.fs.writeback.dirattrs import DirAttrs
from bftfs.fs.writeback.schedule import PendingUnlink, WriteBack

log = logging.getLogger(__name__)

#: Seconds before a removal the cluster did not answer is sent again.
RESEND = 1.0
#: A removal in a directory known to hold fewer entries than this (the removed one
#: included) asks for no lease, neither the directory's exclusive one nor its files' back
#: from the session: the grants cost an update per eight objects of one quorum (often
#: several) and a renewal, more than the few removals left could save by waiting.
#: ``rm -rf`` of a git tree (256 ``.git/objects/xx`` of 1-3 files) asked for 152 leases in
#: 64 such directories and deferred no removal (issue 62).
REMOVALS_FOR_A_LEASE = 8


#: Calls about one entry ``arg["name"]`` of directory ``arg["p"]``: a lookup's query with
#: the object expected, and the updates of one entry.
ONE_ENTRY_METHODS = ENTRY_METHODS | {"fs.lookupstat"}
#: Queries of an object's extended attributes alone.
XATTR_QUERIES = frozenset({"fs.getxattr", "fs.listxattr"})


def entry_call(parent: int, objects: list[int], method: str, arg: Any) -> tuple[bool, bytes | None]:
    """Whether call ``method`` on ``objects`` with ``arg`` is a lookup of, or an update
    of, one entry of ``parent``, or a query of ``parent``'s extended attributes (which no
    entry changes); and that entry's name (None for the attribute query).  Such a call
    needs nothing held back for any other name (:func:`about_another_entry`)."""
    if method in XATTR_QUERIES:
        return objects == [parent], None
    if method == "fs.lookup":
        ok = objects == [parent] and isinstance(arg, bytes)
        return ok, arg if ok else None
    if method in ONE_ENTRY_METHODS and isinstance(arg, dict):
        entry = arg.get("name")
        if arg.get("p") == parent and isinstance(entry, bytes):
            return True, entry
    return False, None


def about_another_entry(
    parent: int, name: bytes | None, objects: list[int], method: str, arg: Any
) -> bool:
    """Whether call ``method`` on ``objects`` with ``arg`` is a lookup of, or an update
    of, another entry of ``parent`` than ``name`` (any entry: ``name`` None), or a query
    of ``parent``'s extended attributes, which no entry changes.  Such a call needs
    nothing held back for ``name`` (removals, creates: ``fs/callorder.py``), nor the
    directory's held-back times (a later entry update moves them on, and touches only
    move them forward).  Told by the method, not the argument's shape: an extended
    attribute's name is no entry's (``getxattr`` of a directory whose mkdir waits was
    taken for a lookup of a name its listing lacks, so the mkdir was not sent first and
    the servers answered "not found": ``ls -l``'s ENOENT, issue 60)."""
    ok, entry = entry_call(parent, objects, method, arg)
    return ok and (name is None or entry != name)


class PendingUnlinks:
    """The removals this mount holds back, and their sending (module docstring)."""

    def __init__(
        self,
        meta: Meta,
        cache: MetadataCache,
        reclaimer: Reclaimer,
        writeback: WriteBack,
        *,
        is_pending_create: Callable[[int], bool],
        is_deferred_create: Callable[[int], bool],
        make_creates: Callable[[list[int]], Awaitable[None]],
        cancellable: Callable[[int], bool],
        cancel: Callable[[int], None],
        discard_held: Callable[[int], bool],
        made_dir: Callable[[int], Awaitable[None]],
        dir_attrs: DirAttrs,
    ) -> None:
        """``writeback``: keeps the due times and sends when due; ``is_pending_create``:
        whether an object's create is not sent yet; ``is_deferred_create``: whether it
        waits in directory write-back, closed (its removal may then wait too);
        ``make_creates``: sends the creates of objects whose removals go now (a removal
        reaching the servers before its create would be refused, and the file made after
        it); ``cancellable`` and ``cancel``: whether an object's create may be dropped
        with its file, and drop it (a create and its removal that cancel,
        ``PendingCreates.cancellable``); ``discard_held``: drops a closed file this mount
        holds exclusively, its buffered writes with it, when this removal is its last
        name (``HeldFiles.discard``); ``made_dir``: sends the mkdir of a directory and the
        renames in it if they wait in write-back (``fs/writeback/mkdirs.py``,
        ``fs/writeback/renames.py``): a directory's removals go after them, and are not
        gated; ``dir_attrs``: the directories' held-back times, which a removal that
        cancels moves and one taken carries."""
        self.meta = meta
        self.cache = cache
        self.reclaimer = reclaimer
        self.writeback = writeback
        self._is_pending_create = is_pending_create
        self._is_deferred_create = is_deferred_create
        self._make_creates = make_creates
        self._cancellable = cancellable
        self._cancel = cancel
        self._discard_held = discard_held
        self._made_dir = made_dir
        self.dir_attrs = dir_attrs
        self._by_dir: dict[int, dict[bytes, PendingUnlink]] = {}
        self._by_oid: dict[int, PendingUnlink] = {}
        #: Held-back removals :meth:`before` looked at, in all: the work the gate costs
        #: (issue 62: it read every removal held back in a directory at each lookup or
        #: removal there, O(held) per call, so ``rm -rf`` of a big directory was quadratic).
        self.examined = 0

    def holds_back(self) -> bool:
        return bool(self._by_oid)

    def pending(self, parent: int, name: bytes) -> PendingUnlink | None:
        return self._by_dir.get(parent, {}).get(name)

    def defer(self, parent: int, name: bytes, oid: int, code: int) -> bool:
        """Whether ``unlink(parent, name)`` of ``oid`` (type ``code``) is left to write-back:
        then it is done in this mount's view now and sent later (module docstring)."""
        wb = self.writeback
        if code == obj.DIR_TYPE or oid in self._by_oid or parent == oid:
            return False
        f = self.cache.files.get(oid)
        if f is not None and f.opens:
            return False
        if self._cancellable(oid) and self.dir_attrs.touch(parent):
            self._discard_held(oid)
            self._cancel(oid)
            self._gone_here(parent, name, oid)
            wb.stats["creates_cancelled"] += 1
            return True
        if f is not None and self._discard_held(oid):
            f = None  # its buffered writes went with it (fs/writeback/held.py)
        if f is not None and f.st.get("nl", 1) > 1:
            # Another name still leads to the file: its link count drops, and a held
            # file's kept attributes (which answer its stat) would keep the old one.
            # Removing one of several hard links is rare: it goes at once.
            return False
        # A file whose create waits in write-back may go with its create: it is sent
        # first (:meth:`send`), its content with it.  Any other unsent create or buffered
        # write goes before a removal that waits for nothing.
        if not self._is_deferred_create(oid) and (
            (f is not None and f.buffered) or self._is_pending_create(oid)
        ):
            return False
        u = PendingUnlink(parent, name, oid, self.meta.now())
        reachable = not self._is_deferred_create(oid) and not self._unseen(parent, oid, f)
        if not self._nearly_empty(parent):
            self._want_leases(parent, oid, reachable)
        if not wb.defer_unlink(u, reachable=reachable):
            return False
        self._by_dir.setdefault(parent, {})[name] = u
        self._by_oid[oid] = u
        self._gone_here(parent, name, oid)
        return True

    def _want_leases(self, parent: int, oid: int, reachable: bool) -> None:
        """Ask for (or renew) the exclusive lease on ``parent`` that removals there wait
        on, as a deferred create does, and, when file ``oid`` may be reached by another
        client, the exclusive leases of the directory's files: back, when its own went to
        the session, else ahead of the removals (``leases/claims.py``)."""
        leases = self.writeback.leases
        leases.want_exclusive(parent)
        if not reachable:
            return
        held = leases.exclusive_left(oid) > 0
        if not held and leases.kept_left(oid) > 0:
            leases.claims.reclaim(parent)
        else:
            leases.claims.ahead(parent, held, lambda: self._listed_files(parent, oid))

    def _listed_files(self, parent: int, oid: int) -> Iterator[int]:
        """The entries of ``parent`` other than ``oid`` and its directories, in the order
        its listing was read (``rm`` removes in that order), while known whole here."""
        names = self.cache.listed_names(parent) or {}
        for o, code in names.values():  # (consumed before the next change)
            if code != obj.DIR_TYPE and o != oid:
                yield o

    def _nearly_empty(self, parent: int) -> bool:
        """Whether directory ``parent`` is known to hold fewer than
        :data:`REMOVALS_FOR_A_LEASE` entries: its listing was read whole here (``rm -rf``
        reads each), or is known under a lease."""
        left = self.cache.entries_left(parent)
        if left is None:
            listing = self.writeback.leases.answers.listings.get(parent)
            left = None if listing is None else len(listing)
        return left is not None and left < REMOVALS_FOR_A_LEASE

    def _unseen(self, parent: int, oid: int, f: OpenFile | None) -> bool:
        """Whether no other client can have seen file ``oid``, the one name of which is in
        ``parent`` (``leases/unseen.py``): its removal then needs no lease on the file
        itself, only the directory's, whose recall sends the removal first.  Past
        ``MAX_KEPT`` closed files such a file's own lease was let end (nothing of it was
        renewed) or went to the session, and each removal went at once (issue 62: 1 639
        of 3 000 in ``rm -rf``)."""
        leases = self.meta.leases
        if leases is None or leases.unseen.directory_of(oid) != parent:
            return False
        own = self.cache.own.get(oid)
        s = f.st if f is not None else None if own is None else own[0]
        return s is not None and s.get("k") == "f" and s.get("nl") == 1

    async def room(self) -> None:
        """Before :meth:`defer`: at write-back's bound, wait for the removals held back to
        go early (``WriteBack.room_for_unlink``) rather than send this one alone."""
        await self.writeback.room_for_unlink()

    def _gone_here(self, parent: int, name: bytes, oid: int) -> None:
        """The name is gone in this mount's view: its names, attributes, leased listing."""
        self.cache.forget(parent, name)
        # Its link count is the servers' to tell (another name may still lead to it): a
        # stat of it asks them, and so sends this removal first.  The directory's times
        # are the removal's from now on.
        self.cache.forget_own([oid])
        self.cache.own_touch(parent, self.meta.now())
        leases = self.meta.leases
        if leases is not None:  # as a removal taken: the name leaves the leased listing
            leases.unseen.seen([oid])
            leases.changed([parent, oid], parent=parent, names=frozenset((name,)))
            leases.entry_done("fs.unlink", parent, frozenset((name,)), "taken")

    # Sending -----------------------------------------------------------------------------

    async def before(
        self, objects: list[int], names: set[bytes] | frozenset, method: str, arg: Any
    ) -> None:
        """Send the removals call ``method`` on ``objects`` (about ``names``) must follow."""
        need: list[PendingUnlink] = []
        for oid in objects:
            u = self._by_oid.get(oid)
            if u is not None:
                need.append(u)
            pending = self._by_dir.get(oid)
            if not pending:
                continue
            ok, entry = entry_call(oid, objects, method, arg)
            if ok:  # one entry's call: the removals of its names only, looked up by name
                wanted = set(names) if entry is None else {*names, entry}
                self.examined += len(wanted)
                need += [pending[n] for n in wanted if n in pending]
            else:  # anything else follows every removal held back there (sent: gone)
                self.examined += len(pending)
                need += pending.values()
        if need:
            await self.send(need)

    async def send_now(self, parent: int, name: bytes) -> None:
        """Send the removal of ``name`` in ``parent`` if one is held back (a create of the
        name follows it)."""
        u = self.pending(parent, name)
        if u is not None:
            await self.send([u])

    async def send(self, us: list[PendingUnlink]) -> None:
        """Send ``us`` (and wait for those another task sends), each directory's together,
        ``writeback.batch`` per update (as ``fs.createmany``: ``schedule.batch_size``),
        filled with the directory's next removals (a program
        that removes files one by one would need them next)."""
        mine: dict[int, list[PendingUnlink]] = {}
        theirs: list[trio.Event] = []
        for u in dict.fromkeys(us):
            if self._by_oid.get(u.oid) is not u:
                continue  # sent meanwhile
            if u.sending is not None:
                theirs.append(u.sending)
                continue
            u.sending = trio.Event()
            mine.setdefault(u.parent, []).append(u)
        batch = self.writeback.batch
        for parent, group in mine.items():  # with the directory's next ones, as creates go
            for u in self._by_dir.get(parent, {}).values():
                if len(group) % batch == 0:
                    break
                if u.sending is None and u not in group:
                    u.sending = trio.Event()
                    group.append(u)
        try:
            for group in mine.values():
                await self._make_creates([u.oid for u in group])
                for i in range(0, len(group), batch):
                    await self._send_batch(group[i : i + batch])
        finally:
            for group in mine.values():
                for u in group:
                    event, u.sending = u.sending, None
                    if event is not None:
                        event.set()
        for event in theirs:
            await event.wait()

    async def _send_batch(self, us: list[PendingUnlink]) -> None:
        await self._made_dir(us[0].parent)
        if len(us) > 1:
            parent = us[0].parent
            items = [{"o": u.oid, "name": u.name, "now": u.now} for u in us]
            arg = {"p": parent, "now": max(u.now for u in us), "files": items}
            try:
                stats, pst = await self.meta.update_now(
                    [parent, *(u.oid for u in us)], "fs.unlinkmany", arg
                )
            except Exception as e:  # noqa: BLE001 - each alone says why
                log.debug("removals of %s together failed (each goes alone): %s", us, e)
            else:
                for u, s in zip(us, stats, strict=True):
                    await self._taken(u, s, pst)
                self.writeback.stats["unlink_write_back_updates"] += 1
                return
        for u in us:
            await self._send_one(u)

    async def _send_one(self, u: PendingUnlink) -> None:
        arg = {"p": u.parent, "o": u.oid, "name": u.name, "now": u.now}
        try:
            s, pst = await self.meta.update_now([u.parent, u.oid], "fs.unlink", arg)
        except Unavailable as e:
            log.warning("removal of %r not sent yet (again in %g s): %s", u.name, RESEND, e)
            self.writeback.retry_unlink(u, RESEND)
            return
        except (FsError, OutOfDate) as e:  # the name is gone or names another object: lost race
            log.info("removal of %r dropped: %s", u.name, e)
            self._forget(u)
            return
        await self._taken(u, s, pst)

    async def _taken(self, u: PendingUnlink, s: dict[str, Any], pst: dict[str, Any]) -> None:
        self.dir_attrs.taken(u.parent, u.now)
        self._forget(u)
        self.cache.own_stat(u.oid, s)
        self.cache.own_stat(u.parent, pst)
        await self.reclaimer.unlinked(u.oid, s)

    def drop(self, u: PendingUnlink, e: Exception) -> None:
        """A directory ``fsync`` answered EIO for removal ``u``: it is never sent (the
        name stays on the servers).  What this mount showed of the directory was not
        what happened: forgotten, as for a rename dropped."""
        if self._by_oid.get(u.oid) is not u:
            return
        log.warning("removal of %r dropped: %s", u.name, e)
        self._forget(u)
        self.cache.forget(u.parent)
        leases = self.meta.leases
        if leases is not None:
            leases.entry_done("fs.unlink", u.parent, frozenset(), "unknown")

    def _forget(self, u: PendingUnlink) -> None:
        if self._by_oid.get(u.oid) is u:
            del self._by_oid[u.oid]
        names = self._by_dir.get(u.parent)
        if names is not None and names.get(u.name) is u:
            del names[u.name]
            if not names:
                del self._by_dir[u.parent]
        self.writeback.unlink_sent(u.oid)
        u.done.set()
