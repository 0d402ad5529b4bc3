"""A Q/U client's cached object history sets (L2521-2524) and whom it leaves out of them.

The client keeps the last ``<RH, alpha>`` every server returned for every object it touched,
and sends a request conditioned on that cache, without the histories of servers proven
malevolent (more than ``b`` others culled their authenticators, L2659-2664: left out for
good) or stray in the running operation (:func:`bftfs.qu.core.present_view`).  Which
servers a round goes to follows from the same sets (:meth:`HistoryCache.targets`).  Pure:
no I/O, no clock.

**Two tiers.**  The histories of the :data:`HOT` objects answered last are kept parsed;
older ones, up to :data:`MAX_CACHED` objects in all, as their packed bytes (one ``bytes``
an object), parsed again when a round needs them.  Parsed, an object's six entries are
about 16 objects CPython's collector tracks: a mount that had touched 32 768 objects held
590 000 of them, and each of its full collections walked them all (0.7 s, a stall of every
request, issue 62's aged cluster).  Bytes are not tracked.
"""

from __future__ import annotations

import itertools
import logging
import weakref
from collections import Counter
from collections.abc import Iterable, Mapping

from bftfs.net import moved
from bftfs.qu import core
from bftfs.qu.canon import pack, unpack
from bftfs.qu.classify import QUThresholds
from bftfs.qu.history import OHSEntry
from bftfs.qu.links import Facts
from bftfs.qu.reply import Reply
from bftfs.qu.request import entry_bytes, parse_entry
from bftfs.qu.timestamp import ZERO

log = logging.getLogger(__name__)

#: Objects whose histories a cache keeps, the least recently answered about dropped first.
#: Unbounded, a mount's cache grew with every object it ever touched (a long PostMark:
#: every file made and sent), and with it its memory and the collector's full passes.  A
#: dropped history costs the next request on that object a round: it presents none, and
#: the servers' replies bring theirs (as for an object the client never saw).
MAX_CACHED = 32768
#: Of those, the objects answered last whose histories are kept parsed (the others packed).
HOT = 2048


class HistoryCache:
    """The cached OHS per object, and the servers whose histories are left out."""

    def __init__(
        self, th: QUThresholds, faults: Counter[tuple[int, str]], *, source: object = None
    ) -> None:
        """Args:
        th: thresholds of the cluster.
        faults: where to count the faults replies show (``culled``, ``malevolent``;
            the client's ``faults``).
        source: the endpoint the client talks through: only its announcements that a
            node was replaced concern this cache (``net/moved.py``).
        """
        self.th = th
        self.faults = faults
        self.source = source
        self.max_cached = MAX_CACHED
        self.hot = HOT
        #: Parsed histories, the least recently answered first.
        self._cache: dict[int, dict[int, OHSEntry]] = {}
        #: Packed histories (:func:`_packed`) of objects answered before those, oldest first.
        self._cold: dict[int, bytes] = {}
        #: Servers a view or layout replaced while this cache lived (:meth:`_stale`).
        self.renewed: set[int] = set()
        #: Servers proven malevolent: left out from then on.
        self.excluded: set[int] = set()
        #: Stray-history servers of the running operation.
        self.suspects: set[int] = set()
        _CACHES.add(self)

    def forget_server(self, server: int) -> None:
        """A view or a layout replaced ``server`` by a new machine (``net/moved.py``): its
        cached histories came from the old one, under a key the servers no longer accept,
        so they go, and the new machine starts with a clean record.  Its culls prove
        nobody malevolent from now on (:meth:`_stale`).  The packed histories go whole
        (the next round on one of those objects presents none, as for a new object)
        rather than be parsed to find the server's."""
        self._cold.clear()
        for oid, ohs in self._cache.items():
            if server in ohs:
                self._cache[oid] = _without(ohs, {server})
        self.excluded.discard(server)
        self.suspects.discard(server)
        self.renewed.add(server)

    def _stale(self, reporter: int, oid: int, server: int) -> bool:
        """Whether ``reporter``'s cull of ``server``'s history of ``oid`` may come from a
        replacement rather than a forgery, and so proves nothing (:func:`core.malevolent`).

        - ``reporter`` is a new machine: it checks its entry in each history under its
          new key, and cannot tell a forged entry from one made under the old machine's
          key.  Those are many and last: the client's cached histories of quiet objects,
          and what a peer serves until its background pass re-authenticated its stored
          histories (``node/rekey.py``), also after the client took the layout (issue 66:
          the client heard of it from one node while another still served the old
          entries).  So a new machine's culls count for nobody; the other servers' still
          prove a forger (every correct one culls a forged entry for it).
        - ``server`` is a new machine and the culled history is its old one's (the cache
          holds none of the new one's for ``oid``: the request went out before the client
          heard of the replacement; rounds on an object run one after another).  A peer
          that took the layout drops those silently (``replica.cull``); one that had not
          yet reports them.  A cull of the new machine's own history counts.
        """
        return reporter in self.renewed or (server in self.renewed and server not in self._get(oid))

    def _get(self, oid: int) -> Mapping[int, OHSEntry]:
        """The cached OHS of ``oid`` (the cache's own, to be read only), parsed again if it
        was packed; empty if none is cached."""
        ohs = self._cache.get(oid)
        if ohs is not None:
            return ohs
        packed = self._cold.pop(oid, None)
        if packed is None:
            return {}
        try:
            ohs = _parsed(packed, self.th.n)
        except ValueError as e:  # (bytes this process packed: not expected)
            log.warning("cached histories of object %d unreadable, forgotten: %s", oid, e)
            return {}
        self._cache[oid] = ohs
        self._bound()
        return ohs

    def _bound(self) -> None:
        """Pack the parsed histories past :attr:`hot`, the least recently answered first,
        and forget the packed ones past :attr:`max_cached` in all."""
        cache, cold = self._cache, self._cold
        if len(cache) > self.hot:
            for oid in list(itertools.islice(cache, len(cache) - self.hot)):
                cold[oid] = _packed(cache.pop(oid))
        over = len(cache) + len(cold) - self.max_cached
        if over > 0:
            for oid in list(itertools.islice(cold, over)):
                del cold[oid]
        over = len(cache) - self.max_cached  # (a bound below ``hot``)
        if over > 0:
            for oid in list(itertools.islice(cache, over)):
                del cache[oid]

    def cached(self, oid: int) -> dict[int, OHSEntry]:
        """The cached OHS of ``oid`` (a copy)."""
        return dict(self._get(oid))

    def mohs(self, objects: Iterable[int]) -> dict[int, Mapping[int, OHSEntry]]:
        """The cached multi-OHS of ``objects``, each object's OHS the cache's own, to be
        read only: its two readers (:meth:`present_view`, :meth:`absorb`) build new ones.
        Copied, the OHS of every object of every round was copied twice (a mount's
        write-back of 2 200 creates: 4 % of its profile's samples in that copy)."""
        return {oid: self._get(oid) for oid in objects}

    def targets(self, objects: Iterable[int]) -> list[int]:
        """Preferred order, with servers whose histories we leave out (stray or proven
        malevolent) last: a quorum of servers whose histories count is what makes the
        next classification complete."""
        order = core.preferred_order(max(objects), self.th.n)
        last = self.excluded | self.suspects
        return (
            [s for s in order if s not in last]
            + [s for s in order if s in last and s not in self.excluded]
            + [s for s in order if s in self.excluded]
        )

    def left_out(self) -> frozenset[int]:
        """Servers whose histories the running operation leaves out (stray or proven
        malevolent): a round's replies from them do not make its quorum
        (``QuorumRounds.request``)."""
        return frozenset(self.excluded | self.suspects)

    def present_view(
        self, objects: Iterable[int], fresh: dict[int, set[int]], facts: Facts
    ) -> tuple:
        """:func:`core.present_view` of the cached histories (the OHS, its :class:`View`,
        the objects short of fresh histories); remembers whom it left out."""
        cached = self.mohs(objects)
        shown, view, short = core.present_view(cached, self.th, fresh, self.excluded, facts)
        for oid, ohs in cached.items():
            if len(ohs) != len(shown[oid]):
                self.suspects |= set(ohs) - set(shown[oid]) - self.excluded
        return shown, view, short

    def latest(self, objects: tuple[int, ...]) -> tuple:
        """The newest timestamp cached for each of ``objects`` (how far they have moved)."""
        return tuple(
            max((c.lt for e in self._get(o).values() for c in e.rh), default=None) or ZERO
            for o in objects
        )

    def absorb(
        self, objects: tuple[int, ...], replies: Mapping[int, Reply], fresh: dict[int, set[int]]
    ) -> None:
        """Fold ``replies`` into the cache (line 602), mark their servers fresh for
        ``objects``, count the culls they report and leave out servers they prove
        malevolent."""
        # Judged on the histories the request was built from, before the replies'.
        stale = self._stale if self.renewed else None
        proven = core.malevolent(replies.items(), list(objects), self.th.b, stale) - self.excluded
        merged = core.merge(self.mohs(objects), objects, replies)
        cache = self._cache
        for oid in objects:
            cache.pop(oid, None)  # the most recently answered last (packed, dropped last)
            self._cold.pop(oid, None)
            cache[oid] = merged[oid]
            fresh.setdefault(oid, set()).update(replies)
        self._bound()
        if self.renewed:
            self._drop_unverifiable(objects, replies)
        for rep in replies.values():
            for culled in rep.culled:
                for s in set(culled):
                    self.faults[(int(s), "culled")] += 1
        for s in proven:
            self.faults[(int(s), "malevolent")] += 1
            by = sorted(r for r, rep in replies.items() if any(s in c for c in rep.culled))
            log.warning(
                "Q/U server %s is malevolent (its history culled by more than b: by %s)", s, by
            )
        self.excluded |= proven

    def _drop_unverifiable(self, objects: tuple[int, ...], replies: Mapping[int, Reply]) -> None:
        """Forget the cached histories a new machine culled of servers that did not answer
        this round: their entries for it were made under the old machine's key, and their
        servers (down, or slow) send no fresh ones.

        Presented still, they made the new machine hash a multi-OHS without them and the
        others one with them, so its timestamps differed from theirs: with one node of a
        group of six down, every update needed the new machine's candidate to match, none
        did, and the client set barrier after barrier (a mount that lived through a node's
        replacement delivered nothing at its unmount; ``t4_groups_replace``).  Forgotten,
        they are missing at every server alike (a missing and a culled history hash alike,
        ``history.multi_ohs_digest``); the server's next reply brings its history back.  Whoever
        the new machine is, it makes the client forget only what it could not refresh."""
        for r in self.renewed.intersection(replies):
            for oid, culled in zip(objects, replies[r].culled, strict=False):
                held = self._cache.get(oid, {})
                gone = {s for s in culled if s not in replies and s in held}
                if gone:
                    self._cache[oid] = _without(held, gone)


def _packed(ohs: Mapping[int, OHSEntry]) -> bytes:
    """An OHS as one ``bytes``: the packed list of its entries' packed items."""
    return pack([entry_bytes(s, e) for s, e in ohs.items()])


def _parsed(packed: bytes, n: int) -> dict[int, OHSEntry]:
    """The OHS :func:`_packed` made (equal to the one packed; bytes this process made)."""
    return dict(parse_entry(raw, n) for raw in unpack(packed))


def _without(ohs: Mapping[int, OHSEntry], servers: set[int]) -> dict[int, OHSEntry]:
    """``ohs`` less the histories of ``servers``: a new mapping, never ``ohs`` changed,
    since :meth:`HistoryCache.mohs` hands the cached ones out as they are."""
    return {s: e for s, e in ohs.items() if s not in servers}


#: Every live cache of this process: each forgets a server its endpoint says was replaced
#: (``net/moved.py``).
_CACHES: weakref.WeakSet[HistoryCache] = weakref.WeakSet()


def _forget_everywhere(source: object, server: int) -> None:
    for cache in list(_CACHES):
        if cache.source is source:
            cache.forget_server(server)


moved.listen(_forget_everywhere)
