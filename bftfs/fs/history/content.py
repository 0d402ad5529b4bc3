"""A past version's bytes: a regular file's content as of its version's block Time, read
through PASIS (:meth:`RWClient.read_as_of`, cross-checksum validated like any read), a
symlink's target, inline bytes (split from ``fs/history/past.py``; ``docs/history.md``
"Reading a file's content at a version").
"""

from __future__ import annotations

import stat as st
from typing import Protocol

import trio

from bftfs.fs.files import file_block_size
from bftfs.fs.history.versions import PastError, Reclaimed, Undecided, Version, iso
from bftfs.rw.client import HistoryReclaimed
from bftfs.rw.messages import BlockId, block_id

#: Blocks of one file's past content read at once (each a PASIS read round of its own).
BLOCKS_AT_ONCE = 8


class PastBlocks(Protocol):
    """What past contents are read through: the PASIS client (or what wraps it: the sealed
    cluster's :class:`~bftfs.fs.clients.SealedBlocks`, a generation move's clients)."""

    async def read_as_of(self, block: BlockId, time_ns: int) -> bytes | bytearray: ...


def block_cap(v: Version) -> int:
    """The newest block Time a regular file's version reads (its ``bt``; a file written
    before ``bt`` existed: the version's own time).

    Raises:
        Undecided: no ``bt`` and the version's time is unknown.
    """
    assert v.state is not None
    bt = v.state.get("bt")
    if bt:
        return int(bt)
    if v.time_ns is None:
        raise Undecided(f"object {v.oid:#x}: version {v.id} has no block Time, its time is unknown")
    return v.time_ns


async def read_content(rw: PastBlocks, v: Version, block_size: int) -> bytes:
    """A regular file's bytes at version ``v`` (a symlink's target), its blocks read
    :data:`BLOCKS_AT_ONCE` at a time; ``block_size``: the cluster's (a file's own, where it
    recorded one, wins).

    Raises:
        PastError: ``v`` is a directory.
        Reclaimed: retention let a block of the version go.
        Undecided: as :func:`block_cap`.
    """
    s = v.state
    assert s is not None
    if s.get("k") == "d":
        raise PastError("is a directory")
    if st.S_ISLNK(s["mode"]):
        return bytes(s.get("t") or b"")
    if s.get("i") is not None:
        return bytes(s["i"])
    size = int(s["size"])
    bs = file_block_size(s, block_size)  # that version's block size (it never changes)
    count = -(-size // bs)
    cap = block_cap(v)
    blocks: list[bytes | bytearray] = [b""] * count
    limiter = trio.CapacityLimiter(BLOCKS_AT_ONCE)

    async def one(k: int) -> None:
        async with limiter:
            blocks[k] = (await rw.read_as_of(block_id(s["d"], k), cap)).ljust(bs, b"\0")

    try:
        async with trio.open_nursery() as nursery:
            for k in range(count):
                nursery.start_soon(one, k)
    except ExceptionGroup as group:  # the first failure, as a read one by one raised
        first: BaseException = group
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        if isinstance(first, HistoryReclaimed):
            raise Reclaimed(
                f"the content of object {v.oid:#x} as of {iso(v.time_ns)} was reclaimed "
                f"by retention ({first}); newer versions are kept"
            ) from None
        raise first from None
    return b"".join(blocks)[:size]
