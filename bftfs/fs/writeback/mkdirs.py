"""Directory write-back of mkdirs (issue 33): a ``mkdir`` in a directory this mount holds
exclusively returns before the servers make the directory.

While the mount holds an **exclusive lease** on a directory (``fs/leases/``), no other
client reads it without recalling the lease, and the recall's release is a gated update:
what the mount holds back for the directory goes before it.  So a ``mkdir`` there may be
answered at once (:meth:`PendingMkdirs.defer`): the object id is drawn here, the new
directory's attributes are computed by the servers' own code
(``fsobjects.made_dir_stat``), its name enters the leased listing, and it comes leased
to this mount with its listing known whole (empty), as a mkdir sent with the lease
inherited does.  What is then made in it waits in write-back too (``fs/writeback/schedule.py``).
The ``fs.mkdir`` itself (with the lease inherited, while the parent is held) is sent:

- **When**: by its *due* time (``commit`` seconds, or the lease's end less a margin:
  :class:`~bftfs.fs.writeback.schedule.WriteBack` keeps it), at ``fsync`` of a directory, at
  unmount, and before any call that must follow it (:meth:`PendingMkdirs.before`): one on
  the new directory (a create, listing, attribute change, lease or recall of it, and the
  update sending what was made in it: ``CreateSender`` and ``PendingUnlinks`` ask
  :meth:`PendingMkdirs.made` first), one about its name (a lookup by another path, a
  rename, an rmdir), and any call on the parent but a lookup or an update of another name
  (a listing, the parent's attributes, the recall's release).  A pending mkdir in a
  pending directory sends that one's first.
- **Which**: a mkdir whose parent this mount holds exclusively for more than twice the
  write-back margin, whose name the leased listing surely lacks (nobody else can make it
  meanwhile: the servers cannot answer EEXIST), whose parent's attributes this mount knows
  (its own last update's: the parent's link count grows by one here), and while the
  write-back bound leaves room.  Any other mkdir is sent at once, as before.
- **A refusal** when sent (only possible once the lease lapsed: the name taken meanwhile,
  space or quota) makes the directory unmade: its inode answers ESTALE, the name is
  forgotten, and what was made in it fails when sent (the same fate as a create that
  fails for good, ``fs/writeback/creates.py``).  No answer from the cluster keeps it pending and
  tries again.
- **A crash** of the mount loses the mkdirs of the last ``commit`` seconds with what was
  made in them, the promise a local file system makes for what was not ``fsync``ed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from bftfs import fsobjects as obj
from bftfs.fs.caches import MetadataCache
from bftfs.fs.clients import IdTaken, Meta, OutOfDate
from bftfs.fs.errors import FsError, Unavailable, from_refusal
from bftfs.fs.files import Attr
from bftfs.fs.leases import made_entries
from bftfs.fs.writeback.once import SendOnce
from bftfs.fs.writeback.unlinks import about_another_entry
from bftfs.fsobjects.leases import INHERIT
from bftfs.qu.objects import MethodRefused, unknown_method

if TYPE_CHECKING:
    from bftfs.fs.leases import Leases
    from bftfs.fs.writeback.schedule import WriteBack

log = logging.getLogger(__name__)

#: Its kind among write-back's entry updates.
KIND = "mkdir"


@dataclass(eq=False)
class PendingMkdir:
    """A mkdir answered to the kernel but not sent yet (module docstring)."""

    parent: int
    name: bytes
    oid: int
    #: ``fs.mkdir``'s argument (``p, o, name, mode, uid, gid, now``; the inherited lease
    #: is asked for when sent, if the parent is still held).
    arg: dict[str, Any]
    #: The attributes the servers will make (answered until it is sent).
    stat: dict[str, Any]
    #: Who sends it; the calls that need it wait for that.
    once: SendOnce = field(default_factory=SendOnce)
    done: trio.Event = field(default_factory=trio.Event)


def answered_by_listing(leases: Leases | None, objects: list[int], method: str, arg: Any) -> bool:
    """Whether a call is a lookup that the directory's leased listing answers (a miss, or
    a name made or moved there, a waiting mkdir's or rename's too): it never reaches the
    servers, so nothing held back need go first (``Leases.cached`` answers it next).
    Only an ``fs.lookup``: another query with a name (``fs.getxattr``) reaches them."""
    if leases is None or method != "fs.lookup" or not isinstance(arg, bytes):
        return False
    if len(objects) != 1:
        return False
    d = objects[0]
    return leases.known_absent(d, arg) or (
        leases.exclusive_left(d) > 0 and leases.answers.listed_entry(d, arg) is not None
    )


class PendingMkdirs:
    """The mkdirs this mount holds back, and their sending (module docstring).  Given the
    protocol calls, the cache, the write-back that keeps their due times, and whether a
    name of a directory has anything held back (``held_name``: a create, removal, mkdir
    or rename of it; a mkdir of such a name is sent at once, as before)."""

    def __init__(
        self,
        meta: Meta,
        cache: MetadataCache,
        writeback: WriteBack,
        *,
        held_name: Callable[[int, bytes], bool],
        renames_in: Callable[[int], Awaitable[None]],
    ) -> None:
        """``renames_in``: sends the renames held back in a directory
        (``PendingRenames.made_in``): a mkdir of a name a rename moved away goes after it."""
        self.meta = meta
        self.cache = cache
        self.writeback = writeback
        self._held_name = held_name
        self._renames_in = renames_in
        self._by_oid: dict[int, PendingMkdir] = {}
        self._by_dir: dict[int, dict[bytes, PendingMkdir]] = {}
        #: Whether the nodes take ``fs.mkdirmany`` (off once one says it has no such method).
        self._many = True

    def holds_back(self) -> bool:
        return bool(self._by_oid)

    def named(self, parent: int, name: bytes) -> bool:
        """Whether a mkdir of ``name`` in ``parent`` is held back."""
        return name in self._by_dir.get(parent, {})

    def pending_of(self, oid: int) -> PendingMkdir | None:
        return self._by_oid.get(oid)

    def pending_named(self, parent: int, name: bytes) -> PendingMkdir | None:
        """The mkdir of ``name`` in ``parent`` held back, if one is."""
        return self._by_dir.get(parent, {}).get(name)

    def holds_in(self, parent: int) -> bool:
        """Whether a mkdir held back is in ``parent``."""
        return bool(self._by_dir.get(parent))

    def cancel(self, m: PendingMkdir) -> None:
        """``rmdir`` of ``m``'s directory, empty and never sent: neither goes to the servers
        (``HeldBack.rmdir_here``).  The name leaves this mount's view and its leased
        listing, the parent loses the link the mkdir gave it, and the lease the directory
        was to come with is forgotten, never granted."""
        self._forget(m)
        self.cache.forget(m.parent, m.name)
        self.cache.forget(m.oid)
        self.cache.forget_own([m.oid])
        kept = self.cache.own.get(m.parent)
        if kept is not None:
            pst = dict(kept[0])
            pst["nl"] = max(2, pst["nl"] - 1)
            self.cache.own[m.parent] = (pst, kept[1])
        leases = self.meta.leases
        if leases is not None:
            names = frozenset((m.name,))
            leases.changed([m.parent, m.oid], parent=m.parent, names=names)
            leases.entry_done("fs.rmdir", m.parent, names, "taken")
            leases.never_made(m.oid)
            leases.stats["mkdirs_cancelled"] += 1

    def links_in(self, parent: int) -> int:
        """The links directory ``parent`` gains from mkdirs in it held back and not being
        sent (an update's answer about it lacks them: ``Caches.pending_links``)."""
        return sum(1 for m in self._by_dir.get(parent, {}).values() if not m.once.busy)

    def stat_of(self, oid: int) -> dict[str, Any] | None:
        """The attributes of a directory whose mkdir waits (no server holds it yet): those
        its own entry changes held back left (``Caches.own_touch``), else as made."""
        m = self._by_oid.get(oid)
        if m is None:
            return None
        kept = self.cache.own.get(oid)
        return kept[0] if kept is not None else m.stat

    def defer(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Attr | None:
        """Answer ``mkdir(parent, name)`` in the mount and leave it to write-back, when it
        may be (module docstring); None: it goes to the servers now."""
        leases = self.meta.leases
        kept = self.cache.own.get(parent)
        if (
            leases is None
            or kept is None
            or kept[0]["k"] != "d"
            or parent not in self.cache.dir_modes
            or kept[0]["nl"] + 1 >= obj.LINK_MAX
            or self._held_name(parent, name)
            or not leases.known_absent(parent, name)
        ):
            return None
        now = self.meta.now()
        arg: dict[str, Any] = {
            "p": parent,
            "o": self.meta.new_oid(near=parent),
            "name": name,
            "mode": mode,
            "uid": uid,
            "gid": gid,
            "now": now,
        }
        try:
            child = obj.made_dir_stat(arg, *self.cache.dir_modes[parent])
        except MethodRefused as e:
            raise from_refusal(e.code, e.message) from None
        m = PendingMkdir(parent, name, arg["o"], arg, child)
        if not self.writeback.defer_entry(KIND, m.oid, parent, m):
            return None
        self._by_oid[m.oid] = m
        self._by_dir.setdefault(parent, {})[name] = m
        self.cache.own[parent] = (dict(kept[0], nl=kept[0]["nl"] + 1), kept[1])
        self.cache.own_touch(parent, now)
        self.cache.own_stat(m.oid, child)
        self.cache.learn(parent, name, m.oid, obj.DIR_TYPE)
        names = frozenset((name,))
        leases.changed([parent], parent=parent, names=names)
        made = made_entries("fs.mkdir", arg)
        leases.entry_done("fs.mkdir", parent, names, "taken", made, trio.current_time())
        leases.inherit(parent, [m.oid], empty_dirs=True)
        leases.stats["mkdirs_deferred"] += 1
        return self.cache.attr(m.oid, child)

    # Sending -----------------------------------------------------------------------------

    async def before(
        self, objects: list[int], names: set[bytes] | frozenset, method: str, arg: Any
    ) -> None:
        """Send the mkdirs call ``method`` on ``objects`` (about ``names``) must follow."""
        if answered_by_listing(self.meta.leases, objects, method, arg):
            return
        for oid in objects:
            m = self._by_oid.get(oid)
            if m is not None:
                await self.send(m)
            for m in list(self._by_dir.get(oid, {}).values()):
                if m.name in names or not about_another_entry(oid, m.name, objects, method, arg):
                    await self.send(m)

    async def made(self, oid: int) -> None:
        """Send the mkdir of directory ``oid`` if it waits (an update of what was made in
        it goes next, not gated: ``CreateSender``, ``PendingUnlinks``)."""
        m = self._by_oid.get(oid)
        if m is not None:
            await self.send(m)

    async def send(self, m: PendingMkdir) -> None:
        """Make ``m`` on the servers, once: a call of another task waits for it; a call
        made while sending it (its own gated steps) goes on.

        Raises:
            Unavailable: the cluster did not answer (it stays pending).
        """
        if self._by_oid.get(m.oid) is not m:
            return
        async with m.once.turn() as mine:
            if not mine:
                return
            await self.made(m.parent)  # a pending directory's own mkdir first
            await self._renames_in(m.parent)
            await self._send_now(m)

    async def send_many(self, ms: list[PendingMkdir]) -> None:
        """Make the mkdirs ``ms`` of one directory on the servers in one ``fs.mkdirmany``
        (write-back's batch: ``git`` makes ``.git/objects/xx`` one at a time, each was an
        update of its own).  One another task is sending is left to it (waiting for it
        while holding the others could wait on a task that waits for them).  Refused (a
        name taken meanwhile, nodes of an older release without the method), each goes
        alone, where every case is handled.

        Raises:
            Unavailable: the cluster did not answer (they stay pending).
        """
        if len({m.parent for m in ms}) > 1:
            raise ValueError("fs.mkdirmany makes directories of one parent")
        if len(ms) < 2 or not self._many or self.meta.group_of is not None:
            for m in ms:
                await self.send(m)
            return
        parent = ms[0].parent
        await self.made(parent)  # (as :meth:`send`, before any turn is held)
        await self._renames_in(parent)
        async with contextlib.AsyncExitStack() as turns:
            mine = []
            for m in ms:  # a turn nobody holds is taken without waiting
                free = self._by_oid.get(m.oid) is m and not m.once.busy
                if free and await turns.enter_async_context(m.once.turn()):
                    mine.append(m)
            if len(mine) > 1 and await self._send_together(parent, mine):
                return
            for m in mine:
                if self._by_oid.get(m.oid) is m:
                    await self._send_now(m)

    async def _send_together(self, parent: int, ms: list[PendingMkdir]) -> bool:
        """One ``fs.mkdirmany`` for ``ms``; whether it made them (else none was made)."""
        leases = self.meta.leases
        items = [{k: v for k, v in m.arg.items() if k != "p"} for m in ms]
        arg: dict[str, Any] = {"p": parent, "now": max(i["now"] for i in items), "files": items}
        inherit = leases is not None and leases.exclusive_left(parent) > 0
        if inherit:
            arg[INHERIT] = 1
        listings = {} if leases is None else {m.oid: leases.answers.listings.get(m.oid) for m in ms}
        try:
            stats, pst = await self.meta.update_now(
                [parent, *(m.oid for m in ms)], "fs.mkdirmany", arg
            )
        except Unavailable:
            raise
        except (FsError, OutOfDate, IdTaken) as e:
            # (IdTaken: an earlier send took effect; each alone finds its own made.)
            if unknown_method(e):  # nodes of an older release
                self._many = False
            log.debug("mkdirs of %s together refused (each goes alone): %s", ms, e)
            return False
        for m, child in zip(ms, stats, strict=True):
            self._made(m, child, pst, inherit, listings.get(m.oid))
        self.writeback.stats["mkdir_write_back_updates"] += 1
        return True

    async def _send_now(self, m: PendingMkdir) -> None:
        leases = self.meta.leases
        arg = dict(m.arg)
        inherit = leases is not None and leases.exclusive_left(m.parent) > 0
        if inherit:
            arg[INHERIT] = 1
        # The listing known here: the servers' (empty) with what this mount made in it
        # since (the update forgets it, as for any object an update changes).
        listing = None if leases is None else leases.answers.listings.get(m.oid)
        try:
            child, pst = await self.meta.update_now([m.parent, m.oid], "fs.mkdir", arg)
        except Unavailable:
            raise
        except IdTaken:  # an earlier send reached some nodes and was completed since
            if not await self._made_before(m):
                self._failed(m, FsError("the new directory's object id was taken"))
            return
        except (FsError, OutOfDate) as e:
            self._failed(m, e)
            return
        self._made(m, child, pst, inherit, listing)

    def _made(
        self,
        m: PendingMkdir,
        child: dict[str, Any],
        pst: dict[str, Any],
        inherit: bool,
        listing: Any,
    ) -> None:
        """``m`` is on the servers (its stat ``child``, the parent's ``pst``; ``inherit``:
        asked with the parent's lease, ``listing``: what this mount knew of it)."""
        leases = self.meta.leases
        self._forget(m)
        # What this mount changed in either directory since is held back still: their
        # attributes here (own_touch, the link count) stay what those changes leave.
        if m.oid not in self.cache.own:
            self.cache.own_stat(m.oid, child)
        if m.parent not in self.cache.own:
            self.cache.own_stat(m.parent, pst)
        if leases is not None and inherit:
            leases.inherit(m.parent, [m.oid])  # held until the parent's lease ends now
            if listing is not None and leases.exclusive_left(m.oid) > 0:
                leases.answers.listings[m.oid] = listing
        self.writeback.stats["mkdirs_written_back"] += 1

    async def _made_before(self, m: PendingMkdir) -> bool:
        """Whether an earlier send of ``m`` made it (the entry names its object id, a
        directory: ids are this mount's 63-bit random draws)."""
        arg = {"p": m.parent, "o": m.oid, "name": m.name}
        try:
            got = await self.meta.query_now([m.parent, m.oid], "fs.lookupstat", arg)
        except FsError:
            return False
        s = got["s"]
        if got["e"][0] != m.oid or s is None or s["k"] != "d":
            return False
        self._forget(m)
        return True

    def drop(self, m: PendingMkdir, e: Exception) -> None:
        """A directory ``fsync`` answered EIO for ``m``: dropped as a failed one is."""
        if self._by_oid.get(m.oid) is m:
            self._failed(m, e)

    def _failed(self, m: PendingMkdir, e: Exception) -> None:
        """``m`` cannot be made (the lease lapsed and the name was taken, space, quota):
        the directory this mount answered never existed for the others.  Its inode
        answers ESTALE from now on and its name is forgotten here; what was made in it
        fails when sent."""
        log.warning("mkdir of %r failed when sent, the directory is lost: %s", m.name, e)
        self._forget(m)
        self.cache.unmade.add(m.oid)
        if self.cache.names.get(m.parent, {}).get(m.name, (None,))[0] == m.oid:
            self.cache.forget(m.parent, m.name)
        self.cache.forget_own([m.oid, m.parent])
        leases = self.meta.leases
        if leases is not None:
            leases.changed([m.parent, m.oid], parent=m.parent, names=frozenset((m.name,)))
            leases.entry_done("fs.mkdir", m.parent, frozenset((m.name,)), "unknown")
            leases.never_made(m.oid)

    def _forget(self, m: PendingMkdir) -> None:
        if self._by_oid.get(m.oid) is m:
            del self._by_oid[m.oid]
        names = self._by_dir.get(m.parent)
        if names is not None and names.get(m.name) is m:
            del names[m.name]
            if not names:
                del self._by_dir[m.parent]
        self.writeback.entry_sent(KIND, m.oid)
        m.done.set()
