"""The protocol clients a mount holds across generation changes (issue 35; docs/membership.md,
"Generations").

A mount runs for days; the cluster under it may start a new generation meanwhile.  The
file system is given one :class:`SwitchingQU` and one :class:`SwitchingRW` for its whole
life, each forwarding to a *target*: the plain clients of one generation, or the routers of
``fs/generations/routers.py`` while objects move from one generation to the next.  The session
(``fs/session.py``) calls :meth:`Switch.switch` when the mount takes a view that changes
the generation, with the new targets.

A call the old generation's nodes refused because they are frozen or retired (Q/U:
``MethodRefused("moved" | "retired")`` once ``b + 1`` agree; PASIS: ``GenerationMoved``,
for a write refused ``moved`` or any call refused ``retired``)
was not applied by a quorum: the mount waits for the switch (the nodes push the view they
took to their clients, which fetch it: seconds) and runs the call again on the new
targets, which move its objects first; so does a call that failed for want of nodes while
the targets switched under it (a mount that slept through a whole move finds its old
nodes retired, and no longer proving the view it took from them).

The session switches to a new generation only once a quorum of its nodes answer
(``fs/generations/clients.py``): the view is issued and pushed before the new nodes are
started, and calls sent to nodes not listening yet ran their patience down and failed
with EIO on a busy machine, where starting eleven node processes takes longer than a
mount's ``timeo``.  Until then the old generation's clients stay the targets, and the
switch is *pending* (:attr:`Switch.pending`): a refused call waits for it however long
the new nodes take to start (slow is not unavailable: the old nodes that refused are
there, and the new ones were named by a signed view).  A call that was refused while no
switch is pending and sees none within :data:`SWITCH_WAIT` fails as it was refused.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import trio

from bftfs.fab.metaclient import FabClientStatistics
from bftfs.fs.clients.protocols import BlockClient, EngineClient, Objects
from bftfs.outcome import ClusterUnavailable, GenerationMoved
from bftfs.qu.client import ClientStatistics
from bftfs.qu.objects import MethodRefused
from bftfs.qu.timestamp import Timestamp
from bftfs.rw.calls import DEFAULT_CONCURRENCY
from bftfs.rw.client import RWStatistics, Space
from bftfs.rw.timestamp import Timestamp as BlockTime
from bftfs.rw.write import Prepared

log = logging.getLogger(__name__)

#: The refusal codes of a frozen or retired generation's nodes.
MOVED_CODES = frozenset({"moved", "retired"})
#: Longest a refused call waits for the mount to take the newer view (s).
SWITCH_WAIT = 60.0

T = TypeVar("T")


class Switch:
    """The generation a mount's calls go to, and the event of its change."""

    def __init__(self) -> None:
        #: How many times the targets changed (a refused call retries once it grew).
        self.epoch = 0
        self._changed = trio.Event()
        #: Calls run again on the new targets after a refusal.
        self.retried = 0
        #: The cancel scopes of the calls in flight.
        self._running: set[trio.CancelScope] = set()
        #: Whether the session took a view of a newer generation and waits for its nodes
        #: before switching (refused calls then wait past :data:`SWITCH_WAIT`).
        self.pending = False
        #: Refused calls that waited past :data:`SWITCH_WAIT` for a pending switch.
        self.waited_pending = 0

    def switched(self, *, abandon: bool = False) -> None:
        """The targets changed: wake every call waiting for it; with ``abandon`` (a
        generation the old targets used is gone: retired, or skipped by a mount that slept
        through a move), cut the calls in flight short and run them again on the new
        targets, instead of letting them wait out their patience on nodes that refuse."""
        self.epoch += 1
        self._changed.set()
        self._changed = trio.Event()
        if abandon:
            for scope in self._running:
                scope.cancel()

    async def after_refusal(self, epoch: int, error: BaseException) -> None:
        """Wait until the targets change after ``epoch`` (the one the refused call ran
        in); re-raise ``error`` if they do not within :data:`SWITCH_WAIT` while no switch
        is pending.  A pending switch (the new generation's nodes not answering yet) is
        waited for as long as it takes: the refusal came from live nodes, and the new
        ones are starting (each :data:`SWITCH_WAIT` of it is logged)."""
        while True:
            with trio.move_on_after(SWITCH_WAIT):
                while self.epoch == epoch:
                    await self._changed.wait()
            if self.epoch != epoch:
                break
            if not self.pending:
                raise error
            self.waited_pending += 1
            log.warning(
                "a call refused by the frozen generation still waits for the new one's nodes"
                " (%s)", error,
            )  # fmt: skip
        self.retried += 1

    async def run(
        self, call: Callable[[], Awaitable[T]], refused: Callable[[BaseException], bool]
    ) -> T:
        """``call()`` on the current targets; again on the next ones while it is refused
        as by a frozen generation."""
        while True:
            epoch = self.epoch
            scope = trio.CancelScope()
            self._running.add(scope)
            try:
                with scope:
                    return await call()
                self.retried += 1  # abandoned by a switch (only it cancels this scope)
                continue
            except Exception as e:
                if isinstance(e, ClusterUnavailable) and self.epoch != epoch:
                    # The generation changed under the call: its nodes are frozen or
                    # retired, or no longer prove the view (a client that slept through
                    # a whole move); the new targets are where it belongs.
                    self.retried += 1
                    continue
                if not refused(e):
                    raise
                log.info("refused by a frozen generation (%s): waiting for the new one", e)
                await self.after_refusal(epoch, e)
            finally:
                self._running.discard(scope)


def _qu_moved(e: BaseException) -> bool:
    return isinstance(e, MethodRefused) and e.code in MOVED_CODES


def _rw_moved(e: BaseException) -> bool:
    return isinstance(e, GenerationMoved)


class SwitchingQU:
    """The metadata client the file system holds: its calls, on the current target
    (``QUClient``, ``FabMetaClient`` or ``GenerationalQU``)."""

    def __init__(self, target: EngineClient, switch: Switch) -> None:
        self.target = target
        self._switch = switch

    @property
    def client_id(self) -> int:
        return int(self.target.client_id)

    @property
    def faults(self) -> Counter[tuple[int, str]]:
        return self.target.faults

    def statistics(self) -> ClientStatistics | FabClientStatistics:
        return self.target.statistics()

    async def query(self, objects: Objects, method: str, arg: Any = None) -> Any:
        objs = objects if isinstance(objects, int) else tuple(objects)
        return await self._switch.run(lambda: self.target.query(objs, method, arg), _qu_moved)

    async def update(
        self, objects: Objects, method: str, arg: Any = None, *, seq: int | None = None
    ) -> Any:
        """The update on the current target; run again on the next under the same request
        id (``seq``: a new one unless given): if the first run took effect in the old
        generation before its freeze cut the answer off, the moved objects' applied tables
        show it, and the new generation answers from them instead of running it twice (a
        create answering EEXIST for the file it made).  An engine that orders its updates
        (FaB) has no such id (``EngineClient.next_seq``): none is cut short."""
        objs = objects if isinstance(objects, int) else tuple(objects)
        if seq is None:
            seq = self.target.next_seq()
        return await self._switch.run(
            lambda: self.target.update(objs, method, arg, seq=seq), _qu_moved
        )

    def next_seq(self) -> int | None:
        return self.target.next_seq()

    async def settle(self, objects: Objects) -> None:
        objs = objects if isinstance(objects, int) else tuple(objects)
        await self._switch.run(lambda: self.target.settle(objs), _qu_moved)

    async def query_at(self, oid: int, method: str, arg: Any = None) -> tuple[Any, Timestamp]:
        return await self._switch.run(lambda: self.target.query_at(oid, method, arg), _qu_moved)

    async def query_many_at(
        self, objects: Iterable[int], method: str, arg: Any = None
    ) -> tuple[Any, dict[int, Timestamp]]:
        objs = tuple(objects)
        return await self._switch.run(
            lambda: self.target.query_many_at(objs, method, arg), _qu_moved
        )


class SwitchingRW:
    """The PASIS client the file system holds: its calls, on the current target
    (``RWClient`` or ``GenerationalRW``)."""

    def __init__(self, target: BlockClient, switch: Switch) -> None:
        self.target = target
        self._switch = switch

    @property
    def block_size(self) -> int:
        return int(self.target.block_size)

    @property
    def faults(self) -> Counter[tuple[int, str]]:
        return self.target.faults

    def statistics(self) -> RWStatistics:
        return self.target.statistics()

    async def write_block(self, block: int, data: bytes, *, after: int = 0) -> BlockTime:
        return await self._switch.run(
            lambda: self.target.write_block(block, data, after=after), _rw_moved
        )

    async def write_blocks(
        self,
        blocks: Mapping[int, bytes],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        after: int = 0,
        prepared: Mapping[int, Prepared] | None = None,
    ) -> dict[int, BlockTime]:
        return await self._switch.run(
            lambda: self.target.write_blocks(
                blocks, concurrency=concurrency, after=after, prepared=prepared
            ),
            _rw_moved,
        )

    async def prepare(
        self,
        block: int,
        data: bytes | bytearray,
        before: Callable[[bytes | bytearray], bytes | bytearray] | None = None,
        *,
        into: tuple[int, Callable[[memoryview], None]] | None = None,
    ) -> Prepared:
        """The current target's encoding (no call to the nodes: nothing to refuse)."""
        return await self.target.prepare(block, data, before, into=into)

    async def read_block(self, block: int) -> bytes:
        return bytes(await self._switch.run(lambda: self.target.read_block(block), _rw_moved))

    async def read_blocks(
        self, blocks: Iterable[int], *, concurrency: int = DEFAULT_CONCURRENCY
    ) -> dict[int, bytes | bytearray]:
        todo = list(blocks)
        return await self._switch.run(
            lambda: self.target.read_blocks(todo, concurrency=concurrency), _rw_moved
        )

    async def read_as_of(self, block: int, time_ns: int) -> bytes:
        return bytes(
            await self._switch.run(lambda: self.target.read_as_of(block, time_ns), _rw_moved)
        )

    async def space(self) -> Space:
        return await self.target.space()
