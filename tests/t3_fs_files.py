"""Tier 3: file data on PASIS blocks through the file-system model.

Reads and writes across block boundaries, holes, truncation up, down and to zero, O_APPEND,
O_TRUNC, large files flushed in pieces, the write-back cache (buffered size in getattr,
flush/fsync/release), close-to-open consistency between two clients, and a seeded
data-integrity exerciser comparing every read with an in-memory model of the file.  Small
blocks (4 KiB) make block boundaries frequent.  Every test ends with the invariant checks.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from fs_helpers import Env, run

from bftfs.fs.errors import BadHandle, IsDir, NoAttr
from bftfs.fs.filesystem import FileSystem
from bftfs.fsobjects import ROOT
from bftfs.qu.objects import MethodRefused
from bftfs.rw.messages import block_id

BS = 4096
SMALL = {"block_size": BS}


async def new_file(fs: FileSystem, name: bytes = b"f", flags: int = os.O_RDWR) -> tuple[int, int]:
    fh, a = await fs.create(ROOT, name, 0o644, 0, 0, flags)
    return fh, a.ino


def test_write_read_across_blocks_and_short_read_at_eof(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        fs = env.fs
        fh, ino = await new_file(fs)
        data = bytes(random.Random(1).randbytes(3 * BS + 100))
        assert await fs.write(fh, 0, data) == len(data)
        assert await fs.read(fh, 0, len(data)) == data  # from the cache, before a flush
        assert (await fs.getattr(ino)).size == len(data)  # buffered size
        await fs.flush(fh)
        assert await fs.read(fh, BS - 10, 20) == data[BS - 10 : BS + 10]
        assert await fs.read(fh, len(data) - 5, 100) == data[-5:]
        assert await fs.read(fh, len(data) + 5, 100) == b""
        await fs.release(fh)
        fh = await env.fss[1].open(ino, os.O_RDONLY)
        assert await env.fss[1].read(fh, 0, 10 * BS) == data
        assert await env.fss[1].read(fh, 2 * BS + 7, 3) == data[2 * BS + 7 : 2 * BS + 10]
        await env.fss[1].release(fh)
        with pytest.raises(BadHandle):
            await fs.read(fh, 0, 1)

    run(tmp_path, body, **SMALL)


def test_sparse_file_reads_zeros_in_holes(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        fs = env.fs
        fh, ino = await new_file(fs)
        far = 10 * 1024 * 1024 + 123  # far beyond the initial reservation
        await fs.write(fh, far, b"end")
        await fs.write(fh, 5, b"start")
        await fs.release(fh)
        a = await fs.getattr(ino)
        assert a.size == far + 3
        fh = await env.fss[1].open(ino, os.O_RDONLY)
        other = env.fss[1]
        assert await other.read(fh, 0, 16) == bytes(5) + b"start" + bytes(6)
        assert await other.read(fh, 5 * 1024 * 1024, 2 * BS) == bytes(2 * BS)
        assert await other.read(fh, far - 2, 10) == b"\0\0end"
        await other.release(fh)

    run(tmp_path, body, **SMALL)


def test_st_blocks_count_what_was_written(tmp_path: Path) -> None:
    """st_blocks counts the bytes writes stored, not the size: a sparse file looks sparse
    (du, cp --sparse, tar -S); rewriting counts once, truncation frees, the record stays
    bounded, and a client's false claim is refused or clipped, never more than the size."""

    async def body(env: Env) -> None:
        fs, other = env.fss
        fh, ino = await new_file(fs)
        far = 100 * 1024 * 1024
        await fs.write(fh, 0, b"a" * 10)
        await fs.write(fh, far, b"b" * 5000)
        assert (await fs.getattr(ino)).blocks * 512 < 64 * 1024  # buffered, counted too
        await fs.release(fh)
        a = await other.getattr(ino)
        assert a.size == far + 5000
        assert a.blocks == (10 + 5000 + 511) // 512
        fh = await fs.open(ino, os.O_RDWR)
        await fs.write(fh, 0, b"c" * (3 * BS))  # rewrites the first bytes, adds more
        await fs.flush(fh)
        assert (await other.getattr(ino)).blocks == (3 * BS + 5000 + 511) // 512
        await fs.setattr(ino, size=BS + 1)  # truncation frees what lies beyond
        assert (await other.getattr(ino)).blocks == (BS + 1 + 511) // 512
        await fs.setattr(ino, size=20 * BS)  # and growing again stores nothing
        assert (await other.getattr(ino)).blocks == (BS + 1 + 511) // 512
        for k in range(40):  # scattered writes: the record merges, errs towards dense
            await fs.write(fh, 3 * k * BS + 7, b"z")
        await fs.release(fh)
        a = await other.getattr(ino)
        assert (BS + 40) // 512 < a.blocks <= (a.size + 511) // 512
        arg = {"d": (await env.raw.query(ino, "fs.stat"))["d"], "end": 1, "mtime": 1, "now": 1}
        for bad in ([[5, 5]], [[-1, 3]], [[1, 2, 3]], "x", [[0, 1]] * 33, [[True, 2]]):
            with pytest.raises(MethodRefused) as e:
                await env.raw.update([ino], "fs.write", dict(arg, w=bad))
            assert e.value.code == "invalid"
        s = await env.raw.update([ino], "fs.write", dict(arg, w=[[0, 1 << 50]]))
        assert s["al"] == s["size"]  # a false claim: at most the whole file
        fh, small = await new_file(fs, b"small")  # inline (and empty) files count their size
        await fs.write(fh, 0, b"s" * 100)
        await fs.release(fh)
        assert (await other.getattr(small)).blocks == 1

    run(tmp_path, body, inline_limit=1000, **SMALL)


def test_truncate_down_up_and_to_zero(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        fs, other = env.fss
        fh, ino = await new_file(fs)
        data = random.Random(2).randbytes(5 * BS)
        await fs.write(fh, 0, data)
        await fs.release(fh)
        a = await fs.setattr(ino, size=BS + 10)  # down, mid-block
        assert a.size == BS + 10
        a = await fs.setattr(ino, size=4 * BS)  # up again: the cut-off bytes stay gone
        assert a.size == 4 * BS
        fh = await other.open(ino, os.O_RDONLY)
        got = await other.read(fh, 0, 8 * BS)
        assert got == data[: BS + 10] + bytes(3 * BS - 10)
        await other.release(fh)
        d_before = (await env.raw.query(ino, "fs.stat"))["d"]
        a = await fs.setattr(ino, size=0)
        assert a.size == 0
        assert (await env.raw.query(ino, "fs.stat"))["d"] != d_before  # fresh data id
        a = await fs.setattr(ino, size=2 * BS)
        fh = await other.open(ino, os.O_RDONLY)
        assert await other.read(fh, 0, 4 * BS) == bytes(2 * BS)
        await other.release(fh)
        d = await fs.mkdir(ROOT, b"d", 0o755, 0, 0)
        with pytest.raises(IsDir):
            await fs.setattr(d.ino, size=1)

    run(tmp_path, body, **SMALL)


def test_truncate_of_an_open_file_with_buffered_writes(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        fs = env.fs
        fh, ino = await new_file(fs)
        await fs.write(fh, 0, b"a" * (3 * BS))
        await fs.setattr(ino, size=BS // 2)  # flushes, then truncates
        assert (await fs.getattr(ino)).size == BS // 2
        await fs.write(fh, BS, b"b")
        assert await fs.read(fh, 0, 2 * BS) == b"a" * (BS // 2) + bytes(BS // 2) + b"b"
        await fs.release(fh)
        fh = await env.fss[1].open(ino, os.O_RDONLY)
        assert await env.fss[1].read(fh, 0, 2 * BS) == b"a" * (BS // 2) + bytes(BS // 2) + b"b"
        await env.fss[1].release(fh)

    run(tmp_path, body, **SMALL)


def test_o_append_and_o_trunc(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        a, b = env.fss
        fh, ino = await new_file(a)
        await a.write(fh, 0, b"0123456789")
        await a.release(fh)
        fh = await b.open(ino, os.O_WRONLY | os.O_APPEND)
        await b.write(fh, 0, b"abc")  # offset ignored: appends
        await b.write(fh, 2, b"def")
        await b.release(fh)
        fh = await a.open(ino, os.O_RDONLY)
        assert await a.read(fh, 0, 100) == b"0123456789abcdef"
        await a.release(fh)
        fh = await a.open(ino, os.O_WRONLY | os.O_TRUNC)
        assert (await a.getattr(ino)).size == 0
        await a.write(fh, 0, b"new")
        await a.release(fh)
        fh = await b.open(ino, os.O_RDONLY)
        assert await b.read(fh, 0, 100) == b"new"
        await b.release(fh)

    run(tmp_path, body, **SMALL)


def test_large_file_is_flushed_in_pieces_and_read_back(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        fs, other = env.fss
        fh, ino = await new_file(fs)
        data = random.Random(3).randbytes(600 * 1024)
        for off in range(0, len(data), 32 * 1024):  # 32 KiB writes, like a copy
            await fs.write(fh, off, data[off : off + 32 * 1024])
            # Sequential writes flush in the background (write-behind); a write waits once
            # the buffered bytes pass behind_limit, so they stay bounded.
            assert (
                sum(len(v) for v in fs.open_files()[ino].dirty.values())
                <= 256 * 1024 + 32 * 1024 + BS
            )
        await fs.fsync(fh)
        assert (await env.raw.query(ino, "fs.stat"))["size"] == len(data)
        await fs.release(fh)
        fh = await other.open(ino, os.O_RDONLY)
        got = b"".join([await other.read(fh, off, 50_000) for off in range(0, len(data), 50_000)])
        assert got == data
        await other.release(fh)
        reads = other.rw.statistics()["reads"]
        assert reads >= len(data) // BS  # every block came from the servers

    run(tmp_path, body, fs_options={"dirty_limit": 128 * 1024, "behind_limit": 256 * 1024}, **SMALL)


def test_close_to_open_consistency(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        a, b = env.fss
        fh, ino = await new_file(a)
        await a.write(fh, 0, b"version one")
        await a.release(fh)
        fb = await b.open(ino, os.O_RDONLY)
        assert await b.read(fb, 0, 100) == b"version one"
        fa = await a.open(ino, os.O_WRONLY)
        await a.write(fa, 8, b"two")
        assert (await b.getattr(ino)).size == len(b"version one")
        await a.release(fa)
        # b's open handle keeps serving what it cached; a new open sees a's change.
        assert await b.read(fb, 0, 100) == b"version one"
        await b.release(fb)
        fb = await b.open(ino, os.O_RDONLY)
        assert await b.read(fb, 0, 100) == b"version two"
        await b.release(fb)
        # An unchanged file keeps its cached blocks across opens: no new block reads.
        reads = b.rw.statistics()["reads"]
        fb = await b.open(ino, os.O_RDONLY)
        assert await b.read(fb, 0, 100) == b"version two"
        await b.release(fb)
        assert b.rw.statistics()["reads"] in (reads, reads + 1)

    run(tmp_path, body, **SMALL)


def test_unlinked_open_file_stays_usable(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        fs = env.fs
        fh, ino = await new_file(fs)
        await fs.write(fh, 0, b"still here")
        await fs.unlink(ROOT, b"f")
        await fs.flush(fh)
        assert await fs.read(fh, 0, 100) == b"still here"
        assert (await fs.getattr(ino)).nlink == 0
        await fs.write(fh, 10, b" and more" * 1000)  # into blocks, after the unlink
        await fs.flush(fh)
        assert (await fs.getattr(ino)).nlink == 0  # (an fstat: the kernel asks getattr)
        await fs.release(fh)
        fh = await env.fss[1].open(ino, os.O_RDONLY)  # the object stays for open handles
        assert await env.fss[1].read(fh, 0, 19) == b"still here and more"
        assert (await env.fss[1].getattr(ino)).nlink == 0
        await env.fss[1].release(fh)

    run(tmp_path, body, **SMALL)


async def exercise(env: Env, seed: int, steps: int) -> None:
    """Random writes, truncations, reads, flushes and re-opens (by either client) against
    a bytearray model; every read must match the model exactly."""
    rng = random.Random(seed)
    fss = env.fss
    fh, ino = await new_file(fss[0], b"x%d" % seed)
    owner = 0
    model = bytearray()
    limit = 12 * BS
    for _ in range(steps):
        fs = fss[owner]
        op = rng.random()
        if op < 0.45:
            off = rng.randrange(0, limit)
            n = rng.choice([1, 7, BS - 1, BS, BS + 1, rng.randrange(1, 3 * BS)])
            data = rng.randbytes(n)
            await fs.write(fh, off, data)
            if len(model) < off:
                model.extend(bytes(off - len(model)))
            model[off : off + n] = data
        elif op < 0.55:
            size = rng.choice([0, rng.randrange(0, limit), len(model) + rng.randrange(1, 2 * BS)])
            await fs.setattr(ino, size=size)
            del model[size:]
            model.extend(bytes(size - len(model)))
        elif op < 0.85:
            off = rng.randrange(0, limit)
            n = rng.randrange(1, 4 * BS)
            assert await fs.read(fh, off, n) == bytes(model[off : off + n]), (seed, off, n)
        elif op < 0.92:
            await fs.flush(fh)
        else:  # close, and open again in either client (close-to-open)
            await fs.release(fh)
            owner = rng.randrange(len(fss))
            fh = await fss[owner].open(ino, os.O_RDWR)
        assert (await fss[owner].getattr(ino)).size == len(model)
    await fss[owner].release(fh)
    check = fss[1 - owner]
    fh = await check.open(ino, os.O_RDONLY)
    assert await check.read(fh, 0, len(model) + BS) == bytes(model)
    await check.release(fh)


#: Inline limits the exerciser runs with: none, part of a block, a whole block.
INLINE_LIMITS = (0, 1000, BS)


@pytest.mark.parametrize(("seed", "inline_limit"), [(1, 0), (2, 1000), (3, BS)])
def test_data_integrity_exerciser(tmp_path: Path, seed: int, inline_limit: int) -> None:
    async def body(env: Env) -> None:
        await exercise(env, seed, 120)

    options = {"dirty_limit": 8 * BS}
    run(tmp_path, body, seed=seed, fs_options=options, inline_limit=inline_limit, **SMALL)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10, 16))
def test_data_integrity_exerciser_long(tmp_path: Path, seed: int) -> None:
    async def body(env: Env) -> None:
        await exercise(env, seed, 1500)

    inline_limit = INLINE_LIMITS[seed % len(INLINE_LIMITS)]
    options = {"dirty_limit": 8 * BS}
    run(tmp_path, body, seed=seed, fs_options=options, inline_limit=inline_limit, **SMALL)


# Small files inline in their attribute object -----------------------------------------------


async def layout(env: Env, ino: int) -> tuple[bool, int]:
    """(inline?, size) as the servers hold them."""
    s = await env.raw.query(ino, "fs.stat")
    return s["inl"], s["size"]


def test_small_files_live_inline_and_move_to_blocks_and_back(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        a, b = env.fss
        fh, ino = await new_file(a)
        assert await layout(env, ino) == (True, 0)
        writes = a.rw.statistics()["writes"]
        await a.write(fh, 0, b"small" * 100)
        await a.flush(fh)
        assert await layout(env, ino) == (True, 500)
        assert a.rw.statistics()["writes"] == writes  # no PASIS round for an inline file
        fb = await b.open(ino, os.O_RDONLY)
        assert await b.read(fb, 0, 10_000) == b"small" * 100
        await b.release(fb)
        # Growing past the limit moves the content to blocks (block 0 keeps it).
        await a.write(fh, 3 * BS, b"far")
        await a.flush(fh)
        assert await layout(env, ino) == (False, 3 * BS + 3)
        fb = await b.open(ino, os.O_RDONLY)
        want = (b"small" * 100).ljust(3 * BS, b"\0") + b"far"
        assert await b.read(fb, 0, 10 * BS) == want
        await b.release(fb)
        # Truncated small, the next flush brings it back inline, read from block 0.
        await a.setattr(ino, size=300)
        assert await layout(env, ino) == (False, 300)
        await a.write(fh, 300, b"!")
        await a.release(fh)
        assert await layout(env, ino) == (True, 301)
        fb = await b.open(ino, os.O_RDONLY)
        assert await b.read(fb, 0, 10 * BS) == (b"small" * 100)[:300] + b"!"
        await b.release(fb)

    run(tmp_path, body, inline_limit=1000, **SMALL)


def test_inline_truncation_within_and_beyond_the_limit(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        a, b = env.fss
        fh, ino = await new_file(a)
        await a.write(fh, 0, b"abcdef")
        await a.release(fh)
        await a.setattr(ino, size=3)
        assert await layout(env, ino) == (True, 3)
        await a.setattr(ino, size=900)  # up within the limit: zeros, still inline
        assert await layout(env, ino) == (True, 900)
        fb = await b.open(ino, os.O_RDONLY)
        assert await b.read(fb, 0, BS) == b"abc" + bytes(897)
        await b.release(fb)
        await a.setattr(ino, size=2 * BS + 1)  # beyond: block 0 gets the content
        assert await layout(env, ino) == (False, 2 * BS + 1)
        fb = await b.open(ino, os.O_RDONLY)
        assert await b.read(fb, 0, 4 * BS) == b"abc" + bytes(2 * BS - 2)
        await b.release(fb)
        await a.setattr(ino, size=0)  # a fresh data id, inline again
        assert await layout(env, ino) == (True, 0)

    run(tmp_path, body, inline_limit=1000, **SMALL)


def test_leftover_blocks_never_appear_when_an_inline_file_grows(tmp_path: Path) -> None:
    """A crashed writer's blocks under the data id of a (now inline) file stay invisible
    whether the file leaves inline by a write or by truncation up."""

    async def body(env: Env) -> None:
        a, b = env.fss
        for how in ("write", "truncate"):
            fh, ino = await new_file(a, how.encode())
            await a.write(fh, 0, b"tiny")
            await a.release(fh)
            s = await env.raw.query(ino, "fs.stat")
            d = s["d"]
            # A writer takes the lease (declaring its blocks, as every flush does), writes
            # its blocks and dies before its size update; its lease runs out.
            lease = {"d": d, "v": s["v"], "tok": 7, "now": env.clock[0], "lease": 10**9}
            await env.raw.update([ino], "fs.lock", {**lease, "z": [[0, 4 * BS]]})
            junk = {block_id(d, k): b"LEFTOVER" * (BS // 8) for k in range(4)}
            await a.rw.write_blocks(junk)
            env.clock[0] += 10**9
            if how == "write":
                fb = await b.open(ino, os.O_RDWR)
                await b.write(fb, 3 * BS, b"end")
                await b.release(fb)
            else:
                await b.setattr(ino, size=3 * BS + 3)
            assert (await layout(env, ino))[0] is False
            fb = await b.open(ino, os.O_RDONLY)
            got = await b.read(fb, 0, 5 * BS)
            await b.release(fb)
            assert got[:4] == b"tiny" and b"LEFTOVER" not in got, how
            assert len(got) == 3 * BS + 3

    run(tmp_path, body, inline_limit=1000, **SMALL)


def test_kernel_time_updates_and_capability_queries_cost_no_round(tmp_path: Path) -> None:
    """What the kernel's writeback cache sends around every write: a getxattr of
    ``security.capability`` (answered from fresh attributes with no xattrs), an mtime through
    the handle before the flush (sent with the flush), and the same mtime again at inode
    write-back (already held: nothing to do).  An explicit mtime is still an update."""

    async def body(env: Env) -> None:
        a, b = env.fss
        fh, ino = await new_file(a)
        ops = a.qu.statistics().operations
        with pytest.raises(NoAttr):
            await a.getxattr(ino, b"security.capability")
        await a.write(fh, 0, b"data")
        await a.setattr(ino, mtime_ns=1234, fh=fh)
        assert (await a.getattr(ino)).mtime_ns == 1234
        await a.flush(fh)
        assert a.qu.statistics().operations == ops + 1  # the flush alone
        await a.setattr(ino, mtime_ns=1234)
        assert a.qu.statistics().operations == ops + 1
        assert (await env.raw.query(ino, "fs.stat"))["mt"] == 1234
        await a.setattr(ino, mtime_ns=99)
        assert (await env.raw.query(ino, "fs.stat"))["mt"] == 99
        # With an extended attribute present, the question goes to the servers.
        await b.setxattr(ino, b"user.k", b"v")
        await a.release(fh)
        fh = await a.open(ino, os.O_RDONLY)
        assert await a.getxattr(ino, b"user.k") == b"v"
        with pytest.raises(NoAttr):
            await a.getxattr(ino, b"security.capability")
        await a.release(fh)

    run(tmp_path, body, attr_ttl=1.0, **SMALL)


def test_attribute_changes_while_writing_travel_with_the_data(tmp_path: Path) -> None:
    """chmod/chown/utimens of a file with buffered writes join them: one update at close
    carries data, mode, owner and times; this client sees them at once, others after."""

    async def body(env: Env) -> None:
        a, b = env.fss
        fh, ino = await new_file(a)
        await a.write(fh, 0, b"content")
        ops = a.qu.statistics().operations
        await a.setattr(ino, mode=0o100600, uid=7, gid=8)
        await a.setattr(ino, atime_ns=11, mtime_ns=22)
        got = await a.getattr(ino)
        assert (got.mode & 0o777, got.uid, got.gid, got.atime_ns, got.mtime_ns) == (
            0o600,
            7,
            8,
            11,
            22,
        )
        assert a.qu.statistics().operations == ops
        await a.release(fh)
        assert a.qu.statistics().operations == ops + 1
        s = await env.raw.query(ino, "fs.stat")
        assert (s["mode"] & 0o777, s["uid"], s["gid"], s["at"], s["mt"]) == (0o600, 7, 8, 11, 22)
        assert s["size"] == 7
        # Without buffered state a change is its own update, as before.
        await a.setattr(ino, mode=0o100644)
        assert (await b.getattr(ino)).mode & 0o777 == 0o644

    run(tmp_path, body)


@pytest.mark.parametrize("size", [100, 3 * BS + 5], ids=["inline", "blocks"])
def test_open_keeps_kernel_pages_only_of_the_version_the_servers_hold(
    tmp_path: Path, size: int
) -> None:
    """FUSE ``keep_cache`` at open (close-to-open as NFS does it): pages this client wrote
    or read stay valid until anyone else's change, or any change not made by a flush."""

    async def body(env: Env) -> None:
        fs, other = env.fss[0], env.fss[1]
        fh, ino = await new_file(fs)
        await fs.write(fh, 0, b"a" * size)
        assert not fs.keep_cache(fh)  # a created file: nothing cached to keep
        await fs.release(fh)

        async def reopen(client: FileSystem) -> tuple[bool, bytes]:
            fh = await client.open(ino, os.O_RDWR)
            try:
                return client.keep_cache(fh), await client.read(fh, 0, 2 * size)
            finally:
                await client.release(fh)

        assert await reopen(fs) == (True, b"a" * size)  # the kernel holds what we flushed
        assert await reopen(fs) == (True, b"a" * size)
        assert await reopen(other) == (False, b"a" * size)  # first sight
        fh = await other.open(ino, os.O_RDWR)
        await other.write(fh, 0, b"b" * size)  # same size: only the version tells
        await other.release(fh)
        assert await reopen(other) == (True, b"b" * size)
        assert await reopen(fs) == (False, b"b" * size)
        assert await reopen(fs) == (True, b"b" * size)
        fh = await fs.open(ino, os.O_RDWR)
        await fs.write(fh, 1, b"c")  # our own flush keeps our pages current
        await fs.release(fh)
        assert await reopen(fs) == (True, b"bc" + b"b" * (size - 2))
        await fs.setxattr(ino, b"user.k", b"v")  # any other update: drop, re-read
        assert await reopen(fs) == (False, b"bc" + b"b" * (size - 2))
        await fs.setattr(ino, size=size - 1)  # a truncation too
        assert await reopen(fs) == (False, b"bc" + b"b" * (size - 3))

    run(tmp_path, body, clients=2, **SMALL)


def test_a_read_reply_inside_a_clean_block_is_a_view_that_later_writes_leave_alone(
    tmp_path: Path,
) -> None:
    """FUSE read replies are views of clean blocks when they lie inside one (issue 34:
    no copy of each byte a reader gets).  The view must stay what it was read as while the
    mount goes on: a write into the same block, a truncation through it and a rebuilt
    block leave it alone and do not fail (a clean block is never changed in place, and an
    export of it would make resizing it raise).  Reads over two blocks, into a dirty
    block or past the end are bytes, and every reply equals :meth:`read`'s bytes."""

    async def body(env: Env) -> None:
        fs = env.fs
        fh, ino = await new_file(fs)
        data = bytes(random.Random(34).randbytes(3 * BS + 100))
        await fs.write(fh, 0, data)
        await fs.release(fh)
        other = env.fss[1]  # another client: its blocks come from the servers, clean
        fh = await other.open(ino, os.O_RDWR)
        reply = await other.read_reply(fh, BS + 10, 100)
        assert isinstance(reply, memoryview) and reply.readonly
        assert reply == data[BS + 10 : BS + 110] == await other.read(fh, BS + 10, 100)
        whole = await other.read_reply(fh, 2 * BS, BS)  # a whole block, 1 MiB reads' case
        assert isinstance(whole, memoryview) and whole == data[2 * BS : 3 * BS]
        # A write into the same block, right after the reply: the reply keeps its bytes.
        assert await other.write(fh, BS + 20, b"X" * 50) == 50
        assert bytes(reply) == data[BS + 10 : BS + 110]
        after = await other.read_reply(fh, BS + 10, 100)  # now a dirty block: bytes
        assert isinstance(after, bytes)
        assert after == data[BS + 10 : BS + 20] + b"X" * 50 + data[BS + 70 : BS + 110]
        spanning = await other.read_reply(fh, 2 * BS - 5, 10)
        assert isinstance(spanning, bytes) and spanning == data[2 * BS - 5 : 2 * BS + 5]
        assert await other.read_reply(fh, len(data) + 1, 10) == b""
        # A truncation through the viewed block (a slice replaces it), then growth.
        await other.flush(fh)
        await other.setattr(ino, size=2 * BS + 50)
        await other.setattr(ino, size=3 * BS)
        assert bytes(whole) == data[2 * BS : 3 * BS]
        tail = await other.read_reply(fh, 2 * BS, BS)
        assert tail == data[2 * BS : 2 * BS + 50] + bytes(BS - 50)
        await other.release(fh)

    run(tmp_path, body, **SMALL)
