"""Links to a file whose create waits in write-back (issue 62): git's temporary object files,
linked to their final name and then unlinked, cost no round of their own.

git writes each object as a temporary file (``open(O_CREAT|O_EXCL)``, write, close),
``link()``s it to its final name and unlinks the temporary.  In a directory this mount holds
exclusively the temporary's create waits in write-back (``fs/writeback/creates.py``); its
link went to the servers at once, sending the create first, and the unlink followed: three
rounds per object (``benchmarks/opcost.py``: ``link``).  Now a link of such a file (closed,
inline, its create waiting and not being sent: ``PendingCreates.cancellable``) to a name of
the same directory that the leased listing surely lacks is answered in the mount
(:meth:`PendingLinks.defer`): the create goes under the new name instead
(``CreateTable.rename``), and the old name is held back as a link to make after it
(:class:`PendingLink`).  The unlink of the old name that follows drops that link
(:meth:`PendingLinks.unlinked`): the servers see one create of the final name, batched with
the directory's others, and the directory's times (a held-back touch, as for a create and
its removal that cancel).  No other client can see the directory meanwhile (the exclusive
lease), so what it reads later is what the link and the unlink would have left.

Otherwise the link is sent, its create first (``fs.link``):

- **When**: by its due time (``commit`` seconds, or the lease's end less a margin:
  :class:`~bftfs.fs.writeback.schedule.WriteBack` keeps it), at ``fsync`` of the directory,
  at unmount, before any call that must follow it (:meth:`PendingLinks.before`): one on the
  file (its link count), one about its held name, any other call on the directory but a
  lookup or an update of another entry (a listing read from the servers, its attributes,
  the recall's release); and before a removal or rename of either name
  (:meth:`PendingLinks.send_for`), and a ``stat`` of the file once its create was sent.
- **A refusal** when sent (only once the lease lapsed and another client made the name)
  drops the link, as a link that lost a race: the directory's names and listing are
  forgotten here.  No answer keeps it pending and tries again.
- **A crash** of the mount loses it with the create it follows (the promise a local file
  system makes for what was not ``fsync``ed).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bftfs.fs.caches import MetadataCache
from bftfs.fs.clients import Meta, OutOfDate
from bftfs.fs.errors import FsError, Unavailable
from bftfs.fs.writeback.once import SendOnce
from bftfs.fs.writeback.unlinks import about_another_entry

if TYPE_CHECKING:
    from bftfs.fs.writeback.creates import PendingCreates
    from bftfs.fs.writeback.schedule import WriteBack

log = logging.getLogger(__name__)

#: Its kind among write-back's entry updates (sent after the mkdirs and renames).
KIND = "link"


@dataclass(eq=False)
class PendingLink:
    """A name of a file whose create waits, made in the mount but not sent: ``fs.link``
    of ``oid`` as ``name`` in ``parent`` once the create is made (module docstring)."""

    parent: int
    name: bytes
    oid: int
    code: int
    #: The time of the link (ns, client clock).
    now: int
    #: Who sends it; the calls that need it wait for that.
    once: SendOnce = field(default_factory=SendOnce)


class PendingLinks:
    """The links this mount holds back, and their sending (module docstring).  Given the
    protocol calls, the cache, the write-back that keeps their due times, the pending
    creates (whose files they name), ``held_name`` (whether a name of a directory has
    anything held back), ``touch`` (holds back a move of a directory's times:
    ``PendingUnlinks.touch``) and ``made_dir`` (sends a directory's held-back mkdir)."""

    def __init__(
        self,
        meta: Meta,
        cache: MetadataCache,
        writeback: WriteBack,
        creates: PendingCreates,
        *,
        held_name: Callable[[int, bytes], bool],
        touch: Callable[[int], bool],
        made_dir: Callable[[int], Awaitable[None]],
    ) -> None:
        self.meta = meta
        self.cache = cache
        self.writeback = writeback
        self.creates = creates
        self._held_name = held_name
        self._touch = touch
        self._made_dir = made_dir
        #: Held link by file (at most one each: a second link goes at once).
        self._by_oid: dict[int, PendingLink] = {}
        self._by_dir: dict[int, dict[bytes, PendingLink]] = {}

    def holds_back(self) -> bool:
        return bool(self._by_oid)

    def names_held(self, parent: int, name: bytes) -> bool:
        """Whether ``name`` in ``parent`` is a link held back."""
        return name in self._by_dir.get(parent, {})

    def names_in(self, parent: int) -> list[bytes]:
        """The names held back as links in ``parent`` (its listing in the mount has them)."""
        return list(self._by_dir.get(parent, {}))

    def defer(self, oid: int, parent: int, name: bytes) -> dict[str, Any] | None:
        """``link(oid, parent, name)`` answered in the mount when it may be (module
        docstring): the file's attributes with its new link count, or None (sent now)."""
        leases = self.meta.leases
        table = self.creates.creates
        p = table.pending_of(oid)
        f = self.cache.files.get(oid)
        known = None if p is None else self.cache.names.get(p.parent, {}).get(p.name)
        if (
            leases is None
            or p is None
            or f is None
            or known is None
            or known[0] != oid
            or p.parent != parent
            or p.name == name
            or oid in self._by_oid
            or not self.creates.cancellable(oid)
            or self._held_name(parent, name)
            or leases.exclusive_left(parent) <= 0
            or not leases.known_absent(parent, name)
        ):
            return None
        r = PendingLink(parent, p.name, oid, known[1], self.meta.now())
        if not self.writeback.defer_entry(KIND, oid, parent, r):
            return None
        self._by_oid[oid] = r
        self._by_dir.setdefault(parent, {})[r.name] = r
        table.rename(p, name)  # the create goes under the new name; the old one follows
        self.cache.learn(parent, name, oid, known[1])
        f.st = dict(f.st, nl=f.st.get("nl", 1) + 1, ct=max(f.st.get("ct", 0), r.now))
        self.cache.own_touch(parent, r.now)
        self.writeback.stats["links_deferred"] += 1
        return f.st

    def unlinked(self, parent: int, name: bytes) -> bool:
        """``unlink(parent, name)`` of a link held back: dropped with no round (module
        docstring); whether it was one.  False also when write-back cannot hold the
        directory's times: the link is then sent, and the removal goes as any other."""
        r = self._by_dir.get(parent, {}).get(name)
        if r is None or not self._touch(parent):
            return False
        self._forget(r)
        self.cache.forget(parent, name)
        f = self.cache.files.get(r.oid)
        if f is not None:
            f.st = dict(f.st, nl=max(1, f.st.get("nl", 2) - 1), ct=max(f.st["ct"], r.now))
        self.writeback.stats["links_cancelled"] += 1
        return True

    # Sending -----------------------------------------------------------------------------

    async def before(
        self, objects: list[int], names: set[bytes] | frozenset, method: str, arg: Any
    ) -> None:
        """Send the links a call on ``objects`` (about ``names``) must follow."""
        for oid in objects:
            r = self._by_oid.get(oid)
            if r is not None:
                await self.send(r)
            for r in list(self._by_dir.get(oid, {}).values()):
                if r.name in names or not about_another_entry(oid, r.name, objects, method, arg):
                    await self.send(r)

    async def send_for(self, parent: int, name: bytes) -> None:
        """Send the link held back as ``name`` in ``parent``, or for the file that name
        leads to (a removal or rename of it follows)."""
        r = self._by_dir.get(parent, {}).get(name)
        known = self.cache.names.get(parent, {}).get(name)
        if r is None and known is not None:
            r = self._by_oid.get(known[0])
        if r is not None:
            await self.send(r)

    async def before_stat(self, oid: int) -> None:
        """A ``stat`` of ``oid`` answered in the mount must show its link count: while its
        create waits that is the mount's own; once the create was sent the servers' says
        one, so the link goes first."""
        r = self._by_oid.get(oid)
        if r is not None and self.creates.deferred_stat(oid) is None:
            await self.send(r)

    async def send(self, r: PendingLink) -> None:
        """Take ``r`` to the servers, its create first, once: another task's call waits
        for it.

        Raises:
            Unavailable: the cluster did not answer (it stays pending).
        """
        if self._by_oid.get(r.oid) is not r:
            return
        async with r.once.turn() as mine:
            if not mine or self._by_oid.get(r.oid) is not r:
                return
            await self._made_dir(r.parent)
            await self.creates.make([r.oid])
            await self._send_now(r)

    async def _send_now(self, r: PendingLink) -> None:
        arg = {"p": r.parent, "o": r.oid, "name": r.name, "now": r.now}
        try:
            f, pst = await self.meta.update_now([r.oid, r.parent], "fs.link", arg)
        except Unavailable:
            raise
        except (FsError, OutOfDate) as e:
            self.drop(r, e)
            return
        self._forget(r)
        self.cache.own_stat(r.oid, f)
        self.cache.own_stat(r.parent, pst)
        self.writeback.stats["links_written_back"] += 1

    def drop(self, r: PendingLink, e: Exception) -> None:
        """``r`` is not made: refused when sent, or a directory ``fsync`` answered EIO for
        it.  What this mount showed of the directory was not what happened: forgotten."""
        if self._by_oid.get(r.oid) is not r:
            return
        log.warning("link of %d as %r dropped: %s", r.oid, r.name, e)
        self._forget(r)
        self.cache.forget(r.parent)
        leases = self.meta.leases
        if leases is not None:
            leases.entry_done("fs.link", r.parent, frozenset(), "unknown")

    def _forget(self, r: PendingLink) -> None:
        if self._by_oid.get(r.oid) is r:
            del self._by_oid[r.oid]
        names = self._by_dir.get(r.parent)
        if names is not None and names.get(r.name) is r:
            del names[r.name]
            if not names:
                del self._by_dir[r.parent]
        self.writeback.entry_sent(KIND, r.oid)
