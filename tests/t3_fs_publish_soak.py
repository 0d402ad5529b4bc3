"""Tier 3 (slow): a writer's seeded PostMark beside a reader that never stops looking, on
one cluster (issue 64: slow is not unavailable).

Twice in about 25 attacked PostMark runs a writer's ``unlink`` waited past eight minutes
beside a reader listing its directory, and the reader's ``opendir`` as long: a wait across
the write-back, the publications the reader asks and the removal, never a failure of the
cluster.  Here every call of either client must end within :data:`DEADLINE` (twice the
lease term: whatever a call waits on ends with a lease by then); one that does not fails
the test with every task's await stack (``bftfs/taskstacks.py``), the wait's cycle.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from fs_helpers import Env, run

from bftfs.fs.errors import NotFound
from bftfs.fs.filesystem import FileSystem
from bftfs.fsobjects import ROOT
from bftfs.taskstacks import task_stacks

pytestmark = pytest.mark.slow

#: The mount's defaults for what this exercises: leases, write-back, publication.
OPTIONS = {"lease_term": 30.0, "write_behind": True, "commit": 5.0, "publish": True}
#: Seconds a call may take before the test calls it hung (two lease terms).
DEADLINE = 2 * OPTIONS["lease_term"]
#: PostMark's shape, smaller: files in the pool, transactions, file sizes.
FILES, TRANSACTIONS, SIZES = 60, 1500, (500, 4000)

T = TypeVar("T")


class Hung(AssertionError):
    """A call waited past :data:`DEADLINE`; the message holds every task's stack."""


async def bounded(what: str, call: Callable[[], Awaitable[T]]) -> T:
    """``call()``, failing with :class:`Hung` (every task's await stack, taken before the
    call is cancelled) if it takes longer than :data:`DEADLINE`."""
    stacks: list[str] = []
    result: list[T] = []
    failed: list[Exception] = []
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            await trio.sleep(DEADLINE)
            root = trio.lowlevel.current_root_task()
            stacks.extend(task_stacks(root) if root is not None else [])
            nursery.cancel_scope.cancel()

        async def go() -> None:
            try:
                result.append(await call())
            except Exception as e:  # noqa: BLE001 - raised below, as the call raised it
                failed.append(e)
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        nursery.start_soon(go)
    if failed:
        raise failed[0]
    if not result:
        raise Hung(f"{what} waited past {DEADLINE:.0f}s; tasks:\n  " + "\n  ".join(stacks))
    return result[0]


async def postmark(fs: FileSystem, d: int, rng: random.Random, done: trio.Event) -> int:
    """PostMark on ``fs`` in ``d``: a pool of :data:`FILES`, then :data:`TRANSACTIONS` of a
    create or a removal and a read or an append each; the transactions made."""
    pool: dict[bytes, int] = {}
    serial = 0

    async def create() -> None:
        nonlocal serial
        serial += 1
        name = b"%d" % serial
        size = rng.randint(*SIZES)
        fh, attr = await fs.create(d, name, 0o644, 0, 0, os.O_WRONLY)
        await fs.write(fh, 0, rng.randbytes(size))
        await fs.flush(fh)
        await fs.release(fh)
        pool[name] = attr.ino

    async def remove() -> None:
        name = rng.choice(sorted(pool))
        del pool[name]
        await fs.unlink(d, name)

    async def read_or_append() -> None:
        name = rng.choice(sorted(pool))
        ino = pool[name]
        if rng.random() < 0.5:
            fh = await fs.open(ino, os.O_RDONLY)
            await fs.read(fh, 0, SIZES[1] * 4)
        else:
            fh = await fs.open(ino, os.O_WRONLY)
            at = (await fs.getattr(ino)).size
            await fs.write(fh, at, rng.randbytes(rng.randint(1, SIZES[0])))
            await fs.flush(fh)
        await fs.release(fh)

    try:
        for _ in range(FILES):
            await bounded("a create of the pool", create)
        for k in range(TRANSACTIONS):
            if rng.random() < 0.5 or len(pool) < 2:
                await bounded(f"transaction {k}'s create", create)
            else:
                await bounded(f"transaction {k}'s unlink", remove)
            await bounded(f"transaction {k}'s read or append", read_or_append)
        for name in sorted(pool):
            await bounded("the pool's removal", lambda name=name: fs.unlink(d, name))
    finally:
        done.set()
    return TRANSACTIONS


async def look(fs: FileSystem, d: int, done: trio.Event) -> int:
    """List ``d`` and look up every entry, as ``ls -l`` does, until ``done``; the looks."""
    looks = 0
    while not done.is_set():
        entries = await bounded("the reader's listing", lambda: fs.readdir(d))
        for name, _ in entries:
            if done.is_set():
                break
            with contextlib.suppress(NotFound):  # removed since the listing: as ls -l meets
                await bounded("the reader's lookup", lambda name=name: fs.lookup(d, name))
        looks += 1
        await trio.lowlevel.checkpoint()  # (another's turn after a look without a round)
    return looks


def test_a_writer_beside_a_reader_that_never_stops_looking_never_waits_for_ever(
    tmp_path: Path,
) -> None:
    """Every call of the writer's PostMark and of the reader's looks ends within
    :data:`DEADLINE`; the reader looked and sees the directory empty at the end."""

    async def body(env: Env) -> None:
        writer, reader = env.fss
        d = (await writer.mkdir(ROOT, b"pm", 0o755, 0, 0)).ino
        done = trio.Event()
        counts: dict[str, Any] = {}
        async with trio.open_nursery() as nursery:

            async def write() -> None:
                counts["transactions"] = await postmark(writer, d, random.Random(64), done)

            async def read() -> None:
                counts["looks"] = await look(reader, d, done)

            nursery.start_soon(write)
            nursery.start_soon(read)
        assert counts["transactions"] == TRANSACTIONS and counts["looks"] >= 1
        assert await reader.readdir(d) == []
        leases = writer.meta.leases
        assert leases is not None and leases.stats["publications"] > 0

    run(tmp_path, body, fs_options=OPTIONS)
