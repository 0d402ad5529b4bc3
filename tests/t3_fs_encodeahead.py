"""Tier 3: encode-ahead (``fs/files/encodeahead.py``): a sequential writer's full blocks are
sealed and erasure-coded as they fill, and the flush sends those encodings.

What must hold: the bytes the nodes store are sealed (no plaintext in any store), what
another mount reads is what was written, and a block changed after it was encoded is sent
as changed (its encoding is of the old bytes and must not be used).  Small blocks (4 KiB)
and a small flush limit make many blocks and flushes.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import trio
from fs_helpers import Env, fs_env, read_back, run, write_file

from bftfs.crypto import VolumeKey
from bftfs.fs.clients import Seal
from bftfs.fs.filesystem import FileSystem

BS = 4096
SMALL = {"block_size": BS}
STREAM = {"dirty_limit": 64 * 1024, "behind_limit": 256 * 1024}
MARKER = b"ENCODED-AHEAD-PLAINTEXT-3c9f1e-"


async def _all_prepared(fs: FileSystem, ino: int) -> None:
    """Wait (bounded) until every block being encoded ahead of ``ino`` is encoded."""
    with trio.fail_after(30):
        for entry in list(fs.cache.files[ino].ahead.values()):
            await entry.done.wait()


def _plaintext_stored(tmp_path: Path) -> bool:
    """Whether any file of any node's data directory holds the marker."""
    stores = [p for d in tmp_path.glob("node*") for p in d.rglob("*") if p.is_file()]
    assert stores
    return any(MARKER in p.read_bytes() for p in stores)


@pytest.mark.parametrize("sealed", [True, False])
async def test_a_stream_is_sent_encoded_ahead_and_sealed_when_the_cluster_is(
    tmp_path: Path, sealed: bool
) -> None:
    """Unsealed, the same scan finds the plaintext: the check can fail."""
    seal = Seal(VolumeKey(random.Random(9).randbytes(32))) if sealed else None
    text = MARKER * (BS // len(MARKER) + 1)
    first = (text * 20)[: 80 * 1024]  # past the flush limit: the block size is settled
    more = (text * 6)[: 6 * BS]  # with its write log, below the flush limit
    async with fs_env(tmp_path, fs_options={"seal": seal, **STREAM}, **SMALL) as env:
        a, b = env.fss
        ino = await write_file(a, b"stream", first, chunk=BS)
        fh = await a.open(ino, os.O_RDWR)
        used = a.streaming["ahead-used"]
        for off in range(0, len(more), BS):
            await a.write(fh, len(first) + off, more[off : off + BS])
        await _all_prepared(a, ino)
        await a.release(fh)
        # Every block but the reopened handle's first (not yet sequential) went out from
        # its encoding, made in the same writer.
        assert a.streaming["ahead-used"] - used == len(more) // BS - 1, dict(a.streaming)
        assert a.rw.statistics()["prepared_used"] == a.streaming["ahead-used"]
        assert a.streaming["ahead-failures"] == 0
        left = a.cache.files.get(ino)  # closed: forgotten, or kept with nothing ahead
        assert left is None or not left.ahead
        assert await read_back(b, ino) == first + more
    assert _plaintext_stored(tmp_path) is not sealed


def test_a_block_changed_after_its_encoding_is_sent_as_changed(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        a, b = env.fss
        rng = random.Random(3)
        first = rng.randbytes(80 * 1024)  # past the flush limit: the block size is settled
        ino = await write_file(a, b"changed", first, chunk=BS)
        fh = await a.open(ino, os.O_RDWR)
        used = a.streaming["ahead-used"]
        more = rng.randbytes(8 * BS)
        for off in range(0, len(more), BS):
            await a.write(fh, len(first) + off, more[off : off + BS])
        await _all_prepared(a, ino)
        f = a.cache.files[ino]
        k = len(first) // BS + 2
        assert k in f.ahead and f.ahead[k].prepared is not None
        # Changed in place after it was encoded: the write copies it and drops the entry.
        patch = b"changed after its encoding"
        await a.write(fh, k * BS + 100, patch)
        assert k not in f.ahead
        await a.release(fh)
        want = bytearray(first + more)
        want[k * BS + 100 : k * BS + 100 + len(patch)] = patch
        assert await read_back(b, ino) == bytes(want)
        # The eight blocks but the first (the reopened handle's first write is not yet
        # sequential) and the changed one went out from their encodings.
        assert a.streaming["ahead-used"] - used == 6

    run(tmp_path, body, fs_options=STREAM, **SMALL)


def test_a_truncation_drops_the_encodings_of_the_blocks_it_cuts(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        a, b = env.fss
        rng = random.Random(4)
        first = rng.randbytes(80 * 1024)
        ino = await write_file(a, b"cut", first, chunk=BS)
        fh = await a.open(ino, os.O_RDWR)
        more = rng.randbytes(6 * BS)
        for off in range(0, len(more), BS):
            await a.write(fh, len(first) + off, more[off : off + BS])
        await _all_prepared(a, ino)
        f = a.cache.files[ino]
        cut = len(first) + 2 * BS + 10  # inside a prepared block
        await a.setattr(ino, size=cut)
        assert all(k * BS + BS <= cut for k in f.ahead), sorted(f.ahead)
        await a.release(fh)
        assert await read_back(b, ino) == (first + more)[:cut]

    run(tmp_path, body, fs_options=STREAM, **SMALL)
