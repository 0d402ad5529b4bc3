"""Tier 3: mkdirs and renames left to directory write-back (issue 33, ``fs/writeback/mkdirs.py``,
``fs/writeback/renames.py``) on the in-process cluster (real node services, TCP, LMDB, keys).

A mount that holds a directory exclusively answers a mkdir or a rename in it without a
round; the update goes when due, at ``fsync``, before a call that needs it, or when
another client recalls the lease."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from fs_helpers import Env, busy_writer, run
from t3_fs_writeback import OPTIONS, new_file, rounds_since

from bftfs.fs.errors import NotEmpty, NotFound
from bftfs.fs.filesystem import FileSystem
from bftfs.fsobjects import ROOT


async def read_all(fs: FileSystem, parent: int, name: bytes) -> bytes:
    ino = (await fs.lookup(parent, name)).ino
    fh = await fs.open(ino, os.O_RDONLY)
    data: bytes = await fs.read(fh, 0, 1000)
    await fs.release(fh)
    return data


def test_a_tree_made_in_a_held_directory_costs_no_round_until_written_back(
    tmp_path: Path,
) -> None:
    """``mkdir -p top/x/y`` and files in each (a copy's tree) under ``top``, which came
    leased with its mkdir: no round at all, the directories' link counts and listings
    answered in the mount.  ``fsync`` sends the two mkdirs, outer first, then the
    creates; the other client then finds the tree with its contents (asking the holder to
    publish, which keeps its leases)."""

    async def body(env: Env) -> None:
        a, b = env.fss
        leases = a.meta.leases
        assert leases is not None
        top = (await a.mkdir(ROOT, b"top", 0o755, 0, 0)).ino
        before = Counter(a.meta.methods)
        x = (await a.mkdir(top, b"x", 0o750, 0, 0)).ino
        y = (await a.mkdir(x, b"y", 0o700, 0, 0)).ino
        await new_file(a, x, b"fx", b"in x")
        await new_file(a, y, b"fy", b"in y")
        with pytest.raises(NotFound):
            await a.lookup(y, b"nothing")
        assert (await a.getattr(top)).nlink == 3
        assert (await a.getattr(x)).nlink == 3 and (await a.getattr(y)).nlink == 2
        assert {n for n, _ in await a.readdir(x)} == {b"fx", b"y"}
        assert (await a.lookup(x, b"y")).ino == y
        assert not rounds_since(a, before), rounds_since(a, before)
        assert leases.stats["mkdirs_deferred"] == 2

        await a.write_back()
        assert rounds_since(a, before)["fs.mkdir"] == 2, rounds_since(a, before)
        recalls = b.meta.methods["fs.recall"]
        await a.write_back()  # nothing left: nothing sent again
        assert rounds_since(a, before)["fs.mkdir"] == 2
        # The leases are still a's: b's reads ask a to publish (they keep), and find
        # everything.
        assert {n for n, _ in await b.readdir(top)} == {b"x"}
        assert b.meta.methods["fs.pubreq"] > 0 and b.meta.methods["fs.recall"] == recalls
        bx = (await b.lookup(top, b"x")).ino
        assert bx == x and (await b.getattr(x)).mode & 0o7777 == 0o750
        assert {n for n, _ in await b.readdir(x)} == {b"fx", b"y"}
        assert await read_all(b, x, b"fx") == b"in x"
        assert await read_all(b, y, b"fy") == b"in y"
        assert (await b.getattr(top)).nlink == 3

    with busy_writer():
        run(tmp_path, body, fs_options=OPTIONS)


def test_a_recall_sends_the_waiting_mkdirs_before_the_release(tmp_path: Path) -> None:
    """Another client's listing of the held directory recalls its lease: the waiting
    mkdirs, and the creates made in them, reach the servers before the release, so the
    other client sees the whole tree (nothing was fsynced)."""

    async def body(env: Env) -> None:
        a, b = env.fss
        top = (await a.mkdir(ROOT, b"top", 0o755, 0, 0)).ino
        sub = (await a.mkdir(top, b"sub", 0o755, 0, 0)).ino
        deep = (await a.mkdir(sub, b"deep", 0o755, 0, 0)).ino
        for k in range(3):
            await new_file(a, deep, b"f%d" % k, b"deep %d" % k)
        assert a.meta.methods["fs.mkdir"] == 1  # only top's
        assert {n for n, _ in await b.readdir(top)} == {b"sub"}
        assert a.meta.methods["fs.mkdir"] == 3
        assert {n for n, _ in await b.readdir(sub)} == {b"deep"}
        assert {n for n, _ in await b.readdir(deep)} == {b"f0", b"f1", b"f2"}
        assert await read_all(b, deep, b"f1") == b"deep 1"

    run(tmp_path, body, fs_options=OPTIONS)


def test_calls_that_need_a_waiting_mkdir_send_it_first(tmp_path: Path) -> None:
    """An rmdir of a directory whose mkdir waits sends the mkdir, then removes it (the
    other client never sees it), and the parent's link count counts the mkdirs still
    waiting beside it; an rmdir of one with a file made in it is refused
    (ENOTEMPTY) after both are sent; a chmod of one waits with it, and another client's
    listing sends both."""

    async def body(env: Env) -> None:
        a, b = env.fss
        top = (await a.mkdir(ROOT, b"top", 0o755, 0, 0)).ino
        await a.mkdir(top, b"gone", 0o755, 0, 0)
        await a.rmdir(top, b"gone")
        with pytest.raises(NotFound):
            await a.lookup(top, b"gone")
        await a.mkdir(top, b"kept", 0o755, 0, 0)
        await a.mkdir(top, b"dropped", 0o755, 0, 0)
        await a.rmdir(top, b"dropped")  # its answer lacks "kept", which still waits
        assert (await a.getattr(top)).nlink == 3
        await a.rmdir(top, b"kept")
        assert (await a.getattr(top)).nlink == 2
        full = (await a.mkdir(top, b"full", 0o755, 0, 0)).ino
        await new_file(a, full, b"f", b"kept")
        with pytest.raises(NotEmpty):
            await a.rmdir(top, b"full")
        mode = (await a.mkdir(top, b"mode", 0o755, 0, 0)).ino
        mkdirs = a.meta.methods["fs.mkdir"]
        await a.setattr(mode, mode=0o700)  # held back with it (fs/writeback/dirattrs.py)
        assert a.meta.methods["fs.mkdir"] == mkdirs
        assert (await a.getattr(mode)).mode & 0o7777 == 0o700
        assert {n for n, _ in await b.readdir(top)} == {b"full", b"mode"}
        assert await read_all(b, full, b"f") == b"kept"
        assert (await b.getattr(mode)).mode & 0o7777 == 0o700

    run(tmp_path, body, fs_options=OPTIONS)


async def sent_file(fs: FileSystem, parent: int, name: bytes, data: bytes) -> int:
    """A file the servers hold (made, then its directory fsynced)."""
    ino = await new_file(fs, parent, name, data)
    await fs.write_back()
    return ino


def test_a_rename_within_a_held_directory_is_applied_in_the_mount(tmp_path: Path) -> None:
    """``mv a b`` of a file the servers hold, in a directory held exclusively: no round;
    the old name is "not found" and the new one answered from the leased listing; a new
    file under the old name (``mv a b; touch a``) and a removal of the new name wait
    too, and all reach the servers in order: the other client, recalling the lease,
    sees exactly the result."""

    async def body(env: Env) -> None:
        a, b = env.fss
        leases = a.meta.leases
        assert leases is not None
        top = (await a.mkdir(ROOT, b"top", 0o755, 0, 0)).ino
        one = await sent_file(a, top, b"one", b"first")
        two = await sent_file(a, top, b"two", b"second")
        await sent_file(a, top, b"three", b"third")
        before = Counter(a.meta.methods)
        await a.rename(top, b"one", top, b"uno", 0)
        with pytest.raises(NotFound):
            await a.lookup(top, b"one")
        assert (await a.lookup(top, b"uno")).ino == one
        await new_file(a, top, b"one", b"again")  # a new file under the old name
        await a.rename(top, b"two", top, b"dos", 0)
        await a.unlink(top, b"dos")
        await a.rename(top, b"three", top, b"tres", 0)
        assert not rounds_since(a, before), rounds_since(a, before)
        assert leases.stats["renames_deferred"] == 3
        # A listing stats the moved files: their renames go first (they move ctime).
        listed = {n for n, _ in await a.readdir(top)}
        assert listed == {b"uno", b"one", b"tres"}, listed

        assert {n for n, _ in await b.readdir(top)} == listed  # recalls: all sent first
        assert rounds_since(a, before)["fs.rename"] == 3
        assert leases.stats["renames_deferred"] == 3
        assert await read_all(b, top, b"uno") == b"first"
        assert await read_all(b, top, b"one") == b"again"
        assert await read_all(b, top, b"tres") == b"third"
        assert (await b.lookup(top, b"uno")).ino == one
        with pytest.raises(NotFound):
            await b.lookup(top, b"dos")
        assert (await b.getattr(two)).nlink == 0  # removed (its object is kept a while)

    run(tmp_path, body, fs_options=OPTIONS)


def test_renames_that_cannot_wait_go_at_once(tmp_path: Path) -> None:
    """A rename over an existing name, of a directory, or out of the directory goes to
    the servers at once, after the renames held back there."""

    async def body(env: Env) -> None:
        a, b = env.fss
        top = (await a.mkdir(ROOT, b"top", 0o755, 0, 0)).ino
        await sent_file(a, top, b"f", b"f")
        await sent_file(a, top, b"g", b"g")
        other = (await b.mkdir(ROOT, b"other", 0o755, 0, 0)).ino
        renames = a.meta.methods["fs.rename"]
        await a.rename(top, b"f", top, b"h", 0)  # waits
        assert a.meta.methods["fs.rename"] == renames
        await a.rename(top, b"g", top, b"h", 0)  # over h: the first goes, then this one
        assert a.meta.methods["fs.rename"] == renames + 2
        await a.rename(top, b"h", other, b"moved", 0)  # out of the directory
        assert a.meta.methods["fs.rename"] == renames + 3
        assert await read_all(b, other, b"moved") == b"g"
        assert {n for n, _ in await b.readdir(top)} == set()

    run(tmp_path, body, fs_options=OPTIONS)
