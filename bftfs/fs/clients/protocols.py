"""The faces of the protocol clients, as the file system calls them.

The file system is given one metadata client (Q/U's :class:`~bftfs.qu.client.QUClient`
or FaB's :class:`~bftfs.fab.metaclient.FabMetaClient`, ``[cluster] engine``) and one
PASIS client (:class:`~bftfs.rw.client.RWClient`).  Between them and the file system's
parts stand wrappers, each showing the face of what it wraps, so that they stack:

- :class:`~bftfs.fs.clients.sealed.SealedObjects`, :class:`~bftfs.fs.clients.sealed.SealedBlocks`:
  the encryption boundary of a sealed cluster;
- :class:`~bftfs.fs.clients.mounttag.MountTagged`: this mount's number on its requests;
- :class:`~bftfs.fs.clients.switch.SwitchingQU`, :class:`~bftfs.fs.clients.switch.SwitchingRW`:
  the clients a session holds across generation changes, over an :class:`EngineClient`;
- :class:`~bftfs.fs.generations.routers.GenerationalQU` (an :class:`EngineClient`) and
  :class:`~bftfs.fs.generations.routers.GenerationalRW`: two generations while objects move.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from bftfs.fab.metaclient import FabClientStatistics
from bftfs.qu.client import ClientStatistics
from bftfs.qu.timestamp import Timestamp
from bftfs.rw.calls import DEFAULT_CONCURRENCY
from bftfs.rw.client import RWStatistics, Space
from bftfs.rw.timestamp import Timestamp as BlockTime
from bftfs.rw.write import Prepared

#: Objects a call names: one id, or up to eight (an update on them is atomic).
Objects = int | Iterable[int]


class MetadataClient(Protocol):
    """The calls the file system makes on its metadata client: object methods, queries
    and updates, on one or more objects; Q/U's history reads; what it counted."""

    @property
    def client_id(self) -> int:
        """This client's principal id (a lock's test tells the caller's own by it)."""
        ...

    @property
    def faults(self) -> Counter[tuple[int, str]]:
        """Faults detected per ``(node, kind)``."""
        ...

    def statistics(self) -> ClientStatistics | FabClientStatistics:
        """The counters since the client was made (``operations`` in both engines)."""
        ...

    async def query(self, objects: Objects, method: str, arg: Any = None) -> Any:
        """Query ``method`` on ``objects``: its answer."""
        ...

    async def update(self, objects: Objects, method: str, arg: Any = None) -> Any:
        """Update ``method`` on ``objects`` (atomically): its answer."""
        ...

    async def settle(self, objects: Objects) -> None:
        """Make final whatever a failed update of this client left on ``objects``."""
        ...

    async def query_at(self, oid: int, method: str, arg: Any = None) -> tuple[Any, Timestamp]:
        """A query of one object and the version it was answered at (Q/U's history)."""
        ...

    async def query_many_at(
        self, objects: Iterable[int], method: str, arg: Any = None
    ) -> tuple[Any, dict[int, Timestamp]]:
        """A query of up to eight objects and the version each was answered at."""
        ...


class EngineClient(MetadataClient, Protocol):
    """A metadata client a session's :class:`~bftfs.fs.clients.switch.SwitchingQU`
    forwards to: one generation's Q/U or FaB client, or the Q/U router over two
    generations.  An update a generation's freeze cut short is sent again on the next
    target under the request id it first ran under (:meth:`next_seq`)."""

    def next_seq(self) -> int | None:
        """A request id for an update to run (again) under; None for an engine that
        orders its updates (FaB: none is ever cut short by a generation)."""
        ...

    async def update(
        self, objects: Objects, method: str, arg: Any = None, *, seq: int | None = None
    ) -> Any:
        """:meth:`MetadataClient.update`, under request id ``seq`` (None: a new one)."""
        ...


class BlockClient(Protocol):
    """The calls the file system makes on its PASIS client: blocks written, encoded
    ahead, read (now or as of a moment), the space the nodes use; what it counted."""

    @property
    def block_size(self) -> int:
        """The largest block the client writes."""
        ...

    @property
    def faults(self) -> Counter[tuple[int, str]]:
        """Faults detected per ``(node, kind)``."""
        ...

    def statistics(self) -> RWStatistics:
        """The counters since the client was made."""
        ...

    async def write_block(self, block: int, data: bytes, *, after: int = 0) -> BlockTime:
        """``data`` as the new value of ``block``, at a Time above ``after``."""
        ...

    async def write_blocks(
        self,
        blocks: Mapping[int, bytes],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        after: int = 0,
        prepared: Mapping[int, Prepared] | None = None,
    ) -> dict[int, BlockTime]:
        """Many blocks, concurrently; a block in ``prepared`` from its encoding."""
        ...

    async def prepare(
        self,
        block: int,
        data: bytes | bytearray,
        before: Callable[[bytes | bytearray], bytes | bytearray] | None = None,
        *,
        into: tuple[int, Callable[[memoryview], None]] | None = None,
    ) -> Prepared:
        """Block ``block`` encoded ahead of its write (``before``: what to make of it
        first; ``into``: the size it takes and how to write it into the stripes)."""
        ...

    async def read_block(self, block: int) -> bytes | bytearray:
        """The latest complete write of ``block``."""
        ...

    async def read_blocks(
        self, blocks: Iterable[int], *, concurrency: int = DEFAULT_CONCURRENCY
    ) -> dict[int, bytes | bytearray]:
        """:meth:`read_block` of many blocks, concurrently."""
        ...

    async def read_as_of(self, block: int, time_ns: int) -> bytes | bytearray:
        """The latest complete write of ``block`` whose Time is at most ``time_ns``."""
        ...

    async def space(self) -> Space:
        """A node's store as the nodes report it: bytes used, free disk it may count on."""
        ...


def take_pushes(endpoint: Any, key: str, handler: Callable[[int, Any], None]) -> None:
    """From now on the pushes to ``endpoint`` (``net.endpoint.Endpoint``, whose
    ``on_push`` takes every push of its connections) that are maps holding ``key`` go to
    ``handler``, and every other push to the handler it had: each part of a mount takes
    its own kind (lock wake-ups, the word that a publication landed)."""
    previous = endpoint.on_push

    def on_push(node: int, body: Any) -> None:
        if isinstance(body, dict) and key in body:
            handler(node, body)
        elif previous is not None:
            previous(node, body)

    endpoint.on_push = on_push
