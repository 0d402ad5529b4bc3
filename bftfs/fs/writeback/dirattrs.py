"""Directory write-back of a directory's own attributes: times its held-back entry
changes moved without an update of their own, and a ``setattr`` of it answered here.

- **Touches**: a create and its removal that cancelled in write-back, a rename of a
  create that waits, an mkdir and rmdir that cancelled: nothing sends them, yet the
  directory's mtime and ctime moved.  A times-only ``fs.setattr`` (``touch``: they only
  move forward) goes when due or before a call on the directory's attributes, unless a
  removal there sent later carries a later time (:meth:`DirAttrs.taken`).
- **A held ``setattr``** (:meth:`DirAttrs.hold`): while this mount holds the directory
  exclusively, a chmod, chown or utimens of it is answered at once and held back with its
  entries.  ``cp -a`` and ``tar x`` set each directory's times and owner after filling
  it: each such call had to send every create held back there first, in the
  foreground (a 981-file copy spent 13 of its 25 s in 43 directories' ``utimensat``).
  What the mount shows of the directory has the held attributes over it
  (``MetadataCache.held_dir_attrs``) until they are sent, after everything held back in
  the directory (the entry changes set the mtime on the servers, so those made before
  the ``setattr`` go first); an entry change made after it moves the mtime on and drops
  the held one (``MetadataCache._entries_changed``), as on a local file system.  A change
  of the set-group-ID bit or of the group goes at once: the files made in the directory
  inherit them, and the mount answers creates from what it knows of the directory.
- **When**: as a removal (``fs/writeback/unlinks.py``): due by ``commit`` or the lease's
  end, at ``fsync`` of the directory, at unmount, before any call on the directory but a
  lookup or an update of one entry (a stat, a listing, the recall's release).  A crash of
  the mount loses them with the rest of the last ``commit`` seconds.
"""

from __future__ import annotations

import logging
import stat as st
from collections.abc import Awaitable, Callable
from typing import Any

from bftfs.fs.caches import HeldAttrs, MetadataCache
from bftfs.fs.clients import Meta, OutOfDate
from bftfs.fs.errors import FsError, Unavailable
from bftfs.fs.writeback.schedule import WriteBack

log = logging.getLogger(__name__)


class DirAttrs:
    """The directories' attributes this mount holds back, and their sending (module
    docstring).  The held ``setattr`` attributes live in the cache, which shows them;
    the touches here."""

    def __init__(
        self,
        meta: Meta,
        cache: MetadataCache,
        writeback: WriteBack,
        about_another_entry: Callable[[int, bytes | None, list[int], str, Any], bool],
        made_dir: Callable[[int], Awaitable[None]],
        is_pending_create: Callable[[int], bool],
    ) -> None:
        """``writeback``: keeps the due times, and sends everything held back in a
        directory before its attributes; ``about_another_entry``: whether a call
        (``directory, None, objects, method, arg``) is about one entry of the directory
        (it needs none of this: ``fs/writeback/unlinks.py``); ``made_dir``: sends a
        directory's own held-back mkdir and the renames in it; ``is_pending_create``:
        whether a create is still to be sent."""
        self.meta = meta
        self.cache = cache
        self.writeback = writeback
        self._about_another_entry = about_another_entry
        self._made_dir = made_dir
        self._is_pending_create = is_pending_create
        #: Directories whose times a change no update sends moved -> the time (ns, client
        #: clock) their mtime and ctime must reach.
        self._touches: dict[int, int] = {}
        #: Directories whose attributes are being sent (their own sends are not gated by
        #: them again).
        self._sending: set[int] = set()

    def holds_back(self) -> bool:
        return bool(self._touches or self.cache.held_dir_attrs)

    def holds(self, directory: int) -> bool:
        return directory in self._touches or directory in self.cache.held_dir_attrs

    def touch(self, parent: int) -> bool:
        """Move directory ``parent``'s times to now, in the mount at once and on the
        servers by write-back (module docstring); False when write-back cannot hold one
        more."""
        if not self.writeback.defer_touch(parent):
            return False
        now = self.meta.now()
        self._touches[parent] = max(now, self._touches.get(parent, 0))
        self.cache.own_touch(parent, now)
        return True

    def hold(self, directory: int, base: dict[str, Any], changes: dict[str, int]) -> bool:
        """Hold a ``setattr`` of ``directory`` (whose attributes are ``base``) back:
        ``changes`` by ``fs.setattr``'s argument names (module docstring).  Whether it
        did: not for a change of the group or the set-group-ID bit, nor when the lease is
        too short to hold it."""
        got = self.cache.held_dir_attrs.get(directory)
        held = {} if got is None else got.attrs
        if "gid" in changes and changes["gid"] != held.get("gid", base["gid"]):
            return False
        mode = held.get("mode", base["mode"] & 0o7777)
        if "mode" in changes and (changes["mode"] ^ mode) & st.S_ISGID:
            return False
        if not self.writeback.defer_touch(directory):
            return False
        self.cache.held_dir_attrs[directory] = HeldAttrs({**held, **changes}, self.meta.now())
        self.writeback.stats["dir_attrs_held"] += 1
        return True

    def untouch(self, directory: int) -> None:
        """``directory`` is removed before its attributes were sent: they never will be."""
        gone = self._touches.pop(directory, None) is not None
        gone |= self.cache.held_dir_attrs.pop(directory, None) is not None
        if gone:
            self.writeback.touch_sent(directory)

    def drop(self, directory: int, e: Exception) -> None:
        """A directory ``fsync`` answered EIO for them: never sent; what the mount showed
        is forgotten (the next stat asks the servers)."""
        if self.holds(directory):
            log.warning("attributes of directory %d dropped: %s", directory, e)
        self.untouch(directory)
        self.cache.forget_own([directory])

    def taken(self, parent: int, now: int) -> None:
        """A removal in ``parent`` made at ``now`` was taken: it moved the directory's
        times, so a touch no later is done."""
        t = self._touches.get(parent)
        if t is not None and now >= t:
            del self._touches[parent]
            self._settled(parent)

    async def before(self, objects: list[int], method: str, arg: Any) -> None:
        """Send the attributes call ``method`` on ``objects`` must follow: those of a
        directory among them, unless the call is about one of its entries."""
        touched = [
            o
            for o in objects
            if self.holds(o)
            and o not in self._sending
            and not self._about_another_entry(o, None, objects, method, arg)
        ]
        if touched:
            await self.send(touched)

    async def send(self, directories: list[int]) -> None:
        """Send the held attributes of ``directories``, each after everything held back
        in it (one ``fs.setattr`` each; a times-only one keeps the mount's leased
        listing).  Unanswered, one raises :class:`Unavailable` and write-back sends it
        again; a directory gone meanwhile has none to set."""
        for directory in directories:
            if not self.holds(directory) or directory in self._sending:
                continue
            self._sending.add(directory)
            try:
                await self._send_one(directory)
            finally:
                self._sending.discard(directory)

    async def _send_one(self, directory: int) -> None:
        await self._made_dir(directory)
        if directory in self.cache.held_dir_attrs:
            left = await self.writeback.send_held_in(directory)
            if any(self._is_pending_create(p.oid) for p in left):
                raise Unavailable(f"directory {directory}: its creates wait, so do its attributes")
        t = self._touches.get(directory)
        held = self.cache.held_dir_attrs.get(directory)
        sent = None if held is None else HeldAttrs(dict(held.attrs), held.now)
        kept = self.cache.own.get(directory)
        arg = setattr_arg(t, sent, 0 if kept is None else kept[0]["ct"])
        try:
            s = await self.meta.update_now([directory], "fs.setattr", arg)
        except Unavailable:
            raise
        except (FsError, OutOfDate) as e:
            log.info("attributes of directory %d not set: %s", directory, e)
            s = None
        if sent is not None and self.cache.held_dir_attrs.get(directory) == sent:
            del self.cache.held_dir_attrs[directory]
        if s is not None:
            self.cache.own_stat(directory, s)
        elif sent is not None:
            self.cache.forget_own([directory])
        if t is not None and self._touches.get(directory) == t:
            del self._touches[directory]
        self._settled(directory)

    def _settled(self, directory: int) -> None:
        """The schedule's entry for ``directory`` goes once nothing of it is held, and
        is due at once if something changed while it was sent."""
        self.writeback.touch_sent(directory, again=self.holds(directory))


def setattr_arg(touch: int | None, held: HeldAttrs | None, ct: int) -> dict[str, Any]:
    """The ``fs.setattr`` argument for a touch at time ``touch`` and held attributes
    ``held`` (``MetadataCache.held_dir_attrs``) of a directory whose ctime here is ``ct``.
    A held mtime wins over the touch (a touch after it would have dropped it); the ctime
    is the latest of theirs and the entry changes sent before."""
    arg: dict[str, Any] = {}
    now = touch or 0
    if held is not None:
        arg.update(held.attrs)
        now = max(now, held.now)
    if touch is not None and "mtime" not in arg:
        arg["touch"] = touch
    arg["now"] = max(now, ct)
    return arg
