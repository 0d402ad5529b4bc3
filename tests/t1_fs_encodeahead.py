"""Tier 1: encode-ahead's bookkeeping (``fs/files/encodeahead.py``) with a ``prepare`` the test
holds: which encodings a flush may use, and that a block whose encoding still runs stays
marked, so that a write copies it rather than change the buffer the worker reads."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing

from bftfs.fs.files import OpenFile, encodeahead
from bftfs.rw.messages import block_id

BS = 16
D = 7


def _file() -> OpenFile:
    """A file whose block size is recorded, blocks 0-2 full and dirty, block 3 short."""
    st = {"d": D, "v": 1, "size": 0, "alloc": 1 << 20, "inl": False, "bs": BS}
    f = OpenFile.from_stat(1, st, BS)
    f.apply_write(0, bytes(range(3 * BS + 5)), 1)
    return f


class Held:
    """A ``prepare`` that finishes a block only when the test releases it."""

    def __init__(self) -> None:
        self.release: dict[int, trio.Event] = {}

    async def __call__(self, block: int, data: bytes | bytearray) -> Any:
        event = self.release.setdefault(block, trio.Event())
        await event.wait()
        return ("encoded", bytes(data))

    def finish(self, k: int) -> None:
        self.release.setdefault(block_id(D, k), trio.Event()).set()


def _spawner(nursery: trio.Nursery) -> Callable[[Callable[[], Awaitable[None]]], None]:
    return lambda fn: nursery.start_soon(fn)


async def test_only_finished_encodings_of_the_very_buffer_are_used() -> None:
    f, held, streaming = _file(), Held(), Counter[str]()
    limit = trio.Semaphore(3)
    async with trio.open_nursery() as nursery:
        for k in range(4):
            encodeahead.start(f, k, held, _spawner(nursery), streaming, limit)
        assert sorted(f.ahead) == [0, 1, 2]  # block 3 is not full
        held.finish(0)
        held.finish(1)
        await f.ahead[0].done.wait()
        await f.ahead[1].done.wait()
        # Block 1 changed after its encoding: copied, its entry dropped.
        f.apply_write(BS + 2, b"xy", 2)
        assert 1 not in f.ahead
        snapshot = dict(f.dirty)
        got = encodeahead.take(f, D, snapshot, streaming)
        assert got == {block_id(D, 0): ("encoded", bytes(snapshot[0]))}
        # Block 2's encoding still runs: it stays, and a write to it copies the buffer.
        assert 2 in f.ahead and streaming["ahead-late"] == 1
        running = f.ahead[2].buf
        f.apply_write(2 * BS, b"z", 3)
        assert f.dirty[2] is not running and 2 not in f.ahead
        held.finish(2)
    assert not f.ahead


async def test_a_late_encoding_of_a_block_flushed_meanwhile_drops_itself() -> None:
    f, held, streaming = _file(), Held(), Counter[str]()
    async with trio.open_nursery() as nursery:
        encodeahead.start(f, 0, held, _spawner(nursery), streaming, trio.Semaphore(1))
        await trio.testing.wait_all_tasks_blocked()
        assert encodeahead.take(f, D, dict(f.dirty), streaming) == {}
        del f.dirty[0]  # the flush sent it without the encoding: the block is clean
        encodeahead.forget(f, 0)
        assert 0 in f.ahead  # still running: the thread may still read the buffer
        held.finish(0)
    assert not f.ahead  # it dropped itself when it ended


async def test_a_finished_encoding_of_a_block_left_dirty_waits_for_the_next_flush() -> None:
    f, held, streaming = _file(), Held(), Counter[str]()
    async with trio.open_nursery() as nursery:
        encodeahead.start(f, 0, held, _spawner(nursery), streaming, trio.Semaphore(1))
        await trio.testing.wait_all_tasks_blocked()
        assert encodeahead.take(f, D, dict(f.dirty), streaming) == {}  # a flush that failed
        held.finish(0)
    # Still the block's buffer, unchanged: the next flush uses the encoding.
    got = encodeahead.take(f, D, dict(f.dirty), streaming)
    assert list(got) == [block_id(D, 0)] and not f.ahead
