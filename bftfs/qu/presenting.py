"""What a Q/U client presents as an operation's object history set, and the reads that
fill it in: its cached histories with the links it proved, the stray servers asked when
``q`` fresh others are short, a quorum's histories of objects deduction adds, and every
server's when a deduction is too wide (``repair.py``)."""

from __future__ import annotations

from collections.abc import Iterable

from bftfs.qu.classify import QUThresholds
from bftfs.qu.linkproofs import LinkProofs
from bftfs.qu.ohscache import HistoryCache
from bftfs.qu.rounds import QuorumRounds


class Presenter:
    """A client's object history sets (see the module docstring).

    Args:
        th: the cluster's thresholds.
        cache: the client's cached object history sets.
        rounds: the client's calls to the servers.
        links: the links the client has proven.
    """

    def __init__(
        self, th: QUThresholds, cache: HistoryCache, rounds: QuorumRounds, links: LinkProofs
    ) -> None:
        self.th = th
        self._cache = cache
        self._rounds = rounds
        self._links = links

    def present_view(self, objects: Iterable[int], fresh: dict[int, set[int]]) -> tuple:
        """:meth:`HistoryCache.present_view` with the links this client proved."""
        return self._cache.present_view(objects, fresh, self._links.facts)

    async def present_filled(self, objects: tuple[int, ...], fresh: dict[int, set[int]]) -> tuple:
        """:meth:`present_view`, after asking the servers not heard from yet when stray
        histories cannot be left out for want of ``q`` fresh others
        (:func:`core.present_view`); the OHS and its View."""
        shown, view, short = self.present_view(objects, fresh)
        if short:
            todo = tuple(sorted(short))
            targets = sorted(set().union(*short.values()))
            # Up to t of them may be down, and a dead server's call only fails at its
            # timeout: once all but t answered, the rest get two probe intervals (as in
            # ``QuorumRounds.request``).  Waiting for all of them cost every operation the
            # full timeout while a server whose stray history this client cached was down
            # (found by the campaign, bftfs/testing/campaign.py).  With ``t`` or fewer to
            # ask (a stray beside one crashed server), they all get just the two intervals.
            await self._read_every(todo, targets, fresh)
            shown, view, _ = self.present_view(objects, fresh)
        return shown, view

    async def fetch_missing(self, objects: tuple[int, ...], fresh: dict[int, set[int]]) -> None:
        """Histories of objects added for deduction, read from a quorum (``qu.history``)."""
        todo = tuple(o for o in objects if len(fresh.get(o, ())) < self.th.q)
        if todo:
            targets = self._cache.targets(todo)
            got = await self._rounds.histories(todo, targets, self.th.q, self.th.q)
            self._cache.absorb(todo, got, fresh)

    async def widen(self, objects: tuple[int, ...], fresh: dict[int, set[int]]) -> None:
        """The histories of ``objects`` from every server (not only a quorum), at most
        ``th.objects`` per request; as in :meth:`present_filled`, up to ``t`` of them
        may be down, so once all but ``t`` answered the rest get two probe intervals."""
        width = self.th.objects
        for i in range(0, len(objects), width):
            todo = objects[i : i + width]
            await self._read_every(todo, self._cache.targets(todo), fresh)

    async def _read_every(
        self, todo: tuple[int, ...], targets: list[int], fresh: dict[int, set[int]]
    ) -> None:
        """The histories of ``todo`` from every one of ``targets``: once all but ``t``
        answered, the rest get two probe intervals (they may be down)."""
        settle = max(0, len(targets) - self.th.t)
        got = await self._rounds.histories(todo, targets, len(targets), None, settle=settle)
        self._cache.absorb(todo, got, fresh)
