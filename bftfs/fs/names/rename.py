"""rename(2) as one atomic multi-object Q/U update (``fs.rename``).

The update names both directories, the moved object, the replaced one and, when a
directory changes parent, the ancestors of its new parent up to its old parent or the
root: the servers walk them to prove the directory is not moved under itself.  Parents
are taken from the cache first and asked again (``fresh``) once an update was refused as
stale.
"""

from __future__ import annotations

from bftfs import fsobjects as obj
from bftfs.fs.caches import MetadataCache
from bftfs.fs.clients import MAX_ATTEMPTS, Meta, OutOfDate
from bftfs.fs.errors import CrossDevice, FsError, Invalid, NotDir, NotFound, check_name
from bftfs.fs.files.reclaim import Reclaimer
from bftfs.fsobjects import RENAME_EXCHANGE, RENAME_NOREPLACE, ROOT
from bftfs.qu.timestamp import NARROW_OBJECTS


class Rename:
    """One rename (module docstring)."""

    def __init__(
        self, meta: Meta, cache: MetadataCache, reclaimer: Reclaimer, name_max: int
    ) -> None:
        self.meta = meta
        self.cache = cache
        self.reclaimer = reclaimer
        self.name_max = name_max

    async def _parent_of(self, d: int, fresh: bool) -> int:
        if not fresh and d in self.cache.parents:
            return self.cache.parents[d]
        s = await self.meta.query(d, "fs.stat")
        if s["k"] != "d":
            raise NotDir()
        self.cache.parents[d] = s["p"]
        return int(s["p"])

    async def _chain(self, start: int, moving: int, stop: int, fresh: bool) -> list[int]:
        """The directories from ``start`` up to (not including) ``stop`` or the root: the
        objects the servers walk to prove ``moving`` is not an ancestor of ``start``."""
        out: list[int] = []
        cur = start
        while cur not in (stop, ROOT):
            if cur == moving:
                raise Invalid("a directory cannot move under itself")
            out.append(cur)
            if len(out) > NARROW_OBJECTS:
                break
            cur = await self._parent_of(cur, fresh)
        return out

    async def run(
        self, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int = 0
    ) -> None:
        """rename(2): one atomic multi-object update (replacing an existing target).

        Objects: both directories, the moved object, the replaced one, and - when a directory
        changes parent - the ancestors of its new parent up to its old parent or the root.
        When those are more than 8 objects (``NARROW_OBJECTS``, what every node accepts),
        EXDEV (``mv`` then copies).
        """
        check_name(name, self.name_max)
        check_name(new_name, self.name_max)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == (
            RENAME_NOREPLACE | RENAME_EXCHANGE
        ):
            raise Invalid("rename flags")
        fresh = False
        for _ in range(MAX_ATTEMPTS):
            o, ocode = await self.cache.entry(parent, name, fresh)
            if o in (parent, new_parent):
                raise Invalid("a directory cannot move under itself")
            try:
                t, tcode = await self.cache.entry(new_parent, new_name, fresh)
            except NotFound:
                t, tcode = None, 0
            objs = {parent, new_parent, o}
            if t is not None:
                objs.add(t)
            if parent != new_parent:
                if ocode == obj.DIR_TYPE:
                    objs.update(await self._chain(new_parent, o, parent, fresh))
                if t is not None and tcode == obj.DIR_TYPE and flags & RENAME_EXCHANGE:
                    objs.update(await self._chain(parent, t, new_parent, fresh))
            if len(objs) > NARROW_OBJECTS:
                raise CrossDevice("rename spans more objects than one Q/U update may")
            arg = {
                "sp": parent,
                "sn": name,
                "dp": new_parent,
                "dn": new_name,
                "o": o,
                "t": t,
                "flags": flags,
                "now": self.meta.now(),
            }
            if self.meta.leases is not None:  # named elsewhere: others may reach them there
                self.meta.leases.unseen.seen([o] if t is None else [o, t])
            try:
                stats = await self.meta.update(sorted(objs), "fs.rename", arg)
            except (OutOfDate, NotFound) as e:
                self.cache.forget(parent)
                self.cache.forget(new_parent)
                if isinstance(e, NotFound) and fresh:
                    raise
                fresh = True
                continue
            for key, s in stats.items():
                self.cache.own_stat(int(key), s)
            if stats:
                self.cache.forget(parent, name)
                self.cache.forget(new_parent, new_name)
                if flags & RENAME_EXCHANGE and t is not None:
                    self.cache.learn(parent, name, t, tcode)
                self.cache.learn(new_parent, new_name, o, ocode)
            if t is not None and str(t) in stats:  # a file renamed over loses a name
                await self.reclaimer.unlinked(t, stats[str(t)])
            return
        raise FsError("rename: directories kept changing")
