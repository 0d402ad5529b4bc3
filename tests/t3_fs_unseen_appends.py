"""Tier 3: appends to files no other client can have seen wait on the directory's lease
(issues 62/64, ``fs/writeback/held.py``, ``leases/unseen.py``), on the in-process cluster
(real node services, TCP, LMDB, keys).

A file this mount made under its directory's exclusive lease, held since, never named
elsewhere, is reached by another client only through the directory, whose recall's
release sends first what the mount holds back for it.  Its own lease may end (a
directory with removals lets it: ``Taker.lapses``); its appends then still wait in
write-back, on the directory's lease alone, and go several per ``fs.writemany`` rather
than one ``fs.write`` each (PostMark: 40-45 % of a run's rounds).  Every wait for a
background step is a condition polled under a deadline (``until``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import trio
from fs_helpers import Env, run
from t3_fs_heldfiles import append, read_all, rounds
from t3_fs_leases import until
from t3_fs_writeback import exclusive, new_file

from bftfs.fs.filesystem import FileSystem
from bftfs.fsobjects import ROOT

OPTIONS = {"lease_term": 30.0, "write_behind": True, "commit": 60.0}
#: Files appended to in the count test.
FILES = 6


async def unseen_files_past_their_leases(fs: FileSystem, d: int, n: int) -> list[int]:
    """Make ``n`` files in ``d`` (under ``fs``'s exclusive lease on it), send them, remove
    another file there (a directory with removals), and end the files' own leases as
    their term's end does (here: dropped, and given back to the servers so that another
    client's open need not recall them): the directory's lease alone still runs."""
    leases = fs.meta.leases
    assert leases is not None
    oids = [await new_file(fs, d, b"f%d" % k, b"first\n") for k in range(n)]
    await new_file(fs, d, b"gone", b"x")
    await fs.write_back()
    await fs.unlink(d, b"gone")
    for o in oids:
        assert leases.unseen.directory_of(o) == d, "the file is not unseen"
        leases.holdings.drop(o)
    for i in range(0, len(oids), 8):
        await fs.meta.update(oids[i : i + 8], "fs.release", {"lt": leases.holdings.wall_ns()})
    assert not any(leases.exclusive_left(o) > 0 for o in oids)
    assert leases.exclusive_left(d) > 0
    return oids


def test_appends_to_unseen_files_past_their_leases_go_together(tmp_path: Path) -> None:
    """Appends to files whose own leases ended, in a directory with removals, wait in
    write-back on the directory's lease and go several per ``fs.writemany``: no
    ``fs.write`` and no lease asked for a file.  Before: one ``fs.write`` per append."""

    async def body(env: Env) -> None:
        fs = env.fs
        d = (await fs.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(fs, d)
        oids = await unseen_files_past_their_leases(fs, d, FILES)
        before = rounds(fs)
        for o in oids:
            await append(fs, o, b"appended\n")
        at_close = rounds(fs) - before
        assert at_close["fs.write"] == 0, at_close
        await fs.write_back()
        work = rounds(fs) - before
        assert work["fs.write"] == 0, work
        assert 1 <= work["fs.writemany"] <= 2, work
        assert fs.meta.leases is not None
        assert fs.meta.leases.stats["held_closes_unseen"] == FILES
        for o in oids:
            assert (await fs.meta.query_now(o, "fs.stat", None))["size"] == 15

    run(tmp_path, body, clients=1, fs_options=OPTIONS)


def test_another_client_sees_the_appends_held_on_the_directorys_lease(tmp_path: Path) -> None:
    """Another client's listing recalls the directory's lease: its release sends the
    appends held back under it first, and that client reads every byte (close-to-open)."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        oids = await unseen_files_past_their_leases(a, d, 3)
        for o in oids:
            await append(a, o, b"one\n")
            await append(a, o, b"two\n")
        assert await read_all(a, oids[0]) == b"first\none\ntwo\n"
        assert (await a.getattr(oids[1])).size == 14  # (the mount's own, appends held)
        held = a.outbox.held
        assert held is not None and held.holds_back(), "nothing was held back"
        before = Counter(rounds(a))
        listing = {name for name, _ in await b.readdir(d)}
        assert {b"f0", b"f1", b"f2"} <= listing
        for k in range(3):
            ino = (await b.lookup(d, b"f%d" % k)).ino
            assert await read_all(b, ino) == b"first\none\ntwo\n"
            assert (await b.getattr(ino)).size == 14
        assert not held.holds_back()
        assert (rounds(a) - before)["fs.write"] == 0, rounds(a) - before

    run(tmp_path, body, fs_options=OPTIONS)


@pytest.mark.slow
def test_appends_held_on_the_directorys_lease_go_before_it_ends(tmp_path: Path) -> None:
    """The directory's lease may end without a recall (the mount stops using it): the
    appends held back under it were due before, and went; another client then reads
    them with nothing to recall."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        leases = a.meta.leases
        assert leases is not None
        oids = await unseen_files_past_their_leases(a, d, 2)
        for o in oids:
            await append(a, o, b"late\n")
        held = a.outbox.held
        assert held is not None and held.holds_back(), "nothing was held back"
        await until("the directory's lease ends", lambda: leases.exclusive_left(d) <= 0, 30.0)
        assert not held.holds_back(), "writes still held past the lease's end"
        recalls = leases.stats["recalled"]
        for k in range(2):
            ino = (await b.lookup(d, b"f%d" % k)).ino
            assert await read_all(b, ino) == b"first\nlate\n"
        assert leases.stats["recalled"] == recalls
        for k in range(3):  # (their leases end on the servers a margin after here)
            await b.getattr((await b.lookup(d, b"warm%d" % k)).ino)

    run(tmp_path, body, fs_options={**OPTIONS, "lease_term": 12.0})


def test_a_rename_out_of_the_directory_keeps_the_held_appends(tmp_path: Path) -> None:
    """A file with appends held on its directory's lease renamed into another directory
    becomes reachable there: its appends go before the rename, and both clients read
    them under the new name."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        e = (await a.mkdir(ROOT, b"e", 0o755, 0, 0)).ino
        await exclusive(a, d)
        leases = a.meta.leases
        assert leases is not None
        (o,) = await unseen_files_past_their_leases(a, d, 1)
        await append(a, o, b"kept\n")
        held = a.outbox.held
        assert held is not None and held.holds_back(), "nothing was held back"
        await a.rename(d, b"f0", e, b"moved")
        assert leases.unseen.directory_of(o) is None
        assert await read_all(a, o) == b"first\nkept\n"
        ino = (await b.lookup(e, b"moved")).ino
        assert ino == o
        assert await read_all(b, ino) == b"first\nkept\n"

    run(tmp_path, body, fs_options=OPTIONS)


async def unseen_in_a_new_directory(fs: FileSystem, n: int) -> tuple[int, list[int]]:
    """A new directory held here exclusively, and ``n`` unseen files in it past their own
    leases (:func:`unseen_files_past_their_leases`)."""
    d = (await fs.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
    await exclusive(fs, d)
    return d, await unseen_files_past_their_leases(fs, d, n)


def test_a_new_lease_on_an_unseen_file_keeps_its_own_attributes(tmp_path: Path) -> None:
    """A lease granted on a file no other client can have seen, after its own ended (a
    big directory's files' leases turned into the session's too late), leaves what the
    mount's own updates answered of it: only this mount can have changed it, so a
    ``stat`` needs no round.  Before: each such grant forgot them, and 10 000 files made
    and then looked at cost an ``fs.stat`` each."""

    async def body(env: Env) -> None:
        fs, leases = env.fs, env.fs.meta.leases
        assert leases is not None
        d, oids = await unseen_in_a_new_directory(fs, 2)
        for o in oids:
            await leases.taker.take_exclusive(o)  # a new holding: the grant's own path
            assert leases.exclusive_left(o) > 0
            leases.holdings.drop(o)  # (ended again: its attributes are not the lease's)
            await fs.meta.update([o], "fs.release", {"lt": leases.holdings.wall_ns()})
        before = rounds(fs)
        for o in oids:
            assert (await fs.getattr(o)).size == len(b"first\n")
        assert rounds(fs) == before, dict(fs.meta.methods)

    run(tmp_path, body, clients=1, fs_options=OPTIONS)


def test_an_unseen_files_use_renews_its_directorys_lease(tmp_path: Path) -> None:
    """Answering from a file no other client can have seen relies on its directory's
    exclusive lease, so it renews that lease when due, as a use of the directory does:
    the kernel answers a big tree's lookups itself, the directory looked idle, its lease
    ended with 10 000 of its files in use, and each of them then cost a round."""

    async def body(env: Env) -> None:
        fs, leases = env.fs, env.fs.meta.leases
        assert leases is not None
        d, oids = await unseen_in_a_new_directory(fs, 1)
        h = leases.holdings.held[d]
        soon = trio.current_time() + 2.0  # less than a third of the term left
        h.until = soon
        await fs.getattr(oids[0])  # answered from its own attributes
        await until("the directory renewed", lambda: leases.holdings.held[d].until > soon + 10)
        assert leases.unseen.directory_of(oids[0]) == d  # the same holding: still unseen

    run(tmp_path, body, clients=1, fs_options=OPTIONS)
