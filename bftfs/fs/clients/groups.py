"""A mount over many groups: one plain client per group, each call routed by the layout
(issue 66, docs/layout.md, "Placement").

- :class:`GroupedQU` (an :class:`~bftfs.fs.clients.protocols.EngineClient`): a call on
  objects goes to the Q/U client of the group the layout maps them to
  (``Layout.group_of_object``); a multi-object call whose objects all live in one group
  goes to it, atomic there as Q/U makes it.
- :class:`GroupedRW` (a :class:`~bftfs.fs.clients.protocols.BlockClient`): each block to
  the PASIS client of its group (``Layout.group_of_block``); many blocks split by group and
  sent to the groups at once.

A rename, link, mkdir or removal whose objects span groups runs as one cross-group
transaction (:class:`~bftfs.fs.clients.crossing.Crossing`: the halves of
``fsobjects/halves.py`` through ``layout/txn.py``); every call meeting another
transaction's intent resolves it as the driver does and tries again.  Any other
multi-object update spanning groups (but a lease's release or recall, which acts on each
object alone and goes to each group for its own), and ``RENAME_EXCHANGE`` across groups, raise
:class:`CrossGroup`, a :class:`~bftfs.fs.errors.CrossDevice`, which the file system
answers as ``EXDEV`` (``mv`` then copies and removes; docs/layout.md).

Faults and statistics are reported per node under the nodes' global ids (each group's
clients count its nodes by their index in the group).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import fields
from typing import Any

from bftfs.fs.clients.atonce import at_once
from bftfs.fs.clients.crossing import REMOVALS, Crossing
from bftfs.fs.clients.grouproutes import GroupRoutes
from bftfs.fs.clients.protocols import BlockClient, EngineClient, Objects
from bftfs.fs.errors import CrossDevice
from bftfs.fsobjects import RENAME_EXCHANGE
from bftfs.fsobjects.leases import INHERIT, tag_query, untag_query
from bftfs.fsobjects.pubstate import query_tokens
from bftfs.layout.model import Layout
from bftfs.outcome import GenerationMoved
from bftfs.qu.client import ClientStatistics, QUClient
from bftfs.qu.objects import MethodRefused
from bftfs.qu.timestamp import Timestamp
from bftfs.rw.calls import DEFAULT_CONCURRENCY
from bftfs.rw.client import RWStatistics, Space
from bftfs.rw.timestamp import Timestamp as BlockTime
from bftfs.rw.write import Prepared


class CrossGroup(CrossDevice):
    """A multi-object update names objects of several groups and is no operation the
    cross-group transaction runs (EXDEV)."""


#: The queries answering per object (``{str(oid): ...}``): split by group when their
#: objects span groups.
PER_OBJECT = frozenset({"fs.statmany", "fs.peekmany"})
#: The updates on objects of several groups sent to each group for its own objects: each
#: acts on every object alone (a lease given back; a recall queued, its answer a list of
#: ``[oid, holders]``), so one per group is what one on all would do, and their answers
#: (None, or those lists) are put together.
PER_OBJECT_UPDATES = frozenset({"fs.release", "fs.recall", "fs.publish"})
#: The queries answering a list of per-object items (a request to publish's
#: ``[[oid, holders, token], ...]``): sent to each group for its own objects, the lists
#: put together.
PER_OBJECT_LISTS = frozenset({"fs.pubreq"})
#: The updates run as a cross-group transaction when their objects span groups.
CROSSING = frozenset({"fs.rename", "fs.link", "fs.mkdir", *REMOVALS})


def _ids(objects: Objects) -> list[int]:
    return [objects] if isinstance(objects, int) else list(objects)


def _faults(
    counters: Sequence[Counter[tuple[int, str]]], members: Sequence[Sequence[int]]
) -> Counter[tuple[int, str]]:
    """The groups' fault counters under the nodes' global ids (of the groups whose
    clients are open: a group a newer layout added may be opening still)."""
    out: Counter[tuple[int, str]] = Counter()
    for counter, ids in zip(counters, members[: len(counters)], strict=True):
        for (node, kind), count in counter.items():
            out[(ids[int(node)], kind)] += count
    return out


class GroupedQU:
    """The Q/U clients of every group as one :class:`EngineClient` (module docstring)."""

    def __init__(
        self, layout: Layout, clients: Sequence[EngineClient], *, crossing: bool = True
    ) -> None:
        if len(clients) != len(layout.groups):
            raise ValueError(f"{len(clients)} clients for {len(layout.groups)} groups")
        self.layout = layout
        #: Each group's client, and its stand-in while partitions move to it.
        self.routes: GroupRoutes[EngineClient] = GroupRoutes(clients)
        #: Brings the moving objects of a cross-group transaction to their targets
        #: before it runs (the session sets it while partitions move).
        self.bring: Callable[[list[int], Any], Awaitable[None]] | None = None
        #: Calls run again because nodes refused them ``moved`` (a newer layout).
        self.rerouted = 0
        #: Calls refused because their objects span groups.
        self.crossed = 0
        qus = [c for c in clients if isinstance(c, QUClient)]
        #: Cross-group renames and links (Q/U groups only; None: EXDEV for them too).
        self.crossing = Crossing(layout, qus) if crossing and len(qus) == len(clients) else None
        #: Called with each layout :meth:`switch` takes (a test waits on it).
        self.switched: list[Callable[[Layout], None]] = []

    def switch(self, layout: Layout) -> None:
        """Route by ``layout`` from now on (a newer version taken while mounted,
        ``layout/tracker.py``; the partitions stay where they were, so routing changes
        only with the mover), its keys checking the cross-group commit."""
        self.layout = layout
        if self.crossing is not None:
            self.crossing.switch(layout)
        self.routes.changed()
        for hook in self.switched:
            hook(layout)

    @property
    def clients(self) -> list[EngineClient]:
        """Each open group's own client."""
        return self.routes.plain

    def add_group(self, client: EngineClient) -> None:
        """The client of the next group a newer layout added is open."""
        if self.crossing is not None:
            assert isinstance(client, QUClient)
            self.crossing.add_group(client)
        self.routes.add(client)

    def _by_group(self, ids: list[int]) -> dict[int, list[int]]:
        """``ids`` by the group each lives on, in their order."""
        split: dict[int, list[int]] = {}
        for o in ids:
            split.setdefault(self.layout.group_of_object(o), []).append(o)
        return split

    def spans(self, objects: Objects) -> bool:
        """Whether ``objects`` live on several groups."""
        return len({self.layout.group_of_object(o) for o in _ids(objects)}) > 1

    def group_of(self, objects: Objects) -> int:
        """The one group holding every object of ``objects``.

        Raises:
            CrossGroup: they live on several groups.
        """
        ids = _ids(objects)
        groups = {self.layout.group_of_object(o) for o in ids}
        if len(groups) != 1:
            self.crossed += 1
            where = ", ".join(f"{o:#x} on {self.layout.group_of_object(o)}" for o in ids)
            raise CrossGroup(
                f"objects on {len(groups)} groups ({where}): an update across groups is "
                "not an operation the cross-group transaction runs (docs/layout.md)"
            )
        return groups.pop()

    async def _rerouted(self, objects: Objects, call: Callable[[EngineClient], Any]) -> Any:
        """``call`` on the client of the group holding ``objects``, resolving other
        transactions' intents it meets (:class:`Crossing`), and run again routed by a
        newer layout when the nodes refuse it ``moved`` (``fs/clients/grouproutes.py``)."""
        while True:
            version = self.layout.version
            client = await self.routes.get(self.group_of(objects))
            try:
                return await self._resolving(objects, functools.partial(call, client))
            except MethodRefused as e:
                if e.code != "moved" or not await self.routes.newer(self._version, version):
                    raise
            self.rerouted += 1

    def _version(self) -> int:
        return self.layout.version

    @property
    def client_id(self) -> int:
        return self.clients[0].client_id

    @property
    def faults(self) -> Counter[tuple[int, str]]:
        return _faults([c.faults for c in self.clients], [g.members for g in self.layout.groups])

    def statistics(self) -> ClientStatistics:
        """The groups' counters added up (excluded servers under their global ids)."""
        stats = [c.statistics() for c in self.clients]
        if not all(isinstance(s, ClientStatistics) for s in stats):
            raise TypeError("groups run Q/U clients only")
        totals: dict[str, Any] = {}
        for f in fields(ClientStatistics):
            if f.name == "excluded_servers":
                totals[f.name] = tuple(
                    g.members[int(i)]
                    for s, g in zip(stats, self.layout.groups[: len(stats)], strict=True)
                    for i in getattr(s, f.name)
                )
            else:
                totals[f.name] = sum(getattr(s, f.name) for s in stats)
        return ClientStatistics(**totals)

    def next_seq(self) -> int | None:
        """None: each group's client numbers its own requests, and a cluster of groups
        changes no generation, so no update is ever sent again under its first id."""
        return None

    async def _resolving(self, objects: Objects, call: Callable[[], Awaitable[Any]]) -> Any:
        """``call()``, resolving other transactions' intents it meets (:class:`Crossing`)."""
        if self.crossing is None:
            return await call()
        return await self.crossing.resolving(_ids(objects), call)

    async def query(self, objects: Objects, method: str, arg: Any = None) -> Any:
        if method in PER_OBJECT | {"fs.lookupstat"} and self.spans(objects):
            return await self._split_query(_ids(objects), method, arg)
        if method in PER_OBJECT_LISTS and self.spans(objects):
            return await self._split_list_query(_ids(objects), method, arg)
        return await self._rerouted(objects, lambda c: c.query(objects, method, arg))

    async def _split_list_query(self, ids: list[int], method: str, arg: Any) -> list[Any]:
        """A :data:`PER_OBJECT_LISTS` query of objects on several groups: each group's
        share asked at once, the lists put together."""
        split = self._by_group(ids)
        out: list[Any] = []

        async def one(_g: int, share: list[int]) -> None:
            got = await self.query(share, method, arg)
            out.extend(got if isinstance(got, list) else ())

        await GroupedRW._each(one, split)
        return out

    async def _split_query(self, ids: list[int], method: str, arg: Any) -> Any:
        """A query of objects on several groups that answers per object (``statmany``,
        ``peekmany``: each group's share asked at once, the answers merged), or a
        ``lookupstat`` whose entry names an object of another group (the directory's
        ``fs.lookup`` and the object's ``fs.stat``, at once): reads of objects of their
        own, as linearizable as each object's read is."""
        out: dict[str, Any] = {}
        if method == "fs.lookupstat":
            inner, mount = untag_query(arg)
            tokens = query_tokens(arg)
            tag = (lambda a: tag_query(a, mount, tokens)) if inner is not arg else (lambda a: a)

            async def stat() -> None:
                try:
                    out["s"] = await self.query(inner["o"], "fs.stat", tag(None))
                except MethodRefused as e:
                    if e.code == "leased":
                        raise
                    out["s"] = None

            async def lookup() -> None:
                out["e"] = await self.query(inner["p"], "fs.lookup", tag(inner["name"]))

            await at_once([stat, lookup])  # a "leased" refusal as itself: the caller recalls
            same = out["e"][0] == inner["o"] and out["s"] is not None
            return {"e": out["e"], "s": out["s"] if same else None}
        split = self._by_group(ids)

        async def one(_g: int, share: list[int]) -> None:
            out.update(await self.query(share, method, arg))

        await GroupedRW._each(one, split)
        return out

    async def update(
        self, objects: Objects, method: str, arg: Any = None, *, seq: int | None = None
    ) -> Any:
        if method in CROSSING and self.crossing is not None and self.spans(objects):
            exchange = method == "fs.rename" and arg.get("flags", 0) & RENAME_EXCHANGE
            if exchange or (method == "fs.mkdir" and INHERIT in arg):
                self.group_of(objects)  # raises CrossGroup: not split (docs/layout.md)
            version = self.layout.version
            try:
                if self.bring is not None:
                    await self.bring(_ids(objects), arg)
                return await self.crossing.run(self.query, _ids(objects), method, arg)
            except MethodRefused as e:
                if e.code != "moved" or not await self.routes.newer(self._version, version):
                    raise
            self.rerouted += 1
            return await self.update(objects, method, arg, seq=seq)
        if method in PER_OBJECT_UPDATES and self.spans(objects):
            return await self._split_update(_ids(objects), method, arg)
        if seq is None:
            return await self._rerouted(objects, lambda c: c.update(objects, method, arg))
        return await self._rerouted(objects, lambda c: c.update(objects, method, arg, seq=seq))

    async def _split_update(self, ids: list[int], method: str, arg: Any) -> Any:
        """A :data:`PER_OBJECT_UPDATES` update of objects on several groups: each group's
        share at once, the answers put together (lists concatenated, else None)."""
        split = self._by_group(ids)
        answers: list[Any] = []

        async def one(_g: int, share: list[int]) -> None:
            answers.append(await self.update(share, method, arg))

        await GroupedRW._each(one, split)
        lists = [a for a in answers if isinstance(a, list)]
        return [item for a in lists for item in a] if lists else None

    async def settle(self, objects: Objects) -> None:
        await self._rerouted(objects, lambda c: c.settle(objects))

    async def query_at(self, oid: int, method: str, arg: Any = None) -> tuple[Any, Timestamp]:
        return await self._rerouted(oid, lambda c: c.query_at(oid, method, arg))

    async def query_many_at(
        self, objects: Iterable[int], method: str, arg: Any = None
    ) -> tuple[Any, dict[int, Timestamp]]:
        ids = list(objects)
        if method in PER_OBJECT and self.spans(ids):
            answer: dict[str, Any] = {}
            times: dict[int, Timestamp] = {}
            split = self._by_group(ids)

            async def one(_g: int, share: list[int]) -> None:
                a, t = await self.query_many_at(share, method, arg)
                answer.update(a)
                times.update(t)

            await GroupedRW._each(one, split)
            return answer, times
        return await self._rerouted(ids, lambda c: c.query_many_at(ids, method, arg))


class GroupedRW:
    """The PASIS clients of every group as one :class:`BlockClient` (module docstring)."""

    def __init__(self, layout: Layout, clients: Sequence[BlockClient]) -> None:
        if len(clients) != len(layout.groups):
            raise ValueError(f"{len(clients)} clients for {len(layout.groups)} groups")
        self.layout = layout
        #: Each group's client, and its stand-in while partitions move to it.
        self.routes: GroupRoutes[BlockClient] = GroupRoutes(clients)
        #: Calls run again because nodes refused them ``moved`` (a newer layout).
        self.rerouted = 0

    def switch(self, layout: Layout) -> None:
        """Route by ``layout`` from now on (:meth:`GroupedQU.switch`)."""
        self.layout = layout
        self.routes.changed()

    @property
    def clients(self) -> list[BlockClient]:
        """Each open group's own client."""
        return self.routes.plain

    def add_group(self, client: BlockClient) -> None:
        """The client of the next group a newer layout added is open."""
        self.routes.add(client)

    async def _for(self, block: int) -> BlockClient:
        return await self.routes.get(self.layout.group_of_block(block))

    async def _rerouted(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """``call()`` (which routes by the layout held when it runs), run again routed by
        a newer layout when the nodes refuse a write ``moved``
        (``fs/clients/grouproutes.py``)."""
        while True:
            version = self.layout.version
            try:
                return await call()
            except GenerationMoved:
                if not await self.routes.newer(lambda: self.layout.version, version):
                    raise
            self.rerouted += 1

    def _split(self, blocks: Iterable[int]) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for b in blocks:
            out.setdefault(self.layout.group_of_block(b), []).append(b)
        return out

    @property
    def block_size(self) -> int:
        return self.clients[0].block_size

    @property
    def faults(self) -> Counter[tuple[int, str]]:
        return _faults([c.faults for c in self.clients], [g.members for g in self.layout.groups])

    def statistics(self) -> RWStatistics:
        total: Counter[str] = Counter()
        for c in self.clients:
            total.update(c.statistics().counters)
        return RWStatistics(dict(total))

    async def write_block(self, block: int, data: bytes, *, after: int = 0) -> BlockTime:
        return await self._rerouted(lambda: self._write_block(block, data, after=after))

    async def _write_block(self, block: int, data: bytes, *, after: int) -> BlockTime:
        return await (await self._for(block)).write_block(block, data, after=after)

    async def write_blocks(
        self,
        blocks: Mapping[int, bytes],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        after: int = 0,
        prepared: Mapping[int, Prepared] | None = None,
    ) -> dict[int, BlockTime]:
        out: dict[int, BlockTime] = {}

        async def one(g: int, ids: list[int]) -> None:
            mine = {b: blocks[b] for b in ids}
            ready = None if prepared is None else {b: prepared[b] for b in ids if b in prepared}
            client = await self.routes.get(g)
            out.update(
                await client.write_blocks(
                    mine, concurrency=concurrency, after=after, prepared=ready
                )
            )

        async def all_left() -> None:
            await self._each(one, self._split(b for b in blocks if b not in out))

        await self._rerouted(all_left)
        return out

    async def prepare(
        self,
        block: int,
        data: bytes | bytearray,
        before: Callable[[bytes | bytearray], bytes | bytearray] | None = None,
        *,
        into: tuple[int, Callable[[memoryview], None]] | None = None,
    ) -> Prepared:
        return await (await self._for(block)).prepare(block, data, before, into=into)

    async def read_block(self, block: int) -> bytes | bytearray:
        return await (await self._for(block)).read_block(block)

    async def read_blocks(
        self, blocks: Iterable[int], *, concurrency: int = DEFAULT_CONCURRENCY
    ) -> dict[int, bytes | bytearray]:
        out: dict[int, bytes | bytearray] = {}

        async def one(g: int, ids: list[int]) -> None:
            client = await self.routes.get(g)
            out.update(await client.read_blocks(ids, concurrency=concurrency))

        await self._each(one, self._split(blocks))
        return out

    async def read_as_of(self, block: int, time_ns: int) -> bytes | bytearray:
        return await (await self._for(block)).read_as_of(block, time_ns)

    async def space(self) -> Space:
        """The fullest group's answer (the least free disk): what fills first."""
        answers: list[Space] = []

        async def one(g: int, _ids: list[int]) -> None:
            answers.append(await self.clients[g].space())

        await self._each(one, {g: [] for g in range(len(self.clients))})
        known = [a for a in answers if a.free is not None]
        return min(known, key=lambda a: a.free or 0) if known else max(answers)

    @staticmethod
    async def _each(fn: Callable[[int, list[int]], Any], split: dict[int, list[int]]) -> None:
        """``fn(group, ids)`` for every group of ``split`` at once (one alone: inline)."""
        await at_once([functools.partial(fn, g, ids) for g, ids in split.items()])
