"""What this client caches of the servers' state, and the reads that go through it.

Directory entries and parents name the objects of an update; attributes this client's own
updates produced answer ``getattr`` for ``attr_ttl``; an open file's attributes are fresh
by close-to-open.  Why each is safe is the subject of the docstring of
:mod:`bftfs.fs.filesystem`.  The methods here keep the caches' rules in one place: an own
update's stat yields to a newer one the servers answer (``_observed``), the name cache is
bounded, and an open file with buffered writes answers its buffered size and times
(``_attr``).
"""

from __future__ import annotations

from typing import Any

import trio

from bftfs.fs.attrs import Attr, attr_from_stat
from bftfs.fs.meta import Meta

#: Cached directory entries in all (the cache is cleared when it grows past this).
NAME_CACHE_LIMIT = 200_000


class Caches(Meta):
    """The attribute, name and parent caches, and the reads that consult them."""

    def _own_stat(self, oid: int, s: dict[str, Any]) -> None:
        self._own[oid] = (s, trio.current_time())
        if s["k"] == "d":
            self._parents[oid] = s["p"]
        f = self._files.get(oid)
        if f is not None and s["k"] == "f":
            f.reset(s, own=True)

    def _learn(self, parent: int, name: bytes, oid: int, code: int) -> None:
        names = self._names.get(parent)
        if names is None:
            if sum(len(v) for v in self._names.values()) > NAME_CACHE_LIMIT:
                self._names.clear()
            names = self._names[parent] = {}
        names[name] = (oid, code)

    def _forget(self, parent: int, name: bytes | None = None) -> None:
        if name is None:
            self._names.pop(parent, None)
        else:
            self._names.get(parent, {}).pop(name, None)

    def _attr(self, oid: int, s: dict[str, Any]) -> Attr:
        f = self._files.get(oid)
        if f is not None and s["k"] == "f" and (f.buffered or f.opens):
            s = dict(f.st, size=f.size)
            if f.dirty and s.get("al") is not None:  # buffered data will be stored too
                s["al"] += sum(len(b) for b in f.dirty.values())
                s["inl"] = f.size <= self.inline
            if f.mtime is not None:
                s["mt"] = f.mtime
            for key, value in f.attrs.items():
                if key == "mode":
                    s["mode"] = (s["mode"] & ~0o7777) | (value & 0o7777)
                else:
                    s["at" if key == "atime" else key] = value
        return attr_from_stat(oid, s, self.bs)

    def _observed(self, oid: int, s: dict[str, Any]) -> None:
        """The servers answered ``s`` for ``oid``: attributes our own update produced
        earlier are no longer the freshest, so they stop answering ``getattr`` and
        ``lookup`` (a lookup of another name for the object, after another client changed
        it, answered our older size, and the kernel cut its pages to it)."""
        own = self._own.get(oid)
        if own is not None and s["v"] > own[0]["v"]:
            del self._own[oid]

    def _fresh(self, oid: int) -> dict[str, Any] | None:
        """Attributes known fresh without a query: an open file's (close-to-open) or those
        our own update produced within ``attr_ttl``; else None."""
        f = self._files.get(oid)
        if f is not None and f.opens:
            return f.st
        own = self._own.get(oid)
        if own is not None and trio.current_time() - own[1] < self.attr_ttl:
            return own[0]
        return None

    async def _stat(self, oid: int) -> dict[str, Any]:
        """Fresh attributes of ``oid`` (a query), unless our own update made them lately."""
        own = self._own.get(oid)
        if own is not None and trio.current_time() - own[1] < self.attr_ttl:
            return own[0]
        s = await self._query(oid, "fs.stat")
        self._observed(oid, s)
        if s["k"] == "d":
            self._parents[oid] = s["p"]
        return s

    async def _entry(self, parent: int, name: bytes, fresh: bool = False) -> tuple[int, int]:
        """(object id, type code) of ``name`` in ``parent``: the cache, else a query."""
        got = None if fresh else self._names.get(parent, {}).get(name)
        if got is not None:
            return got
        oid, code = await self._query(parent, "fs.lookup", name)
        self._learn(parent, name, oid, code)
        return oid, code
