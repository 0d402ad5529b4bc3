"""Tier 3: files leased with their create (issue 33, ``fs/writeback/held.py``) on the in-process
cluster (real node services, TCP, LMDB, keys).

A file that directory write-back made under the directory's exclusive lease comes leased
to the mount exclusively: its reopens, ``stat`` and written closes need no round, and what
the closes left goes at ``fsync``, within ``commit`` seconds, or when another client's look
recalls the lease; another client then reads every byte.  Every wait for a background step
is a condition polled under a deadline (:func:`until`)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from fs_helpers import Env, busy_writer, run
from t3_fs_leases import until
from t3_fs_writeback import exclusive, new_file

from bftfs.fs.errors import NotFound
from bftfs.fs.filesystem import FileSystem
from bftfs.fs.writeback import MAX_FILE
from bftfs.fsobjects import ROOT

OPTIONS = {"lease_term": 30.0, "write_behind": True, "commit": 60.0}


def rounds(fs: FileSystem) -> Counter[str]:
    """Q/U calls sent to the servers so far, by method (answers from leases left out)."""
    return Counter({m: k for m, k in fs.meta.methods.items() if not m.startswith("leased ")})


async def held_file(fs: FileSystem, directory: int, name: bytes, data: bytes) -> int:
    """A file made by write-back under ``fs``'s exclusive lease on ``directory``: leased to
    ``fs`` with its create."""
    ino = await new_file(fs, directory, name, data)
    await fs.write_back()
    leases = fs.meta.leases
    assert leases is not None and leases.exclusive_left(ino) > 0, "the file came unleased"
    return ino


async def append(fs: FileSystem, ino: int, data: bytes, *, fsync: bool = False) -> None:
    fh = await fs.open(ino, os.O_WRONLY | os.O_APPEND)
    await fs.write(fh, 0, data)
    if fsync:
        await fs.fsync(fh)
    await fs.flush(fh)
    await fs.release(fh)


async def read_all(fs: FileSystem, ino: int) -> bytes:
    fh = await fs.open(ino, os.O_RDONLY)
    try:
        return await fs.read(fh, 0, 1 << 20)
    finally:
        await fs.release(fh)


def test_a_held_file_is_reopened_appended_and_read_without_a_round_then_seen_elsewhere(
    tmp_path: Path,
) -> None:
    """Appends, reads and ``stat`` of a file the mount holds cost no round; another
    client's look asks the holder to publish (``fs/leases/publish.py``): the holder sends
    the appends and keeps the directory's lease and the file's (the reader's open of the
    file asks a publication of it), and the other client reads every byte, and the
    holder's next append too."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        ino = await held_file(a, d, b"log", b"first\n")
        before = rounds(a)
        for k in range(3):
            await append(a, ino, b"line %d\n" % k)
        assert await read_all(a, ino) == b"first\nline 0\nline 1\nline 2\n"
        assert (await a.getattr(ino)).size == 27
        assert rounds(a) == before, f"rounds: {rounds(a) - before}"
        ino_b = (await b.lookup(d, b"log")).ino
        assert await read_all(b, ino_b) == b"first\nline 0\nline 1\nline 2\n"
        assert (await b.getattr(ino_b)).size == 27
        leases = a.meta.leases
        assert leases is not None
        assert leases.exclusive_left(d) > 0 and leases.exclusive_left(ino) > 0
        assert leases.stats["published"] >= 2 and b.meta.methods["fs.recall"] == 0
        await append(a, ino, b"after\n")
        assert await read_all(b, ino_b) == b"first\nline 0\nline 1\nline 2\nafter\n"
        assert b.meta.methods["fs.recall"] == 0

    with busy_writer():
        run(tmp_path, body, fs_options=OPTIONS)


def test_a_held_file_whose_writes_went_back_is_still_reopened_without_a_round(
    tmp_path: Path,
) -> None:
    """A held file closed with writes is not kept at that close (its writes are due);
    once they went back it is kept as a file closed clean is, so its next open, read and
    ``stat`` cost no round (it was forgotten there, and each later use of a file
    PostMark appended to cost an ``fs.open``)."""

    async def body(env: Env) -> None:
        (a, _) = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        inos = [await held_file(a, d, b"f%d" % k, b"start\n") for k in range(3)]
        for ino in inos:
            await append(a, ino, b"more\n")
        await a.write_back()  # the appends go; the files stay held
        held = a.handles.held
        assert held is not None and not held.holds_back()
        before = rounds(a)
        for ino in inos:
            assert await read_all(a, ino) == b"start\nmore\n"
            assert (await a.getattr(ino)).size == 11
        assert rounds(a) == before, f"rounds: {rounds(a) - before}"

    run(tmp_path, body, fs_options=OPTIONS)


def test_fsync_sends_a_held_files_writes_and_a_later_change_elsewhere_is_seen(
    tmp_path: Path,
) -> None:
    """``fsync`` returns only once the writes are on the servers (one ``fs.write``); after
    another client changed the file (recalling the lease), the former holder's open asks
    the servers and sees the change: close-to-open holds both ways."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        ino = await held_file(a, d, b"db", b"v1")
        writes = a.meta.methods["fs.write"]
        await append(a, ino, b"+fsynced", fsync=True)
        assert a.meta.methods["fs.write"] == writes + 1
        ino_b = (await b.lookup(d, b"db")).ino
        await append(b, ino_b, b"+b")
        leases = a.meta.leases
        assert leases is not None
        await until("the recall", lambda: leases.exclusive_left(ino) == 0)
        assert await read_all(a, ino) == b"v1+fsynced+b"

    run(tmp_path, body, fs_options=OPTIONS)


def test_a_held_file_removed_before_its_writes_went_drops_them(tmp_path: Path) -> None:
    """Removing the only name of a held, closed file whose appends wait drops them with
    it (no ``fs.write`` ever goes): a local file system's dirty pages of a deleted file.
    The name is gone for another client too."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        ino = await held_file(a, d, b"tmp", b"scratch")
        writes = a.meta.methods["fs.write"]
        await append(a, ino, b" more")
        await a.unlink(d, b"tmp")
        leases = a.meta.leases
        assert leases is not None and leases.stats["held_discarded"] == 1
        try:
            await b.lookup(d, b"tmp")
        except NotFound:
            pass
        else:
            raise AssertionError("the removed name is still there")
        assert a.meta.methods["fs.write"] == writes

    run(tmp_path, body, fs_options=OPTIONS)


def test_held_files_writes_go_back_together(tmp_path: Path) -> None:
    """The appends left by closes of several small held files go in ``fs.writemany``
    updates, not one ``fs.write`` each (at a directory's ``fsync`` here; the sweep when
    they come due does the same), and another client reads every file whole.  A held file
    past the inline limit still goes alone, with its blocks."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        inos = [await held_file(a, d, b"f%d" % k, b"<%d>" % k) for k in range(10)]
        big = await held_file(a, d, b"big", b"B")
        before = rounds(a)
        for k, ino in enumerate(inos):
            await append(a, ino, b"+%d" % k)
        await append(a, big, b"x" * 20000)
        await a.write_back()
        sent = rounds(a) - before
        assert sent["fs.writemany"] >= -(-10 // a.meta.config.max_objects), sent
        assert sent["fs.write"] <= 1, sent  # the big file's size update only
        for k in range(10):
            ino_b = (await b.lookup(d, b"f%d" % k)).ino
            assert await read_all(b, ino_b) == b"<%d>+%d" % (k, k)
        assert await read_all(b, (await b.lookup(d, b"big")).ino) == b"B" + b"x" * 20000

    run(tmp_path, body, clients=2, fs_options=OPTIONS)


def test_a_file_whose_lease_ended_with_writes_due_opens_and_sends_them(tmp_path: Path) -> None:
    """A held file's lease may end (not renewed, its directory's term over) while the
    writes its close left are still due: the next open is no longer answered by the mount
    and flushes them first, and that flush's own update passes the gate.  Before, the gate
    sent the same file again from inside its flush and the open failed with EIO (PostMark
    1 000 / 4 000, a few opens per run)."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        ino = await held_file(a, d, b"f", b"one")
        await append(a, ino, b"+two")
        leases = a.meta.leases
        assert leases is not None
        leases.held[ino].until = 0.0  # its term over, as PostMark's files' after a minute
        assert await read_all(a, ino) == b"one+two"
        assert (await a.meta.query_now(ino, "fs.stat", None))["size"] == 7  # on the servers
        # The servers' record of the lease still runs (only this mount's view was ended):
        # given back, so that the check after the test may read the file.
        await a.meta.update([ino], "fs.release", {"lt": leases.holdings.wall_ns()})

    run(tmp_path, body, fs_options=OPTIONS)


def test_a_file_another_client_made_is_leased_after_a_few_written_closes(
    tmp_path: Path,
) -> None:
    """A file this mount did not make, appended to and closed again and again (a log): the
    first closes send their writes at once and ask for an exclusive lease on the file
    alone; once it is granted, the opens, appends and closes cost no round.  Another
    client's open then recalls it and reads every byte, and what the holder knew before
    the grant never answers an open (its state is read again under the lease)."""

    async def body(env: Env) -> None:
        a, b = env.fss
        fh, attr = await b.create(ROOT, b"log", 0o644, 0, 0, os.O_WRONLY)
        await b.write(fh, 0, b"from b\n")
        await b.fsync(fh)
        await b.release(fh)
        ino = (await a.lookup(ROOT, b"log")).ino
        leases = a.meta.leases
        assert leases is not None
        expected = b"from b\n"
        k = 0
        while leases.exclusive_left(ino) <= 0:
            assert k < 50, "no exclusive lease after 50 closes"
            await append(a, ino, b"a %d\n" % k)
            expected += b"a %d\n" % k
            k += 1
        await append(a, ino, b"after the grant\n")  # reads the file again, under the lease
        expected += b"after the grant\n"
        before = rounds(a)
        for j in range(5):
            await append(a, ino, b"held %d\n" % j)
            expected += b"held %d\n" % j
        assert await read_all(a, ino) == expected
        assert rounds(a) == before, f"rounds: {rounds(a) - before}"
        assert await read_all(b, attr.ino) == expected  # published: written back first
        assert leases.stats["published"] >= 1

    with busy_writer():
        run(tmp_path, body, fs_options=OPTIONS)


def test_a_file_past_max_file_is_not_leased_for_its_written_closes(tmp_path: Path) -> None:
    """A file larger than write-back keeps (``writeback.MAX_FILE``), appended to and closed
    again and again: its closes send their writes at once, as the mount would even holding
    it, so no exclusive lease is asked for (one would only cost a round and hold other
    clients' looks off until recalled)."""

    async def body(env: Env) -> None:
        a, b = env.fss
        fh, _ = await b.create(ROOT, b"big", 0o644, 0, 0, os.O_WRONLY)
        await b.write(fh, 0, bytes(MAX_FILE + 1))
        await b.fsync(fh)
        await b.release(fh)
        ino = (await a.lookup(ROOT, b"big")).ino
        leases = a.meta.leases
        assert leases is not None
        asked = rounds(a)["fs.lease"]
        for k in range(6):
            await append(a, ino, b"a %d\n" % k)
        assert rounds(a)["fs.lease"] == asked
        assert leases.exclusive_left(ino) == 0

    run(tmp_path, body, fs_options=OPTIONS)


@pytest.mark.slow
def test_more_held_files_than_a_thousand_reopen_without_a_round(tmp_path: Path) -> None:
    """A mount keeps the state of every closed file it holds, well past a thousand: kept
    at most 1 024, a PostMark of 2 000 files forgot half of them between two uses and
    reopened each with an ``fs.open`` round (issue 62: 22 835 in 100 000 transactions)."""

    async def body(env: Env) -> None:
        (a,) = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        inos = [await new_file(a, d, b"f%d" % k, b"%d" % k) for k in range(1100)]
        await a.write_back()
        before = rounds(a)
        for ino in inos:
            await a.release(await a.open(ino, os.O_RDONLY))
        assert rounds(a) == before, f"rounds: {rounds(a) - before}"

    run(tmp_path, body, clients=1, fs_options=OPTIONS)


def test_an_unseen_files_appends_wait_on_its_directory_where_files_are_removed(
    tmp_path: Path,
) -> None:
    """In a directory this mount removes files from, the appends of a file no other
    client can have seen are held back under the directory's lease even while the file
    still holds its own (``HeldFiles.defer``): held back under its own, the file counted
    as written and the sweep renewed its lease, term after term.  Another client still
    reads every byte (its look at the directory sends them first)."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        ino = await held_file(a, d, b"log", b"first\n")
        await held_file(a, d, b"tmp", b"scratch")
        await a.unlink(d, b"tmp")  # a removal that waits in write-back
        leases = a.meta.leases
        assert leases is not None and leases.exclusive_left(ino) > 0
        unseen = leases.stats["held_closes_unseen"]
        await append(a, ino, b"second\n")
        assert leases.stats["held_closes_unseen"] == unseen + 1
        ino_b = (await b.lookup(d, b"log")).ino
        assert await read_all(b, ino_b) == b"first\nsecond\n"

    run(tmp_path, body, clients=2, fs_options=OPTIONS)
