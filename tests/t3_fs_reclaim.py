"""Tier 3: the blocks of contents no file reaches any more are given back (fs/reclaim.py)
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
from pathlib import Path
from typing import Any

from fs_helpers import Env, run
from t5_qu_tombstone import until
from t5_rw_lazy import EAGER, settled

from bftfs.fs.files import INITIAL_RESERVE
from bftfs.fs.filesystem import FileSystem
from bftfs.fs.objects import ROOT
from bftfs.policy import RetentionPolicy
from bftfs.rw import replica
from bftfs.rw.messages import block_id
from bftfs.rw.schema import DB_FLOOR, DB_VERIFIED, DB_VERSIONS, block_prefix, version_key

BS = 4096
OPTIONS: dict[str, Any] = {
    "block_size": BS,
    "inline_limit": 0,
    "verification": EAGER,
    "retention": RetentionPolicy(keep_seconds=0.0, keep_versions=2),
}


async def written(fs: FileSystem, name: bytes, size: int) -> tuple[int, int]:
    """A file ``name`` of ``size`` random bytes, flushed and closed; (ino, data id)."""
    fh, a = await fs.create(ROOT, name, 0o644, 0, 0, os.O_RDWR)
    await fs.write(fh, 0, random.Random(size).randbytes(size))
    await fs.release(fh)
    return a.ino, (await fs._query(a.ino, "fs.stat"))["d"]


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
                    for ts in replica.hosted_step(kv, block)
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
    (issue 31, item 9).  (Growing it again after a truncation down clears every block up
    to its reservation mark, which a far write raised: not covered, docs/lazy.md.)"""

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
        await fs.setattr(a.ino, size=0)  # to zero: the blocks written, below the size
        assert fs.reclaimed_blocks == 1 and fs.reclaim_failed == 0, fs.reclaimed_blocks
        fh, a = await fs.create(ROOT, b"far2", 0o644, 0, 0, os.O_RDWR)
        await fs.write(fh, 0, b"a" * BS)
        await fs.write(fh, far, b"z" * BS)
        await fs.release(fh)
        before = fs.reclaimed_blocks
        await fs.unlink(ROOT, b"far2")
        assert fs.reclaimed_blocks - before == 2

    run(tmp_path, body, **OPTIONS)


FORGET: dict[str, Any] = {
    **OPTIONS,
    "retention": RetentionPolicy(keep_seconds=0.0, keep_versions=2, forget_seconds=0.0),
}


def records(env: Env, block: int) -> list[tuple[int, bool, bool]]:
    """Per node: (versions hosted, has a floor, has a verified mark) of ``block``."""
    out = []
    for node in env.cluster.nodes:

        def look(kv: Any) -> tuple[int, bool, bool]:
            return (
                len(replica.hosted_step(kv, block)),
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
