"""A file system spanning two generations while objects move (issue 35; docs/membership.md,
"Generations: moving objects").

A change of the node count or the thresholds starts generation g + 1 on new nodes, with
g's nodes frozen: they serve reads, repairs and ``fs.release``, and refuse every new
update and block write (``moved``).  A client holding such a view talks to both through
the two routers here, which the file system takes in place of its Q/U and PASIS clients:

- :class:`GenerationalQU`: every call runs on g + 1's Q/U client once each object it names
  is there.  An object moves on first touch (:meth:`GenerationalQU.move`): its raw state
  in g + 1 (``fs.state``), else in g; found in g, the move waits while the state holds a
  live lease of another mount (its holder was recalled by the freeze and writes back
  through its own router, which moves the object: the wait ends at the latest with the
  lease term), then installs it in g + 1 (``fs.movein``, leases stripped; refused
  ``exists`` when another client moved it first, which is as good).  Moved ids are
  remembered, so an object costs two queries and an update once per mount.  A lease
  session (``fsobjects.sessions``) found in g is not moved: it is a mount's, not the file
  system's (``fs.movein`` refuses it ``invalid``, which failed every renewal during a move
  and a write whose recall named another mount's session with EINVAL); a renewal, a
  bound grant or a recall naming it runs on g + 1, where the renewal starts a session
  of its own.  A lease is
  given back (``fs.release``) where it is recorded: in g for an object not moved, which
  lets the other holders' moves go on.
- :class:`GenerationalRW`: blocks are not moved.  Every writer writes a file's blocks
  above the file's block Time, so any version g + 1 holds is newer than every version of
  g the file names: writes go to g + 1; a read of a block (as of a moment) goes to g + 1
  and, where g + 1 holds no version up to then (``ReadOutcome.absent``), to g.
- :func:`wait_frozen`: before the first move, until at least ``n_g - q_g + 1 + b_g`` of
  g's nodes answer ``gen.status`` frozen.  Then no quorum of g can take an update any
  more, with ``b_g`` of the answers possibly lies: g's states are final, and a state read
  from g is the one to move.

Neither router imports node or membership code: the session (``fs/session.py``) builds
both generations' clients and passes the function that asks a node for its status.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import trio

from bftfs.fab.metaclient import FabClientStatistics
from bftfs.fs.clients import EngineClient
from bftfs.fsobjects.leases import (
    LEASE_SKEW,
    MAX_TERM,
    MOUNT,
    bound,
    holders,
    untag_query,
    who,
)
from bftfs.fsobjects.moves import unpack_state
from bftfs.fsobjects.sessions import is_session, session_state
from bftfs.qu.client import ClientStatistics
from bftfs.qu.objects import MethodRefused
from bftfs.qu.timestamp import Timestamp
from bftfs.rw.calls import DEFAULT_CONCURRENCY
from bftfs.rw.client import RWClient, RWStatistics, Space
from bftfs.rw.timestamp import Timestamp as BlockTime
from bftfs.rw.write import Prepared

log = logging.getLogger(__name__)

#: The update that gives a lease back (``fsobjects/leases.py``): frozen nodes take it.
RELEASE = "fs.release"
#: First and longest pause between two looks at a leased object or at g's nodes (s).
FIRST_POLL = 0.05
MAX_POLL = 1.0
#: What :meth:`GenerationalQU.move` answers when it did not see the object's state itself.
NOT_SEEN = object()


def frozen_needed(n: int, q: int, b: int) -> int:
    """How many of generation g's ``n`` nodes (Q/U quorum ``q``, ``b`` Byzantine) must
    answer frozen before its states are final: more than ``n - q`` correct ones, so that
    no quorum of unfrozen nodes is left to take an update."""
    return n - q + 1 + b


def is_frozen_answer(answer: Any, generation: int) -> bool:
    """Whether a ``gen.status`` answer says its node, of ``generation``, takes no update
    any more (frozen, or already retired)."""
    if not isinstance(answer, Mapping) or answer.get("g") != generation:
        return False
    return answer.get("frozen") is True or answer.get("retired") is True


async def wait_frozen(
    status: Callable[[int], Awaitable[Any]],
    nodes: Sequence[int],
    needed: int,
    *,
    generation: int,
    ask_timeout: float = 2.0,
    sleep: Callable[[float], Awaitable[Any]] = trio.sleep,
) -> set[int]:
    """Ask ``nodes`` (generation ``generation``'s) for their status with ``status(node)``
    until at least ``needed`` (:func:`frozen_needed`) answer frozen; the nodes that did.

    Each round asks every node not counted yet, at once, each for at most ``ask_timeout``
    seconds; a node that fails, is silent or answers anything else is asked again next
    round.  Rounds are spaced by a growing pause (:data:`FIRST_POLL` to :data:`MAX_POLL`).
    A node's answer counts once: frozen is final for a correct node, and ``needed``
    leaves room for ``b`` that lie.  Waits as long as it takes (the caller's patience
    bounds it).
    """
    if needed > len(nodes):
        raise ValueError(f"{needed} frozen nodes needed of {len(nodes)}")
    frozen: set[int] = set()
    pause = FIRST_POLL

    async def ask(node: int) -> None:
        with trio.move_on_after(ask_timeout):
            try:
                answer = await status(node)
            except Exception as e:  # a node's failure is its own: asked again next round
                log.debug("gen.status of node %s: %s", node, e)
                return
            if is_frozen_answer(answer, generation):
                frozen.add(node)

    while True:
        async with trio.open_nursery() as nursery:
            for node in nodes:
                if node not in frozen:
                    nursery.start_soon(ask, node)
        if len(frozen) >= needed:
            return frozen
        await sleep(pause)
        pause = min(2 * pause, MAX_POLL)


async def wait_answering(
    status: Callable[[int], Awaitable[Any]],
    nodes: Sequence[int],
    needed: int,
    *,
    generation: int,
    stop: Callable[[], bool] = lambda: False,
    ask_timeout: float = 2.0,
    sleep: Callable[[float], Awaitable[Any]] = trio.sleep,
) -> set[int]:
    """Ask ``nodes`` (generation ``generation``'s, just named by a view) for their status
    until at least ``needed`` (a quorum) answer as nodes of that generation, or ``stop()``
    holds (the session took a later view meanwhile); the nodes that answered.

    ``bftfs generation new`` issues the view, and the old nodes push it to their clients,
    before the new nodes are started: a session that switched at once sent its calls to
    nodes not listening yet, whose patience ran out (EIO) when starting them took longer
    than ``timeo`` on a busy machine.  Rounds as :func:`wait_frozen`'s; waits as long as
    it takes (refused calls wait for the switch meanwhile, ``fs/clients/switch.py``)."""
    if needed > len(nodes):
        raise ValueError(f"{needed} answering nodes needed of {len(nodes)}")
    answered: set[int] = set()
    pause = FIRST_POLL

    async def ask(node: int) -> None:
        with trio.move_on_after(ask_timeout):
            try:
                answer = await status(node)
            except Exception as e:  # not started yet, or not admitting us yet: next round
                log.debug("gen.status of node %s: %s", node, e)
                return
            if isinstance(answer, Mapping) and answer.get("g") == generation:
                answered.add(node)

    while True:
        async with trio.open_nursery() as nursery:
            for node in nodes:
                if node not in answered:
                    nursery.start_soon(ask, node)
        if len(answered) >= needed or stop():
            return answered
        await sleep(pause)
        pause = min(2 * pause, MAX_POLL)


class GenerationalQU:
    """The Q/U client of a file system whose objects move from generation ``old`` to
    ``new`` (module docstring): the calls of ``QUClient`` the file system makes, each run
    on ``new`` once every object it names is there."""

    def __init__(
        self,
        new: EngineClient,
        old: EngineClient,
        *,
        ready: Callable[[], Awaitable[Any]] | None = None,
        mount: int = 0,
        clock_ns: Callable[[], int] = time.time_ns,
        lease_wait: float = (MAX_TERM + 2 * LEASE_SKEW) / 1e9,
        sleep: Callable[[float], Awaitable[Any]] = trio.sleep,
        own_lease_moved: Callable[[list[int]], Any] | None = None,
    ) -> None:
        """Args:
        new, old: the Q/U clients of generations g + 1 and g (one client identity).
        ready: awaited once before the first read of g (the session passes
            :func:`wait_frozen` over g's nodes); None when g is known to be frozen.
        mount: this mount's number (``Meta.lease_token``), whose own leases do not hold a
            move up; an update's or a tagged query's argument naming one overrides it,
            and the first such call sets it when it is 0.
        clock_ns: the clock leases' expiries are compared with (the file system's).
        lease_wait: longest wait for another mount's lease (s): a lease's longest term
            and the skew both ways; past it the object moves (no lease is live by then).
        sleep: how to pause between looks at a leased object.
        own_lease_moved: told the objects this router moved that held a live lease of
            this mount in g: ``fs.movein`` strips it, so the mount must stop answering
            from it (``fs/leases.py``: as for a recall, write back and let go).
        """
        self.new = new
        self.old = old
        self.mount = mount
        self._ready = ready
        self._is_ready = ready is None
        self._ready_lock = trio.Lock()
        self._clock_ns = clock_ns
        self._lease_wait = lease_wait
        self._sleep = sleep
        self._own_lease_moved = own_lease_moved
        self._moved: set[int] = set()
        self._moving: dict[int, trio.Lock] = {}
        #: ``moved`` (installed by this router), ``absent`` (in neither generation),
        #: ``here`` (in g + 1 already), ``raced`` (another client moved it first),
        #: ``waited`` (looks at a leased object), ``session`` (a lease session of g, left
        #: there: the call runs on g + 1's own).
        self.moves: Counter[str] = Counter()

    # What the file system calls -------------------------------------------------------------

    @property
    def client_id(self) -> int:
        """This client's principal id (the same in both generations)."""
        return int(self.new.client_id)

    @property
    def faults(self) -> Counter[tuple[int, str]]:
        """The faults g + 1's client detected (node ids repeat across generations: g's
        are ``old.faults``)."""
        return self.new.faults

    def statistics(self) -> ClientStatistics | FabClientStatistics:
        """g + 1's client's counters (``moves`` counts the moves)."""
        return self.new.statistics()

    async def query(self, objects: int | Iterable[int], method: str, arg: Any = None) -> Any:
        """``QUClient.query`` on ``new``, its objects moved first."""
        objs = _objs(objects)
        await self._move_all(objs, query_mount(arg))
        return await self.new.query(objects if isinstance(objects, int) else objs, method, arg)

    async def update(
        self, objects: int | Iterable[int], method: str, arg: Any = None, *, seq: int | None = None
    ) -> Any:
        """``QUClient.update`` on ``new``, its objects moved first; ``fs.release`` of an
        object g + 1 does not hold yet goes to g instead (below).  ``seq``: the id the
        update ran under before (``QUClient.update``)."""
        objs = _objs(objects)
        if method == RELEASE:
            return await self._release(objs, arg)
        await self._move_all(objs, update_mount(arg))
        target = objects if isinstance(objects, int) else objs
        return await self.new.update(target, method, arg, seq=seq)

    def next_seq(self) -> int | None:
        """A request id for an update (``QUClient.next_seq``, g + 1's client)."""
        return self.new.next_seq()

    async def _release(self, objs: tuple[int, ...], arg: Any) -> None:
        """Give a lease back where it is recorded: in g + 1 for a moved object, in g
        (frozen nodes take ``fs.release``) for one g + 1 does not hold, which is not moved
        for it.  Moving it first would wait for every other mount's lease on it, while
        those mounts' moves wait for this one's: holders recalled by the freeze would hold
        each other up until their leases ended."""
        self._learn_mount(update_mount(arg))
        here: list[int] = []
        there: list[int] = []
        for oid in objs:
            if oid in self._moved or await self.new.query(oid, "fs.state") is not None:
                self._moved.add(oid)
                here.append(oid)
            else:
                there.append(oid)
        if there:
            await self.old.update(there, RELEASE, arg)
        if here:
            await self.new.update(here, RELEASE, arg)

    async def settle(self, objects: int | Iterable[int]) -> None:
        """``QUClient.settle`` on ``new``, its objects moved first."""
        objs = _objs(objects)
        await self._move_all(objs, None)
        await self.new.settle(objs)

    async def query_at(self, oid: int, method: str, arg: Any = None) -> tuple[Any, Timestamp]:
        """``QUClient.query_at`` on ``new``, the object moved first (history starts at the
        move: the versions before it are g's)."""
        await self._move_all((oid,), query_mount(arg))
        return await self.new.query_at(oid, method, arg)

    async def query_many_at(
        self, objects: Iterable[int], method: str, arg: Any = None
    ) -> tuple[Any, dict[int, Timestamp]]:
        """``QUClient.query_many_at`` on ``new``, its objects moved first."""
        objs = _objs(objects)
        await self._move_all(objs, query_mount(arg))
        return await self.new.query_many_at(objs, method, arg)

    # Moving ----------------------------------------------------------------------------------

    def moved(self, oid: int) -> bool:
        """Whether ``oid`` is known to be in g + 1 (or in neither generation)."""
        return oid in self._moved

    async def _move_all(self, objs: tuple[int, ...], mount: int | None) -> None:
        self._learn_mount(mount)
        todo = sorted({oid for oid in objs if oid not in self._moved})
        if len(todo) == 1:
            await self.move(todo[0], mount)
        elif todo:
            async with trio.open_nursery() as nursery:
                for oid in todo:
                    nursery.start_soon(self.move, oid, mount)

    def _learn_mount(self, mount: int | None) -> None:
        """Take the mount number the first call naming one gives (``fs/clients/mounttag.py`` tags
        every update and guarded query), so the calls that name none (history queries,
        ``settle``) do not take this mount's own leases for another's."""
        if not self.mount and mount:
            self.mount = mount

    async def move(self, oid: int, mount: int | None = None) -> Any:
        """Bring ``oid`` to g + 1 if it is in g only (module docstring); ``mount``: the
        calling mount (None: :attr:`mount`).  Concurrent calls of this router for one
        object move it once.  The packed state this call found (in g + 1, or the one it
        moved; its leases aside, what g + 1 holds), None for an object in neither, or
        :data:`NOT_SEEN` (moved before, or by another client meanwhile): the background
        mover needs a file's state for its blocks, and asks g + 1 only then."""
        if oid in self._moved:
            return NOT_SEEN
        seen: Any = NOT_SEEN
        lock = self._moving.setdefault(oid, trio.Lock())
        async with lock:
            if oid not in self._moved:
                seen = await self._move(oid, self.mount if mount is None else mount)
                self._moved.add(oid)
        self._moving.pop(oid, None)
        return seen

    async def _move(self, oid: int, mount: int) -> Any:
        here = await self.new.query(oid, "fs.state")
        if here is not None:
            self.moves["here"] += 1
            return here
        await self._until_ready()  # g's states are final from here on
        deadline = trio.current_time() + self._lease_wait
        pause = FIRST_POLL
        while True:
            exported = await self.old.query(oid, "fs.export")
            if exported is None:
                self.moves["absent"] += 1
                return None
            packed, applied = exported
            if is_session(oid) and session_state(unpack_state(packed)) is not None:
                # A lease session is the mount's, not the file system's: it stays in g
                # (``fs.movein`` refuses it) and g + 1 starts its own at the first renewal
                # there; the leases bound to g's are not carried over (``fs.movein`` strips
                # them), so the holder let them go at the switch (``fs/leases/sessions.py``).
                self.moves["session"] += 1
                return None
            others, mine = self._leases(packed, mount)
            if not others or trio.current_time() >= deadline:
                break
            self.moves["waited"] += 1
            await self._sleep(pause)
            pause = min(2 * pause, MAX_POLL)
            if await self.new.query(oid, "fs.state") is not None:  # its holder moved it
                self.moves["here"] += 1
                return NOT_SEEN
        # fs.movein keeps this mount's own live lease (fsobjects/moves.py), so it goes on
        # answering from it and others recall it in g + 1; not one bound to its session
        # in g (expiry ``SESSION``, beyond what movein keeps): that one is let go here.
        kept = mine and bool(mount) and not self._bound_own(packed, mount)
        arg: dict[str, Any] = {"s": packed, "a": applied}
        if kept:
            arg.update({MOUNT: mount, "lt": self._clock_ns()})
        seen: Any = packed
        try:
            await self.new.update(oid, "fs.movein", arg)
            self.moves["moved"] += 1
        except MethodRefused as e:
            if e.code != "exists":
                raise
            self.moves["raced"] += 1
            kept = False  # another client's move: its state holds no lease of ours
            seen = NOT_SEEN
        if mine and not kept and self._own_lease_moved is not None:
            self._own_lease_moved([oid])
        return seen

    async def _until_ready(self) -> None:
        """Await ``ready`` once, before the first read of g (concurrent moves wait for the
        one that runs it)."""
        if self._is_ready:
            return
        async with self._ready_lock:
            if not self._is_ready and self._ready is not None:
                await self._ready()
            self._is_ready = True

    def _bound_own(self, packed: bytes, mount: int) -> bool:
        """Whether this mount's lease in the packed state is bound to its session in g
        (``fs.movein`` keeps only an own lease ending within a term: not such a one)."""
        me = (self.client_id, mount)
        return any(who(h) == me and bound(h) is not None for h in holders(unpack_state(packed)))

    def _leases(self, packed: bytes, mount: int) -> tuple[bool, bool]:
        """Whether the packed state holds a lease live now of another mount, and one of
        this mount: a holder record (``ls``) or a file's write lease (``wl``, whose token
        is its mount's number)."""
        state = unpack_state(packed)
        now = self._clock_ns()
        me = (self.client_id, mount)
        live = [who(h) for h in holders(state) if h[2] > now]
        others, mine = any(w != me for w in live), me in live
        wl = state.get("wl") if isinstance(state, dict) else None
        if isinstance(wl, list) and len(wl) >= 2 and wl[1] > now:
            others, mine = others or wl[0] != mount, mine or wl[0] == mount
        return others, mine


def _objs(objects: int | Iterable[int]) -> tuple[int, ...]:
    return (objects,) if isinstance(objects, int) else tuple(objects)


def update_mount(arg: Any) -> int | None:
    """The mount an update's argument names (``fs/clients/mounttag.py``), or None."""
    got = arg.get(MOUNT) if isinstance(arg, Mapping) else None
    return got if isinstance(got, int) and not isinstance(got, bool) else None


def query_mount(arg: Any) -> int | None:
    """The mount a query's envelope names, or None."""
    _, mount = untag_query(arg)
    return mount or None


class GenerationalRW:
    """The PASIS client of a file system spanning generations ``old`` and ``new`` (module
    docstring): writes to ``new``; reads from ``new``, and from ``old`` where ``new``
    holds no version of the block (up to the moment read)."""

    def __init__(self, new: RWClient, old: RWClient) -> None:
        self.new = new
        self.old = old
        #: Blocks read from g (no version in g + 1).
        self.old_reads = 0

    @property
    def block_size(self) -> int:
        return int(self.new.block_size)

    @property
    def faults(self) -> Counter[tuple[int, str]]:
        """g + 1's client's faults (g's: ``old.faults``)."""
        return self.new.faults

    def statistics(self) -> RWStatistics:
        return self.new.statistics()

    async def space(self) -> Space:
        """g + 1's nodes' use (where everything written now goes)."""
        return await self.new.space()

    async def write_block(self, block: int, data: bytes, *, after: int = 0) -> BlockTime:
        return await self.new.write_block(block, data, after=after)

    async def write_blocks(
        self,
        blocks: Mapping[int, bytes],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        after: int = 0,
        prepared: Mapping[int, Prepared] | None = None,
    ) -> dict[int, BlockTime]:
        return await self.new.write_blocks(
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
        """g + 1's encoding (where the block is written)."""
        return await self.new.prepare(block, data, before, into=into)

    async def read_block(self, block: int) -> bytes | bytearray:
        """The latest complete write of ``block``: g + 1's, else g's."""
        got = await self.new.read_version(block)
        if not got.absent:
            return got.data
        self.old_reads += 1
        return await self.old.read_block(block)

    async def read_blocks(
        self, blocks: Iterable[int], *, concurrency: int = DEFAULT_CONCURRENCY
    ) -> dict[int, bytes | bytearray]:
        """:meth:`read_block` of many blocks, concurrently; those g + 1 lacks from g in
        one ``read_blocks``."""
        out: dict[int, bytes | bytearray] = {}
        absent: list[int] = []
        limit = trio.Semaphore(concurrency)

        async def one(block: int) -> None:
            async with limit:
                got = await self.new.read_version(block)
            if got.absent:
                absent.append(block)
            else:
                out[block] = got.data

        async with trio.open_nursery() as nursery:
            for block in dict.fromkeys(blocks):
                nursery.start_soon(one, block)
        if absent:
            self.old_reads += len(absent)
            out.update(await self.old.read_blocks(absent, concurrency=concurrency))
        return out

    async def read_as_of(self, block: int, time_ns: int) -> bytes | bytearray:
        """The latest complete write of ``block`` whose Time is at most ``time_ns``: g + 1's,
        else g's."""
        got = await self.new.read_version_as_of(block, time_ns)
        if not got.absent:
            return got.data
        self.old_reads += 1
        return await self.old.read_as_of(block, time_ns)
