"""Tier 3: directory write-back under an exclusive lease (issue 33, ``fs/writeback/``) on
the in-process cluster (real node services, TCP, LMDB, keys).

A mount that keeps creating files in a directory takes an exclusive lease on it; the closes
of its new small files then return without a round, and the creates go within ``commit``
seconds, at ``fsync``, or when another client's query of the directory is refused and
recalls the lease.  Every wait for a background step is a condition polled under a
deadline (:func:`until`)."""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
from fs_helpers import Env, busy_writer, run
from t3_fs_leases import until

from bftfs.fs.errors import Exists, NotEmpty, NotFound, StaleView
from bftfs.fs.filesystem import FileSystem
from bftfs.fs.leases import Leases
from bftfs.fs.scrub import files_with_blocks
from bftfs.fs.writeback import MAX_FILE
from bftfs.fsobjects import ROOT

OPTIONS = {"lease_term": 30.0, "write_behind": True, "commit": 60.0}


def sent(fs: FileSystem) -> int:
    """Creates sent to the servers alone so far (``fs.createmany`` sends several)."""
    return fs.meta.methods["fs.createwrite"] + fs.meta.methods["fs.create"]


async def new_file(fs: FileSystem, parent: int, name: bytes, data: bytes) -> int:
    fh, attr = await fs.create(parent, name, 0o644, 0, 0, os.O_WRONLY)
    await fs.write(fh, 0, data)
    await fs.flush(fh)
    await fs.release(fh)
    return attr.ino


async def exclusive(fs: FileSystem, directory: int) -> None:
    """Creates in ``directory`` until this mount holds an exclusive lease on it, and sends
    them (a directory the mount made holds its first creates back already)."""
    leases = fs.meta.leases
    assert leases is not None
    for k in range(3):
        await new_file(fs, directory, b"warm%d" % k, b"w")
    await until("an exclusive lease", lambda: leases.exclusive_left(directory) > 0)
    await fs.write_back()


@pytest.mark.parametrize("twins", [False, True], ids=["two-clients", "one-client-two-mounts"])
def test_closes_under_an_exclusive_lease_leave_creates_to_write_back(
    tmp_path: Path, twins: bool
) -> None:
    """The closes send nothing; another client's listing asks the holder to publish, the
    holder sends its creates and keeps its lease, and the listing shows every file with
    its contents.  The same for another mount of the same client identity (``twins``;
    before, its listing was not refused and missed the files)."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        assert a.meta.leases is not None
        before, deferred = sent(a), a.meta.leases.stats["deferred"]
        createmany = a.meta.methods["fs.createmany"]
        for k in range(5):
            await new_file(a, d, b"f%d" % k, b"data %d" % k)
        assert sent(a) == before, "a close waited for the servers"
        assert a.meta.leases.stats["deferred"] == deferred + 5
        names = {n for n, _ in await b.readdir(d)}
        assert {b"f%d" % k for k in range(5)} <= names
        # Sent at the publication: together, in one update.
        assert a.meta.methods["fs.createmany"] == createmany + 1 and sent(a) == before
        ino = (await b.lookup(d, b"f3")).ino
        fh = await b.open(ino, os.O_RDONLY)
        assert await b.read(fh, 0, 100) == b"data 3"
        await b.release(fh)
        assert a.meta.leases.exclusive_left(d) > 0  # published, kept
        assert a.meta.leases.stats["published"] >= 1 and b.meta.methods["fs.recall"] == 0

    with busy_writer():
        run(tmp_path, body, twins=twins, fs_options=OPTIONS)


def test_files_past_the_inline_limit_are_written_back_with_their_blocks(tmp_path: Path) -> None:
    """A new file too big to go inline (a source file, an object file) is deferred too: its
    close neither creates it nor writes its blocks; at another client's look the holder
    sends the creates together (each file empty, with its write lease), then the blocks and
    sizes, and the other client reads every byte.  A file past ``writeback.MAX_FILE``
    still closes as before."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        rng = random.Random(12)
        files = {b"src%d" % k: rng.randbytes(20_000 + 3000 * k) for k in range(3)}
        assert a.meta.leases is not None
        before, deferred = (sent(a), a.rw.statistics()["writes"]), a.meta.leases.stats["deferred"]
        for name, data in files.items():
            await new_file(a, d, name, data)
        assert (sent(a), a.rw.statistics()["writes"]) == before, "a close waited"
        assert a.meta.leases.stats["deferred"] == deferred + 3
        await new_file(a, d, b"huge", rng.randbytes(MAX_FILE + 1))
        assert sent(a) == before[0] + 1  # past MAX_FILE: its close sent it
        locks, many = a.meta.methods["fs.lock"], a.meta.methods["fs.createmany"]
        for name, data in files.items():
            ino = (await b.lookup(d, name)).ino
            fh = await b.open(ino, os.O_RDONLY)
            assert await b.read(fh, 0, len(data) + 10) == data
            await b.release(fh)
        # Made together, empty and with their write leases: their blocks needed no lock.
        assert a.meta.methods["fs.createmany"] == many + 1 and sent(a) == before[0] + 1
        assert a.meta.methods["fs.lock"] == locks
        assert a.meta.leases.exclusive_left(d) > 0  # published, kept

    with busy_writer():
        run(tmp_path, body, fs_options=OPTIONS)


def test_a_stat_of_a_file_left_to_write_back_sends_nothing(tmp_path: Path) -> None:
    """Only this mount knows a file whose create it left to write-back: a ``stat`` of it
    (``make`` checking the object file it just wrote) is answered from what the mount
    knows, without sending the create."""

    async def body(env: Env) -> None:
        a = env.fss[0]
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        before = sent(a), a.meta.methods["fs.createmany"], a.meta.methods["fs.stat"]
        inos = [await new_file(a, d, b"o%d" % k, b"x" * (100 + 20_000 * k)) for k in range(2)]
        for k, ino in enumerate(inos):
            got = await a.getattr(ino, reached_by_name=True)
            assert (got.size, got.nlink) == (100 + 20_000 * k, 1)
        assert (sent(a), a.meta.methods["fs.createmany"], a.meta.methods["fs.stat"]) == before

    run(tmp_path, body, fs_options=OPTIONS)


async def leased_listing(fs: FileSystem) -> tuple[int, Leases]:
    """A directory ``d`` that ``fs`` made and holds exclusively, its listing known whole
    under the lease; ``fs``'s leases."""
    d = (await fs.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
    await exclusive(fs, d)
    leases = fs.meta.leases
    assert leases is not None
    await until("the listing", lambda: d in leases.answers.listings)
    return d, leases


def creates_sent(fs: FileSystem) -> int:
    """Create updates sent so far, alone or together."""
    return sent(fs) + fs.meta.methods["fs.createmany"]


def rounds_since(fs: FileSystem, before: Counter[str]) -> Counter[str]:
    """The Q/U calls ``fs`` sent since ``before`` (answers from its leases are no round)."""
    now = +(Counter(fs.meta.methods) - before)
    return Counter({m: n for m, n in now.items() if not m.startswith("leased ")})


def removals(fs: FileSystem) -> int:
    """Removal updates sent so far."""
    return fs.meta.methods["fs.unlink"] + fs.meta.methods["fs.unlinkmany"]


def test_unlinks_under_an_exclusive_lease_are_written_back(tmp_path: Path) -> None:
    """Removals in a directory the mount holds exclusively return at once (the names gone
    from its view); another client's look at the directory recalls the lease, the holder
    sends them first, together, and the other client sees exactly the names left.  A name
    removed and made again is made after its removal."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        for k in range(5):
            await new_file(a, d, b"old%d" % k, b"old %d" % k)
        await a.write_back()  # made (a create not sent yet is sent before its unlink)
        before = removals(a)
        for k in range(4):
            await a.unlink(d, b"old%d" % k)
        assert removals(a) == before, "an unlink waited for the servers"
        assert a.meta.leases is not None and a.meta.leases.stats["unlinks_deferred"] == 4
        for k in range(4):
            with pytest.raises(NotFound):
                await a.lookup(d, b"old%d" % k)
        await new_file(a, d, b"old2", b"again")  # made after its removal
        names = {n for n, _ in await b.readdir(d)}
        assert names == {b"old2", b"old4", b"warm0", b"warm1", b"warm2"}
        # old2's removal went before its new create, the other three with it.
        assert (a.meta.methods["fs.unlink"], a.meta.methods["fs.unlinkmany"]) == (0, 1)
        fh = await b.open((await b.lookup(d, b"old2")).ino, os.O_RDONLY)
        assert await b.read(fh, 0, 100) == b"again"
        await b.release(fh)

    run(tmp_path, body, fs_options=OPTIONS)


def test_a_removal_of_a_file_another_client_may_reach_is_not_left_to_write_back(
    tmp_path: Path,
) -> None:
    """Another client that found a file by its name may reach it again by that name, which
    its kernel caches (the entry timeout), without reading the directory, so without
    recalling the directory's exclusive lease.  A removal of such a file (one this mount
    does not hold exclusively itself) goes to the servers at once: that client's open then
    finds the file has no name and is refused (ESTALE: its kernel walks the path again).
    Before, the removal waited in write-back and the other client opened the removed file
    (the consistency checker, seed 3 of the three-mount runs)."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        ino = await new_file(b, d, b"x", b"made by b")
        assert (await b.lookup(d, b"x")).ino == ino  # b's kernel now caches the name
        assert a.meta.leases is not None
        await a.meta.leases.take_exclusive(d)  # recalls b's shared lease, not b's name
        assert (await a.lookup(d, b"x")).ino == ino  # a's unlink knows what it removes
        held_back = a.meta.leases.stats["unlinks_deferred"]
        before = removals(a)
        await a.unlink(d, b"x")
        assert removals(a) == before + 1, "the removal was held back"
        assert a.meta.leases.stats["unlinks_deferred"] == held_back
        with pytest.raises(StaleView):
            await b.open(ino, os.O_RDONLY, reached_by_name=True)
        # A file this mount made under the lease inherits it: that removal still waits.
        await new_file(a, d, b"y", b"made by a")
        await a.write_back()
        before = removals(a)
        await a.unlink(d, b"y")
        assert removals(a) == before
        assert a.meta.leases.stats["unlinks_deferred"] == held_back + 1

    run(tmp_path, body, fs_options=OPTIONS)


def test_a_removal_of_one_of_a_held_files_names_drops_its_link_count(tmp_path: Path) -> None:
    """A file this mount holds, with a second name in another directory: removing the
    first name is not left to write-back (the kept attributes that answer the file's
    stat would keep the old link count), and the other name's stat says one link."""

    async def body(env: Env) -> None:
        a = env.fss[0]
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        e = (await a.mkdir(ROOT, b"e", 0o755, 0, 0)).ino
        await exclusive(a, d)
        ino = await new_file(a, d, b"f", b"1")
        await a.write_back()
        assert (await a.link(ino, e, b"h")).nlink == 2
        await a.unlink(d, b"f")
        assert (await a.getattr(ino)).nlink == 1
        assert (await a.lookup(e, b"h")).nlink == 1
        with pytest.raises(NotFound):
            await a.lookup(d, b"f")

    run(tmp_path, body, fs_options=OPTIONS)


def test_fsync_and_the_commit_interval_send_what_write_back_holds(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        a = env.fss[0]
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        before = sent(a)
        fh, attr = await a.create(d, b"synced", 0o644, 0, 0, os.O_WRONLY)
        await a.write(fh, 0, b"durable")
        await a.fsync(fh)  # returns once the create and its data are on a quorum
        assert sent(a) == before + 1
        await a.release(fh)
        assert a.outbox.writeback is not None
        a.outbox.writeback.commit = 0.5  # due half a second after its close
        later = await new_file(a, d, b"later", b"x")
        assert sent(a) == before + 1 and a.outbox.writeback.deferred(later)
        wb = a.outbox.writeback
        await until("the commit interval's send", lambda: not a.outbox.creates.not_made(later))
        assert sent(a) == before + 2 and not wb.deferred(later) and not wb.deferred(attr.ino)
        # Made under the lease, the file came leased here: its state stays for a reopen
        # (fs/writeback/held.py) while the lease runs.
        leases = a.meta.leases
        assert leases is not None and leases.exclusive_left(later) > 0
        assert later in a.open_files()

    run(tmp_path, body, fs_options=OPTIONS)


def test_a_query_refused_for_an_exclusive_lease_recalls_it(tmp_path: Path) -> None:
    """The other client's lookup of a name the holder created (and closed) finds it: the
    lookup is refused ``leased`` on every correct node, recalls the lease, and is asked
    again once the holder released (after sending the create)."""

    async def body(env: Env) -> None:
        a, b = env.fss
        b.meta.publish_reads = False  # (a reader that recalls at once: the fallback)
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        ino = await new_file(a, d, b"new", b"hello")
        got = await b.lookup(d, b"new")
        assert got.ino == ino and got.size == 5
        assert b.meta.methods["fs.recall"] >= 1

    run(tmp_path, body, fs_options=OPTIONS)


@pytest.mark.parametrize("commit", [0.0])
def test_commit_zero_keeps_every_close_waiting(tmp_path: Path, commit: float) -> None:
    async def body(env: Env) -> None:
        a = env.fss[0]
        assert a.outbox.writeback is None
        before = sent(a)
        await new_file(a, ROOT, b"f", b"x")
        assert sent(a) == before + 1

    run(tmp_path, body, fs_options={**OPTIONS, "commit": commit})


def test_lookups_of_new_names_in_an_exclusively_leased_directory_need_no_round(
    tmp_path: Path,
) -> None:
    """The holder reads the directory's listing once the exclusive lease is granted and
    keeps it up to date with its own entry updates: a lookup of a name not in it (each
    create's own lookup first) is answered "not found" without a round, while names it
    made, and only those it did not remove, are found."""

    async def body(env: Env) -> None:
        a = env.fss[0]
        d, leases = await leased_listing(a)
        before = a.meta.methods["fs.lookup"] + a.meta.methods["fs.lookupstat"]
        for k in range(10):
            with pytest.raises(NotFound):
                await a.lookup(d, b"n%d" % k)
        assert a.meta.methods["fs.lookup"] + a.meta.methods["fs.lookupstat"] == before
        assert leases.stats["listed_misses"] >= 10
        await new_file(a, d, b"n1", b"one")
        await a.write_back()
        assert (await a.lookup(d, b"n1")).size == 3
        await a.unlink(d, b"warm0")
        with pytest.raises(NotFound):
            await a.lookup(d, b"warm0")
        assert (await a.lookup(d, b"warm1")).size == 1
        sub = (await a.mkdir(d, b"sub", 0o755, 0, 0)).ino
        await new_file(a, sub, b"inside", b"i")
        with pytest.raises(NotEmpty):
            await a.rmdir(d, b"sub")  # refused: the name stays in the listing
        assert (await a.lookup(d, b"sub")).ino == sub
        await a.rename(d, b"warm1", d, b"moved", 0)  # within d: the listing follows it
        assert b"warm1" not in leases.answers.listings[d]
        assert (await a.lookup(d, b"moved")).size == 1
        await a.rename(d, b"moved", ROOT, b"out", 0)  # out of d: the listing goes
        assert d not in leases.answers.listings

    run(tmp_path, body, fs_options=OPTIONS)


def test_a_directory_made_under_an_exclusive_lease_comes_leased_with_its_empty_listing(
    tmp_path: Path,
) -> None:
    """A mkdir in a directory the mount holds exclusively makes the new directory leased
    to it too, its listing known (empty): the lookups of new names in it and their closes
    cost no round (no lease or listing round on the new directory either).  Another
    client's listing of the outer directory recalls it, and the new directory and the
    file leased with it are given up with it: the other client then reads them without
    recalling each."""

    async def body(env: Env) -> None:
        a, b = env.fss
        b.meta.publish_reads = False  # the recall's path (a reader recalls at once)
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        leases = a.meta.leases
        assert leases is not None
        sub = (await a.mkdir(d, b"sub", 0o755, 0, 0)).ino
        assert leases.exclusive_left(sub) > 0 and leases.answers.listings[sub] == {}
        before = Counter(a.meta.methods)
        for k in range(4):
            with pytest.raises(NotFound):
                await a.lookup(sub, b"f%d" % k)
            await new_file(a, sub, b"f%d" % k, b"in sub %d" % k)
        assert not rounds_since(a, before), rounds_since(a, before)
        assert {n for n, _ in await b.readdir(d)} >= {b"sub", b"warm0"}
        assert leases.exclusive_left(sub) == 0  # given up with d
        recalls = b.meta.methods["fs.recall"]
        assert {n for n, _ in await b.readdir(sub)} == {b"f%d" % k for k in range(4)}
        ino = (await b.lookup(sub, b"f2")).ino
        fh = await b.open(ino, os.O_RDONLY)
        assert await b.read(fh, 0, 100) == b"in sub 2"
        await b.release(fh)
        assert b.meta.methods["fs.recall"] == recalls  # nothing left to recall

    run(tmp_path, body, fs_options=OPTIONS)


def test_a_directory_made_where_the_mount_holds_nothing_comes_leased_on_its_own(
    tmp_path: Path,
) -> None:
    """A mkdir in a directory the mount holds no lease on (a copy's top directory) makes
    the new directory leased to it exclusively in the same update (``ln``): no lease or
    listing round follows, and what is made in it, looked up and listed there costs no
    round.  Another client's listing recalls it and shows every file.  A directory made
    in one the mount was just recalled from comes unleased (others work there)."""

    async def body(env: Env) -> None:
        a, b = env.fss
        b.meta.publish_reads = False  # the recall's path (a reader recalls at once)
        leases = a.meta.leases
        assert leases is not None
        top = (await a.mkdir(ROOT, b"top", 0o755, 0, 0)).ino
        assert leases.exclusive_left(top) > 0 and leases.answers.listings[top] == {}
        assert a.meta.methods["fs.lease"] == 0
        before = Counter(a.meta.methods)
        for k in range(3):
            with pytest.raises(NotFound):
                await a.lookup(top, b"f%d" % k)
            await new_file(a, top, b"f%d" % k, b"top %d" % k)
        sub = (await a.mkdir(top, b"sub", 0o755, 0, 0)).ino  # in write-back: no round
        assert {n for n, _ in await a.readdir(top)} == {b"f0", b"f1", b"f2", b"sub"}
        assert not rounds_since(a, before), rounds_since(a, before)
        assert {n for n, _ in await b.readdir(top)} == {b"f0", b"f1", b"f2", b"sub"}
        assert leases.exclusive_left(top) == 0 and leases.exclusive_left(sub) == 0
        assert await b.readdir(sub) == []
        ino = (await b.lookup(top, b"f1")).ino
        fh = await b.open(ino, os.O_RDONLY)
        assert await b.read(fh, 0, 100) == b"top 1"
        await b.release(fh)
        again = (await a.mkdir(top, b"again", 0o755, 0, 0)).ino
        assert leases.exclusive_left(again) == 0

    run(tmp_path, body, fs_options=OPTIONS)


def test_a_rename_of_a_waiting_create_to_a_new_name_is_applied_in_the_mount(
    tmp_path: Path,
) -> None:
    """A file whose create waits in write-back, renamed to a name the leased listing lacks
    (a download's ``.part``), is renamed in the mount: no round, and its create goes under
    the new name.  Another client then sees the new name with the content, not the old
    one, and the directory's times at least the rename's.  A rename over an existing name
    still goes to the servers."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d, leases = await leased_listing(a)
        ino = await new_file(a, d, b"x.part", b"downloaded")
        before = Counter(a.meta.methods)
        renamed_at = a.meta.now()
        await a.rename(d, b"x.part", d, b"x", 0)
        listed = {n for n, _ in await a.readdir(d)}
        assert b"x" in listed and b"x.part" not in listed
        with pytest.raises(NotFound):
            await a.lookup(d, b"x.part")
        # (The listing reads the other files' attributes, as without the rename.)
        assert set(rounds_since(a, before)) <= {"fs.statmany"}, rounds_since(a, before)
        assert (await a.lookup(d, b"x")).ino == ino  # (answered here: its create waits)
        assert set(rounds_since(a, before)) <= {"fs.statmany"}, rounds_since(a, before)
        await a.sync_directory(d)  # (made on the servers: the rename below is theirs)
        assert rounds_since(a, before)["fs.createwrite"] == 1
        await a.rename(d, b"x", d, b"warm0", 0)  # over an existing name: the servers'
        assert rounds_since(a, before)["fs.rename"] == 1
        names = {n for n, _ in await b.readdir(d)}
        assert b"warm0" in names and not {b"x", b"x.part"} & names
        got = await b.lookup(d, b"warm0")
        fh = await b.open(got.ino, os.O_RDONLY)
        assert await b.read(fh, 0, 100) == b"downloaded"
        await b.release(fh)
        assert (await b.getattr(d)).mtime_ns >= renamed_at

    run(tmp_path, body, fs_options=OPTIONS)


def test_an_atomic_save_over_a_file_is_renamed_in_the_mount(tmp_path: Path) -> None:
    """An editor's atomic save, twice, in a directory the mount holds exclusively: the new
    content goes to a temporary file (its create waits in write-back), renamed over the
    file it replaces.  The first save replaces a file the servers hold: it is unlinked at
    once (one removal round) and the rename costs nothing more; the second replaces the
    first's waiting create, which cancels (no round at all).  No ``fs.rename`` is sent, the
    last create goes under the file's name, and another client reads the last content under
    it, the temporary name gone, the old file unlinked."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d, leases = await leased_listing(a)
        await a.write_back()
        old = (await a.lookup(d, b"warm1")).ino
        before = Counter(a.meta.methods)
        unlinks = removals(a)
        first = await new_file(a, d, b".warm1.swp", b"second version")
        await a.rename(d, b".warm1.swp", d, b"warm1", 0)
        assert removals(a) == unlinks + 1  # the old file, at once
        last = await new_file(a, d, b".warm1.swp", b"third version")
        await a.rename(d, b".warm1.swp", d, b"warm1", 0)
        assert removals(a) == unlinks + 1  # the first save's create cancelled
        assert first != last
        sent = rounds_since(a, before)
        assert not {"fs.rename", "fs.createwrite", "fs.create"} & set(sent), sent
        assert (await a.lookup(d, b"warm1")).ino == last
        names = {n for n, _ in await b.readdir(d)}
        assert b"warm1" in names and b".warm1.swp" not in names
        got = await b.lookup(d, b"warm1")
        assert got.ino == last
        fh = await b.open(got.ino, os.O_RDONLY)
        assert await b.read(fh, 0, 100) == b"third version"
        await b.release(fh)
        assert (await b.meta.query_now(old, "fs.stat", None))["nl"] == 0  # unlinked

    run(tmp_path, body, fs_options=OPTIONS)


def test_lookups_of_listed_names_are_answered_by_the_listing(tmp_path: Path) -> None:
    """Under the lease, a listed name whose object the listing (or the mount's own create
    or mkdir) named is found without a round: the kernel's lookups of the files it made,
    once its cached names time out (PostMark's reads and appends).  Another client's
    rename over a listed name recalls the lease first, and the holder then finds the new
    object."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        leases = a.meta.leases
        assert leases is not None
        await new_file(a, d, b"made", b"here")
        sub = (await a.mkdir(d, b"sub", 0o755, 0, 0)).ino
        await a.write_back()
        await until("the listing", lambda: d in leases.answers.listings)
        warm = (await a.lookup(d, b"warm0")).ino
        before = rounds_since(a, Counter())
        for name, ino in ((b"warm0", warm), (b"sub", sub)):
            a.cache.forget(d, name)  # (the mount's own name cache timed out)
            assert (await a.lookup(d, name)).ino == ino
        a.cache.forget(d, b"made")
        assert (await a.lookup(d, b"made")).size == 4
        looked = rounds_since(a, before)
        assert looked["fs.lookup"] == looked["fs.lookupstat"] == 0, looked
        assert leases.stats["listed_hits"] >= 3
        await new_file(b, ROOT, b"other", b"from b")
        await b.rename(ROOT, b"other", d, b"warm0", 0)  # recalls a's lease first
        got = await a.lookup(d, b"warm0")
        assert got.ino != warm and got.size == 6

    run(tmp_path, body, fs_options=OPTIONS)


def test_a_scrub_walks_a_directory_a_mount_holds_exclusively(tmp_path: Path) -> None:
    """``bftfs verify`` lists the files with blocks by queries of its own: refused for the
    exclusive lease, it recalls it (the holder writes back and releases) and goes on."""

    async def body(env: Env) -> None:
        a = env.fss[0]
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        big = await new_file(a, d, b"big", b"b" * 100_000)
        await exclusive(a, d)
        await new_file(a, d, b"small", b"s")
        found = [f async for f in files_with_blocks(env.raw, a.bs)]
        assert [f.path for f in found] == ["/d/big"]
        assert a.meta.leases is not None and a.meta.leases.exclusive_left(d) == 0
        assert (await env.fss[1].lookup(d, b"small")).size == 1 and big

    run(tmp_path, body, fs_options=OPTIONS)


def test_what_comes_due_one_at_a_time_goes_in_full_batches(tmp_path: Path) -> None:
    """Removals and creates deferred one after another come due one after another: the
    update that must go when the first is due carries the directory's next ones, up to
    an update's worth (``batch``: 30 in a new cluster), so twice that many removals cost
    two updates and as many creates two (before, each went alone as it came due)."""

    async def body(env: Env) -> None:
        a = env.fss[0]
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        wb = a.outbox.writeback
        assert wb is not None
        await a.write_back()
        alone, made = sent(a), a.meta.methods["fs.createmany"]
        inos = []
        files = 2 * wb.batch
        for k in range(files):  # due 50 ms apart, as if closed 50 ms apart
            wb.commit = 0.3 + 0.05 * k
            inos.append(await new_file(a, d, b"f%02d" % k, b"x" * (k + 1)))
        assert sent(a) == alone and all(wb.deferred(i) for i in inos)
        await until("the creates sent", lambda: not any(a.outbox.creates.not_made(i) for i in inos))
        assert (sent(a) - alone, a.meta.methods["fs.createmany"] - made) == (0, 2)
        before = removals(a)
        for k in range(files):
            wb.commit = 0.3 + 0.05 * k
            await a.unlink(d, b"f%02d" % k)
        await until("the removals sent", lambda: removals(a) - before >= 2 and not wb._unlinks)
        assert (a.meta.methods["fs.unlink"], removals(a) - before) == (0, 2)
        assert {n for n, _ in await env.fss[1].readdir(d)} == {b"warm0", b"warm1", b"warm2"}

    run(tmp_path, body, fs_options=OPTIONS)


def test_creates_due_together_go_an_update_at_a_time_the_rest_still_waiting(
    tmp_path: Path,
) -> None:
    """Creates that fall due together (PostMark's 1 000 files, five seconds after it made
    them) go one update at a time, the others still waiting in write-back meanwhile: a
    removal of one of them then cancels it in the mount.  Before, the whole pass was taken
    out at once (165 updates at b = 2, 10-12 s), and every call on one of its files waited
    for the pass.  A lookup of another name while an update is under way neither waits
    for it nor sends its creates (before, every lookup in the directory did: one
    transaction of PostMark's per update)."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        await a.write_back()
        await a.readdir(d)  # the listing, known whole under the lease (a removal cancels)
        wb, leases = a.outbox.writeback, a.meta.leases
        assert wb is not None and leases is not None
        files = 3 * wb.batch
        inos = [await new_file(a, d, b"f%02d" % k, b"x%d" % k) for k in range(files)]
        waiting: list[int] = []
        looked: list[int] = []
        first, go_on = trio.Event(), trio.Event()
        real = wb._senders.send_creates

        async def send_creates(ps: list[Any]) -> None:
            if not first.is_set():
                waiting.extend(i for i in inos if wb.deferred(i))
                # A lookup of another name meanwhile does not send (or wait for) these.
                made = creates_sent(a)
                assert (await a.lookup(d, b"warm0")).ino
                looked.append(creates_sent(a) - made)
                first.set()
                await go_on.wait()
            await real(ps)

        wb._senders.send_creates = send_creates  # type: ignore[method-assign]
        for oid, (p, _) in list(wb._due.items()):  # all due at once (as after 5 s)
            wb._due[oid] = (p, 0.0)
        wb._alarm.due()
        await first.wait()
        assert len(waiting) == 2 * wb.batch, waiting  # the first batch out, the others wait
        assert looked == [0], looked
        cancelled = leases.stats["creates_cancelled"]
        await a.unlink(d, b"f%02d" % (files - 1))
        assert leases.stats["creates_cancelled"] == cancelled + 1
        go_on.set()
        await until("the creates sent", lambda: not any(a.outbox.creates.not_made(i) for i in inos))
        names = {n for n, _ in await b.readdir(d)}
        assert names == {b"warm0", b"warm1", b"warm2"} | {b"f%02d" % k for k in range(files - 1)}

    run(tmp_path, body, fs_options=OPTIONS)


def test_opening_a_file_whose_create_waits_needs_no_round(tmp_path: Path) -> None:
    """A file this mount made and closed, its create still in write-back, is opened and
    appended to and read without a round: the open and the read are answered here and
    the create, sent later (here at the other client's look), carries the appended
    content (before, the open sent the create and asked the servers for the file).  Its
    due time stands: the reopened create still goes within ``commit``."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        wb = a.outbox.writeback
        assert wb is not None
        await a.write_back()
        ino = await new_file(a, d, b"log", b"first\n")
        assert wb.deferred(ino)
        before = Counter(a.meta.methods)
        fh = await a.open(ino, os.O_WRONLY | os.O_APPEND)
        await a.write(fh, 0, b"second\n")
        await a.flush(fh)
        await a.release(fh)
        fh = await a.open(ino, os.O_RDONLY)
        # The leased listing lacks the name: nobody can have made it, the read is local.
        assert await a.read(fh, 0, 100) == b"first\nsecond\n"
        await a.release(fh)
        assert Counter(a.meta.methods) - before == Counter()
        assert a.outbox.creates.not_made(ino)
        fh = await b.open((await b.lookup(d, b"log")).ino, os.O_RDONLY)
        assert await b.read(fh, 0, 100) == b"first\nsecond\n"
        await b.release(fh)

    run(tmp_path, body, fs_options=OPTIONS)


def test_a_second_open_of_a_file_whose_create_waits_needs_no_round(tmp_path: Path) -> None:
    """A linker opens each object file it links twice, the first handle still open: the
    second open of a file whose create waits for the first handle's close is answered
    here too, for a small file and one whose blocks wait with its create (before, it sent
    the create and wrote the blocks: 15-38 ms each at the end of Andrew's compile).  The
    create waits for the last close (a write through the first handle after the second's
    close goes with it) and goes later, with every byte; the other client reads them."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        wb = a.outbox.writeback
        assert wb is not None
        rng = random.Random(41)
        files = {b"small.o": rng.randbytes(3000), b"big.o": rng.randbytes(90_000)}
        inos = {name: await new_file(a, d, name, data) for name, data in files.items()}
        before, writes = Counter(a.meta.methods), a.rw.statistics()["writes"]
        for name, data in files.items():
            first = await a.open(inos[name], os.O_RDWR)
            second = await a.open(inos[name], os.O_RDONLY)
            assert await a.read(second, 1000, 500) == data[1000:1500]
            await a.release(second)
            assert not wb.deferred(inos[name])  # it waits for the last close
            files[name] = data = data + b"tail"
            await a.write(first, len(data) - 4, b"tail")
            assert await a.read(first, 0, len(data) + 1) == data
            await a.release(first)
            assert wb.deferred(inos[name])
        assert Counter(a.meta.methods) - before == Counter()
        assert a.rw.statistics()["writes"] == writes
        assert all(a.outbox.creates.not_made(ino) for ino in inos.values())
        for name, data in files.items():
            fh = await b.open((await b.lookup(d, name)).ino, os.O_RDONLY)
            assert await b.read(fh, 0, len(data) + 1) == data
            await b.release(fh)

    run(tmp_path, body, fs_options=OPTIONS)


def test_files_made_and_removed_within_commit_never_reach_the_servers(tmp_path: Path) -> None:
    """Files made and removed within ``commit`` (PostMark's deletes, a compiler's
    temporaries) in a directory whose listing the mount knows whole: each create and its
    removal cancel in the mount, and neither is sent; the directory's times still move to
    the last removal's, in one times-only update that keeps the leased listing.  A name
    removed this way and made again ends with the new file."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        await a.write_back()
        await a.setattr(d, atime_ns=10**9, mtime_ns=10**9)  # (its answer is fresh here)
        await a.readdir(d)  # the listing, known whole under the lease
        leases = a.meta.leases
        assert leases is not None
        before = Counter(a.meta.methods)
        for k in range(6):
            await new_file(a, d, b"t%d" % k, b"temporary %d" % k)
        removed_at = 0
        for k in range(6):
            removed_at = a.meta.now()
            await a.unlink(d, b"t%d" % k)
            with pytest.raises(NotFound):
                await a.lookup(d, b"t%d" % k)
        assert rounds_since(a, before) == Counter(), "a removal waited"
        assert leases.stats["creates_cancelled"] == 6
        # A stat of the directory shows the times the removals gave it (without a round:
        # the mount's own attributes of it, kept fresh here, moved with them) ...
        assert (await a.getattr(d)).mtime_ns >= removed_at
        assert rounds_since(a, before) == Counter()
        await a.write_back()  # ... and the servers get them in one times-only update
        assert rounds_since(a, before) == Counter({"fs.setattr": 1})
        assert leases.known_absent(d, b"t1"), "the touch dropped the leased listing"
        await new_file(a, d, b"t0", b"made again")
        await a.write_back()
        sent_now = rounds_since(a, before)
        assert sent_now - Counter({"fs.stat": 1}) == Counter(
            {"fs.createwrite": 1, "fs.setattr": 1}
        ), sent_now
        assert {n for n, _ in await b.readdir(d)} == {b"t0", b"warm0", b"warm1", b"warm2"}
        fh = await b.open((await b.lookup(d, b"t0")).ino, os.O_RDONLY)
        assert await b.read(fh, 0, 100) == b"made again"
        await b.release(fh)

    run(tmp_path, body, fs_options=OPTIONS, attr_ttl=60.0)  # a stat must not answer stale


def test_a_removal_of_a_waiting_create_whose_name_may_exist_waits_with_it(
    tmp_path: Path,
) -> None:
    """Without the directory's listing known whole, a waiting create may meet a file of
    that name on the servers (it then opens it): its removal must reach them, so the two
    go after each other, each kind batched (two updates for six files, not twelve)."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        await a.write_back()
        leases = a.meta.leases
        assert leases is not None
        leases.answers.listings.pop(d, None)
        leases.taker.query = None  # (nor read again at the next create: this mount cannot list)
        before = Counter(a.meta.methods)
        for k in range(6):
            await new_file(a, d, b"t%d" % k, b"temporary %d" % k)
        for k in range(6):
            await a.unlink(d, b"t%d" % k)
        assert rounds_since(a, before) == Counter(), "a removal waited"
        await a.write_back()
        sent_now = rounds_since(a, before)
        assert sent_now == Counter({"fs.createmany": 1, "fs.unlinkmany": 1}), sent_now
        assert leases.stats["creates_cancelled"] == 0
        assert {n for n, _ in await b.readdir(d)} == {b"warm0", b"warm1", b"warm2"}

    run(tmp_path, body, fs_options=OPTIONS)


def test_a_removal_sent_with_a_files_create_does_not_wait_for_itself(tmp_path: Path) -> None:
    """A file with blocks writes them after its create, through calls on the file that
    wait for any removal of it held back: a removal that sends the file's create first
    must not be among them (PostMark hung on this: a due removal took a big file's along,
    whose create then waited for it)."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        await a.write_back()
        wb = a.outbox.writeback
        assert wb is not None
        wb.commit = 60.0
        await new_file(a, d, b"big", b"y" * (3 * a.cache.inline))
        await new_file(a, d, b"small", b"s")
        wb.commit = 0.2  # small's removal comes due first and takes big's along
        await a.unlink(d, b"small")
        wb.commit = 60.0
        await a.unlink(d, b"big")
        with trio.fail_after(30):
            await until("the removals sent", lambda: not wb._unlinks)
        for name in (b"small", b"big"):
            with pytest.raises(NotFound):
                await b.lookup(d, name)

    run(tmp_path, body, fs_options=OPTIONS)


def test_a_listing_under_the_exclusive_lease_is_answered_in_the_mount(tmp_path: Path) -> None:
    """The holder lists its directory without a round and without sending what it holds
    back: the listing read under the lease, plus its creates not sent, minus its removals
    not sent, each with its attributes.  Another client's listing (a recall) then shows
    the same names.  Without the local listing, the holder's listing sent the creates."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        leases = a.meta.leases
        assert leases is not None
        await until("the listing", lambda: leases.listing(d) is not None)
        for k in range(4):
            await new_file(a, d, b"f%d" % k, b"x" * (k + 1))
        await a.unlink(d, b"warm1")
        before = Counter(a.meta.methods)
        heads = a.listing_heads(d)
        listed = dict(await a.readdir(d))
        asked = Counter(a.meta.methods) - before
        # No round: the warm-up files too were made under the lease (the directory came
        # leased with its mkdir), so their attributes are this mount's.
        assert asked == Counter(), asked
        assert heads is not None and [h.ino for h in heads] == [d, ROOT]
        want = {b"warm0", b"warm2", b"f0", b"f1", b"f2", b"f3"}
        assert set(listed) == want
        assert [listed[b"f%d" % k].size for k in range(4)] == [1, 2, 3, 4]
        assert leases.stats["local_listings"] >= 1
        assert {n for n, _ in await b.readdir(d)} == want

    run(tmp_path, body, clients=2, fs_options=OPTIONS)


def test_an_exclusive_create_waits_when_the_leased_listing_lacks_the_name(tmp_path: Path) -> None:
    """``O_EXCL`` (``cp -r``'s creates) is decided in the mount when the directory's
    listing, known whole under its exclusive lease, lacks the name: the create waits for
    write-back like any other.  A name the listing has is still refused EEXIST, and such
    creates count towards the directory's exclusive lease."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        leases = a.meta.leases
        assert leases is not None
        excl = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        for k in range(3):  # synchronous (no lease yet), and asking for one
            fh, _ = await a.create(d, b"s%d" % k, 0o644, 0, 0, excl)
            await a.release(fh)
        await until("an exclusive lease", lambda: leases.exclusive_left(d) > 0)
        fh, _ = await a.create(d, b"s3", 0o644, 0, 0, excl)  # reads the listing if it
        await a.release(fh)  # crossed the creates above and was not kept
        await until("the listing", lambda: leases.listing(d) is not None)
        before = sent(a)
        fh, _ = await a.create(d, b"new", 0o644, 0, 0, excl)
        await a.write(fh, 0, b"cp")
        await a.flush(fh)
        await a.release(fh)
        assert sent(a) == before, "the exclusive create went at once"
        with pytest.raises(Exists):
            await a.create(d, b"s0", 0o644, 0, 0, excl)
        ino = (await b.lookup(d, b"new")).ino
        fh = await b.open(ino, os.O_RDONLY)
        assert await b.read(fh, 0, 10) == b"cp"
        await b.release(fh)

    run(tmp_path, body, clients=2, fs_options=OPTIONS)


def test_creates_sent_together_leave_out_those_made_meanwhile(tmp_path: Path) -> None:
    """Creates sent together go a batch at a time; one of a later batch made meanwhile
    by another task (a publication's gate, a listing's) is left out of its batch, not
    sent in it: the nodes refuse a batch naming a file that exists (``IdTaken``), and
    every create of it then went alone, a round apiece (231 ``fs.createwrite`` in a
    PostMark beside a reader asking publications)."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        wb = a.outbox.writeback
        assert wb is not None
        outbox = a.outbox.creates
        inos = [await new_file(a, d, b"f%02d" % k, b"x%d" % k) for k in range(2 * wb.batch)]
        ps = [outbox.creates.pending_of(i) for i in inos]
        assert all(p is not None and wb.deferred(p.oid) for p in ps)
        late = ps[-1]
        assert late is not None
        real = outbox.sender.send_many

        async def send_many(batch: list[Any], **kw: Any) -> None:
            if late not in batch and outbox.creates.pending_of(late.oid) is late:
                await outbox.sends.send(late)  # another task sends it alone meanwhile
            await real(batch, **kw)

        outbox.sender.send_many = send_many  # type: ignore[method-assign]
        alone, many = sent(a), a.meta.methods["fs.createmany"]
        await outbox.sends.send_deferred([p for p in ps if p is not None])
        assert sent(a) - alone == 1, sent(a) - alone  # the one sent meanwhile, no other
        assert a.meta.methods["fs.createmany"] - many == 2
        names = {n for n, _ in await b.readdir(d)}
        assert {b"f%02d" % k for k in range(2 * wb.batch)} <= names

    run(tmp_path, body, fs_options=OPTIONS)
