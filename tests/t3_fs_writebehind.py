"""Tier 3: create write-behind (``FileSystem(write_behind=True)``, docs/fs.md).

A create without O_EXCL is answered at once and sent with the file's first flush as one
update (``fs.createwrite``); every call on the directory sends its pending creates first;
a name another client made meanwhile is handled as a synchronous create handles it, and
data that cannot be written is never lost silently.  Each test ends with the invariant
checks of ``fs_helpers``.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
from fs_helpers import Env, check_all, fs_env, names, run

from bftfs.fs.errors import Exists, NotFound, OverQuota, StaleView, Unavailable
from bftfs.fs.filesystem import FileSystem
from bftfs.fsobjects import ROOT
from bftfs.net.server import HandlerError
from bftfs.outcome import patience
from bftfs.policy import LimitsPolicy
from bftfs.qu.messages import KIND_REQUEST
from bftfs.qu.objects import MethodRefused
from bftfs.qu.request import Request

WB = {"fs_options": {"write_behind": True}}
#: What a close answered EIO logs: what it held back is dropped (docs/fs.md, "What EIO means").
DROPPED = pytest.mark.expected_logs(
    "bftfs.fs", "WARNING", match=r".*(dropped|not sent yet|failed when sent)"
)
RDWR = os.O_RDWR | os.O_CREAT


def rounds(fs: FileSystem, before: Counter[str]) -> Counter[str]:
    """Q/U operations ``fs`` sent since ``before`` (a copy of ``fs.methods``)."""
    return Counter({k: v for k, v in (fs.methods - before).items() if v})


def test_create_write_close_is_one_update_and_others_see_it_at_close(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        a, b = env.fss
        d = await a.mkdir(ROOT, b"d", 0o755, 0, 0)  # its answer gives the directory's mode
        before = Counter(a.methods)
        fh, f = await a.create(d.ino, b"f", 0o644, 0, 0, RDWR)
        assert rounds(a, before) == Counter()  # answered at once
        assert f.size == 0 and f.mode & 0o777 == 0o644
        await a.write(fh, 0, b"hello")
        with pytest.raises(NotFound):  # not visible before the first flush
            await b.lookup(d.ino, b"f")
        await a.flush(fh)
        await a.release(fh)
        assert rounds(a, before) == Counter({"fs.createwrite": 1})
        got = await b.lookup(d.ino, b"f")
        assert (got.ino, got.size) == (f.ino, 5)
        fh = await b.open(got.ino, os.O_RDONLY)
        assert await b.read(fh, 0, 100) == b"hello"
        await b.release(fh)
        # The new file is a regular one of its own: a second write and close update it.
        fh = await a.open(f.ino, os.O_WRONLY)
        await a.write(fh, 5, b" again")
        await a.release(fh)
        fh = await b.open(got.ino, os.O_RDONLY)
        assert await b.read(fh, 0, 100) == b"hello again"
        await b.release(fh)

    run(tmp_path, body, **WB)


def test_o_excl_is_synchronous_and_refused_on_an_existing_name(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        a, b = env.fss
        d = await a.mkdir(ROOT, b"d", 0o755, 0, 0)
        fh, _ = await b.create(d.ino, b"x", 0o644, 0, 0, RDWR)
        await b.release(fh)
        with pytest.raises(Exists):
            await a.create(d.ino, b"x", 0o644, 0, 0, RDWR | os.O_EXCL)
        fh, _ = await a.create(d.ino, b"p", 0o644, 0, 0, RDWR)  # pending
        before = Counter(a.methods)
        fh2, _ = await a.create(d.ino, b"q", 0o644, 0, 0, RDWR | os.O_EXCL)
        # The pending create went first, then the synchronous one.
        assert rounds(a, before) == Counter({"fs.createwrite": 1, "fs.create": 1})
        assert {n for n, _ in await b.readdir(d.ino)} == {b"x", b"p", b"q"}
        await a.release(fh)
        await a.release(fh2)

    run(tmp_path, body, **WB)


def test_calls_on_the_directory_send_its_pending_creates_first(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        a, b = env.fss
        d = await a.mkdir(ROOT, b"d", 0o755, 0, 0)
        handles = []
        for name in (b"r", b"u", b"n"):
            fh, _ = await a.create(d.ino, name, 0o644, 0, 0, RDWR)
            await a.write(fh, 0, name * 3)
            handles.append(fh)
        assert [n for n, _ in await b.readdir(d.ino)] == []
        assert [n for n, _ in await a.readdir(d.ino)] == [b"n", b"r", b"u"]
        assert [n for n, _ in await b.readdir(d.ino)] == [b"n", b"r", b"u"]
        # unlink and rename of pending names, and a lookup of another name.
        fh, _ = await a.create(d.ino, b"gone", 0o644, 0, 0, RDWR)
        await a.unlink(d.ino, b"gone")
        await a.release(fh)
        fh, _ = await a.create(d.ino, b"old", 0o644, 0, 0, RDWR)
        await a.write(fh, 0, b"moved")
        await a.rename(d.ino, b"old", d.ino, b"new")
        await a.release(fh)
        fh, _ = await a.create(d.ino, b"seen", 0o644, 0, 0, RDWR)
        with pytest.raises(NotFound):
            await a.lookup(d.ino, b"other")
        assert (await b.lookup(d.ino, b"seen")).size == 0
        await a.release(fh)
        for fh in handles:
            await a.release(fh)
        names = {n: x.size for n, x in await b.readdir(d.ino)}
        assert names == {b"n": 3, b"r": 3, b"u": 3, b"new": 5, b"seen": 0}
        fh = await b.open((await b.lookup(d.ino, b"new")).ino, os.O_RDONLY)
        assert await b.read(fh, 0, 10) == b"moved"
        await b.release(fh)

    run(tmp_path, body, **WB)


def test_a_name_made_elsewhere_meanwhile_gets_the_data(tmp_path: Path) -> None:
    """As a synchronous create that finds the name: the existing file is opened (O_TRUNC
    applied) and the writes land in it; the inode the kernel was given answers ESTALE, so
    the kernel looks the name up again."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = await a.mkdir(ROOT, b"d", 0o755, 0, 0)
        fh, mine = await a.create(d.ino, b"f", 0o644, 0, 0, RDWR | os.O_TRUNC)
        await a.write(fh, 0, b"mine")
        fh_b, theirs = await b.create(d.ino, b"f", 0o644, 0, 0, RDWR)
        await b.write(fh_b, 0, b"theirs, longer")
        await b.release(fh_b)
        await a.flush(fh)
        assert await a.read(fh, 0, 100) == b"mine"
        await a.release(fh)
        got = await b.lookup(d.ino, b"f")
        assert (got.ino, got.size) == (theirs.ino, 4)
        fh = await b.open(got.ino, os.O_RDONLY)
        assert await b.read(fh, 0, 100) == b"mine"
        await b.release(fh)
        with pytest.raises(StaleView):
            await a.getattr(mine.ino)
        assert (await a.lookup(d.ino, b"f")).ino == theirs.ino
        # Without O_TRUNC the writes go over the existing bytes, as they would have.
        fh, _ = await a.create(d.ino, b"g", 0o644, 0, 0, RDWR)
        await a.write(fh, 0, b"AB")
        fh_b, _ = await b.create(d.ino, b"g", 0o644, 0, 0, RDWR)
        await b.write(fh_b, 0, b"abcdef")
        await b.release(fh_b)
        await a.release(fh)
        fh = await b.open((await b.lookup(d.ino, b"g")).ino, os.O_RDONLY)
        assert await b.read(fh, 0, 100) == b"ABcdef"
        await b.release(fh)
        assert [n for n, _ in await b.readdir(d.ino)] == [b"f", b"g"]

    run(tmp_path, body, **WB)


@pytest.mark.expected_logs(
    "bftfs.fs.writeback.creates_sending",
    "WARNING",
    match=r"^create of b'f' failed when sent: b'f' was made by",
)
def test_a_collision_that_cannot_take_the_data_fails_the_close(tmp_path: Path) -> None:
    """The existing file may not be opened by the creator (its mode bits): the flush and
    close say EEXIST, and the other client's file is untouched."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = await a.mkdir(ROOT, b"d", 0o777, 0, 0)
        fh, _ = await a.create(d.ino, b"f", 0o644, 1000, 1000, RDWR)
        await a.write(fh, 0, b"lost?")
        fh_b, _ = await b.create(d.ino, b"f", 0o600, 0, 0, RDWR)
        await b.write(fh_b, 0, b"root's")
        await b.release(fh_b)
        with pytest.raises(Exists):
            await a.flush(fh)
        with pytest.raises(Exists):
            await a.release(fh)
        assert not a.open_files()
        fh = await b.open((await b.lookup(d.ino, b"f")).ino, os.O_RDONLY)
        assert await b.read(fh, 0, 100) == b"root's"
        await b.release(fh)

    run(tmp_path, body, **WB)


def test_a_mount_that_dies_with_a_pending_create_leaves_the_directory_consistent(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with fs_env(tmp_path, **WB) as env:  # type: ignore[arg-type]
            a, b = env.fss
            d = await a.mkdir(ROOT, b"d", 0o755, 0, 0)
            fh, _ = await a.create(d.ino, b"kept", 0o644, 0, 0, RDWR)
            await a.write(fh, 0, b"kept")
            await a.release(fh)
            fh, _ = await a.create(d.ino, b"never", 0o644, 0, 0, RDWR)
            await a.write(fh, 0, b"unflushed")
            # The mount dies here: nothing of the pending create reached the servers.
            assert [n for n, _ in await b.readdir(d.ino)] == [b"kept"]
            fh, _ = await b.create(d.ino, b"next", 0o644, 0, 0, RDWR)
            await b.release(fh)
            assert [n for n, _ in await b.readdir(d.ino)] == [b"kept", b"next"]
            await check_all(env.raw)

    trio.run(main)


def test_servers_refuse_a_createwrite_a_create_and_write_could_not_make(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        d = await env.fs.mkdir(ROOT, b"d", 0o755, 0, 0)
        base = {
            "p": d.ino,
            "o": d.ino + 7 * 1000,
            "name": b"x",
            "mode": 0o100644,
            "uid": 0,
            "gid": 0,
            "d": 99,
            "alloc": 0,
            "now": 1,
            "mtime": 1,
            "i": b"abc",
        }
        bad = [
            {"mode": 0o040755},  # not a regular file
            {"i": "abc"},  # content not bytes
            {"i": b"x" * (64 * 1024 + 1)},  # over the inline maximum
            {"tok": 5, "lease": 10},  # no lease with it
            {"mtime": None},
            {"attrs": {"size": 5}},
            {"name": b"a/b"},
        ]
        for change in bad:
            with pytest.raises(MethodRefused):
                await env.raw.update([d.ino, base["o"]], "fs.createwrite", {**base, **change})
        fh, _ = await env.fs.create(d.ino, b"x", 0o644, 0, 0, RDWR)
        await env.fs.release(fh)
        with pytest.raises(MethodRefused) as e:  # the name is taken
            await env.raw.update([d.ino, base["o"]], "fs.createwrite", base)
        assert e.value.code == "exists"
        child, _ = await env.raw.update(
            [d.ino, base["o"]], "fs.createwrite", {**base, "name": b"y"}
        )
        assert (child["size"], child["inl"], child["nl"]) == (3, True, 1)

    run(tmp_path, body, **WB)


def test_a_read_through_a_pending_file_sees_a_file_made_elsewhere_meanwhile(
    tmp_path: Path,
) -> None:
    """open(O_CREAT) of a name the kernel cached as missing that another client made
    meanwhile reads that file, as after a synchronous create."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = await a.mkdir(ROOT, b"d", 0o755, 0, 0)
        fh_b, theirs = await b.create(d.ino, b"f", 0o644, 0, 0, RDWR)
        await b.write(fh_b, 0, b"made by the other client")
        await b.release(fh_b)
        fh, _ = await a.create(d.ino, b"f", 0o644, 0, 0, RDWR)  # on a cached miss
        assert await a.read(fh, 0, 100) == b"made by the other client"
        await a.write(fh, 0, b"MADE")
        await a.release(fh)
        fh = await b.open(theirs.ino, os.O_RDONLY)
        assert await b.read(fh, 0, 100) == b"MADE by the other client"
        await b.release(fh)
        assert [n for n, _ in await b.readdir(d.ino)] == [b"f"]

    run(tmp_path, body, **WB)


async def content_of(fs: FileSystem, parent: int, name: bytes) -> bytes | None:
    """What an open of ``name`` reads (None: there is no such name)."""
    try:
        got = await fs.lookup(parent, name)
    except NotFound:
        return None
    fh = await fs.open(got.ino, os.O_RDONLY)
    try:
        return await fs.read(fh, 0, 1 << 20)
    finally:
        await fs.release(fh)


@DROPPED
def test_a_create_sent_during_an_outage_beyond_t_is_finished_with_its_data(
    tmp_path: Path,
) -> None:
    """Issue 31, item 5, and issue 60, item 13: with two of six nodes down, the fsync of a
    new file sends its pending create; it reaches only four nodes (fewer than q) and the
    fsync answers EIO, which drops the create (not applied: the mount never sends it or
    the writes after it again).  Once the nodes are back another client's call on the
    directory completes that half-made create (Q/U repair), with what that send carried;
    both mounts then read the same file - never the bytes written after the EIO, which
    came back with a resend and made the EIO'd work appear."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = await a.mkdir(ROOT, b"d", 0o755, 0, 0)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        fh, f = await a.create(d.ino, b"newfile", 0o644, 0, 0, flags)
        await a.write(fh, 0, b"x\n")
        for i in (4, 5):
            env.cluster.crash(i)
        with patience(1.0, trio.current_time()), pytest.raises(Unavailable):
            await a.fsync(fh)  # EIO: the create is dropped
        await a.write(fh, 2, b"y\n")
        with pytest.raises(Unavailable):
            await a.release(fh)  # the close: EIO again, the file was never made here
        for i in (4, 5):
            await env.cluster.recover(i)
        # The other mount lists the directory: its Q/U round repairs the half-made create
        # (with the content that send carried).
        assert [n for n, _ in await b.readdir(d.ino)] == [b"newfile"]
        await a.write_back()  # (nothing of the dropped create is sent again)
        for fs in (a, b):
            got = await fs.lookup(d.ino, b"newfile")
            assert (got.ino, got.size) == (f.ino, 2)
            assert await content_of(fs, d.ino, b"newfile") == b"x\n"
        assert [n for n, _ in await a.readdir(d.ino)] == [b"newfile"]

    run(tmp_path, body, **WB)


@DROPPED
def test_a_create_that_cannot_be_sent_does_not_hold_up_its_directory(tmp_path: Path) -> None:
    """Issue 31, item 11: a pending create whose send failed for want of a quorum was sent
    again ahead of every later call on its directory, for minutes: each call waited out its
    patience on it and then failed with EIO itself.  Its flush and close said EIO already;
    calls on the directory that do not name the file go on without it for a while (the name
    is not on the servers), and a call naming it, or its resend time, sends it again."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = await a.mkdir(ROOT, b"d", 0o755, 0, 0)
        fh, _ = await a.create(d.ino, b"kept", 0o644, 0, 0, RDWR)
        await a.release(fh)
        n = env.cluster.config.n

        async def withhold_creates(ctx: Any, payload: Any, honest: Any) -> Any:
            req = Request.from_bytes(payload, n) if isinstance(payload, bytes) else None
            if req is not None and req.op is not None and req.op.method == "fs.createwrite":
                await trio.sleep_forever()  # no node answers this create
            return await honest(ctx, payload)

        for f in env.cluster.faults:
            f.byzantine(KIND_REQUEST, withhold_creates)
        fh, stuck = await a.create(d.ino, b"stuck", 0o644, 0, 0, RDWR)
        await a.write(fh, 0, b"data")
        # Every node withholds its answer while answering everything else: beyond b, and
        # to a default mount a live cluster it waits for (docs/fs.md, "Slow is not
        # unavailable"); a soft patience keeps the EIO this test is about.
        with patience(0.5, trio.current_time(), soft=True), pytest.raises(Unavailable):
            await a.release(fh)  # the close: EIO
        for _ in range(3):  # the directory answers at once, each time
            with patience(0.5, trio.current_time(), soft=True):
                assert [n for n, _ in await a.readdir(d.ino)] == [b"kept"]
                await a.create(d.ino, b"other", 0o644, 0, 0, os.O_RDWR | os.O_EXCL)
                await a.unlink(d.ino, b"other")
        for f in env.cluster.faults:
            f.honest()
        # The close answered EIO: the create was dropped (issue 60, item 13), and no
        # call on the directory or the name sends it; the program's retry makes it.
        for fs in (a, b):
            with pytest.raises(NotFound):
                await fs.lookup(d.ino, b"stuck")
        with pytest.raises(StaleView):
            await a.open(stuck.ino, REOPEN, reached_by_name=True)
        fh, _ = await a.create(d.ino, b"stuck", 0o644, 0, 0, RDWR)
        await a.write(fh, 0, b"data")
        await a.release(fh)
        fh = await b.open((await b.lookup(d.ino, b"stuck")).ino, os.O_RDONLY)
        assert await b.read(fh, 0, 100) == b"data"
        await b.release(fh)

    run(tmp_path, body, **WB)


# A create that fails for good (issue 31, item 10's finding) ---------------------------------

#: A per-client quota of about 67 KB per node: a few inline files, then EDQUOT.
SMALL_QUOTA = {"limits": LimitsPolicy(quota_fraction=0.001)}
WRITE_NEW = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
#: What the kernel sends for ``open(name, "wb")`` on a name it cached (O_CREAT stripped).
REOPEN = os.O_WRONLY | os.O_TRUNC


async def until_over_quota(fs: FileSystem, parent: int, data: bytes) -> tuple[bytes, int]:
    """Create files with ``data`` in ``parent`` until a close says EDQUOT: that name and
    the inode its create answered."""
    for i in range(500):
        name = b"f%d" % i
        fh, f = await fs.create(parent, name, 0o644, 0, 0, WRITE_NEW)
        await fs.write(fh, 0, data)
        try:
            await fs.release(fh)
        except OverQuota:
            return name, f.ino
    raise AssertionError("the quota never refused")


@pytest.mark.expected_logs(
    "bftfs.fs.writeback.creates_sending", "WARNING", match=r"^create of b'\w+' failed when sent: "
)
def test_a_create_refused_for_quota_at_close_can_be_created_again(tmp_path: Path) -> None:
    """A write-behind create goes with its data at close; at its quota the servers refuse
    it (EDQUOT) and no file is made.  The kernel still holds the name it was answered at
    create, so ``open(name, "wb")`` opens that inode: it answered ENOENT (the object does
    not exist), so the program could never create the name again through this mount's
    cached entry.  It must answer ESTALE (the kernel looks the name up again, finds it
    missing and creates it), and the refused data never appears anywhere."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = await a.mkdir(ROOT, b"d", 0o755, 0, 0)
        name, ino = await until_over_quota(a, d.ino, b"q" * 4000)
        for fs in (a, b):  # not made: no mount sees the name
            with pytest.raises(NotFound):
                await fs.lookup(d.ino, name)
        with pytest.raises(StaleView):  # the cached name: look again (was ENOENT)
            await a.open(ino, REOPEN, reached_by_name=True)
        with pytest.raises(StaleView):
            await a.getattr(ino, reached_by_name=True)
        # Looked up again, the name is missing: open(O_CREAT|O_EXCL) creates it (an empty
        # file fits in what the quota leaves), every mount sees it, without the refused data.
        fh, again = await a.create(d.ino, name, 0o644, 0, 0, WRITE_NEW | os.O_EXCL)
        assert again.ino != ino
        await a.release(fh)
        with pytest.raises(Exists):
            await a.create(d.ino, name, 0o644, 0, 0, WRITE_NEW | os.O_EXCL)
        for fs in (a, b):
            assert (await fs.lookup(d.ino, name)).ino == again.ino
            assert await content_of(fs, d.ino, name) == b""

    run(tmp_path, body, **WB, **SMALL_QUOTA)


def test_a_file_whose_data_was_refused_for_quota_is_what_was_stored(tmp_path: Path) -> None:
    """A 4 MiB file: the create is made, the blocks of its first flush are refused for the
    quota (EDQUOT at close).  The writing mount kept the refused writes: it showed 4 MiB
    where the other mount showed 0, and the next open of the name flushed them first and
    failed with EDQUOT again (and, once room came back, would have stored them behind the
    program's back).  The file is what was stored - empty - on every mount, and opens."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = await a.mkdir(ROOT, b"d", 0o755, 0, 0)
        fh, f = await a.create(d.ino, b"big", 0o644, 0, 0, WRITE_NEW)
        for off in range(0, 4 << 20, 1 << 16):
            await a.write(fh, off, b"z" * (1 << 16))
        with pytest.raises(OverQuota):
            await a.release(fh)
        for fs in (a, b):
            got = await fs.lookup(d.ino, b"big")
            assert (got.ino, got.size) == (f.ino, 0)
            assert await content_of(fs, d.ino, b"big") == b""
        with pytest.raises(Exists):  # it exists: O_EXCL says so
            await a.create(d.ino, b"big", 0o644, 0, 0, WRITE_NEW | os.O_EXCL)
        fh = await a.open(f.ino, REOPEN, reached_by_name=True)  # open(name, "wb") again
        await a.write(fh, 0, b"small")
        await a.release(fh)
        assert await content_of(b, d.ino, b"big") == b"small"

    run(tmp_path, body, **WB, **{"limits": LimitsPolicy(quota_fraction=0.01)})


@DROPPED
def test_a_create_whose_close_said_eio_and_that_then_fails_for_good(tmp_path: Path) -> None:
    """An outage at close (EIO: the create stays pending, item 5); meanwhile another client
    makes the name, as root and private, so the resend cannot take the data (EEXIST).  The
    files were closed, so nothing reports that; ``open(name, "wb")`` through the kernel's
    cached entry answered ENOENT (the empty file, forgotten at its close) or EEXIST for
    good (the one with data).  Both must answer ESTALE: the kernel looks again and finds
    the other client's file, untouched."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = await a.mkdir(ROOT, b"d", 0o777, 0, 0)
        n = env.cluster.config.n

        async def withhold_creates(ctx: Any, payload: Any, honest: Any) -> Any:
            req = Request.from_bytes(payload, n) if isinstance(payload, bytes) else None
            if req is not None and req.op is not None and req.op.method == "fs.createwrite":
                await trio.sleep_forever()  # no node answers this create
            return await honest(ctx, payload)

        mine = {}
        for name, data in ((b"touched", b""), (b"written", b"mine")):
            fh, f = await a.create(d.ino, name, 0o644, 1000, 1000, RDWR)
            if data:
                await a.write(fh, 0, data)
            mine[name] = (fh, f.ino)
            # Meanwhile another client makes the name (a synchronous create).
            fh, _ = await b.create(d.ino, name, 0o600, 0, 0, RDWR | os.O_EXCL)
            await b.write(fh, 0, b"root's")
            await b.release(fh)
        for f in env.cluster.faults:
            f.byzantine(KIND_REQUEST, withhold_creates)

        async def close(fh: int) -> None:
            # Every node withholds: a soft patience (to a default mount a live cluster)
            with patience(0.5, trio.current_time(), soft=True), pytest.raises(Unavailable):
                await a.release(fh)  # the close: EIO, the create stays pending

        async with trio.open_nursery() as nursery:
            for fh, _ in mine.values():
                nursery.start_soon(close, fh)
        for f in env.cluster.faults:
            f.honest()
        # open(name, "wb") right after (or once the mount resent them by itself: the same)
        for name, (_, ino) in mine.items():
            with pytest.raises(StaleView):  # was ENOENT (touched), EEXIST (written)
                await a.open(ino, REOPEN, reached_by_name=True)
            assert (await a.lookup(d.ino, name)).ino != ino
            assert await content_of(b, d.ino, name) == b"root's"

    run(tmp_path, body, **WB)


def refuse_first_create_for_quota(env: Env, nodes: tuple[int, ...]) -> None:
    """``nodes`` refuse the first ``fs.createwrite`` they get with ``quota``, as nodes do
    whose own count of the client's bytes is at its quota (each node judges alone, so near
    the quota some refuse what others take); later ones (a repair of it) they take."""
    n = env.cluster.config.n
    for i in nodes:
        used = [False]

        async def refuse(ctx: Any, payload: Any, honest: Any, used: list[bool] = used) -> Any:
            req = Request.from_bytes(payload, n) if isinstance(payload, bytes) else None
            op = req.op if req is not None else None
            if op is not None and op.method == "fs.createwrite" and not used[0]:
                used[0] = True
                raise HandlerError("quota", "this client is at its quota here")
            return await honest(ctx, payload)

        env.cluster.faults[i].byzantine(KIND_REQUEST, refuse)


@pytest.mark.expected_logs(
    "bftfs.fs.writeback.creates_sending", "WARNING", match=r"^create of b'\w+' failed when sent: "
)
@pytest.mark.parametrize("refusing", [(3, 4, 5), (2, 3, 4, 5), (0, 1, 2, 3)])
def test_a_create_refused_for_quota_by_some_nodes_is_settled_at_once(
    tmp_path: Path, refusing: tuple[int, ...]
) -> None:
    """More than ``b`` nodes refuse a create for the quota, the others take it: the send
    fails with EDQUOT, but when enough nodes hold it any client's next round completed it,
    and the file appeared on every mount with the data whose close had said EDQUOT.  The
    outcome is decided at close: made (the close succeeds, every mount reads the data)
    or not (EDQUOT, and no later round of any client makes it)."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = await a.mkdir(ROOT, b"d", 0o755, 0, 0)
        refuse_first_create_for_quota(env, refusing)
        fh, f = await a.create(d.ino, b"f", 0o644, 0, 0, WRITE_NEW)
        await a.write(fh, 0, b"data")
        try:
            await a.release(fh)
            made = True
        except OverQuota:
            made = False
        expected = b"data" if made else None
        for fs in (b, a):  # b's rounds on the directory (a listing, updates) first
            assert await names(fs, d.ino) == ([b"f"] if made else [])
            fh, _ = await fs.create(d.ino, b"other", 0o644, 0, 0, WRITE_NEW | os.O_EXCL)
            await fs.release(fh)
            await fs.unlink(d.ino, b"other")
            assert await content_of(fs, d.ino, b"f") == expected
        if not made:  # the name is free
            fh, _ = await a.create(d.ino, b"f", 0o644, 0, 0, WRITE_NEW | os.O_EXCL)
            await a.release(fh)
            assert await content_of(b, d.ino, b"f") == b""

    run(tmp_path, body, **WB)
