"""The block store of a cluster too small for PASIS: file blocks in Byzantine Listeners
registers (``[cluster]`` ``blocks = "registers"``, docs/listeners.md "Blocks on four nodes").

:class:`RegisterBlocks` shows the :class:`~bftfs.fs.clients.protocols.BlockClient` face
over a :class:`~bftfs.listeners.bclient.BListenersClient`: block ``B`` is one register
(``listeners/blockregs.py``) whose value is the block's Time and its bytes.

- ``write_block``: a Byzantine Listeners write (QUERY TS, PROPOSE TS, STORE; the nodes
  forward it), at a Time above ``after``, this client's previous Time and its clock (the
  PASIS client's hybrid clock).  Its ``Timestamp`` is ``(Time, writer, hash(block))``.
- ``read_block``: a register read: the latest complete write, decided by a quorum of
  identical answers (at least ``f + 1`` of them correct).
- ``read_as_of``: ``bl.past`` to every node, the newest value ``f + 1`` report identically,
  once no answer reports a newer one or every node answered (``blockregs.pick``).
- ``prepare``: nothing to encode (whole replicas): the value is made ahead, so that a
  sealed block's seal is still done off the flush's path.
- ``space``: ``rw.space``, as the PASIS client asks it.

:func:`open_block_client` gives the cluster's block client, this or PASIS's.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import trio

from bftfs.config import ClusterConfig
from bftfs.fs.clients.protocols import BlockClient
from bftfs.ids import NodeId
from bftfs.listeners import blockregs
from bftfs.listeners.auth import data_hash
from bftfs.listeners.bclient import BListenersClient
from bftfs.listeners.stamps import Stored
from bftfs.rw.calls import DEFAULT_CONCURRENCY
from bftfs.rw.client import RWStatistics, Space, ask_space, largest_block, open_rw_client
from bftfs.rw.failures import TRANSPORT, ReadFailed, WriteFailed, outcomes
from bftfs.rw.timestamp import Timestamp
from bftfs.rw.write import Prepared

if TYPE_CHECKING:
    from bftfs.net.endpoint import Endpoint


@dataclass(frozen=True)
class _Faults:
    """What :func:`~bftfs.rw.failures.outcomes` reads: ``b`` refusals (one correct) make
    a refusal for space the cluster's."""

    b: int


class RegisterBlocks:
    """File blocks in Byzantine Listeners registers on ``config``'s nodes (module
    docstring), through ``endpoint`` (its principal is the writer)."""

    def __init__(
        self,
        endpoint: Endpoint,
        config: ClusterConfig,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
        read_timeout: float = 10.0,
    ) -> None:
        self.endpoint = endpoint
        self.regs = BListenersClient(
            endpoint, [NodeId(i) for i in config.node_ids], read_timeout=read_timeout
        )
        self.sizes = self.regs.sizes
        self.th = _Faults(self.sizes.f)
        self.clock_ns = clock_ns
        self._block_size = largest_block(config)
        self._last_time = 0
        self._locks: dict[int, trio.Lock] = {}
        self._faults: Counter[tuple[int, str]] = Counter()
        self.stats: Counter[str] = Counter()

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def faults(self) -> Counter[tuple[int, str]]:
        """Faults detected per node: none is pinned on a node (a register's answers are
        outvoted, not checked one by one); the transport's are the endpoint's."""
        return self._faults

    def statistics(self) -> RWStatistics:
        """The register client's counters (reads, writes, echoes, restarts, dropped) and
        this store's (``past_reads``)."""
        return RWStatistics({**self.regs.stats, **self.stats})

    def _check_size(self, length: int) -> None:
        if length > self._block_size:
            raise ValueError(f"block of {length} bytes exceeds block_size {self._block_size}")

    # Writes -------------------------------------------------------------------------------

    @outcomes(WriteFailed)
    async def write_block(self, block: int, data: bytes, *, after: int = 0) -> Timestamp:
        """``data`` as the new value of ``block``, at a Time above ``after``."""
        self._check_size(len(data))
        lock = self._locks.setdefault(block, trio.Lock())
        try:
            async with lock:  # one write of a block at a time (``BListenersClient``)
                t = max(self.clock_ns(), self._last_time + 1, after + 1)
                self._last_time = t
                await self.regs.write(blockregs.name(block), blockregs.pack(t, data))
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._locks.pop(block, None)
        return Timestamp(t, self.regs.writer, data_hash(bytes(data)))

    @outcomes(WriteFailed)
    async def write_blocks(
        self,
        blocks: Mapping[int, bytes],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        after: int = 0,
        prepared: Mapping[int, Prepared] | None = None,
    ) -> dict[int, Timestamp]:
        """Many blocks, ``concurrency`` at once.  ``prepared`` adds nothing: its data is the
        block's (a sealed store's wrapper puts the sealed bytes in ``blocks``)."""
        out: dict[int, Timestamp] = {}
        limit = trio.Semaphore(max(1, concurrency))

        async def one(block: int, data: bytes) -> None:
            async with limit:
                out[block] = await self.write_block(block, data, after=after)

        async with trio.open_nursery() as nursery:
            for block, data in blocks.items():
                nursery.start_soon(one, block, data)
        return out

    async def prepare(
        self,
        block: int,
        data: bytes | bytearray,
        before: Callable[[bytes | bytearray], bytes | bytearray] | None = None,
        *,
        into: tuple[int, Callable[[memoryview], None]] | None = None,
    ) -> Prepared:
        """The value ``write_blocks`` will store, made now: ``before(data)``, or what
        ``into`` writes (the seal).  There is no encoding: ``Prepared.writer`` names this
        store, so no PASIS writer takes it for one of its own."""
        if into is not None:
            length, fill = into
            self._check_size(length)
            buf = bytearray(length)
            fill(memoryview(buf))
            value: bytes | bytearray = buf
        else:
            value = before(data) if before is not None else data
            self._check_size(len(value))
        return Prepared(cast(Any, self), value, cast(Any, None))

    # Reads --------------------------------------------------------------------------------

    @outcomes(ReadFailed)
    async def read_block(self, block: int) -> bytes:
        """The latest complete write of ``block`` (the empty block if none)."""
        got = await self.regs.read(blockregs.name(block))
        return blockregs.block_of(got.data)

    @outcomes(ReadFailed)
    async def read_blocks(
        self, blocks: Iterable[int], *, concurrency: int = DEFAULT_CONCURRENCY
    ) -> dict[int, bytes | bytearray]:
        out: dict[int, bytes | bytearray] = {}
        limit = trio.Semaphore(max(1, concurrency))

        async def one(block: int) -> None:
            async with limit:
                out[block] = await self.read_block(block)

        async with trio.open_nursery() as nursery:
            for block in blocks:
                nursery.start_soon(one, block)
        return out

    @outcomes(ReadFailed)
    async def read_as_of(self, block: int, time_ns: int) -> bytes:
        """The newest version of ``block`` with Time at most ``time_ns`` that ``f + 1``
        nodes hold identically (one of them correct: it was written)."""
        answers: dict[NodeId, Stored] = {}

        def accept(node: NodeId, raw: Any) -> bool:
            try:
                answers[node] = blockregs.parse_past_reply(raw)
            except ValueError:
                return False
            return True

        def chosen() -> Stored | None:
            everyone = len(answers) == len(self.regs.nodes)
            return blockregs.pick(answers.values(), self.sizes.f, everyone=everyone)

        def enough(_replies: Mapping[NodeId, Any]) -> bool:
            return len(answers) >= self.sizes.quorum and chosen() is not None

        key = blockregs.name(block)
        try:
            await self.endpoint.quorum_call(
                self.regs.nodes,
                blockregs.KIND_PAST,
                blockregs.past_request(key, time_ns),
                accept=accept,
                enough=enough,
            )
        except TRANSPORT as e:
            raise ReadFailed(
                f"no version of block {block} as of {time_ns} is vouched for by "
                f"{self.sizes.f + 1} of the {len(answers)} nodes that answered, or a newer "
                f"one is reported that too few of them hold ({e})"
            ) from e
        got = chosen()
        if got is None:  # (enough held)
            raise ReadFailed(f"no version of block {block} as of {time_ns} is vouched for")
        self.stats["past_reads"] += 1
        return blockregs.block_of(got.data)

    # Space --------------------------------------------------------------------------------

    @outcomes(ReadFailed)
    async def space(self) -> Space:
        """A node's store as a quorum reports it: the ``(f + 1)``-th largest use, the
        ``(f + 1)``-th smallest free room (``RWClient.space``'s rule)."""
        return await ask_space(self.endpoint, self.regs.nodes, self.sizes.quorum, self.sizes.f)


@asynccontextmanager
async def open_block_client(
    endpoint: Endpoint, config: ClusterConfig, **rw_options: Any
) -> AsyncIterator[BlockClient]:
    """The block client of ``config``'s cluster (``config.blocks``): PASIS's, with
    ``rw_options``, or the register store."""
    if config.blocks == "registers":
        yield RegisterBlocks(endpoint, config)
        return
    async with open_rw_client(endpoint, config, **rw_options) as rw:
        yield rw
