"""Tier 3: the blocks of contents no file reaches any more are given back (fs/files/reclaim.py)
and the nodes' garbage collection then keeps nothing of them beyond what retention says
(issue 16).

A file system on the in-process cluster with lazy verification on and a retention of no
age: removing a file's last name, renaming over it or truncating it to zero writes an
empty version over each of its blocks; once the nodes settle, each of those blocks is one
empty version on every node.  A file removed while open here keeps its contents until its
last release.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fs_helpers import Env, run
from t5_qu_tombstone import until
from t5_rw_lazy import EAGER, settled

from bftfs.fs.files import INITIAL_RESERVE
from bftfs.fs.filesystem import FileSystem
from bftfs.fsobjects import ROOT
from bftfs.policy import RetentionPolicy
from bftfs.rw import collect, replica
from bftfs.rw.messages import block_id
from bftfs.rw.schema import DB_FLOOR, DB_VERIFIED, DB_VERSIONS, block_prefix, version_key

BS = 4096
OPTIONS: dict[str, Any] = {
    "block_size": BS,
    "inline_limit": 0,
    "verification": EAGER,
    "retention": RetentionPolicy(keep_hourly=0, keep_daily=0, keep_seconds=0.0, keep_versions=2),
}


async def written(fs: FileSystem, name: bytes, size: int) -> tuple[int, int]:
    """A file ``name`` of ``size`` random bytes, flushed and closed; (ino, data id)."""
    fh, a = await fs.create(ROOT, name, 0o644, 0, 0, os.O_RDWR)
    await fs.write(fh, 0, random.Random(size).randbytes(size))
    await fs.release(fh)
    return a.ino, (await fs.meta.query(a.ino, "fs.stat"))["d"]


def versions(env: Env, d: int, blocks: int) -> list[list[int]]:
    """Per block of data id ``d``: on every node, the lengths of the versions it hosts."""
    out = []
    for k in range(blocks):
        block = block_id(d, k)
        per_node = []
        for node in env.cluster.nodes:

            def lengths(kv: Any, block: int = block) -> list[int]:
                raws = [
                    kv.get(DB_VERSIONS, version_key(block, ts))
                    for ts in collect.hosted_step(kv, block)
                ]
                return [len(replica.StoredVersion.decode(r).fragment) for r in raws]

            per_node.append(tuple(node.store.read(lengths)))
        out.append(per_node)
    return out


def test_unlink_rename_over_and_truncate_give_blocks_back(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        fs = env.fs
        a, da = await written(fs, b"a", 3 * BS)
        b, db = await written(fs, b"b", 2 * BS)
        c, dc = await written(fs, b"c", 2 * BS)
        keep, dk = await written(fs, b"keep", 2 * BS)
        await fs.unlink(ROOT, b"a")
        await fs.rename(ROOT, b"c", ROOT, b"b", 0)  # b's contents lose their last name
        await fs.setattr(keep, size=0)  # the old data id of "keep" is dead
        assert fs.reclaimed_blocks == 3 + 2 + 2 and fs.reclaim_failed == 0
        await settled(env.cluster)
        for d, count in ((da, 3), (db, 2), (dk, 2)):
            for per_node in versions(env, d, count):
                assert per_node == [(0,)] * len(env.cluster.nodes), per_node
        for per_node in versions(env, dc, 2):  # c lives on as "b": untouched
            assert all(len(v) == 1 and v[0] > 0 for v in per_node)

    run(tmp_path, body, **OPTIONS)


def test_a_file_removed_while_open_keeps_its_contents_until_released(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        fs = env.fs
        data = random.Random(3).randbytes(2 * BS)
        fh, a = await fs.create(ROOT, b"f", 0o644, 0, 0, os.O_RDWR)
        await fs.write(fh, 0, data)
        await fs.flush(fh)
        await fs.unlink(ROOT, b"f")
        assert fs.reclaimed_blocks == 0
        assert await fs.read(fh, 0, 2 * BS) == data
        await fs.release(fh)
        assert fs.reclaimed_blocks == 2

    run(tmp_path, body, **OPTIONS)


#: Most blocks one ``write_blocks`` call may carry here: far above what these files hold
#: (a flush, a reclaim chunk), far below what a reclaim or gap clearing by size would.
MOST_PER_CALL = 4096


def count_block_writes(fs: FileSystem) -> list[int]:
    """Record the size of every ``write_blocks`` call ``fs`` makes (the real call runs);
    a call carrying more than :data:`MOST_PER_CALL` blocks fails the test at once, before
    a size-sized reclaim could eat the machine's memory."""
    calls: list[int] = []
    real = fs.rw.write_blocks

    async def counted(blocks: Any, **options: Any) -> Any:
        calls.append(len(blocks))
        assert len(blocks) <= MOST_PER_CALL, f"{len(blocks)} blocks in one call"
        return await real(blocks, **options)

    fs.rw.write_blocks = counted  # type: ignore[method-assign]
    return calls


def test_removing_a_huge_sparse_file_costs_what_was_written(tmp_path: Path) -> None:
    """``truncate -s 999999999999999 f; rm f`` and ``truncate -s 8G; rm`` give back the
    blocks that were written (none, or the two far apart), not one per block of the
    size; truncating such a file down and to zero writes no block of its size either
    (issue 31, item 9).  Growing it again after a truncation down:
    :func:`test_growing_after_a_far_write_and_a_truncation_clears_what_was_written`."""

    async def body(env: Env) -> None:
        fs = env.fs
        calls = count_block_writes(fs)
        reserve = -(-INITIAL_RESERVE // BS)
        for name, size in ((b"g", 1 << 30), (b"eight", 8 << 30), (b"huge", 999999999999999)):
            fh, a = await fs.create(ROOT, name, 0o644, 0, 0, os.O_RDWR)
            await fs.release(fh)
            calls.clear()
            await fs.setattr(a.ino, size=size)  # clears the reservation only (a crashed
            assert sum(calls) <= reserve, calls  # writer's leftovers could lie there)
            calls.clear()
            await fs.unlink(ROOT, name)
            assert sum(calls) == 0, calls
        assert fs.reclaimed_blocks == 0
        # Two blocks written far apart: two given back.
        fh, a = await fs.create(ROOT, b"far", 0o644, 0, 0, os.O_RDWR)
        far = 1 << 40
        await fs.write(fh, 0, b"a" * BS)
        await fs.write(fh, far, b"z" * BS)
        await fs.release(fh)
        calls.clear()
        await fs.setattr(a.ino, size=far + 10 * BS)  # up: nothing beyond the reservation
        await fs.setattr(a.ino, size=100)  # down: no block written
        assert sum(calls) == 0, calls
        fh = await fs.open(a.ino, os.O_RDONLY)
        assert await fs.read(fh, 0, 200) == b"a" * 100
        await fs.release(fh)
        # To zero: the blocks written, below the size and cut off by the truncation down.
        await fs.setattr(a.ino, size=0)
        assert fs.reclaimed_blocks == 2 and fs.reclaim_failed == 0, fs.reclaimed_blocks
        fh, a = await fs.create(ROOT, b"far2", 0o644, 0, 0, os.O_RDWR)
        await fs.write(fh, 0, b"a" * BS)
        await fs.write(fh, far, b"z" * BS)
        await fs.release(fh)
        before = fs.reclaimed_blocks
        await fs.unlink(ROOT, b"far2")
        assert fs.reclaimed_blocks - before == 2

    run(tmp_path, body, **OPTIONS)


class MemoryGuardTripped(Exception):
    """The code under :func:`memory_guard` took more memory than it allowed."""


def private_memory() -> int:
    """This process's private memory (VmData: heap and anonymous maps, not the nodes'
    LMDB files), bytes."""
    with open("/proc/self/status") as status:
        return next(int(x.split()[1]) * 1024 for x in status if x.startswith("VmData:"))


@contextmanager
def memory_guard(extra: int = 256 << 20) -> Iterator[None]:
    """Fail the code inside (MemoryGuardTripped, raised in the main thread by a signal)
    once this process's private memory grows ``extra`` past what it is now, so code that
    enumerates every block of a terabyte fails the test instead of getting the run
    OOM-killed.  (A watchdog thread samples the memory: the code it guards never waits.)"""
    limit = private_memory() + extra
    done = threading.Event()

    def trip(signum: int, frame: Any) -> None:
        raise MemoryGuardTripped(f"private memory above {limit >> 20} MiB")

    def watch() -> None:
        while not done.wait(0.05):
            if private_memory() > limit:
                signal.pthread_kill(main, signal.SIGUSR1)
                return

    main = threading.get_ident()
    old = signal.signal(signal.SIGUSR1, trip)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        signal.signal(signal.SIGUSR1, old)


async def far_file(fs: FileSystem, name: bytes, far: int) -> int:
    """A file with a block at 0 and one at ``far``, truncated down to 100 bytes: the far
    block's contents lie beyond the size (and below the reservation mark the far write
    raised), where nobody may see them again; its ino."""
    fh, a = await fs.create(ROOT, name, 0o644, 0, 0, os.O_RDWR)
    await fs.write(fh, 0, b"a" * BS)
    await fs.write(fh, far, b"z" * BS)
    await fs.release(fh)
    await fs.setattr(a.ino, size=100)
    return a.ino


def test_growing_after_a_far_write_and_a_truncation_clears_what_was_written(
    tmp_path: Path,
) -> None:
    """Write a block at 1 TiB, truncate to 100 bytes, grow the file to 2 TiB (and, on
    another file, write past the end at 2 TiB): growing clears only the blocks that
    may hold cut-off bytes (the attribute object's stale ranges), not every block up to
    the reservation mark (2**28 of them: the daemon grew without bound, issue 31 item
    9), and the grown region reads as zeros on both clients: the far block's old
    contents never reappear.  Removing the file then gives back what was written."""

    async def body(env: Env) -> None:
        fs, other = env.fss
        calls = count_block_writes(fs)
        far = 1 << 40
        ino = await far_file(fs, b"up", far)
        calls.clear()
        with memory_guard():
            await fs.setattr(ino, size=2 * far)
        assert sum(calls) <= 2, calls  # block 0 (its first 100 bytes kept), the far block
        writes = await far_file(fs, b"past", far)
        fh = await fs.open(writes, os.O_RDWR)
        calls.clear()
        with memory_guard():
            await fs.write(fh, 2 * far, b"end")
            await fs.release(fh)
        assert sum(calls) <= 3, calls  # the same two, and the block written
        for f in (fs, other):
            for ino_, size in ((ino, 2 * far), (writes, 2 * far + 3)):
                fh = await f.open(ino_, os.O_RDONLY)
                assert await f.read(fh, 0, 200) == b"a" * 100 + bytes(100)
                assert await f.read(fh, far - BS, 3 * BS) == bytes(3 * BS)
                assert (await f.getattr(ino_)).size == size
                await f.release(fh)
        fh = await other.open(writes, os.O_RDONLY)
        assert await other.read(fh, 2 * far, 10) == b"end"
        await other.release(fh)
        before = fs.reclaimed_blocks
        with memory_guard():
            await fs.unlink(ROOT, b"up")
            await fs.unlink(ROOT, b"past")
        assert fs.reclaimed_blocks - before == 3 and fs.reclaim_failed == 0

    run(tmp_path, body, **OPTIONS)


def test_a_dead_flush_s_blocks_past_the_size_are_given_back(tmp_path: Path) -> None:
    """A writer takes the lease declaring a block 1 TiB out (as every flush declares its
    blocks), writes it and dies before its size update; once its lease has run out, the
    next size change moves the declaration into the file's stale ranges, so the far bytes
    never show and removing the file gives that block back too (it stayed for ever)."""

    async def body(env: Env) -> None:
        fs = env.fs
        fh, a = await fs.create(ROOT, b"f", 0o644, 0, 0, os.O_RDWR)
        await fs.write(fh, 0, b"a" * BS)
        await fs.release(fh)
        s = await env.raw.query(a.ino, "fs.stat")
        far = 1 << 40
        lease = {"d": s["d"], "v": s["v"], "tok": 7, "now": env.clock[0], "lease": 10**9}
        await env.raw.update(
            [a.ino], "fs.lock", {**lease, "alloc": far + BS, "z": [[far, far + BS]]}
        )
        far_block = block_id(s["d"], far // BS)
        await fs.rw.write_blocks({far_block: b"z" * BS})
        env.clock[0] += 10**9  # it died: its lease runs out
        await fs.setattr(a.ino, size=2 * BS)
        fh = await fs.open(a.ino, os.O_RDONLY)
        assert await fs.read(fh, 0, 3 * BS) == b"a" * BS + bytes(BS)
        await fs.release(fh)
        before = fs.reclaimed_blocks
        await fs.unlink(ROOT, b"f")
        assert fs.reclaimed_blocks - before == 2 and fs.reclaim_failed == 0
        assert (await fs.rw.read_blocks([far_block]))[far_block] == b""

    run(tmp_path, body, **OPTIONS)


FORGET: dict[str, Any] = {
    **OPTIONS,
    "retention": RetentionPolicy(
        keep_hourly=0, keep_daily=0, keep_seconds=0.0, keep_versions=2, forget_seconds=0.0
    ),
}


def records(env: Env, block: int) -> list[tuple[int, bool, bool]]:
    """Per node: (versions hosted, has a floor, has a verified mark) of ``block``."""
    out = []
    for node in env.cluster.nodes:

        def look(kv: Any) -> tuple[int, bool, bool]:
            return (
                len(collect.hosted_step(kv, block)),
                kv.get(DB_FLOOR, block_prefix(block)) is not None,
                kv.get(DB_VERIFIED, block_prefix(block)) is not None,
            )

        out.append(node.store.read(look))
    return out


def forgotten(env: Env) -> list[int]:
    return [node.stats["rw.forgotten"] for node in env.cluster.nodes]


def test_given_back_blocks_are_forgotten_once_every_node_agrees(tmp_path: Path) -> None:
    """With ``forget_seconds`` 0, a removed file's blocks, once down to their verified
    empty version everywhere, leave nothing on any node (no version, floor or mark) and
    read as the empty block; a live file's blocks are untouched.  (That every node's word
    is needed: ``t1_rw_replica.py::test_forget_needs_every_node``.)"""

    async def body(env: Env) -> None:
        fs = env.fs
        _, dead = await written(fs, b"dead", 3 * BS)
        _, live = await written(fs, b"live", 2 * BS)
        await fs.unlink(ROOT, b"dead")
        await until(lambda: min(forgotten(env)) >= 3)
        for k in range(3):
            assert records(env, block_id(dead, k)) == [(0, False, False)] * 6
            assert await fs.rw.read_block(block_id(dead, k)) == b""
        for k in range(2):
            assert all(r[0] >= 1 for r in records(env, block_id(live, k)))
        fh = await fs.open((await fs.lookup(ROOT, b"live")).ino, os.O_RDONLY)
        assert await fs.read(fh, 0, 2 * BS) == random.Random(2 * BS).randbytes(2 * BS)
        await fs.release(fh)

    run(tmp_path, body, **FORGET)
