"""The protocol clients behind the encryption boundary of a sealed cluster
(``seal.py``, docs/confidentiality.md): the calls of the file system on the way out with
what they carry sealed, the answers on the way in opened."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, cast

import trio

from bftfs.crypto import SEAL_OVERHEAD
from bftfs.fab.metaclient import FabClientStatistics
from bftfs.fs.clients.protocols import BlockClient, MetadataClient, Objects
from bftfs.fs.clients.seal import Seal
from bftfs.qu.client import ClientStatistics
from bftfs.qu.timestamp import Timestamp
from bftfs.rw.calls import DEFAULT_CONCURRENCY, DEFAULT_THREAD_THRESHOLD
from bftfs.rw.client import RWStatistics, Space
from bftfs.rw.timestamp import Timestamp as BlockTime
from bftfs.rw.write import Prepared

T = TypeVar("T")


async def _cpu(size: int, fn: Callable[[], T]) -> T:
    """``fn()``, in a worker thread when ``size`` bytes make the hand-off worth it (as the
    PASIS client codes big blocks): libsodium releases the GIL, so a big flush's sealing
    runs beside the mount's loop instead of stalling it."""
    if size >= DEFAULT_THREAD_THRESHOLD:
        return await trio.to_thread.run_sync(fn)
    return fn()


class SealedBlocks:
    """The PASIS client as the file system sees it in a sealed cluster: the same calls,
    with contents sealed on the way out and opened on the way in.  The client's
    statistics, faults, space and block size are its own."""

    def __init__(self, rw: BlockClient, seal: Seal) -> None:
        self.inner = rw
        self._seal = seal

    @property
    def block_size(self) -> int:
        return self.inner.block_size

    @property
    def faults(self) -> Counter[tuple[int, str]]:
        return self.inner.faults

    def statistics(self) -> RWStatistics:
        return self.inner.statistics()

    async def space(self) -> Space:
        return await self.inner.space()

    async def write_blocks(
        self,
        blocks: Mapping[int, bytes],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        after: int = 0,
        prepared: Mapping[int, Prepared] | None = None,
    ) -> dict[int, BlockTime]:
        """``RWClient.write_blocks`` of the sealed blocks.  A block ``prepared`` (by
        :meth:`prepare`) goes as the sealed bytes its encoding was made of, so whichever
        layer below encodes it, from the encoding or again, writes sealed bytes."""
        ready = prepared or {}
        todo = {b: data for b, data in blocks.items() if b not in ready}
        size = sum(len(data) for data in todo.values())
        sealed: dict[int, bytes | bytearray | memoryview] = await _cpu(
            size, lambda: {b: self._seal.seal_block(b, data) for b, data in todo.items()}
        )
        sealed.update((b, ready[b].data) for b in blocks if b in ready)
        # (sealed in place, or an encoding's buffer: the client writes them as bytes)
        return await self.inner.write_blocks(
            cast(dict[int, bytes], sealed), concurrency=concurrency, after=after, prepared=prepared
        )

    async def prepare(
        self,
        block: int,
        data: bytes | bytearray,
        before: Callable[[bytes | bytearray], bytes | bytearray] | None = None,
        *,
        into: tuple[int, Callable[[memoryview], None]] | None = None,
    ) -> Prepared:
        """``RWClient.prepare`` of the block sealed (in the same worker-thread call),
        straight into the stripes it is coded from (``erasure.encode_into``).  The seal
        is what goes before the encoding and into the stripes: a caller's ``before`` or
        ``into`` is refused."""
        if before is not None or into is not None:
            raise ValueError("a sealed block is prepared from its plaintext alone")
        if not data:
            return await self.inner.prepare(block, data, lambda d: self._seal.seal_block(block, d))
        return await self.inner.prepare(
            block,
            data,
            into=(SEAL_OVERHEAD + len(data), lambda out: self._seal.seal_into(block, data, out)),
        )

    async def write_block(self, block: int, data: bytes, *, after: int = 0) -> BlockTime:
        """``RWClient.write_block`` of the sealed block."""
        sealed = cast(bytes, self._seal.seal_block(block, data))  # (in place: a bytearray)
        return await self.inner.write_block(block, sealed, after=after)

    async def read_blocks(
        self, blocks: Iterable[int], *, concurrency: int = DEFAULT_CONCURRENCY
    ) -> dict[int, bytes | bytearray]:
        """``RWClient.read_blocks``, opened: in place, in the buffers the read joined for
        this call alone (``Reader`` hands out fresh buffers: ``erasure.decode``)."""
        got = await self.inner.read_blocks(blocks, concurrency=concurrency)
        size = sum(len(data) for data in got.values())
        return await _cpu(
            size, lambda: {b: self._seal.open_block(b, d, in_place=True) for b, d in got.items()}
        )

    async def read_block(self, block: int) -> bytes | bytearray:
        """``RWClient.read_block``, opened."""
        return self._seal.open_block(block, await self.inner.read_block(block))

    async def read_as_of(self, block: int, time_ns: int) -> bytes | bytearray:
        """``RWClient.read_as_of`` (history), opened."""
        return self._seal.open_block(block, await self.inner.read_as_of(block, time_ns))


class SealedObjects:
    """The metadata client as the file system sees it in a sealed cluster: inline
    content, entry names, symlink targets and extended attribute values sealed in updates
    and queries, opened in answers.  Settling, the client's id, faults and statistics are
    the client's own; so are the answers of :meth:`query_many_at` (history reads, which
    open what they read themselves: ``Past``'s seal)."""

    def __init__(self, qu: MetadataClient, seal: Seal) -> None:
        self.inner = qu
        self._seal = seal

    @property
    def client_id(self) -> int:
        return self.inner.client_id

    @property
    def faults(self) -> Counter[tuple[int, str]]:
        return self.inner.faults

    def statistics(self) -> ClientStatistics | FabClientStatistics:
        return self.inner.statistics()

    async def query(self, objects: Objects, method: str, arg: Any = None) -> Any:
        """``QUClient.query``, its answer opened (an extended attribute's value too)."""
        sealed = self._seal.seal_query(objects, method, arg)
        answer = await self.inner.query(objects, method, sealed)
        return self._seal.open_query(objects, method, arg, answer)

    async def update(self, objects: Objects, method: str, arg: Any = None) -> Any:
        """``QUClient.update`` of the sealed argument, its answer opened."""
        sealed = self._seal.seal_argument(method, arg, objects)
        return self._seal.open_answer(await self.inner.update(objects, method, sealed))

    async def settle(self, objects: Objects) -> None:
        await self.inner.settle(objects)

    async def query_at(self, oid: int, method: str, arg: Any = None) -> tuple[Any, Timestamp]:
        """``QUClient.query_at``, its answer opened (the version stays as it is)."""
        answer, at = await self.inner.query_at(oid, method, arg)
        return self._seal.open_answer(answer), at

    async def query_many_at(
        self, objects: Iterable[int], method: str, arg: Any = None
    ) -> tuple[Any, dict[int, Timestamp]]:
        return await self.inner.query_many_at(objects, method, arg)


def wrap_clients(
    qu: MetadataClient, rw: BlockClient, seal: Seal | None
) -> tuple[MetadataClient, BlockClient]:
    """The metadata and PASIS clients the file system is to use: themselves for an
    unencrypted cluster, else behind the seal."""
    if seal is None:
        return qu, rw
    return SealedObjects(qu, seal), SealedBlocks(rw, seal)
