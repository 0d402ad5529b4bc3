"""Directory write-back of renames (issue 33): a rename within a directory this mount holds
exclusively returns before the servers take it.

While the mount holds an **exclusive lease** on a directory (``fs/leases.py``), no other
client reads it without recalling the lease, and the recall's release is a gated update:
what the mount holds back for the directory goes before it.  So ``rename(d/a, d/b)`` may
be applied in the mount at once (:meth:`PendingRenames.defer`): the name moves in its
names and its leased listing, the directory's times move, and the ``fs.rename`` goes
later (``RENAME_NOREPLACE``: it never replaces what it did not see).  It is sent:

- **When**: by its *due* time (``commit`` seconds, or the lease's end less a margin:
  :class:`~bftfs.fs.writeback.schedule.WriteBack` keeps it), at ``fsync`` of a directory, at
  unmount, and before any call that must follow it (:meth:`PendingRenames.before`): one
  about either name, any other call on the directory but a lookup or an update of another
  name (a listing read from the servers, its attributes, the recall's release), and before
  any create, removal or mkdir of the directory is sent (:meth:`PendingRenames.made_in`:
  ``mv a b; touch a`` must reach the servers in that order).
- **Which**: a rename within one directory of a non-directory the servers hold (a file
  whose create waits is renamed with its create, ``PendingCreates.rename_deferred``), to
  a name the leased listing surely lacks (nothing replaced), neither name with anything
  else held back, and while the write-back bound leaves room.  Any other rename goes to
  the servers at once (``fs/names/rename.py``).
- **A refusal** when sent (only possible once the lease lapsed and another client changed
  the directory: the source gone, the target taken) drops the rename, as a rename that
  lost a race: the directory's leased listing and names are forgotten here, so the next
  lookups ask the servers.  No answer from the cluster keeps it pending and tries again.
- **The moved file's ctime** moves when the rename is sent: a ``stat`` of the file
  answers the one from before until then (a call on the file needs nothing else of the
  rename, so it does not send it; POSIX leaves a rename's ctime to the implementation).
- **A crash** of the mount loses the renames of the last ``commit`` seconds (the files
  keep their old names), the promise a local file system makes for what was not
  ``fsync``ed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bftfs import fsobjects as obj
from bftfs.fs.caches import MetadataCache
from bftfs.fs.clients import Meta, OutOfDate
from bftfs.fs.errors import FsError, Unavailable
from bftfs.fs.writeback.mkdirs import answered_by_listing
from bftfs.fs.writeback.once import SendOnce
from bftfs.fs.writeback.unlinks import about_another_entry
from bftfs.fsobjects import RENAME_NOREPLACE

if TYPE_CHECKING:
    from bftfs.fs.writeback.schedule import WriteBack

log = logging.getLogger(__name__)

#: Its kind among write-back's entry updates (sent after the mkdirs).
KIND = "rename"


@dataclass(eq=False)
class PendingRename:
    """A rename applied in the mount but not sent yet (module docstring)."""

    parent: int
    name: bytes
    new_name: bytes
    oid: int
    code: int
    #: The time of the rename (ns, client clock).
    now: int
    #: Who sends it; the calls that need it wait for that.
    once: SendOnce = field(default_factory=SendOnce)


class PendingRenames:
    """The renames this mount holds back, and their sending (module docstring).  Given the
    protocol calls, the cache, the write-back that keeps their due times, and whether a
    name of a directory has anything held back (``held_name``: a create, removal, mkdir or
    rename of it; such a rename goes at once)."""

    def __init__(
        self,
        meta: Meta,
        cache: MetadataCache,
        writeback: WriteBack,
        *,
        held_name: Callable[[int, bytes], bool],
        is_pending_create: Callable[[int], bool],
        made_dir: Callable[[int], Awaitable[None]],
    ) -> None:
        """``made_dir``: sends the mkdir of a directory if it waits (``PendingMkdirs.made``)."""
        self.meta = meta
        self.cache = cache
        self.writeback = writeback
        self._held_name = held_name
        self._is_pending_create = is_pending_create
        self._made_dir = made_dir
        #: Rename by moved object id (at most one each: a second rename goes at once).
        self._by_oid: dict[int, PendingRename] = {}
        self._by_dir: dict[int, list[PendingRename]] = {}

    def holds_back(self) -> bool:
        return bool(self._by_oid)

    def names_held(self, parent: int, name: bytes) -> bool:
        """Whether a rename held back in ``parent`` is from or to ``name``."""
        return any(name in (r.name, r.new_name) for r in self._by_dir.get(parent, ()))

    def names_in(self, parent: int) -> bool:
        """Whether a rename is held back in ``parent``."""
        return bool(self._by_dir.get(parent))

    def defer(self, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int) -> bool:
        """Apply ``rename(parent/name, new_parent/new_name)`` in the mount and leave it to
        write-back, when it may be (module docstring); whether it did."""
        leases = self.meta.leases
        known = self.cache.names.get(parent, {}).get(name)
        listed = None if leases is None else leases.answers.listed_entry(parent, name)
        if (
            leases is None
            or parent != new_parent
            or name == new_name
            or flags & ~RENAME_NOREPLACE
            or known is None
            or known[1] == obj.DIR_TYPE
            or known[0] in self._by_oid
            or self._is_pending_create(known[0])
            or self._held_name(parent, name)
            or self._held_name(parent, new_name)
            or listed is None
            or listed[0] != known[0]
            or not leases.known_absent(parent, new_name)
        ):
            return False
        oid, code = known
        r = PendingRename(parent, name, new_name, oid, code, self.meta.now())
        if not self.writeback.defer_entry(KIND, oid, parent, r):
            return False
        self._by_oid[oid] = r
        self._by_dir.setdefault(parent, []).append(r)
        self.cache.forget(parent, name)
        self.cache.learn(parent, new_name, oid, code)
        self.cache.own_touch(parent, r.now)
        names = frozenset((name, new_name))
        leases.changed([parent], parent=parent, names=names)
        leases.entry_done("fs.rename", parent, names, "taken", {new_name: [oid, code]})
        leases.stats["renames_deferred"] += 1
        return True

    # Sending -----------------------------------------------------------------------------

    async def before(
        self, objects: list[int], names: set[bytes] | frozenset, method: str, arg: Any
    ) -> None:
        """Send the renames a call on ``objects`` (about ``names``) must follow.  A call on
        the moved object itself needs none (nothing of it but its ctime depends on its
        name: a ``stat`` of it, as a listing or a lookup makes, answers the ctime from
        before the rename until it is sent)."""
        if answered_by_listing(self.meta.leases, objects, method, arg):
            return
        for oid in objects:
            for r in list(self._by_dir.get(oid, ())):
                if (
                    r.name in names
                    or r.new_name in names
                    or not about_another_entry(oid, r.name, objects, method, arg)
                ):
                    await self.send(r)

    async def made_in(self, parent: int) -> None:
        """Send the renames held back in ``parent`` (an update of its entries goes next,
        not gated: a create, a removal, a mkdir)."""
        for r in list(self._by_dir.get(parent, ())):
            await self.send(r)

    async def send(self, r: PendingRename) -> None:
        """Take ``r`` to the servers, once: a call of another task waits for it; a call
        made while sending it goes on.

        Raises:
            Unavailable: the cluster did not answer (it stays pending).
        """
        if self._by_oid.get(r.oid) is not r:
            return
        async with r.once.turn() as mine:
            if not mine:
                return
            await self._made_dir(r.parent)
            # Earlier renames of the directory first (``mv a b; mv c a`` is not one).
            for earlier in list(self._by_dir.get(r.parent, ())):
                if earlier is r:
                    break
                await self.send(earlier)
            await self._send_now(r)

    async def _send_now(self, r: PendingRename) -> None:
        arg = {
            "sp": r.parent,
            "sn": r.name,
            "dp": r.parent,
            "dn": r.new_name,
            "o": r.oid,
            "t": None,
            "flags": RENAME_NOREPLACE,
            "now": r.now,
        }
        try:
            stats = await self.meta.update_now([r.parent, r.oid], "fs.rename", arg)
        except Unavailable:
            raise
        except (FsError, OutOfDate) as e:
            self.drop(r, e)
            return
        self._forget(r)
        for key, s in stats.items():  # (the directory's: what was held back since stays)
            if int(key) != r.parent or r.parent not in self.cache.own:
                self.cache.own_stat(int(key), s)
        leases = self.meta.leases
        if leases is not None and leases.exclusive_left(r.parent) > 0:  # it names the file
            entry = leases.answers.listings.get(r.parent)
            if entry is not None and r.new_name in entry:
                entry[r.new_name] = [r.oid, r.code]
        self.writeback.stats["renames_written_back"] += 1

    def drop(self, r: PendingRename, e: Exception) -> None:
        """``r`` is not made: refused when sent, or a directory ``fsync`` answered EIO for
        it.  What this mount showed of the directory was not what happened: forgotten."""
        if self._by_oid.get(r.oid) is not r:
            return
        log.warning("rename of %r to %r dropped when sent: %s", r.name, r.new_name, e)
        self._forget(r)
        self.cache.forget(r.parent)
        leases = self.meta.leases
        if leases is not None:
            leases.entry_done("fs.rename", r.parent, frozenset(), "unknown")

    def _forget(self, r: PendingRename) -> None:
        if self._by_oid.get(r.oid) is r:
            del self._by_oid[r.oid]
        rs = self._by_dir.get(r.parent)
        if rs is not None and r in rs:
            rs.remove(r)
            if not rs:
                del self._by_dir[r.parent]
        self.writeback.entry_sent(KIND, r.oid)
