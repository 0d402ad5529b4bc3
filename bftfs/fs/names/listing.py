"""readdir: a directory's entries with their attributes, in the mount under a lease.

One directory query (none when the listing is leased and known whole here), then the
entries' attributes, up to the cluster's ``max_objects`` (32 in a new cluster) per query
(``fs.statmany``), those known here costing nothing.
"""

from __future__ import annotations

import logging
import stat as st
from collections.abc import Callable
from typing import Any

import trio

from bftfs import fsobjects as obj
from bftfs.fs.caches import MetadataCache
from bftfs.fs.clients import Meta
from bftfs.fs.errors import NotFound
from bftfs.fs.files import Attr
from bftfs.fs.names.held import held_here, own_made_dir, own_unseen_file
from bftfs.fsobjects import ROOT

log = logging.getLogger(__name__)

#: Attribute queries (of up to ``max_objects`` objects each) in flight at once for one readdir.
READDIR_CONCURRENCY = 16

#: A listing's stats by object id (None: the object is gone, or not asked yet).
Stats = dict[int, dict[str, Any] | None]


def _listed_dir(ino: int) -> Attr:
    """A directory as a listing's ``.`` or ``..`` entry: its number and type are all the
    kernel reads of it there (``Listing.listing_heads``)."""
    return Attr(ino, st.S_IFDIR, 2, 0, 0, 0, 0, 0, 0, 0, 4096, 0)


class Listing:
    """Directory listings.  Given the protocol calls, the cache and the names of the
    creates this mount has not sent in a directory (``pending_names``)."""

    def __init__(
        self, meta: Meta, cache: MetadataCache, pending_names: Callable[[int], list[bytes]]
    ) -> None:
        self.meta = meta
        self.cache = cache
        self.config = meta.config
        self.pending_names = pending_names

    async def readdir(self, ino: int) -> list[tuple[bytes, Attr]]:
        """Every entry with its attributes, sorted by name (no ``.``/``..``): one directory
        query, then the entries' attributes, ``max_objects`` per query (``fs.statmany``).

        The objects of one query share a preferred quorum (object id mod ``n``), which is the
        case for every entry created in this directory (see :meth:`Meta.new_oid`); entries whose
        attributes are fresh here cost nothing.  ``ls -l`` of 500 names: 63 rounds, not 500.
        """
        ents = await self._entries(ino)
        stats: Stats = {}
        groups: dict[int, list[int]] = {}
        for oid, _ in ents.values():
            if oid in stats or oid in groups.get(oid % self.config.n, ()):
                continue
            fresh = self._known_stat(oid)
            if fresh is not None:
                stats[oid] = fresh
            else:
                groups.setdefault(oid % self.config.n, []).append(oid)
        limit = trio.Semaphore(READDIR_CONCURRENCY)
        async with trio.open_nursery() as n:
            for oids in groups.values():
                width = self.config.max_objects
                for i in range(0, len(oids), width):
                    n.start_soon(self._stat_many, oids[i : i + width], stats, limit)
        await self._ask_missing(ino, ents, stats, limit)
        # An entry whose object is gone raced with a removal: it is left out (and said in
        # the mount log: a listing that lacks a name the mount made is what a user reports).
        gone = [name for name, (oid, _) in ents.items() if stats.get(oid) is None]
        if gone:
            log.info(
                "listing of %d: %d entries left out, their objects gone: %r",
                ino,
                len(gone),
                gone[:4],
            )
        return [
            (name, self.cache.attr(oid, stats[oid]))  # type: ignore[arg-type]
            for name, (oid, _) in ents.items()
            if stats.get(oid) is not None
        ]

    async def _entries(self, ino: int) -> dict[bytes, Any]:
        """Directory ``ino``'s entries: known here under a lease, else one query."""
        local = self._local_entries(ino)
        if local is not None:
            assert self.meta.leases is not None
            self.meta.leases.stats["local_listings"] += 1
            return local
        d = await self.meta.query(ino, "fs.readdir")
        ents = obj.entries(d)
        self.cache.parents[ino] = d["p"]
        self.cache.listed_whole(ino, {name: (oid, code) for name, (oid, code) in ents.items()})
        return ents

    async def _ask_missing(
        self, ino: int, ents: dict[bytes, Any], stats: Stats, limit: trio.Semaphore
    ) -> None:
        """An object a several-object query found missing is asked alone before its entry
        is left out: such an answer lacked objects made an instant before, which a query
        of each found (issue 60 item 7: with a node just stopped, the last files a copy
        made were missing from `diff -r` and from `rm -rf`'s listing)."""
        missing = {oid for oid, _ in ents.values() if oid in stats and stats[oid] is None}
        if not missing:
            return
        async with trio.open_nursery() as n:
            for oid in sorted(missing):
                n.start_soon(self._stat_one, oid, stats, limit)
        found = sum(1 for oid in missing if stats.get(oid) is not None)
        if found:
            log.info("listing of %d: %d objects found when asked alone", ino, found)

    async def _stat_many(self, oids: list[int], stats: Stats, limit: trio.Semaphore) -> None:
        async with limit:
            got = await self.meta.query(sorted(oids), "fs.statmany")
        for oid in oids:
            s = got.get(str(oid))
            stats[oid] = s
            if s is not None:
                self.cache.observed(oid, s)
            if s is not None and s["k"] == "d":
                self.cache.parents[oid] = s["p"]

    async def _stat_one(self, oid: int, stats: Stats, limit: trio.Semaphore) -> None:
        async with limit:
            try:
                s = await self.meta.query(oid, "fs.stat")
            except NotFound:
                return
        stats[oid] = s
        self.cache.observed(oid, s)
        if s["k"] == "d":
            self.cache.parents[oid] = s["p"]

    def _local_entries(self, ino: int) -> dict[bytes, Any] | None:
        """Directory ``ino``'s entries without a round, when this mount holds a lease on
        it and knows its listing whole under it: nobody else changes the directory while
        the lease lives, so the listing, with the creates this mount has not sent yet
        (``pending_names``; its held-back removals left the listing already), is what the
        servers will hold.  None when a name's object is not in the cache (the round then
        answers)."""
        leases = self.meta.leases
        listed = None if leases is None else leases.listing(ino)
        if listed is None:
            return None
        known = self.cache.names.get(ino, {})
        out: dict[bytes, Any] = {}
        for name in listed | set(self.pending_names(ino)):
            entry = known.get(name)
            if entry is None:
                return None
            out[name] = entry
        return out

    def held_names(self, ino: int) -> list[tuple[bytes, int, int]] | None:
        """Directory ``ino``'s entries as ``(name, object id, type code)`` when the mount
        holds its listing whole (:meth:`_local_entries`), else None (:meth:`readdir`
        asks).  Synchronous, so the mount answers a walk's ``readdir`` without its event
        loop; the entries' attributes, where the kernel needs them, are :meth:`known_attr`."""
        ents = self._local_entries(ino)
        if ents is None:
            return None
        assert self.meta.leases is not None  # (_local_entries found the listing leased)
        self.meta.leases.stats["local_listings"] += 1
        return [(name, oid, code) for name, (oid, code) in ents.items()]

    def known_attr(self, oid: int) -> Attr | None:
        """``oid``'s attributes when known without a round (:meth:`_known_stat`), else None."""
        s = self._known_stat(oid)
        return None if s is None else self.cache.attr(oid, s)

    def listing_heads(self, ino: int) -> tuple[Attr, Attr] | None:
        """``.`` and ``..`` of a directory whose listing is answered in the mount
        (:meth:`_local_entries`): the kernel takes only their inode numbers and types from
        a listing (readdirplus links no dentry for them), so their other attributes are
        not asked for: asking would send the creates held back in the directory, as a
        ``stat`` of it must (its times change with them).  The directory is leased here,
        so no other client removed it."""
        leases = self.meta.leases
        parent = ROOT if ino == ROOT else self.cache.parents.get(ino)
        if leases is None or parent is None or leases.listing(ino) is None:
            return None
        return _listed_dir(ino), _listed_dir(parent)

    def _known_stat(self, oid: int) -> dict[str, Any] | None:
        """Attributes of ``oid`` known without a round: an open or held file's, a create's
        this mount has not sent, or its own update's within their timeout (or however old,
        for an object nobody else can have changed: a directory made and held here, a file
        made here and seen by no other client, ``names/held.py``)."""
        f = self.cache.files.get(oid)
        if f is not None and (f.opens or held_here(self.meta.leases, oid)):
            return f.st
        local = self.cache.local_stat(oid)
        if local is not None:
            return local
        fresh = self.cache.fresh(oid)
        if fresh is not None:
            return fresh
        own = own_made_dir(self.cache, self.meta.leases, oid)
        return own if own is not None else own_unseen_file(self.cache, self.meta.leases, oid)
