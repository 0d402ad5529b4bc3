"""The file system's past on an ``engine = "fab"`` cluster: :class:`~bftfs.fs.history.past.Past`
with each object's versions read from FaB nodes (``fab/versions.py``) instead of walked
from Q/U's chains.

What :class:`Past` answers stays the same - :meth:`history`, :meth:`state_at`,
:meth:`resolve`, :meth:`tree`/:meth:`trees`, :meth:`content`, snapshots - and so do the
commands and views built on it (``bftfs log``, ``cat --at``, ``mount --at``,
``.snapshots``).  Only where versions come from differs: one ``fab.versions`` read per
batch of objects (:meth:`FabMetaClient.versions`, ``f + 1`` matching answers), each
version with its deterministic time (never unknown, so no answer is :class:`Undecided`),
the thinned records retention left (gaps), and whether the history reaches the object's
creation (else a moment before the oldest version is :class:`Reclaimed`).

Versions are read up to a slot the client saw executed.  A moment asked for after the
last such slot was seen brings a :meth:`FabMetaClient.sync` first (an ordered round), so
that every version stored before the moment is in the answer.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import Any

from bftfs.fab.metaclient import FabMetaClient
from bftfs.fs.clients import BlockClient, Seal
from bftfs.fs.history.changes import changes
from bftfs.fs.history.past import Past, Progress
from bftfs.fs.history.versions import ObjectHistory, Version, present
from bftfs.qu.canon import canonical
from bftfs.qu.timestamp import DIGEST_SIZE, Timestamp


class _NoReader:
    """What :func:`bftfs.cli.restore.patient` sets on a Q/U reader: FaB reads do not wait."""

    on_wait: Any = None


class FabPast(Past):
    """History reads of a FaB cluster (module docstring).

    Args:
        meta: the cluster's :class:`~bftfs.fab.metaclient.FabMetaClient`.
    """

    def __init__(
        self, meta: FabMetaClient, rw: BlockClient, block_size: int, *, seal: Seal | None = None
    ) -> None:
        super().__init__(meta, _NoReader(), rw, block_size, seal=seal)  # type: ignore[arg-type]
        self.meta = meta
        #: Objects' histories read by :meth:`_prefetch` for the walks of one tree.
        self._read: dict[int, ObjectHistory] = {}
        #: Wall-clock ns before the last sync: versions stored before it are in answers.
        self._synced_ns = 0

    async def _fresh(self, until_ns: int | None) -> None:
        """Sync once if a moment (None: now) lies after the last sync."""
        if until_ns is not None and until_ns < self._synced_ns:
            return
        now = time.time_ns()
        await self.meta.sync()
        self._synced_ns = now
        self._counts["syncs"] += 1

    async def _histories_of(
        self, oids: Sequence[int], until_ns: int | None
    ) -> dict[int, ObjectHistory]:
        await self._fresh(until_ns)
        got = await self.meta.versions(oids)
        self._counts["version reads"] += 1
        return {oid: self._build(oid, answer) for oid, answer in got.items()}

    def _build(self, oid: int, answer: list[Any]) -> ObjectHistory:
        """An object's history from its nodes' answer ``[complete, entries]`` (oldest
        first): repeats folded, thinned records kept as gaps, as :meth:`Past.history`."""
        complete, entries = answer
        hist = ObjectHistory(oid, complete=complete)
        kept: list[Version] = []
        links: list[tuple[int | None, Version | None, bool]] = []
        prev: dict[str, Any] | None = None
        gap = False
        for i, (slot, t, client, raw, thinned) in enumerate(entries):
            if thinned:
                links.append((t, None, True))
                hist.thinned += 1
                gap = True
                continue
            state = self._unpack(oid, raw)
            if i == hist.thinned and (gap or not complete):
                kinds: tuple[str, ...] = ("oldest kept",)
            else:
                kinds = changes(prev, state) or (("kept",) if gap else ())
            prev, gap = state, False
            if kinds:
                digest = hashlib.blake2b(canonical([slot, raw]), digest_size=DIGEST_SIZE)
                lt = Timestamp(t, False, client, digest.digest())
                kept.append(Version(oid, lt, t, client, state, kinds))
            links.append((t, kept[-1] if kept else None, False))
        hist.versions = list(reversed(kept))
        hist.links = list(reversed(links))
        return hist

    async def history(self, oid: int) -> ObjectHistory:
        """Every kept version of ``oid`` (cached for this object's lifetime)."""
        hist = self._histories.get(oid)
        if hist is None:
            hist = (await self._histories_of([oid], None))[oid]
            self._histories[oid] = hist
        return hist

    async def state_at(self, oid: int, time_ns: int) -> Version | None:
        """As :meth:`Past.state_at`, from the object's versions."""
        found = self._histories.get(oid) or self._read.get(oid)
        hist = found or (await self._histories_of([oid], time_ns))[oid]
        return present(hist.at(time_ns))

    async def _prefetch(self, oids: Sequence[int], moments: Sequence[int], whole: bool) -> None:
        """The versions of a batch of objects a tree is to visit, read at once."""
        todo = [o for o in dict.fromkeys(oids) if o not in self._histories and o not in self._read]
        if todo:
            got = await self._histories_of(todo, None if whole else max(moments))
            (self._histories if whole else self._read).update(got)

    async def _at_moments(
        self, oid: int, moments: Sequence[int], whole: bool
    ) -> list[Version | None]:
        if whole:
            hist = await self.history(oid)
        else:
            found = self._histories.get(oid) or self._read.get(oid)
            hist = found or (await self._histories_of([oid], max(moments)))[oid]
        return hist.present_at(moments)

    async def trees(
        self,
        path: str,
        moments: Sequence[int],
        *,
        whole: bool = False,
        progress: Progress | None = None,
    ) -> list[dict[str, Version]]:
        """As :meth:`Past.trees`; the histories read for it are not kept after it."""
        try:
            return await super().trees(path, moments, whole=whole, progress=progress)
        finally:
            self._read.clear()

    def statistics(self) -> str:
        """What the history reads cost."""
        return (
            f"history: {self.meta.statistics().operations} FaB operations, "
            f"{len(self._histories)} objects; "
            + ", ".join(
                f"{k} {v}" for k, v in sorted({**self._counts, **self.meta.history}.items())
            )
        )
