"""Tier 3: what ``fsync`` and ``close`` promise when the cluster cannot be reached (issue 60,
items 3 and 13), on the in-process cluster (real node services, TCP, LMDB, keys).

- A directory ``fsync`` that answers 0 means the directory's held-back entries are on a
  quorum; cut off from every node it answers EIO.
- An answer of EIO means not applied: what the call held back is dropped and never sent
  again by this mount (docs/fs.md, "What EIO means").  A program that retries after EIO
  then writes its bytes once.

Every node is stopped for the outage (nothing reaches any node, so nothing can be
completed by the cluster's repair later either), then restarted on its own store."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
import trio
from fs_helpers import Env, run
from t3_fs_writeback import OPTIONS, exclusive, new_file

from bftfs.fs.errors import NotFound, StaleView, Unavailable
from bftfs.fs.filesystem import FileSystem
from bftfs.fsobjects import ROOT
from bftfs.outcome import patience

#: Write-behind without directory write-back (each close sends its create).
WB = {"fs_options": {"write_behind": True}}
#: Seconds a call waits for the stopped cluster before it answers EIO (a mount's ``timeo``).
TIMEO = 0.5
#: What a send the stopped cluster did not answer logs, and what an EIO answer drops.
DROPPED = pytest.mark.expected_logs(
    "bftfs.fs", "WARNING", match=r".*(not sent yet|dropped|write-back of|the directory is lost)"
)


def stop_all(env: Env) -> None:
    for i in range(env.cluster.config.n):
        env.cluster.crash(i)


async def restart_all(env: Env) -> None:
    for i in range(env.cluster.config.n):
        await env.cluster.recover(i)


async def names_in(fs: FileSystem, d: int) -> set[bytes]:
    return {n for n, _ in await fs.readdir(d)}


async def content_of(fs: FileSystem, d: int, name: bytes) -> bytes:
    fh = await fs.open((await fs.lookup(d, name)).ino, os.O_RDONLY)
    try:
        return await fs.read(fh, 0, 1 << 20)
    finally:
        await fs.release(fh)


@DROPPED
def test_a_directory_fsync_cut_off_from_every_node_answers_eio(tmp_path: Path) -> None:
    """Issue 60, item 3: a mount holding its directory with three creates held back, cut
    off from every node: the directory's ``fsync`` returned 0 after every send failed, and
    another mount never saw those files.  It must answer EIO; the files it did not make
    durable are dropped (EIO: not applied), so once the nodes are back neither mount sees
    them, while the file an earlier ``fsync`` made durable is there on both."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        await new_file(a, d, b"synced", b"durable")
        await a.sync_directory(d)  # all up: 0, and the entry is on a quorum
        assert a.meta.leases is not None
        deferred = a.meta.leases.stats["deferred"]
        for k in range(3):
            await new_file(a, d, b"held%d" % k, b"data %d" % k)
        assert a.meta.leases.stats["deferred"] == deferred + 3, "the closes were not held back"
        stop_all(env)
        with patience(TIMEO, trio.current_time()), pytest.raises(Unavailable):
            await a.sync_directory(d)
        await restart_all(env)
        await a.write_back()  # (an unmount's: nothing dropped is sent again)
        assert await names_in(b, d) == {b"warm0", b"warm1", b"warm2", b"synced"}
        assert await names_in(a, d) == {b"warm0", b"warm1", b"warm2", b"synced"}
        for k in range(3):
            with pytest.raises(NotFound):
                await b.lookup(d, b"held%d" % k)
        assert await content_of(b, d, b"synced") == b"durable"

    run(tmp_path, body, fs_options=OPTIONS)


@DROPPED
def test_a_directory_fsync_answered_eio_drops_its_mkdirs_renames_and_removals(
    tmp_path: Path,
) -> None:
    """Item 3 for every kind of held-back entry: in a directory held exclusively, a mkdir,
    a rename and a removal wait in write-back; cut off from every node, the directory's
    ``fsync`` answers EIO and drops them, so once the nodes are back both mounts see the
    directory as the servers held it before (it answered 0 and they were sent later, or
    never)."""

    async def body(env: Env) -> None:
        a, b = env.fss
        leases = a.meta.leases
        assert leases is not None
        top = (await a.mkdir(ROOT, b"top", 0o755, 0, 0)).ino  # leased with its mkdir
        for name in (b"one", b"two"):
            await new_file(a, top, name, b"data of " + name)
        await a.sync_directory(top)
        stats = Counter(leases.stats)
        await a.mkdir(top, b"sub", 0o755, 0, 0)
        await a.rename(top, b"one", top, b"uno", 0)
        await a.unlink(top, b"two")
        assert leases.stats["mkdirs_deferred"] == stats["mkdirs_deferred"] + 1
        assert leases.stats["renames_deferred"] == stats["renames_deferred"] + 1
        assert leases.stats["unlinks_deferred"] == stats["unlinks_deferred"] + 1
        assert await names_in(a, top) == {b"uno", b"sub"}
        stop_all(env)
        with patience(TIMEO, trio.current_time()), pytest.raises(Unavailable):
            await a.sync_directory(top)
        await restart_all(env)
        await a.write_back()
        for fs in (b, a):
            assert await names_in(fs, top) == {b"one", b"two"}
            assert await content_of(fs, top, b"one") == b"data of one"
            assert await content_of(fs, top, b"two") == b"data of two"

    run(tmp_path, body, fs_options=OPTIONS)


def test_a_hard_mount_keeps_what_a_failed_fsync_held_back(tmp_path: Path) -> None:
    """A ``hard`` mount answers no EIO for want of the cluster: the FUSE layer tries the
    call again.  So the file system keeps what the failed call held back, and the retry
    once the nodes are back stores it (a soft mount's drop would have made that retry
    answer 0 for bytes it had dropped)."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        fh, _ = await a.create(d, b"kept", 0o644, 0, 0, os.O_WRONLY | os.O_CREAT)
        await a.write(fh, 0, b"kept data")
        stop_all(env)
        with patience(TIMEO, trio.current_time()), pytest.raises(Unavailable):
            await a.fsync(fh)
        await restart_all(env)
        await a.fsync(fh)  # the hard mount's retry
        await a.release(fh)
        assert await content_of(b, d, b"kept") == b"kept data"

    run(tmp_path, body, fs_options={"write_behind": True, "hard": True})


@DROPPED
def test_a_directory_fsync_waits_for_creates_that_failed_in_the_background(
    tmp_path: Path,
) -> None:
    """A held-back create whose background send failed (no answer) is pending still; the
    directory's ``fsync`` once the nodes are back sends it and answers 0, and the other
    mount sees it: nothing was answered EIO, so nothing was dropped."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        await new_file(a, d, b"late", b"late data")
        stop_all(env)
        with patience(TIMEO, trio.current_time()):
            await a.write_back()  # an unmount's send: fails, logged, kept
        assert a.outbox.creates.creates.pending_in(d), "the failed create was not kept"
        await restart_all(env)
        await a.sync_directory(d)
        assert not a.outbox.creates.creates.pending_in(d)
        assert await content_of(b, d, b"late") == b"late data"

    run(tmp_path, body, fs_options=OPTIONS)


@DROPPED
def test_a_close_answered_eio_drops_the_new_file(tmp_path: Path) -> None:
    """Issue 60, item 13: ``echo data > new`` during an outage beyond ``t``: the close
    answered EIO, and when the nodes came back the file appeared with the bytes.  EIO
    means not applied: the pending create is dropped, no later call or sync sends it,
    no mount sees the name, and the kernel's inode answers ESTALE (it looks the name up
    again and can create it anew)."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        fh, f = await a.create(d, b"new", 0o644, 0, 0, os.O_WRONLY | os.O_CREAT)
        await a.write(fh, 0, b"data")
        stop_all(env)
        with patience(TIMEO, trio.current_time()), pytest.raises(Unavailable):
            await a.release(fh)
        await restart_all(env)
        await a.write_back()
        assert await names_in(a, d) == set()  # a call on the directory sends nothing
        for fs in (a, b):
            with pytest.raises(NotFound):
                await fs.lookup(d, b"new")
        with pytest.raises(StaleView):
            await a.open(f.ino, os.O_WRONLY | os.O_TRUNC, reached_by_name=True)
        # The program's retry makes the file once.
        fh, _ = await a.create(d, b"new", 0o644, 0, 0, os.O_WRONLY | os.O_CREAT)
        await a.write(fh, 0, b"data")
        await a.release(fh)
        assert await content_of(b, d, b"new") == b"data"

    run(tmp_path, body, **WB)


@DROPPED
@pytest.mark.parametrize("call", ["close", "fsync"])
def test_an_append_answered_eio_is_not_applied_and_a_retry_appends_once(
    tmp_path: Path, call: str
) -> None:
    """Issue 60, item 13: an append whose ``close`` (or ``fsync``) answered EIO during an
    outage beyond ``t`` took effect once the nodes were back (the next open flushed the
    writes the mount had kept), so a program that retries after EIO appended twice.  The
    bytes must not appear, and the retry appends them once."""

    async def body(env: Env) -> None:
        a, b = env.fss
        fh, f = await a.create(ROOT, b"log", 0o644, 0, 0, os.O_WRONLY | os.O_CREAT)
        await a.write(fh, 0, b"one\n")
        await a.release(fh)
        fh = await a.open(f.ino, os.O_WRONLY | os.O_APPEND)
        await a.write(fh, 4, b"two\n")
        stop_all(env)
        with patience(TIMEO, trio.current_time()), pytest.raises(Unavailable):
            if call == "fsync":
                await a.fsync(fh)
            else:
                await a.release(fh)
        await restart_all(env)
        if call == "fsync":
            await a.release(fh)  # nothing left to send: the fsync's EIO dropped it
        for fs in (a, b):
            assert await content_of(fs, ROOT, b"log") == b"one\n"
        fh = await a.open(f.ino, os.O_WRONLY | os.O_APPEND)  # the program's retry
        await a.write(fh, 4, b"two\n")
        await a.release(fh)
        for fs in (a, b):
            assert await content_of(fs, ROOT, b"log") == b"one\ntwo\n"

    run(tmp_path, body, **WB)


@DROPPED
def test_the_other_descriptors_of_a_file_are_told_of_dropped_writes_once(tmp_path: Path) -> None:
    """Two descriptors write one file; an ``fsync`` through the first answers EIO in an
    outage and drops the buffered writes of the file, the second's too (one buffer).  The
    second's ``fsync`` answered 0 - for bytes that were dropped.  It answers EIO once
    (Linux tells every descriptor open at the error), then 0, and nothing dropped
    appears once the nodes are back."""

    async def body(env: Env) -> None:
        a, b = env.fss
        fh, f = await a.create(ROOT, b"two", 0o644, 0, 0, os.O_WRONLY | os.O_CREAT)
        await a.write(fh, 0, b"base")
        await a.fsync(fh)
        other = await a.open(f.ino, os.O_WRONLY)
        await a.write(other, 4, b"-other")
        await a.write(fh, 10, b"-first")
        stop_all(env)
        with patience(TIMEO, trio.current_time()), pytest.raises(Unavailable):
            await a.fsync(fh)
        await restart_all(env)
        with pytest.raises(Unavailable):
            await a.fsync(other)  # told once
        await a.fsync(other)
        await a.release(other)
        await a.release(fh)
        for fs in (a, b):
            assert await content_of(fs, ROOT, b"two") == b"base"

    run(tmp_path, body, **WB)


def test_a_background_flush_error_is_not_answered_once_the_retry_stored_it(
    tmp_path: Path,
) -> None:
    """A background flush that failed for want of the cluster keeps its bytes buffered;
    when the next ``fsync`` sends them, they are on a quorum, and the ``fsync`` answers 0
    (it answered EIO: an error for bytes that were nevertheless stored)."""

    async def body(env: Env) -> None:
        a, b = env.fss
        fh, _ = await a.create(ROOT, b"big", 0o644, 0, 0, os.O_WRONLY | os.O_CREAT)
        await a.write(fh, 0, b"x")
        await a.fsync(fh)
        await a.write(fh, 1, b"y")
        h, _ = a.handles.table.handle(fh)
        h.behind_error = Unavailable("a background flush found no quorum")
        await a.fsync(fh)  # sent now: stored, so 0
        await a.release(fh)
        assert await content_of(b, ROOT, b"big") == b"xy"

    run(tmp_path, body, **WB)
