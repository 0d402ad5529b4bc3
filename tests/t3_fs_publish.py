"""Tier 3: a reader beside a writer's write-back, on real node processes (issue 64;
``fsobjects/publish.py``, ``fs/leases/publish.py``, ``fs/clients/reading.py``).

Another client's look into a directory a mount holds exclusively asks the holder to
publish: the holder sends what it held back and keeps its lease and its write-back, so a
reader beside a writer no longer ends the writer's fast path.  The reader sees everything
the writer closed before it looked (close-to-open), at every look.  A holder that does not
publish is recalled after ``PUBLISH_WAIT``, as before."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from fs_helpers import Env, busy_writer, run
from t3_fs_writeback import exclusive, new_file

from bftfs.fs.filesystem import FileSystem
from bftfs.fs.leases import Leases, publish
from bftfs.fs.writeback import creates_sending
from bftfs.fsobjects import ROOT

OPTIONS = {"lease_term": 30.0, "write_behind": True, "commit": 60.0, "publish": True}


async def held_directory(env: Env) -> tuple[FileSystem, FileSystem, Leases, int]:
    """The writer, the reader, the writer's leases, and a directory ``d`` the writer holds
    exclusively."""
    a, b = env.fss
    leases = a.meta.leases
    assert leases is not None
    d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
    await exclusive(a, d)
    return a, b, leases, d


def test_a_reader_sees_every_closed_file_at_each_look_and_the_writer_keeps_its_lease(
    tmp_path: Path,
) -> None:
    """Three rounds of: the writer makes files under its exclusive lease, sending nothing;
    the reader lists the directory and reads the newest file.  Each look shows everything
    made before it; the writer's closes still send nothing between looks, it never gives
    the directory's lease up, and the reader never recalls (the writer ``busy_writer``:
    a loaded machine's pauses must not make it look idle)."""

    async def body(env: Env) -> None:
        a, b, leases, d = await held_directory(env)
        made: set[bytes] = {b"warm0", b"warm1", b"warm2"}
        for look in range(3):
            before = Counter(a.meta.methods)
            for k in range(4):
                name = b"f%d.%d" % (look, k)
                await new_file(a, d, name, b"look %d file %d" % (look, k))
                made.add(name)
            sent = Counter(a.meta.methods) - before
            assert not sent, f"a close waited for the servers: {sent}"
            assert {n for n, _ in await b.readdir(d)} == made
            ino = (await b.lookup(d, b"f%d.3" % look)).ino
            fh = await b.open(ino, os.O_RDONLY)
            assert await b.read(fh, 0, 100) == b"look %d file 3" % look
            await b.release(fh)
            assert leases.exclusive_left(d) > 0
        assert b.meta.methods["fs.recall"] == 0
        assert leases.stats["published"] >= 3 and b.meta.methods["fs.pubreq"] >= 3

    with busy_writer():
        run(tmp_path, body, fs_options=OPTIONS)


def test_a_reader_walking_a_tree_the_writer_works_in_leaves_it_all_to_the_writer(
    tmp_path: Path,
) -> None:
    """The writer makes a tree under one exclusive lease (a directory, files, a
    subdirectory with files) and works on there (``busy_writer``); the reader walks it,
    looking every entry up, listing the subdirectory and reading a file.  Each look asks a
    publication (batched with those asked meanwhile), none recalls, and the writer keeps
    every lease: the directories, and the files made there.  Before, what was made under a
    published directory was given up at its publication, and a reader listing it every
    second leased the files one by one, each recalled at the writer's next use of it."""

    async def body(env: Env) -> None:
        a, b = env.fss
        leases = a.meta.leases
        assert leases is not None
        top = (await a.mkdir(ROOT, b"top", 0o755, 0, 0)).ino
        sub = (await a.mkdir(top, b"sub", 0o755, 0, 0)).ino
        files = [await new_file(a, top, b"t%d" % k, b"top %d" % k) for k in range(6)]
        files += [await new_file(a, sub, b"s%d" % k, b"sub %d" % k) for k in range(6)]
        assert {n for n, _ in await b.readdir(top)} == {b"sub"} | {b"t%d" % k for k in range(6)}
        for k in range(6):
            got = await b.lookup(top, b"t%d" % k)
            assert got.size == 5
        assert (await b.lookup(top, b"sub")).ino == sub
        assert {n for n, _ in await b.readdir(sub)} == {b"s%d" % k for k in range(6)}
        ino = (await b.lookup(sub, b"s4")).ino
        fh = await b.open(ino, os.O_RDONLY)
        assert await b.read(fh, 0, 100) == b"sub 4"
        await b.release(fh)
        assert leases.stats["publications"] >= 2 and b.meta.methods["fs.recall"] == 0
        assert leases.stats["given_up_published"] == 0
        assert all(leases.exclusive_left(o) > 0 for o in [top, sub, *files])

    with busy_writer():
        run(tmp_path, body, fs_options=OPTIONS)


def test_a_holder_that_does_not_publish_is_recalled(tmp_path: Path) -> None:
    """The holder drops every request to publish (as an older mount, or a Byzantine one,
    would): the reader waits ``PUBLISH_WAIT`` (5 s), recalls
    the lease as before, and sees the files; the holder sent them at the recall and gave
    the lease up."""

    async def body(env: Env) -> None:
        a, b, leases, d = await held_directory(env)
        leases.recalls.on_publish = None  # deaf to the nodes' requests
        for k in range(3):
            await new_file(a, d, b"late%d" % k, b"x")
        names = {n for n, _ in await b.readdir(d)}
        assert {b"late0", b"late1", b"late2"} <= names
        assert b.meta.methods["fs.pubreq"] >= 1 and b.meta.methods["fs.recall"] >= 1
        assert leases.exclusive_left(d) == 0 and leases.stats["published"] == 0

    run(tmp_path, body, fs_options=OPTIONS)


def test_a_holder_no_longer_working_there_hands_the_directory_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer made files and went on elsewhere (here: ``IDLE`` is 0, so no use is recent
    enough): the reader's look asks a publication, and the writer, rather than keep a
    directory it no longer works in, sends what it held back and releases the lease, as at
    a recall.  The reader sees every file without recalling, and its next looks find no
    exclusive lease to ask about.  Before: the writer kept it, so every look of a reader
    beside an idle writer cost a publication, and the reader could never lease there."""
    monkeypatch.setattr(publish, "IDLE", 0.0)

    async def body(env: Env) -> None:
        a, b, leases, d = await held_directory(env)
        for k in range(3):
            await new_file(a, d, b"left%d" % k, b"x")
        assert {b"left0", b"left1", b"left2"} <= {n for n, _ in await b.readdir(d)}
        assert leases.stats["handed_over"] >= 1 and leases.exclusive_left(d) == 0
        asked = b.meta.methods["fs.pubreq"]
        assert asked >= 1 and b.meta.methods["fs.recall"] == 0
        for k in range(3):
            assert (await b.lookup(d, b"left%d" % k)).size == 1
        assert b.meta.methods["fs.pubreq"] == asked  # nothing held there any more

    run(tmp_path, body, fs_options=OPTIONS)


def test_a_writer_removing_files_a_reader_has_seen_keeps_their_exclusive_leases(
    tmp_path: Path,
) -> None:
    """A reader listed the directory (published: its files may have been seen) and the
    writer removes files there: a removal of such a file waits only on the file's own
    exclusive lease, so the sweep does not turn those leases into session-bound shared
    ones (turned, each removal until they were asked back went at once, through the gate
    that first sends everything the directory holds back).  Before any removal there,
    a file's lease is turned as before."""

    async def body(env: Env) -> None:
        a, b, leases, d = await held_directory(env)
        seen = [await new_file(a, d, b"s%d" % k, b"seen") for k in range(4)]
        listed = {n for n, _ in await b.readdir(d)}  # published
        assert {b"s%d" % k for k in range(4)} <= listed
        assert all(leases.exclusive_left(o) > 0 for o in seen)
        assert leases.to_session(seen[3:]) == 1  # no removal there yet: turned
        await a.unlink(d, b"s0")
        assert leases.to_session(seen[1:3]) == 0
        assert all(leases.exclusive_left(o) > 0 for o in seen[1:3])

    run(tmp_path, body, fs_options=OPTIONS)


def test_files_the_writer_left_reach_a_readers_look_without_its_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer works on in its directory (``busy_writer``: it keeps the directory at a
    reader's look) but left the files it made there (here ``CLOSED_IDLE`` is 0: every
    closed one counts as left).  The reader's first listing asks the directory's
    publication, whose creates make those files without the writer's lease: the
    listing's attributes and the reader's later looks at them meet no lease (no
    publication of the files, no release of them), and the writer's own later write to
    one is seen by the reader.  A file still open at the look is made with the lease, and
    so is one left before the reader's next look (within ``FIRST_LOOK``, here an hour).
    Before: each file came leased, and each of the reader's looks at it asked a
    publication (1 000 files made on one mount and listed on another, the first still
    working there: 5 500 requests to publish, ``ls`` 5 s, ``ls -l`` 14 s)."""
    monkeypatch.setattr(publish, "FIRST_LOOK", 3600.0)

    async def body(env: Env) -> None:
        a, b, leases, d = await held_directory(env)
        left = [await new_file(a, d, b"left%d" % k, b"left") for k in range(6)]
        open_fh, open_attr = await a.create(d, b"open", 0o644, 0, 0, os.O_WRONLY)
        await a.write(open_fh, 0, b"still open")
        monkeypatch.setattr(creates_sending, "CLOSED_IDLE", 0.0)
        released = a.meta.methods["fs.release"]
        names = {n for n, _ in await b.readdir(d)}
        assert {b"left%d" % k for k in range(6)} | {b"open"} <= names
        assert leases.exclusive_left(d) > 0  # the writer keeps its directory
        assert leases.stats["creates_handed_over"] == 6
        assert all(leases.exclusive_left(o) == 0 for o in left)
        assert leases.exclusive_left(open_attr.ino) > 0
        asked = b.meta.methods["fs.pubreq"]
        for ino in left:  # (a lookup in the directory still asks for its publication)
            assert (await b.getattr(ino)).size == 4
        assert b.meta.methods["fs.pubreq"] == asked
        assert a.meta.methods["fs.release"] == released
        fh = await a.open(left[2], os.O_WRONLY)
        await a.write(fh, 0, b"LEFT, then changed")
        await a.flush(fh)
        await a.release(fh)
        fh = await b.open(left[2], os.O_RDONLY)
        assert await b.read(fh, 0, 100) == b"LEFT, then changed"
        await b.release(fh)
        await a.flush(open_fh)
        await a.release(open_fh)
        # The reader's next look, within ``FIRST_LOOK``: what the writer left since keeps
        # its lease (a reader looking every second must not have them recalled).
        later = await new_file(a, d, b"later", b"later")
        assert b"later" in {n for n, _ in await b.readdir(d)}
        assert leases.stats["creates_handed_over"] == 6
        assert leases.exclusive_left(later) > 0

    with busy_writer():
        run(tmp_path, body, fs_options=OPTIONS)
