"""Tier 3: a chmod, chown or utime of a directory this mount holds exclusively waits with
the directory's held-back entries (``fs/writeback/dirattrs.py``), on the in-process
cluster (real node services, TCP, LMDB, keys).

``cp -a`` and ``tar x`` set each directory's times, owner and mode after filling it; each
such call sent every create held back there first, in the foreground (13 of a 981-file
copy's 25 s).  Now they are answered at once and go after the creates; what every client
sees afterwards is what a local file system shows."""

from __future__ import annotations

import stat
from pathlib import Path

from fs_helpers import Env, run
from t3_fs_writeback import OPTIONS, exclusive, new_file, rounds_since

from bftfs.fsobjects import ROOT

#: 2001-09-09 01:46:40 UTC: a time no clock of the test gives.
WHEN_NS = 1_000_000_000 * 10**9 + 123
#: A day later, for the access time.
ATIME_NS = WHEN_NS + 86_400 * 10**9
#: The updates a held-back chmod, chown or utime of a directory must not send.
HELD_BACK = {"fs.setattr", "fs.create", "fs.createwrite", "fs.createmany", "fs.mkdir"}


def test_a_directorys_times_owner_and_mode_set_after_filling_it_wait_with_its_creates(
    tmp_path: Path,
) -> None:
    """No round for the three calls nor for the creates before them; the mount shows the
    new attributes at once; another client's stat recalls the lease and sees them, with
    every file, and the creates sent later did not move the mtime past the one set."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        names = {b"f%d" % k for k in range(8)}
        for name in sorted(names):
            await new_file(a, d, name, b"x" * 100)
        before = a.meta.methods.copy()
        await a.setattr(d, atime_ns=ATIME_NS, mtime_ns=WHEN_NS, reached_by_name=True)
        await a.setattr(d, uid=1234, gid=0, reached_by_name=True)
        await a.setattr(d, mode=0o750, reached_by_name=True)
        sent = rounds_since(a, before)  # (a lease or session renewal may fall in here)
        assert not sent.keys() & HELD_BACK, f"a directory's setattr sent its creates: {sent}"
        shown = await a.getattr(d)
        assert (shown.mtime_ns, shown.atime_ns, shown.uid) == (WHEN_NS, ATIME_NS, 1234)
        assert stat.S_IMODE(shown.mode) == 0o750 and stat.S_ISDIR(shown.mode)
        assert a.outbox.back is not None and a.outbox.back.dir_attrs.holds(d)
        got = await b.getattr(d)
        assert (got.mtime_ns, got.atime_ns, got.uid, got.gid) == (WHEN_NS, ATIME_NS, 1234, 0)
        assert stat.S_IMODE(got.mode) == 0o750
        assert got.ctime_ns >= shown.ctime_ns - 10**9
        sent = rounds_since(a, before)
        assert sent["fs.setattr"] == 1, sent  # the three calls in one update
        assert names <= {n for n, _ in await b.readdir(d)}
        assert not a.outbox.back.dir_attrs.holds(d)

    run(tmp_path, body, fs_options=OPTIONS)


def test_an_entry_changed_after_a_held_utime_moves_the_mtime_on(tmp_path: Path) -> None:
    """``touch -d`` of a directory and then a file made in it: the mtime is the create's,
    on this mount at once and on the servers after write-back (the held mtime is dropped,
    the access time kept)."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        await new_file(a, d, b"first", b"1")
        await a.setattr(d, atime_ns=ATIME_NS, mtime_ns=WHEN_NS)
        assert (await a.getattr(d)).mtime_ns == WHEN_NS
        await new_file(a, d, b"after", b"2")
        shown = await a.getattr(d)
        assert shown.mtime_ns > WHEN_NS and shown.atime_ns == ATIME_NS
        await a.write_back()
        got = await b.getattr(d)
        assert (got.mtime_ns, got.atime_ns) == (shown.mtime_ns, ATIME_NS)

    run(tmp_path, body, fs_options=OPTIONS)


def test_a_change_of_the_set_group_id_bit_or_the_group_goes_at_once(tmp_path: Path) -> None:
    """The files made in the directory inherit those, and the mount answers its creates
    from what it knows of the directory: such a change is sent at once."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        await new_file(a, d, b"f", b"1")
        before = a.meta.methods.copy()
        await a.setattr(d, mode=0o2755)
        assert rounds_since(a, before)["fs.setattr"] == 1
        await a.setattr(d, gid=4321)
        assert rounds_since(a, before)["fs.setattr"] == 2
        fh, attr = await a.create(d, b"g", 0o644, 0, 0, 0)
        await a.release(fh)
        assert attr.gid == 4321
        await a.write_back()
        assert (await b.getattr((await b.lookup(d, b"g")).ino)).gid == 4321

    run(tmp_path, body, fs_options=OPTIONS)


def test_a_directory_removed_with_its_attributes_held_back(tmp_path: Path) -> None:
    """A subdirectory made here, its times set and then removed: nothing is left held
    back, nothing fails, and no other client sees it."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        sub = (await a.mkdir(d, b"sub", 0o755, 0, 0)).ino
        await new_file(a, sub, b"f", b"1")
        await a.setattr(sub, mtime_ns=WHEN_NS, atime_ns=WHEN_NS)
        assert (await a.getattr(sub)).mtime_ns == WHEN_NS
        await a.unlink(sub, b"f")
        await a.rmdir(d, b"sub")
        await a.write_back()
        assert a.outbox.back is not None and not a.outbox.back.dir_attrs.holds_back()
        assert b"sub" not in {n for n, _ in await b.readdir(d)}

    run(tmp_path, body, fs_options=OPTIONS)
