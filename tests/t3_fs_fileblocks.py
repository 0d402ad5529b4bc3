"""Tier 3: per-file block sizes (issue 19, docs/fs.md "Per-file block size").

A file whose first flush of blocks carries at least ``BIG_BLOCK_THRESHOLD`` bytes written
sequentially from 0 records the cluster's ``big_block_size`` (``bs`` in its attribute
object) and keeps it for life; every other file has ``block_size``.  Small sizes here
(4 KiB blocks, 16 KiB big blocks) make files span many blocks.  Contents are checked byte
for byte against a model, through another client (nothing cached), and every test ends
with the invariant checks.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import trio
from fs_helpers import RW_OPTIONS, Env, read_back, run, write_file

from bftfs.crypto import SEAL_OVERHEAD
from bftfs.erasure import fragment_size
from bftfs.fs.files import BIG_BLOCK_THRESHOLD
from bftfs.fs.filesystem import open_file_system
from bftfs.fs.history import Past, PastView
from bftfs.fsobjects import ROOT
from bftfs.qu.classify import QUThresholds
from bftfs.qu.objects import MethodRefused
from bftfs.qu.pastread import PastReader
from bftfs.rw.client import WriteFailed, open_rw_client
from bftfs.rw.messages import block_id
from bftfs.testing.cluster import open_cluster, qu_client

BS = 4096
BIG = 16384
OPTS = {"block_size": BS, "big_block_size": BIG}


async def block_size_of(env: Env, ino: int) -> int | None:
    """The block size the servers record for ``ino`` (None: none)."""
    bs = (await env.raw.query(ino, "fs.stat")).get("bs")
    return None if bs is None else int(bs)


def test_a_big_sequential_file_gets_big_blocks_and_reads_back_exactly(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        a, b = env.fss
        rng = random.Random(19)
        model = bytearray(rng.randbytes(BIG_BLOCK_THRESHOLD + 5 * BIG + 1234))  # partial last
        ino = await write_file(a, b"big", bytes(model))
        assert await block_size_of(env, ino) == BIG
        assert a.streaming["big-block-files"] == 1
        assert await read_back(b, ino) == model
        # The blocks on the servers are big ones: block 1 holds bytes [BIG, 2 BIG).
        s = await env.raw.query(ino, "fs.stat")
        got = await b.rw.read_blocks([block_id(s["d"], 1), block_id(s["d"], len(model) // BIG)])
        assert got[block_id(s["d"], 1)] == model[BIG : 2 * BIG]
        assert got[block_id(s["d"], len(model) // BIG)] == model[len(model) // BIG * BIG :]
        # Reads across block boundaries, at seeded offsets.
        fh = await b.open(ino, os.O_RDONLY)
        for _ in range(40):
            off = rng.randrange(BIG, len(model) - 1) // BIG * BIG - rng.randrange(1, 300)
            n = rng.randrange(1, 3 * BIG)
            assert await b.read(fh, off, n) == model[off : off + n]
        await b.release(fh)

        # Truncate down (inside a big block), up again (a hole), a write across a big
        # block boundary in the middle, an append: the block size never changes.
        down = 7 * BIG + 777
        await a.setattr(ino, size=down)
        del model[down:]
        up = down + 3 * BIG + 5
        await a.setattr(ino, size=up)
        model.extend(bytes(up - down))
        fh = await a.open(ino, os.O_RDWR)
        mid = 3 * BIG - 100
        patch = rng.randbytes(BIG + 300)
        await a.write(fh, mid, patch)
        model[mid : mid + len(patch)] = patch
        await a.release(fh)
        fh = await a.open(ino, os.O_WRONLY | os.O_APPEND)
        tail = rng.randbytes(2 * BIG + 11)
        await a.write(fh, 0, tail)
        model.extend(tail)
        await a.release(fh)
        assert await block_size_of(env, ino) == BIG
        assert await read_back(b, ino) == model
        assert await read_back(a, ino) == model

    run(tmp_path, body, **OPTS)


@pytest.mark.slow
def test_small_and_non_sequential_files_keep_small_blocks(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        a, b = env.fss
        rng = random.Random(7)
        small = rng.randbytes(100 * 1024 + 3)
        ino_small = await write_file(a, b"small", small)
        assert await block_size_of(env, ino_small) == BS
        # 1.5 MiB written in two halves, the second half first: not sequential.
        data = rng.randbytes(BIG_BLOCK_THRESHOLD + BIG_BLOCK_THRESHOLD // 2)
        half = len(data) // 2
        fh, attrs = await a.create(ROOT, b"jumps", 0o644, 0, 0, os.O_RDWR)
        await a.write(fh, half, data[half:])
        await a.write(fh, 0, data[:half])
        await a.release(fh)
        assert await block_size_of(env, attrs.ino) == BS
        assert await read_back(b, ino_small) == small
        assert await read_back(b, attrs.ino) == data
        # Decided once: emptied and written sequentially, a small-block file stays small.
        await a.setattr(attrs.ino, size=0)
        again = rng.randbytes(BIG_BLOCK_THRESHOLD + 100)
        fh = await a.open(attrs.ino, os.O_RDWR)
        for off in range(0, len(again), 65536):
            await a.write(fh, off, again[off : off + 65536])
        await a.release(fh)
        assert await block_size_of(env, attrs.ino) == BS
        assert await read_back(b, attrs.ino) == again

    run(tmp_path, body, **OPTS)


def test_a_small_block_file_records_its_size_without_a_lock_round(tmp_path: Path) -> None:
    """The cluster's own size goes with the first flush's ``fs.write`` when the create's
    lease spares the lock round (an extra round per new block file otherwise: Andrew's
    copy phase was 13% slower with it); a big size still goes with an ``fs.lock``."""

    async def body(env: Env) -> None:
        a, b = env.fss
        rng = random.Random(11)
        data = rng.randbytes(5 * BS + 17)  # past the inline limit, within the reservation
        locks = a.methods["fs.lock"]
        ino = await write_file(a, b"small", data)
        assert a.methods["fs.lock"] == locks
        assert await block_size_of(env, ino) == BS
        assert await read_back(b, ino) == data
        big = rng.randbytes(BIG_BLOCK_THRESHOLD)
        ino_big = await write_file(a, b"big", big)
        assert a.methods["fs.lock"] > locks
        assert await block_size_of(env, ino_big) == BIG
        assert await read_back(b, ino_big) == big

    run(tmp_path, body, **OPTS)


@pytest.mark.slow
def test_a_file_from_before_the_feature_reads_and_grows_as_before(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        a, b = env.fss
        a.big_bs = 0  # a client of before per-file block sizes: records no ``bs``
        rng = random.Random(3)
        model = bytearray(rng.randbytes(BIG_BLOCK_THRESHOLD + 3 * BS + 9))
        ino = await write_file(a, b"old", bytes(model))
        assert await block_size_of(env, ino) is None
        assert await read_back(b, ino) == model
        # A new client appends a big sequential run: the file has blocks and no record,
        # so it keeps the cluster's block size.
        fh = await b.open(ino, os.O_WRONLY | os.O_APPEND)
        more = rng.randbytes(2 * BIG_BLOCK_THRESHOLD)
        for off in range(0, len(more), 65536):
            await b.write(fh, 0, more[off : off + 65536])
        model.extend(more)
        await b.release(fh)
        assert await block_size_of(env, ino) is None
        assert await read_back(a, ino) == model

    run(tmp_path, body, **OPTS)


def test_an_inline_file_growing_sequentially_takes_big_blocks(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        a, b = env.fss
        rng = random.Random(5)
        head = rng.randbytes(1000)
        ino = await write_file(a, b"grows", head)
        assert (await env.raw.query(ino, "fs.stat"))["inl"]
        fh = await a.open(ino, os.O_WRONLY | os.O_APPEND)
        more = rng.randbytes(BIG_BLOCK_THRESHOLD + BIG)
        for off in range(0, len(more), 32768):
            await a.write(fh, 0, more[off : off + 32768])
        await a.release(fh)
        assert await block_size_of(env, ino) == BIG
        assert await read_back(b, ino) == head + more

    run(tmp_path, body, **OPTS, inline_limit=2048)


def test_truncation_to_zero_and_removal_give_back_big_blocks(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        a, b = env.fss
        rng = random.Random(11)
        data = rng.randbytes(BIG_BLOCK_THRESHOLD + 2 * BIG + 1)
        ino = await write_file(a, b"gone", data)
        assert await block_size_of(env, ino) == BIG
        d = (await env.raw.query(ino, "fs.stat"))["d"]
        before = a.reclaimed_blocks
        await a.setattr(ino, size=0)
        assert a.reclaimed_blocks - before == -(-len(data) // BIG)
        got = await b.rw.read_blocks([block_id(d, k) for k in range(-(-len(data) // BIG))])
        assert all(v == b"" for v in got.values())
        # Emptied, it keeps its big blocks; removed, they are given back too.
        again = rng.randbytes(3 * BIG + 5)
        fh = await a.open(ino, os.O_RDWR)
        await a.write(fh, BIG, again[BIG:])
        await a.write(fh, 0, again[:BIG])
        await a.release(fh)
        assert await block_size_of(env, ino) == BIG
        assert await read_back(b, ino) == again
        before = a.reclaimed_blocks
        await a.unlink(ROOT, b"gone")
        assert a.reclaimed_blocks - before == 4

    run(tmp_path, body, **OPTS, inline_limit=0)


async def test_past_versions_of_a_big_block_file_read_back(tmp_path: Path) -> None:
    async with (
        open_cluster(tmp_path, clients=2, inline_limit=0, **OPTS) as cluster,
        open_rw_client(cluster.client(0), cluster.config, **RW_OPTIONS) as rw_a,
        open_rw_client(cluster.client(1), cluster.config, **RW_OPTIONS) as rw_r,
        open_file_system(qu_client(cluster, 0), rw_a, cluster.config, rng=random.Random(1)) as fs,
    ):
        cfg = cluster.config
        th = QUThresholds.from_config(cfg)
        past = Past(qu_client(cluster, 1), PastReader(cluster.client(1), th), rw_r, BS)
        rng = random.Random(23)
        v1 = rng.randbytes(BIG_BLOCK_THRESHOLD + BIG + 17)
        ino = await write_file(fs, b"f", v1)
        v2 = bytearray(v1)
        patch = rng.randbytes(BIG + 40)
        v2[2 * BIG - 20 : 2 * BIG - 20 + len(patch)] = patch
        fh = await fs.open(ino, os.O_RDWR)
        await fs.write(fh, 2 * BIG - 20, patch)
        await fs.release(fh)
        await fs.setattr(ino, size=5 * BIG + 3)  # version 3: truncated
        v3 = bytes(v2[: 5 * BIG + 3])

        hist = await past.history(ino)
        sized = [v for v in reversed(hist.versions) if v.state and v.state.get("bs") == BIG]
        contents = [await past.content(v) for v in sized]
        for want in (v1, bytes(v2), v3):
            assert want in contents
        # A read-only view at version 2's moment reads it by (straddling) ranges.
        at = next(v for v in sized if contents[sized.index(v)] == v2).time_ns
        view = PastView(past, at, BS)
        attrs = await view.lookup(ROOT, b"f")
        assert attrs.size == len(v2) and attrs.blksize == BIG
        vfh = await view.open(attrs.ino, os.O_RDONLY)
        for off in (0, BIG - 1, 2 * BIG - 30, len(v2) - 100):
            assert await view.read(vfh, off, BIG + 7) == v2[off : off + BIG + 7]


async def test_nodes_take_big_fragments_and_refuse_bigger_ones(tmp_path: Path) -> None:
    async with (
        open_cluster(tmp_path, clients=1, **OPTS) as cluster,
        open_rw_client(cluster.client(0), cluster.config, **RW_OPTIONS) as rw,
    ):
        # A big block and a sealed block's overhead (docs/confidentiality.md).
        assert rw.block_size == BIG + SEAL_OVERHEAD
        data = random.Random(2).randbytes(BIG + SEAL_OVERHEAD)
        await rw.write_block(block_id(99, 0), data)
        assert (await rw.read_blocks([block_id(99, 0)]))[block_id(99, 0)] == data
        with pytest.raises(ValueError):
            await rw.write_block(block_id(99, 1), data + b"x")
        # A client that skips its own check: the nodes refuse fragments past the sealed
        # big block's (``fragment_size(big_block_size + SEAL_OVERHEAD, m)``).
        rw.block_size = 4 * BIG
        m = cluster.config.m
        bigger = random.Random(3).randbytes(2 * BIG)
        assert fragment_size(len(bigger), m) > fragment_size(BIG + SEAL_OVERHEAD, m)
        with pytest.raises(WriteFailed):
            with trio.fail_after(30):
                await rw.write_block(block_id(99, 2), bigger)


@pytest.mark.parametrize("big_first", [False, True])
def test_two_clients_deciding_at_once_agree_on_the_servers_choice(
    tmp_path: Path, big_first: bool
) -> None:
    """Client A buffers writes to an empty file while client B's first flush decides the
    file's block size; A's flush then finds the file changed (its ``fs.lock`` with its own
    choice is refused as stale), takes B's block size and re-applies its writes on B's
    content.  Both ways round: B sequential and big while A wrote a few bytes out of
    order, and B small while A streamed 1 MiB and more."""

    async def body(env: Env) -> None:
        a, b = env.fss
        rng = random.Random(31 + big_first)
        fh, attrs = await a.create(ROOT, b"both", 0o644, 0, 0, os.O_RDWR)
        await a.release(fh)
        ino = attrs.ino
        big_run = rng.randbytes(BIG_BLOCK_THRESHOLD + 3 * BIG + 5)
        few = rng.randbytes(700)
        fa = await a.open(ino, os.O_RDWR)
        fb = await b.open(ino, os.O_RDWR)
        if big_first:  # A: out of order, small; B: one big sequential run, flushed first
            await a.write(fa, 2 * BIG + 10, few)
            for off in range(0, len(big_run), 65536):
                await b.write(fb, off, big_run[off : off + 65536])
            await b.release(fb)
            await a.release(fa)
            model = bytearray(big_run)
            model[2 * BIG + 10 : 2 * BIG + 10 + len(few)] = few
            want = BIG
        else:  # A: a big sequential run; B: a few bytes at 5000, flushed first
            for off in range(0, len(big_run), 65536):
                await a.write(fa, off, big_run[off : off + 65536])
            await b.write(fb, 5000, few)
            await b.release(fb)
            await a.release(fa)
            model = bytearray(big_run)  # A's bytes at the same offsets win (written after)
            want = BS
        assert await block_size_of(env, ino) == want
        assert a.methods["flush-retries"] >= 1
        assert await read_back(b, ino) == model
        assert await read_back(a, ino) == model

    run(tmp_path, body, **OPTS)


def test_servers_record_a_block_size_only_before_the_first_blocks_and_once(
    tmp_path: Path,
) -> None:
    """``fs.lock`` with ``bs``, sent raw as a Byzantine client would: refused out of range,
    refused for a file that has blocks and none recorded (it would read its blocks at other
    offsets), taken once for an empty file, then only the same size again (stale otherwise);
    truncation to zero keeps it."""

    async def body(env: Env) -> None:
        fs = env.fs
        now = env.clock[0]

        async def lock(ino: int, **extra: object) -> dict[str, object]:
            s = await env.raw.query(ino, "fs.stat")
            arg = {"d": s["d"], "v": s["v"], "tok": 9, "now": now, "lease": 10**9, **extra}
            return await env.raw.update([ino], "fs.lock", arg)

        async def refused(ino: int, **extra: object) -> str:
            with pytest.raises(MethodRefused) as e:
                await lock(ino, **extra)
            return e.value.code

        fh, old = await fs.create(ROOT, b"has-blocks", 0o644, 0, 0, os.O_RDWR)
        fs.big_bs = 0  # written without a record, as before the feature
        await fs.write(fh, 0, b"x" * 10_000)
        await fs.release(fh)
        assert await refused(old.ino, bs=BIG) == "invalid"
        fh, new = await fs.create(ROOT, b"empty", 0o644, 0, 0, os.O_RDWR)
        await fs.release(fh)
        for bad in (0, -1, 8 * 1024 * 1024, "big"):
            assert await refused(new.ino, bs=bad) == "invalid", bad
        s = await lock(new.ino, bs=BIG)
        assert s["bs"] == BIG
        await env.raw.update([new.ino], "fs.unlock", {"tok": 9})
        assert await refused(new.ino, bs=BS) == "stale"
        assert (await lock(new.ino, bs=BIG))["bs"] == BIG
        await env.raw.update([new.ino], "fs.unlock", {"tok": 9})
        await fs.setattr(new.ino, size=0)
        assert await block_size_of(env, new.ino) == BIG

    run(tmp_path, body, **OPTS, inline_limit=0)
