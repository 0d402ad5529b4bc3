"""A mount over groups while partitions move (issue 66; docs/layout.md, "Moving
partitions"): the generation routers, per pair of groups.

A moving layout (``Layout.moving``) maps each moving partition to its *target* group and
names the *source* it moves from.  The mount routes by the target (``GroupedQU``,
``GroupedRW``); for a target group it calls through :class:`MovingQU` and
:class:`MovingRW`, which do for each moving id what the generation routers do for a
whole generation (``routers.py``), with the source group in g's place and the target in
g + 1's:

- an object moves on first touch, through the :class:`~bftfs.fs.generations.routers.
  GenerationalQU` of its (source, target) pair: its state in the target, else the
  source's ``fs.export`` installed with ``fs.movein``, after the source group is frozen
  for it (:class:`FrozenGate`); a lease given back where it is recorded;
- a block is written to the target, once its source is frozen (a mount still on the
  older layout could otherwise write a newer version to the source, which a reader
  finding the target's would never see); read from the target and, where the target
  holds no version, from the source.

**Frozen** here means: more than ``n - q + b`` of the source group's nodes hold the moving
layout (or a later one), so no quorum of them takes a client's new operation on a moving
id (``node/qu_server.py``, ``node/rw_server.py``) and the source's states are final; the
gate asks each node for its layout (``layout.get``, checked as every layout is) and
counts as ``wait_frozen`` does.  Ids whose partition does not move go straight to the
group's client.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import trio

from bftfs.fs.clients import BlockClient, EngineClient
from bftfs.fs.generations.routers import (
    RELEASE,
    GenerationalQU,
    GenerationalRW,
    frozen_needed,
    query_mount,
    update_mount,
    wait_frozen,
)
from bftfs.layout.model import Layout
from bftfs.qu.client import ClientStatistics
from bftfs.qu.timestamp import Timestamp
from bftfs.rw.calls import DEFAULT_CONCURRENCY
from bftfs.rw.client import RWClient, RWStatistics, Space
from bftfs.rw.timestamp import Timestamp as BlockTime
from bftfs.rw.write import Prepared
from bftfs.thresholds import qu_quorums

#: ``ask(group, index)``: the layout version node ``index`` of ``group`` holds (None:
#: unknown, asked again); the session reads the node's signed layout.
AskVersion = Callable[[int, int], Awaitable[int | None]]


class FrozenGate:
    """Waits, once per source group and moving layout, until the group is frozen for
    its moving ids (module docstring)."""

    def __init__(self, layout_of: Callable[[], Layout], ask: AskVersion, *, qc: int) -> None:
        """``qc``: the cluster's PASIS write threshold (``[cluster] qc``), each group's."""
        self._layout_of = layout_of
        self._ask = ask
        self._qc = qc
        self._done: set[tuple[int, int]] = set()
        self._locks: dict[tuple[int, int], trio.Lock] = {}

    def needed(self, n: int, t: int, b: int) -> int:
        """Nodes of a group of ``n`` that must hold the moving layout: more than ``n - q +
        b`` (no Q/U quorum ``q`` of unfrozen ones left, ``b`` answers possibly lies) and
        more than ``n - (qc + b) + b`` (no PASIS write completes on the others)."""
        q = qu_quorums(n, t, b)[0]
        return max(frozen_needed(n, q, b), n - self._qc + 1)

    async def wait(self, group: int) -> None:
        """Return once ``group`` is frozen under the held moving layout (at once after
        the first time)."""
        layout = self._layout_of()
        key = (layout.version, group)
        if key in self._done:
            return
        async with self._locks.setdefault(key, trio.Lock()):
            if key in self._done:
                return
            n, b = len(layout.groups[group].members), layout.b
            version = layout.version

            async def status(index: int) -> Any:
                held = await self._ask(group, index)
                return {"g": version, "frozen": held is not None and held >= version}

            needed = self.needed(n, layout.t, b)
            await wait_frozen(status, range(n), needed, generation=version)
            self._done.add(key)


class PartitionRouters:
    """The pair routers of one mount while its layout moves partitions: one
    :class:`GenerationalQU` per (source, target), made when first needed and kept for
    the layout (it remembers what it moved)."""

    def __init__(
        self,
        layout_of: Callable[[], Layout],
        qu_of: Callable[[int], EngineClient],
        gate: FrozenGate,
        *,
        own_lease_moved: Callable[[list[int]], Any] | None = None,
    ) -> None:
        self._layout_of = layout_of
        self._qu_of = qu_of
        self.gate = gate
        self._own_lease_moved = own_lease_moved
        self._pairs: dict[tuple[int, int, int], GenerationalQU] = {}

    def pair(self, source: int, target: int) -> GenerationalQU:
        """The router moving objects from group ``source`` to ``target``."""
        key = (self._layout_of().version, source, target)
        got = self._pairs.get(key)
        if got is None:
            got = GenerationalQU(
                self._qu_of(target),
                self._qu_of(source),
                ready=functools.partial(self.gate.wait, source),
                own_lease_moved=self._own_lease_moved,
            )
            self._pairs[key] = got
        return got

    def moves(self) -> Counter[str]:
        """Every pair router's counts added up (``moved``, ``here``, ``absent``, ...)."""
        total: Counter[str] = Counter()
        for router in self._pairs.values():
            total.update(router.moves)
        return total

    def moving(self, oid: int) -> tuple[int, int] | None:
        """``oid``'s (source, target) when its partition moves, else None."""
        layout = self._layout_of()
        source = layout.source_of_object(oid)
        return None if source is None else (source, layout.group_of_object(oid))

    async def bring(self, objects: Iterable[int], mount: int | None) -> None:
        """Move each moving one of ``objects`` to its target (at once)."""
        todo = []
        for oid in dict.fromkeys(objects):
            where = self.moving(oid)
            if where is not None and not self.pair(*where).moved(oid):
                todo.append((oid, self.pair(*where)))
        if len(todo) == 1:
            await todo[0][1].move(todo[0][0], mount)
        elif todo:
            async with trio.open_nursery() as nursery:
                for oid, router in todo:
                    nursery.start_soon(router.move, oid, mount)


def _objs(objects: int | Iterable[int]) -> tuple[int, ...]:
    return (objects,) if isinstance(objects, int) else tuple(objects)


class MovingQU:
    """Group ``target``'s Q/U client while partitions move to it: each call's moving
    objects are brought over first (:class:`PartitionRouters`)."""

    def __init__(self, base: EngineClient, routers: PartitionRouters) -> None:
        self.base = base
        self.routers = routers

    @property
    def client_id(self) -> int:
        return int(self.base.client_id)

    @property
    def faults(self) -> Counter[tuple[int, str]]:
        return self.base.faults

    def statistics(self) -> ClientStatistics:
        got = self.base.statistics()
        assert isinstance(got, ClientStatistics)  # groups run Q/U
        return got

    def next_seq(self) -> int | None:
        return self.base.next_seq()

    async def query(self, objects: int | Iterable[int], method: str, arg: Any = None) -> Any:
        await self.routers.bring(_objs(objects), query_mount(arg))
        return await self.base.query(objects, method, arg)

    async def update(
        self, objects: int | Iterable[int], method: str, arg: Any = None, *, seq: int | None = None
    ) -> Any:
        objs = _objs(objects)
        if method == RELEASE:
            return await self._release(objs, arg)
        await self.routers.bring(objs, update_mount(arg))
        if seq is None:
            return await self.base.update(objects, method, arg)
        return await self.base.update(objects, method, arg, seq=seq)

    async def _release(self, objs: tuple[int, ...], arg: Any) -> None:
        """A lease given back where it is recorded: each moving object through its pair
        router (the source while it is not moved), the others here."""
        split: dict[tuple[int, int] | None, list[int]] = {}
        for oid in objs:
            split.setdefault(self.routers.moving(oid), []).append(oid)
        for where, share in split.items():
            if where is None:
                await self.base.update(share, RELEASE, arg)
            else:
                await self.routers.pair(*where).update(share, RELEASE, arg)

    async def settle(self, objects: int | Iterable[int]) -> None:
        await self.routers.bring(_objs(objects), None)
        await self.base.settle(objects)

    async def query_at(self, oid: int, method: str, arg: Any = None) -> tuple[Any, Timestamp]:
        await self.routers.bring((oid,), query_mount(arg))
        return await self.base.query_at(oid, method, arg)

    async def query_many_at(
        self, objects: Iterable[int], method: str, arg: Any = None
    ) -> tuple[Any, dict[int, Timestamp]]:
        objs = _objs(objects)
        await self.routers.bring(objs, query_mount(arg))
        return await self.base.query_many_at(objs, method, arg)


class MovingRW:
    """Group ``target``'s PASIS client while block partitions move to it (module
    docstring): writes of a moving block once its source is frozen; reads from here, else
    from the source."""

    def __init__(
        self,
        base: RWClient,
        layout_of: Callable[[], Layout],
        rw_of: Callable[[int], BlockClient],
        gate: FrozenGate,
    ) -> None:
        self.base = base
        self._layout_of = layout_of
        self._rw_of = rw_of
        self.gate = gate

    @property
    def block_size(self) -> int:
        return int(self.base.block_size)

    @property
    def faults(self) -> Counter[tuple[int, str]]:
        return self.base.faults

    def statistics(self) -> RWStatistics:
        return self.base.statistics()

    async def space(self) -> Space:
        return await self.base.space()

    def _source(self, block: int) -> int | None:
        return self._layout_of().source_of_block(block)

    async def _frozen(self, blocks: Iterable[int]) -> None:
        for source in sorted({s for b in blocks if (s := self._source(b)) is not None}):
            await self.gate.wait(source)

    def _pair(self, source: int) -> GenerationalRW:
        old = self._rw_of(source)
        assert isinstance(old, RWClient)  # groups run PASIS
        return GenerationalRW(self.base, old)

    async def write_block(self, block: int, data: bytes, *, after: int = 0) -> BlockTime:
        await self._frozen((block,))
        return await self.base.write_block(block, data, after=after)

    async def write_blocks(
        self,
        blocks: Mapping[int, bytes],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        after: int = 0,
        prepared: Mapping[int, Prepared] | None = None,
    ) -> dict[int, BlockTime]:
        await self._frozen(blocks)
        return await self.base.write_blocks(
            blocks, concurrency=concurrency, after=after, prepared=prepared
        )

    async def prepare(
        self,
        block: int,
        data: bytes | bytearray,
        before: Callable[[bytes | bytearray], bytes | bytearray] | None = None,
        *,
        into: tuple[int, Callable[[memoryview], None]] | None = None,
    ) -> Prepared:
        return await self.base.prepare(block, data, before, into=into)

    async def read_block(self, block: int) -> bytes | bytearray:
        source = self._source(block)
        if source is None:
            return await self.base.read_block(block)
        return await self._pair(source).read_block(block)

    async def read_blocks(
        self, blocks: Iterable[int], *, concurrency: int = DEFAULT_CONCURRENCY
    ) -> dict[int, bytes | bytearray]:
        split: dict[int | None, list[int]] = {}
        for b in dict.fromkeys(blocks):
            split.setdefault(self._source(b), []).append(b)
        out: dict[int, bytes | bytearray] = {}

        async def one(source: int | None, share: Sequence[int]) -> None:
            if source is None:
                out.update(await self.base.read_blocks(share, concurrency=concurrency))
                return
            out.update(await self._pair(source).read_blocks(share, concurrency=concurrency))

        async with trio.open_nursery() as nursery:
            for source, share in split.items():
                nursery.start_soon(one, source, share)
        return out

    async def read_as_of(self, block: int, time_ns: int) -> bytes | bytearray:
        source = self._source(block)
        if source is None:
            return await self.base.read_as_of(block, time_ns)
        return await self._pair(source).read_as_of(block, time_ns)
