"""The partition mover (issue 66; docs/layout.md, "Moving partitions"): everything a
moving layout places on another group than before, copied there, so that the layout can
be finished (``bftfs group finish``).

A grown layout (``layout/builder.grow``) names the maps its partitions move from.  Mounts
move objects on first touch and read blocks the target lacks from the source
(``fs/generations/partitions.py``); what nobody touches is moved here.  The walk goes
group by group over each group's object listing, as the generation mover walks a
generation's (``mover.list_page``), and for every object listed:

- an object whose partition moves away from the group is moved to its target (the
  mount's own router, so leases and races are handled as for any client);
- every file's blocks whose block partition moves (a file's blocks are placed apart from
  its attributes, so any file may have some) are copied from their source group to their
  target group as *moved* versions, paced, when the target holds none.

The cursor is one :class:`~bftfs.fs.generations.mover.MoveState` per group walked, saved
after each page to ``<dir>/layout<V>/move<G>.json`` (:func:`cursor_path`); a run resumes
from them, and the move is complete when every group's cursor is
(:func:`move_complete`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio

from bftfs.config import ClusterConfig
from bftfs.connect import open_client
from bftfs.fs.clients import EngineClient
from bftfs.fs.clients.crossing import Crossing
from bftfs.fs.generations.groupfollow import held_version
from bftfs.fs.generations.mover import (
    DEFAULT_CONCURRENCY,
    MoveState,
    Progress,
    copy_block,
    file_blocks,
    list_page,
)
from bftfs.fs.generations.partitions import FrozenGate, PartitionRouters
from bftfs.fs.generations.routers import NOT_SEEN
from bftfs.fsobjects.moves import unpack_state
from bftfs.layout.groups import group_config
from bftfs.layout.model import Layout
from bftfs.qu.classify import QUThresholds
from bftfs.qu.client import QUClient
from bftfs.qu.objects import MethodRefused
from bftfs.rate import ByteRate
from bftfs.rw.client import RWClient, open_rw_client
from bftfs.rw.messages import BlockId

#: ``list_group(group, after)``: one page of the union of a group's object listings
#: after an id, and where the next starts (``mover.list_page`` bound to the group).
ListGroup = Callable[[int, int | None], Awaitable[tuple[list[int], int | None]]]


def cursor_dir(home: Path, version: int) -> Path:
    """Where the move of layout ``version`` keeps its cursors."""
    return home / f"layout{version}"


def cursor_path(home: Path, version: int, group: int) -> Path:
    """The cursor of the walk of group ``group``'s objects for layout ``version``."""
    return cursor_dir(home, version) / f"move{group}.json"


def walked_groups(layout: Layout) -> list[int]:
    """The groups whose objects the move of ``layout`` walks: every group but those it
    adds (an added group holds only what moved to it)."""
    return sorted({g for table in (layout.from_objects, layout.from_blocks) for g in table})


def move_states(home: Path, layout: Layout) -> dict[int, MoveState | None]:
    """Each walked group's saved cursor for ``layout``'s move (None: not started)."""
    out: dict[int, MoveState | None] = {}
    for g in walked_groups(layout):
        got = MoveState.load(cursor_path(home, layout.version, g))
        out[g] = got if got is not None and got.view == layout.version else None
    return out


def move_complete(home: Path, layout: Layout) -> bool:
    """Whether ``layout``'s move walked every group to the end (a layout moving nothing:
    trivially)."""
    if not layout.moving:
        return True
    return all(s is not None and s.complete for s in move_states(home, layout).values())


def describe_move(home: Path, layout: Layout) -> str:
    """One line on how far ``layout``'s move is, for ``bftfs group finish`` and
    ``bftfs status``."""
    if not layout.moving:
        return f"layout {layout.version} moves nothing"
    parts = []
    for g, s in move_states(home, layout).items():
        if s is None:
            parts.append(f"group {g}: not walked yet")
        elif s.complete:
            parts.append(f"group {g}: complete ({s.summary()})")
        else:
            parts.append(f"group {g}: stopped after object {s.after} ({s.summary()})")
    return "; ".join(parts)


class PartitionMover:
    """One run of the walk (module docstring); :func:`move_partitions` drives it."""

    def __init__(
        self,
        layout: Layout,
        routers: PartitionRouters,
        qu_of: Callable[[int], EngineClient],
        rw_of: Callable[[int], RWClient],
        *,
        default_bs: int,
        bytes_per_second: int = 0,
        concurrency: int = DEFAULT_CONCURRENCY,
        crossing: Crossing | None = None,
    ) -> None:
        self.layout = layout
        self.crossing = crossing
        self.routers = routers
        self.qu_of, self.rw_of = qu_of, rw_of
        self.default_bs = default_bs
        self.rate = ByteRate(bytes_per_second)
        self.limit = trio.Semaphore(max(concurrency, 1))

    async def objects(
        self, state: MoveState, group: int, oids: Iterable[int], done: Callable[[], None]
    ) -> None:
        """Each of ``oids`` (listed by ``group``): moved when it moves away from
        ``group``, its blocks copied where they move; ``concurrency`` at a time."""
        before = self.routers.moves()

        async def one(oid: int) -> None:
            async with self.limit:
                packed = await self._resolving(state, group, oid)
            if packed is not None:
                blocks = file_blocks(unpack_state(packed), self.default_bs)
                await self.blocks(state, (b for b in blocks if self._moves(b)))
            done()

        async with trio.open_nursery() as nursery:
            for oid in oids:
                nursery.start_soon(one, oid)
        after = self.routers.moves()
        for key in ("moved", "here", "raced", "absent"):
            n = after[key] - before[key]
            if n:
                state.count("objects", "here" if key == "raced" else key, n)

    async def _resolving(self, state: MoveState, group: int, oid: int) -> Any:
        """:meth:`_state`, resolving the cross-group transactions whose intents hold the
        object (``crossing.resolving``); a transaction's record is not moved (it is found
        by its coordinator group, and ``fs.export`` refuses it): None."""
        try:
            if self.crossing is None:
                return await self._state(state, group, oid)
            return await self.crossing.resolving([oid], lambda: self._state(state, group, oid))
        except MethodRefused as e:
            if e.code != "txn-record":
                raise
            state.count("objects", "records")
            return None

    async def _state(self, state: MoveState, group: int, oid: int) -> Any:
        """``oid``'s packed state where it lives now (moved first when it moves away
        from ``group``); None for an object listed by a group that neither holds nor
        gives it (it moved before, or a node made it up)."""
        where = self.routers.moving(oid)
        if where is not None and where[0] == group:
            packed = await self.routers.pair(*where).move(oid)
            if packed is NOT_SEEN:
                packed = await self.qu_of(where[1]).query(oid, "fs.state")
            return packed
        if self.layout.group_of_object(oid) == group:
            state.count("objects", "stays")
            return await self.qu_of(group).query(oid, "fs.state")
        state.count("objects", "elsewhere")
        return None

    def _moves(self, block: BlockId) -> bool:
        return self.layout.source_of_block(int(block)) is not None

    async def blocks(self, state: MoveState, blocks: Iterable[BlockId]) -> None:
        """Copy each of ``blocks`` (all moving) from its source group to its target when
        the target holds no version; ``concurrency`` at once, taken as slots free."""

        async def one(block: BlockId) -> None:
            try:
                source = self.layout.source_of_block(int(block))
                assert source is not None
                target = self.layout.group_of_block(int(block))
                await self.routers.gate.wait(source)  # the source's versions are final
                await copy_block(state, block, self.rw_of(target), self.rw_of(source), self.rate)
            finally:
                self.limit.release()

        async with trio.open_nursery() as nursery:
            for block in blocks:
                await self.limit.acquire()
                nursery.start_soon(one, block)


async def move_partitions(
    mover: PartitionMover,
    list_group: ListGroup,
    home: Path | None,
    *,
    on_progress: Progress | None = None,
) -> dict[int, MoveState]:
    """Walk every group :func:`walked_groups` names for ``mover.layout`` (module
    docstring), each from its saved cursor on; the cursors, complete, each saved after
    every page under ``home`` (None: kept in memory only).

    Raises:
        MoveError: too few of a group's nodes list (run again: it resumes).
    """
    layout = mover.layout
    states: dict[int, MoveState] = {}
    seen = {"walked": 0, "listed": 0}
    for group in walked_groups(layout):
        path = None if home is None else cursor_path(home, layout.version, group)
        state = MoveState.load(path) if path is not None else None
        if state is None or state.view != layout.version or state.source != group:
            state = MoveState(layout.version, group)
        states[group] = state

        def done(state: MoveState = state) -> None:
            seen["walked"] += 1
            state.count("objects", "walked")
            if on_progress is not None:
                on_progress(state, seen["walked"], seen["listed"])

        while not state.complete:
            oids, cut = await list_group(group, state.after)
            seen["listed"] += len(oids)
            await mover.objects(state, group, oids, done)
            state.after = cut if cut is not None else state.after
            state.complete = cut is None
            if path is not None:
                state.save(path)
    return states


async def move_layout(
    cfg: ClusterConfig,
    layout: Layout,
    who: str,
    bytes_per_second: int = 0,
    *,
    on_progress: Progress | None = None,
) -> dict[int, MoveState]:
    """Open every group's clients as client ``who`` of ``cfg`` and run the mover of the
    moving ``layout`` to the end (``bftfs group move``); the cursors, saved under
    ``cfg.home``."""
    assert cfg.admin_key is not None  # a layout is loaded with one
    admin_key = cfg.admin_key
    async with AsyncExitStack() as stack:
        eps, qus, rws = [], [], []
        for g in layout.groups:
            part = group_config(cfg, layout, g.id)
            ep = await stack.enter_async_context(open_client(part, who))
            eps.append(ep)
            qus.append(QUClient(ep, QUThresholds.from_config(part), client_id=ep.pid))
            rws.append(await stack.enter_async_context(open_rw_client(ep, part)))

        async def ask(group: int, index: int) -> int | None:
            return await held_version(eps[group], index, admin_key)

        gate = FrozenGate(lambda: layout, ask, qc=cfg.qc)
        routers = PartitionRouters(lambda: layout, qus.__getitem__, gate)
        mover = PartitionMover(
            layout,
            routers,
            qus.__getitem__,
            rws.__getitem__,
            default_bs=cfg.block_size,
            bytes_per_second=bytes_per_second,
            crossing=Crossing(layout, qus),
        )

        async def list_group(group: int, after: int | None) -> tuple[list[int], int | None]:
            n = len(layout.groups[group].members)
            await gate.wait(group)  # its nodes list to clients once they hold the move
            return await list_page(eps[group], list(range(n)), n - layout.t, after)

        return await move_partitions(mover, list_group, cfg.home, on_progress=on_progress)
