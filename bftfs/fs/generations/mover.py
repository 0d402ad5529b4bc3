"""The background mover (issue 35; docs/membership.md, "Generations: the mover and
finishing"): everything of generation g into g + 1, so that g can be retired.

Clients move objects on first touch (``fs/generations/routers.py``) and read blocks g + 1 lacks from
g; what nobody touches stays in g.  :func:`move_generation` walks **every** object g holds
and leaves g + 1 holding everything a reader needs:

- *the walk*: the union of g's nodes' object listings (``qu.latest``, which a frozen node
  answers to clients too), a page of ids at a time in id order (:func:`union_page`).  A
  page counts only with the listings of ``n - t`` nodes: an object whose update completed
  is at a quorum ``q = n - t`` of g's nodes, at least ``q - t > b`` of which are among
  them, so at least one correct node lists it and no Byzantine node can hide it; one
  listing ids that do not exist costs a look each (moving an absent object is a no-op).
- *objects*: each moves through the mount's own :class:`~bftfs.fs.generations.GenerationalQU`
  (``move``), so leases, races with other clients and objects already there are handled as
  for any client.
- *blocks*: for each file object (its state in g + 1 now), the blocks a reader reads
  (:func:`file_blocks`: the written ranges below the size, ``w``, of its data id ``d`` at
  its block size ``bs``).  A block g + 1 holds no version of (``ReadOutcome.absent``) gets
  g's latest version, re-encoded for g + 1's thresholds, written at its own Time and
  writer as a *moved* version (``WriteRequest.moved``, taken by nodes while a move runs and
  charged to the writer it names; ``node/rw_server.py``).  Every later write of the file's blocks is
  above that Time (writers write above the file's block Time, ``bt``), and a read as of
  any moment from the version's Time on finds it in g + 1; earlier moments are g's history,
  readable until g retires.
- *pace*: the bytes copied are paced to ``bytes_per_second`` (:class:`ByteRate`, a token
  bucket).
- *resumable*: after each page the cursor (:class:`MoveState`: the last object id done and
  the counts) is saved, atomically, to ``<dir>/generation<G>/move.json``
  (:func:`cursor_path`); a run that was stopped resumes after it, a completed one has
  nothing to do.  ``bftfs generation finish`` reads it (``cli/generations.py``).

- *lease sessions* (``fsobjects.sessions``) stay in g: they are a mount's, not the file
  system's, and ``fs.movein`` refuses them.  A mount lets the leases bound to its
  sessions in g go when it switches (the freeze recalled them; ``fs.movein`` strips
  them, ``fsobjects.moves``), and its renewals run on g + 1, where the routers leave the
  session id alone and the first renewal starts a session of its own
  (``routers.GenerationalQU``, ``fs/leases/sessions.py``).

What it does not do: objects removed in g + 1 after they moved are in g still, and moved
again (an orphan the namespace no longer names: space, not data; fs.state cannot tell
"removed here" from "not moved yet").  History before the move stays in g: once g retires,
snapshots and ``--at`` reads of earlier moments find only what was moved.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio

from bftfs import erasure
from bftfs.fs.files import file_block_size
from bftfs.fs.generations.routers import NOT_SEEN, GenerationalQU
from bftfs.fsobjects.moves import unpack_state
from bftfs.fsobjects.sessions import is_session, session_state
from bftfs.ids import NodeId
from bftfs.qu.messages import KIND_LATEST, VERSION, MessageError, parse_latest_reply
from bftfs.rate import ByteRate
from bftfs.rw.client import RWClient
from bftfs.rw.messages import BlockId, block_id
from bftfs.rw.timestamp import make_timestamp

log = logging.getLogger(__name__)

#: The cursor file's name, in ``<dir>/generation<G>``.
CURSOR = "move.json"
#: Objects listed per page (and per saved cursor).
DEFAULT_PAGE = 256
#: Objects and blocks moved at once (8: 46 objects/s, 32: 77, on two cores:
#: benchmarks/results/2026-11-27-genmover.md).
DEFAULT_CONCURRENCY = 32
#: How long one node's listing is waited for (s).
LIST_TIMEOUT = 10.0


class MoveError(Exception):
    """The walk cannot go on now (too few of g's nodes list their objects): run it again."""


def cursor_path(home: Path, generation: int) -> Path:
    """Where the move *to* ``generation`` keeps its cursor."""
    return home / f"generation{generation}" / CURSOR


@dataclass
class MoveState:
    """The cursor of a move and its counts (saved as JSON after every page)."""

    #: The view the move started under.
    view: int
    #: The generation moved from.
    source: int
    #: Every object id up to this one is done (None: none yet).
    after: int | None = None
    #: Every object g listed is done.
    complete: bool = False
    #: Objects looked at, and by outcome: ``moved`` (installed by this mover), ``here``
    #: (in g + 1 already, or moved by another client meanwhile), ``absent`` (in neither).
    objects: dict[str, int] = field(default_factory=dict)
    #: Blocks ``copied``, ``present`` (g + 1 holds a version), ``missing`` (neither does).
    blocks: dict[str, int] = field(default_factory=dict)
    #: Bytes of block data copied.
    bytes: int = 0

    def count(self, kind: str, key: str, n: int = 1) -> None:
        table = self.objects if kind == "objects" else self.blocks
        table[key] = table.get(key, 0) + n

    def summary(self) -> str:
        o, b = self.objects, self.blocks
        return (
            f"{o.get('walked', 0)} objects: {o.get('moved', 0)} moved, {o.get('here', 0)} "
            f"already there, {o.get('absent', 0)} absent; {b.get('copied', 0)} blocks copied "
            f"({self.bytes} bytes), {b.get('present', 0)} already there, "
            f"{b.get('missing', 0)} in neither"
        )

    def save(self, path: Path) -> None:
        """Write the cursor atomically (a kill leaves the old one or the new one)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(asdict(self), f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> MoveState | None:
        """The cursor saved at ``path`` (None: none, or unreadable)."""
        try:
            raw = json.loads(path.read_text())
            return cls(**raw)
        except (FileNotFoundError, ValueError, TypeError):
            return None


def start_state(path: Path | None, view: int, source: int) -> MoveState:
    """The saved cursor of the move from generation ``source``, else a new one for the
    move of ``view`` (views that only change clients during the move keep the cursor)."""
    got = MoveState.load(path) if path is not None else None
    if got is not None and got.source == source:
        return got
    return MoveState(view, source)


def union_page(
    answers: Mapping[int, tuple[Sequence[int], bool]],
) -> tuple[list[int], int | None]:
    """The object ids of one page of the walk from nodes' listings (``node -> (ids after
    the cursor, whether more follow)``), and where the next page starts (None: the last).

    Ids up to the smallest last id of a listing with more are in every listing that far:
    the page is their union up to there, and the next page starts after it (pure)."""
    cut: int | None = None
    for ids, more in answers.values():
        if more and ids:
            cut = ids[-1] if cut is None else min(cut, ids[-1])
    union = sorted({oid for ids, _ in answers.values() for oid in ids})
    if cut is None:
        return union, None
    return [oid for oid in union if oid <= cut], cut


async def list_page(
    ep: Any, nodes: Sequence[int], needed: int, after: int | None, limit: int = DEFAULT_PAGE
) -> tuple[list[int], int | None]:
    """One page of the union of ``nodes``' object listings after ``after``
    (:func:`union_page`), asked of all at once through ``ep``, as soon as ``needed`` of
    them answered (``n - t``: the module docstring says why that is enough).

    Raises:
        MoveError: fewer than ``needed`` nodes answered with a well-formed listing.
    """
    got: dict[int, tuple[Sequence[int], bool]] = {}
    body = {"v": VERSION, "after": after, "limit": limit}

    async def ask(node: int) -> None:
        with trio.move_on_after(LIST_TIMEOUT):
            try:
                entries, more = parse_latest_reply(
                    await ep.call(NodeId(node), KIND_LATEST, body, timeout=LIST_TIMEOUT)
                )
            except MessageError as e:
                log.warning("mover: node %s listed garbage: %s", node, e)
                return
            except Exception as e:  # a node's failure is its own
                log.info("mover: node %s did not list: %s", node, e)
                return
            ids = [oid for oid, _ in entries if after is None or oid > after]
            got[node] = (ids, more and bool(ids))
            if len(got) >= needed:
                nursery.cancel_scope.cancel()  # enough: the others add nothing it needs

    async with trio.open_nursery() as nursery:
        for node in nodes:
            nursery.start_soon(ask, node)
    if len(got) < needed:
        raise MoveError(
            f"{len(got)} of the old generation's nodes listed their objects, {needed} needed"
        )
    return union_page(got)


def file_blocks(state: Any, default_bs: int) -> Iterator[BlockId]:
    """The blocks a reader of the file whose raw state is ``state`` may read, in order: the
    written ranges (``w``) below ``min(size, alloc)`` of data id ``d`` at its block size, or
    every block below that for a file without the record; none for an inline file, a file
    without a data id, or an object that is not a file.  Lazily: a sparse file made
    before the record may name very many."""
    if not isinstance(state, dict) or state.get("k") != "f" or state.get("i") is not None:
        return
    d = int(state.get("d") or 0)
    end = int(state.get("size") or 0)
    if state.get("alloc") is not None:
        end = min(end, int(state["alloc"]))
    if d == 0 or end <= 0:
        return
    w = state.get("w")
    ranges = [(0, end)] if w is None else sorted((int(lo), min(int(hi), end)) for lo, hi in w)
    bs = file_block_size(state, default_bs)
    last = -1
    for lo, hi in ranges:
        if lo >= hi:
            continue
        for k in range(max(lo // bs, last + 1), (hi - 1) // bs + 1):
            yield block_id(d, k)
            last = k


#: ``on_progress(state, walked_this_run, listed_this_run)``.
Progress = Callable[[MoveState, int, int], None]


class Mover:
    """One run of the walk (module docstring); :func:`move_generation` drives it."""

    def __init__(
        self,
        router: GenerationalQU,
        new_rw: RWClient,
        old_rw: RWClient,
        *,
        default_bs: int,
        bytes_per_second: int = 0,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self.router = router
        self.new_rw = new_rw
        self.old_rw = old_rw
        self.default_bs = default_bs
        self.rate = ByteRate(bytes_per_second)
        self.limit = trio.Semaphore(max(concurrency, 1))

    async def objects(
        self, state: MoveState, oids: Iterable[int], done: Callable[[], None]
    ) -> None:
        """Move ``oids`` and copy their blocks, ``concurrency`` at a time; ``state``
        counts what the router did (its counters' change) and the blocks."""
        before = dict(self.router.moves)

        async def one(oid: int) -> None:
            async with self.limit:
                if is_session(oid) and await self._is_session(oid):
                    state.count("objects", "sessions")
                    done()
                    return
                packed = await self.router.move(oid)
                if packed is NOT_SEEN:
                    packed = await self.router.new.query(oid, "fs.state")
            if packed is not None:
                await self.blocks(state, file_blocks(unpack_state(packed), self.default_bs))
            done()

        async with trio.open_nursery() as nursery:
            for oid in oids:
                nursery.start_soon(one, oid)
        for key in ("moved", "here", "raced", "absent"):
            n = self.router.moves[key] - before.get(key, 0)
            if n:
                state.count("objects", "here" if key == "raced" else key, n)

    async def _is_session(self, oid: int) -> bool:
        """Whether g holds a lease session at ``oid`` (its id lies where lock objects' do:
        the state tells them apart)."""
        packed = await self.router.old.query(oid, "fs.state")
        return packed is not None and session_state(unpack_state(packed)) is not None

    async def blocks(self, state: MoveState, blocks: Iterable[BlockId]) -> None:
        """Copy those of ``blocks`` g + 1 holds no version of from g (module docstring);
        at most ``concurrency`` at once, taken from ``blocks`` as slots free."""

        async def one(block: BlockId) -> None:
            try:
                await self.block(state, block)
            finally:
                self.limit.release()

        async with trio.open_nursery() as nursery:
            for block in blocks:
                await self.limit.acquire()
                nursery.start_soon(one, block)

    async def block(self, state: MoveState, block: BlockId) -> None:
        await copy_block(state, block, self.new_rw, self.old_rw, self.rate)


async def copy_block(
    state: MoveState, block: BlockId, new_rw: RWClient, old_rw: RWClient, rate: ByteRate
) -> None:
    """Copy ``block``'s latest version from ``old_rw``'s nodes to ``new_rw``'s as a
    *moved* version (its own Time and writer, re-encoded for the new thresholds) when
    the new ones hold none; counted in ``state`` (``copied``, ``present``, ``missing``)."""
    if not (await new_rw.read_version(block)).absent:
        state.count("blocks", "present")
        return
    got = await old_rw.read_version(block)
    if got.absent:
        state.count("blocks", "missing")
        return
    await rate.spend(len(got.data))
    th = new_rw.th
    enc = await trio.to_thread.run_sync(erasure.encode, got.data, int(th.m), int(th.n))
    ts = make_timestamp(got.ts.time, got.ts.writer, enc.verifier)
    await new_rw.do_write(block, ts, enc.fragments, enc.cross_checksum, moved=True)
    state.count("blocks", "copied")
    state.bytes += len(got.data)


async def move_generation(
    router: GenerationalQU,
    new_rw: RWClient,
    old_rw: RWClient,
    list_objects: Callable[[int | None], Awaitable[tuple[list[int], int | None]]],
    state: MoveState,
    *,
    path: Path | None = None,
    default_bs: int,
    bytes_per_second: int = 0,
    concurrency: int = DEFAULT_CONCURRENCY,
    on_progress: Progress | None = None,
) -> MoveState:
    """Move every object of g into g + 1 and copy the blocks g + 1 lacks (module
    docstring), from ``state``'s cursor on; ``state``, complete, saved to ``path`` after
    every page (None: kept in memory only).

    Args:
        router: the Q/U router from g (``router.old``) to g + 1 (``router.new``).
        new_rw, old_rw: PASIS clients of g + 1 and g.
        list_objects: one page of the union of g's listings after an id
            (:func:`list_page` bound to g's endpoint and nodes).
        default_bs: the block size of files that record none (the cluster's).
        bytes_per_second: pace of the block data copied (0: none).
        on_progress: called after each object with the state and how many objects this
            run walked and listed so far.

    Raises:
        MoveError: too few of g's nodes list (run again: it resumes).
    """
    mover = Mover(
        router,
        new_rw,
        old_rw,
        default_bs=default_bs,
        bytes_per_second=bytes_per_second,
        concurrency=concurrency,
    )
    seen = {"walked": 0, "listed": 0}

    def done() -> None:
        seen["walked"] += 1
        state.count("objects", "walked")
        if on_progress is not None:
            on_progress(state, seen["walked"], seen["listed"])

    while not state.complete:
        oids, cut = await list_objects(state.after)
        seen["listed"] += len(oids)
        await mover.objects(state, oids, done)
        state.after = cut if cut is not None else state.after
        state.complete = cut is None
        if path is not None:
            state.save(path)
    if on_progress is not None:
        on_progress(state, seen["walked"], seen["listed"])
    return state
