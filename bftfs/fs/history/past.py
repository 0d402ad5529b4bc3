"""The file system's past: versions of files and directories, paths and contents as they
were at a moment (issue 17).

Built on the versions the nodes keep, read Byzantine-safely (:mod:`bftfs.qu.past`: ``b + 1``
servers vouch for every version, states are checked against agreed digests, times are the
median of the servers' own clocks, and unknown where fewer than ``2b + 1`` servers still
report the version) and on PASIS reads of the past
(:meth:`RWClient.read_as_of`, cross-checksum validated like any read: ``content.py``).
What the reads answer with (versions, histories, errors) is ``versions.py``.

- A **version** of an object is one link of its conditioned-on chain whose state differs
  from the one before it (a repair's copy repeats a state and is folded into it; lease
  bookkeeping alone is not a change users see, see :func:`changes`).
- The **state at time T** of an object is that of its newest version stored at or before T
  (no version: the object did not exist yet).  A version of unknown time is never taken
  for one stored before T: where one could be the version current at T, the answer is
  :class:`Undecided` (no answer, rather than contents that may be wrong; issue 31).
- A **path at T** is resolved from the root, each directory as it was at T.
- A regular file's **content** at a version: its inline bytes, or its blocks as of the
  version's ``bt`` (the newest block Time its writers recorded,
  ``fsobjects.attributes._raise_block_time``; writers choose later Times for later writes,
  so later blocks are never read).  A file written before ``bt`` was kept falls back to
  the version's own time.

Versions retention let go (``[retention]`` in ``cluster.toml``) answer with
:class:`Reclaimed`, which says how far back the history still reaches; so does a moment
whose version the schedule thinned (the walk steps over it to older kept versions, which
still answer for their own moments, but a thinned version's moment never gets an older
state, as a thinned block's never does).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Any

import trio

from bftfs.fs.clients import BlockClient, Seal, SealedBlocks
from bftfs.fs.history.changes import changes, gone
from bftfs.fs.history.content import PastBlocks, read_content
from bftfs.fs.history.versions import (
    NotThen,
    ObjectHistory,
    PastError,
    Version,
    present,
    reclaimed_before,
    thinned_at,
    undecided_at,
)
from bftfs.fsobjects import ROOT, SNAPSHOTS
from bftfs.fsobjects.dirents import all_entries
from bftfs.qu.attempt import QUUnavailable
from bftfs.qu.canon import unpack
from bftfs.qu.client import QUClient
from bftfs.qu.objects import MethodRefused
from bftfs.qu.past import Agreed, current_at
from bftfs.qu.pastmany import MAX_OBJECTS
from bftfs.qu.pastread import End, HistoryUnavailable, PastReader, Seed, Walk
from bftfs.qu.timestamp import Timestamp

#: Objects whose histories :meth:`Past.trees` reads at once: enough to keep every node
#: busy while others answer, few enough not to queue a tree's worth of requests on them.
PARALLEL = 16

#: Objects whose walks' starts one Q/U query reads (the most a request may name), where
#: a ``qu.starts`` round did not settle them.
STARTS_AT_ONCE = 8

#: Objects whose chains one ``qu.chains`` round reads (the most a request may name): a
#: directory of 50 files is one round, where each file was two requests of its own.
CHAINS_AT_ONCE = MAX_OBJECTS

#: ``progress(done, known)``: objects read so far, and objects known to read in all.
Progress = Callable[[int, int], None]


class Past:
    """History reads of one cluster's file system (any client may read them)."""

    def __init__(
        self,
        qu: QUClient,
        reader: PastReader,
        rw: BlockClient,
        block_size: int,
        *,
        seal: Seal | None = None,
    ) -> None:
        self.qu = qu
        self.reader = reader
        #: In a sealed cluster old blocks and inline bytes are opened here, so every
        #: version this hands out holds plaintext (``fs/clients/seal.py``).
        self.seal = seal
        self.rw: PastBlocks = rw if seal is None else SealedBlocks(rw, seal)
        self.bs = block_size
        self._histories: dict[int, ObjectHistory] = {}
        #: Established versions read for several objects at once (:meth:`_read_starts`),
        #: each taken by the first walk of its object.
        self._starts: dict[int, Timestamp] = {}
        #: What :meth:`_prefetch` brought for the walks of one :meth:`trees` (object -> seed).
        self._seeds: dict[int, Seed] = {}
        #: How the reads went (starts with siblings or alone, rounds), for statistics().
        self._counts: collections.Counter[str] = collections.Counter()

    async def snapshots(self) -> dict[str, int]:
        """The cluster's snapshots: name -> moment (ns)."""
        return dict(await self.qu.query(SNAPSHOTS, "fs.snapshots"))

    async def snapshot_create(self, name: str, time_ns: int) -> None:
        await self._snapshot({"op": "create", "name": name, "t": time_ns})

    async def snapshot_delete(self, name: str) -> None:
        await self._snapshot({"op": "delete", "name": name})

    async def _snapshot(self, arg: dict[str, Any]) -> None:
        try:
            await self.qu.update(SNAPSHOTS, "fs.snapshot", arg)
        except MethodRefused as e:
            what = {"exists": "exists already", "not-found": "does not exist"}.get(e.code, str(e))
            raise PastError(f"snapshot {arg['name']}: {what}") from None

    def _unpack(self, oid: int, raw: bytes | None) -> dict[str, Any] | None:
        """Object ``oid``'s past state as the reader fetched it, what a mount sealed in it
        opened."""
        if raw is None:
            return None
        state: dict[str, Any] = unpack(raw)
        return state if self.seal is None else self.seal.open_state(oid, state)

    def statistics(self) -> str:
        """What the history reads cost, for a log at unmount (and the history commands')."""
        r = self.reader
        return (
            f"history: {r.rounds} chain rounds, {r.start_rounds} start rounds settling "
            f"{r.started} objects, {self.qu.statistics().rounds} Q/U rounds, "
            f"{r.fetches} state requests, {r.offered_taken} states offered and taken, "
            f"{r.timed_on_second_ask} times known on a second ask, {r.waits} longer waits, "
            f"{r.rounds_cut} rounds cut short, "
            f"{getattr(r.endpoint, 'sent', 0)} requests sent, {len(self._histories)} objects; "
            + ", ".join(f"{k} {v}" for k, v in sorted(self._counts.items()))
        )

    async def history(self, oid: int) -> ObjectHistory:
        """Every kept version of ``oid`` (cached for this object's lifetime)."""
        got = self._histories.get(oid)
        if got is not None:
            return got
        walk, seed = await self._walk(oid)
        states = await self.reader.states(
            oid, walk.versions, None if seed is None else seed.offered
        )
        hist = ObjectHistory(oid, complete=walk.end is End.INITIAL)
        # Oldest first, folding repeats (repairs' copies, bookkeeping-only updates); a
        # thinned version is a gap: the kept one after it is always shown.
        kept: list[Version] = []
        links: list[tuple[int | None, Version | None, bool]] = []
        prev: dict[str, Any] | None = None
        gap = False
        for i, a in enumerate(reversed(walk.versions)):
            if a.thinned:
                links.append((a.time_ns, None, True))
                hist.thinned += 1
                gap = True
                continue
            state = self._unpack(oid, states[a.lt])
            if i == hist.thinned and (gap or not hist.complete):
                kinds: tuple[str, ...] = ("oldest kept",)  # what came before is not known
            else:
                kinds = changes(prev, state) or (("kept",) if gap else ())
            prev, gap = state, False
            if kinds:
                kept.append(Version(oid, a.lt, a.time_ns, a.lt.client, state, kinds))
            links.append((a.time_ns, kept[-1] if kept else None, False))
        hist.versions = list(reversed(kept))
        hist.links = list(reversed(links))
        self._histories[oid] = hist
        return hist

    async def state_at(self, oid: int, time_ns: int) -> Version | None:
        """The version of ``oid`` current at ``time_ns`` (None: it did not exist then, or
        was removed).  Walks the chain only back to that moment and fetches one state,
        unless the object's whole history is at hand already.

        Raises:
            Reclaimed: the moment is older than the oldest version kept.
            Undecided: a version of unknown time may be the one current then.
        """
        hist = self._histories.get(oid)
        if hist is not None:
            v = hist.at(time_ns)
        else:
            _, start = await self.qu.query_at(oid, "fs.peek")
            walk = await self.reader.walk(oid, start, until_ns=time_ns)
            found = current_at([a.time_ns for a in walk.versions], time_ns)
            if found.undecided:
                raise undecided_at(oid, time_ns)
            if found.index is None:
                if walk.end is End.INITIAL:
                    return None
                raise reclaimed_before(oid, [a.time_ns for a in walk.versions])
            last = walk.versions[found.index]
            if last.thinned:
                raise thinned_at(oid, time_ns)
            raw = (await self.reader.states(oid, [last]))[last.lt]
            state = self._unpack(oid, raw)
            v = Version(oid, last.lt, last.time_ns, last.lt.client, state, ())
        return present(v)

    async def resolve(self, path: str, time_ns: int) -> Version:
        """The version of the object ``path`` named at ``time_ns``.

        Raises:
            NotThen: no such path then.
            Reclaimed: a directory on the way is older than retention kept.
        """
        parts = [p for p in path.split("/") if p and p != "."]
        v = await self.state_at(ROOT, time_ns)
        if v is None:
            raise NotThen("the file system did not exist then")
        walked = ""
        for name in parts:
            walked += "/" + name
            assert v.state is not None
            if v.state.get("k") != "d":
                raise NotThen(f"{walked}: not a directory then")
            entry = all_entries(v.state["e"]).get(name.encode())
            if entry is None:
                raise NotThen(f"{walked}: no such file or directory then")
            child = await self.state_at(int(entry[0]), time_ns)
            if child is None:
                raise NotThen(f"{walked}: no such file or directory then")
            v = child
        return v

    async def tree(self, path: str, time_ns: int) -> dict[str, Version]:
        """Every object under ``path`` at ``time_ns`` by relative path (``""``: ``path``
        itself), parents before children.  Entries whose object is older than retention
        kept are left out.

        Raises:
            NotThen, Reclaimed: as :meth:`resolve` for ``path`` itself.
        """
        return (await self.trees(path, [time_ns]))[0]

    async def trees(
        self,
        path: str,
        moments: Sequence[int],
        *,
        whole: bool = False,
        progress: Progress | None = None,
    ) -> list[dict[str, Version]]:
        """:meth:`tree` at each of ``moments``, reading each object's chain once for all of
        them (back to the oldest moment; the whole history if ``whole``, then at hand in
        :meth:`history`), :data:`PARALLEL` objects at a time.

        A tree of a thousand files is a thousand objects to walk; one after the other, each
        walk's round trips add up to seconds of waiting on the nodes, and ``diff`` walked
        every object once per moment (issue 36).

        ``progress(done, known)`` is called after each object (``known`` grows as
        directories are read).

        Raises:
            NotThen, Reclaimed: as :meth:`resolve` for ``path`` itself.
            Undecided: a version of unknown time may be the one current at a moment.
        """
        tops = [await self.resolve(path, t) for t in moments]
        found: list[dict[str, Version]] = [{} for _ in moments]
        seen_dirs: list[set[int]] = [set() for _ in moments]
        limiter = trio.CapacityLimiter(PARALLEL)
        count = [0, 0]  # objects done, objects known

        async def visit(rel: str, oid: int, which: tuple[int, ...], nursery: Any) -> None:
            async with limiter:
                got = await self._at_moments(oid, [moments[i] for i in which], whole)
            kids: dict[tuple[bytes, int], list[int]] = {}
            for i, v in zip(which, got, strict=True):
                if v is None:
                    continue
                found[i][rel] = v
                assert v.state is not None
                if v.state.get("k") != "d" or oid in seen_dirs[i]:
                    continue  # a directory met twice at one moment is not read again
                seen_dirs[i].add(oid)
                for name, entry in all_entries(v.state["e"]).items():
                    kids.setdefault((name, int(entry[0])), []).append(i)
            todo = [
                (
                    f"{rel}/{name.decode(errors='surrogateescape')}"
                    if rel
                    else name.decode(errors="surrogateescape"),
                    child,
                    tuple(at),
                )
                for (name, child), at in sorted(kids.items())
            ]
            count[1] += len(todo)
            for i in range(0, len(todo), CHAINS_AT_ONCE):
                nursery.start_soon(batch, todo[i : i + CHAINS_AT_ONCE], nursery)
            count[0] += 1
            if progress is not None:
                progress(count[0], count[1])

        async def batch(todo: list[tuple[str, int, tuple[int, ...]]], nursery: Any) -> None:
            async with limiter:
                await self._prefetch([oid for _, oid, _ in todo], moments, whole)
            for rel, oid, at in todo:
                nursery.start_soon(visit, rel, oid, at, nursery)

        by_top: dict[int, list[int]] = {}
        for i, top in enumerate(tops):
            by_top.setdefault(top.oid, []).append(i)
        count[1] = len(by_top)
        async with trio.open_nursery() as nursery:
            for oid, at in by_top.items():
                nursery.start_soon(visit, "", oid, tuple(at), nursery)
        for i, top in enumerate(tops):
            found[i].setdefault("", top)
        self._seeds.clear()
        return [_parents_first(f) for f in found]

    async def _start(self, oid: int) -> Timestamp:
        """Where a walk of ``oid`` starts: as read with its siblings, else a query alone."""
        start = self._starts.pop(oid, None)
        self._counts["starts alone" if start is None else "starts with siblings"] += 1
        if start is None:
            _, start = await self.qu.query_at(oid, "fs.peek")
        return start

    async def _read_starts(self, oids: Sequence[int]) -> None:
        """Where the walks of up to :data:`CHAINS_AT_ONCE` objects start: one ``qu.starts``
        round (:meth:`PastReader.starts`), then Q/U queries of :data:`STARTS_AT_ONCE` of the
        objects it did not settle (``fs.peekmany``: never refused, leased or not).  Where
        one fails, each of its objects' walks asks on its own."""
        known = self._starts.keys() | self._histories.keys()
        todo = [o for o in dict.fromkeys(oids) if o not in known]
        if todo:
            self._starts.update(await self.reader.starts(todo))
        rest = [o for o in todo if o not in self._starts]
        async with trio.open_nursery() as nursery:
            for i in range(0, len(rest), STARTS_AT_ONCE):
                nursery.start_soon(self._peek_starts, rest[i : i + STARTS_AT_ONCE])

    async def _peek_starts(self, oids: Sequence[int]) -> None:
        try:
            _, starts = await self.qu.query_many_at(oids, "fs.peekmany")
        except (MethodRefused, QUUnavailable) as e:
            self._counts[f"start queries failed ({type(e).__name__})"] += 1
            return
        self._counts["start queries"] += 1
        self._starts.update(starts)

    async def _prefetch(self, oids: Sequence[int], moments: Sequence[int], whole: bool) -> None:
        """The walks of up to :data:`CHAINS_AT_ONCE` objects begun together: their starts
        and one ``qu.chains`` round, with the states wanted at ``moments`` (all if
        ``whole``), kept for :meth:`_walk`.  Where the round fails each asks alone."""
        todo = [o for o in dict.fromkeys(oids) if o not in self._histories and o not in self._seeds]
        await self._read_starts(todo)
        objs = [(o, self._starts.pop(o)) for o in todo if o in self._starts]
        if not objs:
            return
        try:
            seeds = await self.reader.chains(
                objs,
                until_ns=None if whole else min(moments),
                moments=() if whole else moments,
                all_states=whole,
            )
        except HistoryUnavailable:
            self._counts["chains rounds failed"] += 1
            self._starts.update(objs)
            return
        self._counts["chains rounds"] += 1
        self._seeds.update(seeds)

    async def _walk(self, oid: int, until_ns: int | None = None) -> tuple[Walk, Seed | None]:
        """The walk of ``oid`` (back to ``until_ns``) from what :meth:`_prefetch` brought."""
        seed = self._seeds.get(oid)  # (kept: an object renamed is visited under each name)
        start = seed.start if seed is not None else await self._start(oid)
        self._counts["walks seeded" if seed is not None else "walks alone"] += 1
        return await self.reader.walk(oid, start, until_ns=until_ns, seed=seed), seed

    async def _at_moments(
        self, oid: int, moments: Sequence[int], whole: bool
    ) -> list[Version | None]:
        """What :meth:`state_at` answers for ``oid`` at each of ``moments`` (None also
        where retention let the version go), from one walk and one request for states.

        Raises:
            Undecided: a version of unknown time may be the one current at a moment.
        """
        if whole or oid in self._histories:
            return (await self.history(oid)).present_at(moments)
        walk, seed = await self._walk(oid, min(moments))
        picks: list[Agreed | None] = []
        for t in moments:
            found = current_at([a.time_ns for a in walk.versions], t)
            if found.undecided:
                raise undecided_at(oid, t)
            pick = None if found.index is None else walk.versions[found.index]
            picks.append(None if pick is None or pick.thinned else pick)
        wanted = list({a.lt: a for a in picks if a is not None}.values())
        raw = await self.reader.states(oid, wanted, None if seed is None else seed.offered)
        versions: dict[Timestamp, Version | None] = {}
        for a in wanted:
            state = self._unpack(oid, raw[a.lt])
            removed = state is None or gone(state)
            versions[a.lt] = (
                None if removed else Version(oid, a.lt, a.time_ns, a.lt.client, state, ())
            )
        return [None if a is None else versions[a.lt] for a in picks]

    async def content(self, v: Version) -> bytes:
        """A regular file's bytes at version ``v`` (a symlink's target):
        :func:`~bftfs.fs.history.content.read_content`."""
        return await read_content(self.rw, v, self.bs)


def _parents_first(found: dict[str, Version]) -> dict[str, Version]:
    """``found`` (relative path -> version, in any order) ordered as :meth:`Past.tree`
    promises: breadth first from ``""``, each directory's entries by name."""
    out = {"": found[""]}
    todo = collections.deque([""])
    while todo:
        rel = todo.popleft()
        state = out[rel].state
        if state is None or state.get("k") != "d":
            continue
        for name in sorted(all_entries(state["e"])):
            text = name.decode(errors="surrogateescape")
            crel = f"{rel}/{text}" if rel else text
            if crel in found and crel not in out:
                out[crel] = found[crel]
                todo.append(crel)
    return out
