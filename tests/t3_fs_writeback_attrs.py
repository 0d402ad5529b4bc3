"""Tier 3: a chmod, chown or utime of a file whose create waits in the mount (directory
write-back) goes with that create (``Attributes.setattr``), on the in-process cluster.

``cp -p``, ``tar x`` and ``shutil.copy2`` write a file, close it and then set its mode and
times by its name.  Each such call on an empty new file used to send the file's create
alone and then an ``fs.setattr`` (two rounds a file: 300 files of which 100 empty took 470
rounds where ``cp -r`` took 2).  Now the mount keeps the file until its create goes, and
the create carries what the calls set."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from fs_helpers import Env, run
from t3_fs_writeback import OPTIONS, exclusive, new_file, rounds_since

from bftfs.fsobjects import ROOT

#: 2001-09-09 01:46:40 UTC: a time no clock of the test gives.
WHEN_NS = 1_000_000_000 * 10**9 + 123


def test_attributes_set_by_name_after_close_go_with_the_waiting_create(tmp_path: Path) -> None:
    """Empty and small new files closed, then chmod and utime by name, and an empty one
    changed through its open descriptor before its close: no round until
    the directory's lease is recalled, and then another client sees every file with the
    mode and times set, its content intact."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        contents = {b"empty%d" % k: b"" for k in range(3)} | {b"small": b"some bytes"}
        inos = {name: await new_file(a, d, name, data) for name, data in contents.items()}
        before = a.meta.methods.copy()
        for ino in inos.values():
            await a.setattr(ino, mode=0o600, reached_by_name=True)
            await a.setattr(ino, atime_ns=WHEN_NS, mtime_ns=WHEN_NS, reached_by_name=True)
        # ``cp -p``: futimens and fchmod on the open descriptor, which FUSE does not name.
        fh, attr = await a.create(d, b"open", 0o644, 0, 0, os.O_WRONLY | os.O_EXCL)
        await a.setattr(attr.ino, atime_ns=WHEN_NS, mtime_ns=WHEN_NS)
        await a.setattr(attr.ino, mode=0o600)
        await a.flush(fh)
        await a.release(fh)
        contents[b"open"] = b""
        assert rounds_since(a, before) == {}, "a chmod or utime sent the create early"
        # Another client looks: the lease is recalled and the creates go, together.
        names = {n for n, _ in await b.readdir(d)}
        assert set(contents) <= names
        sent = rounds_since(a, before)
        assert sent["fs.setattr"] == 0 and sent["fs.create"] == 0, sent
        for name, data in contents.items():
            got = await b.getattr((await b.lookup(d, name)).ino)
            assert stat.S_IMODE(got.mode) == 0o600, name
            assert (got.mtime_ns, got.atime_ns, got.size) == (WHEN_NS, WHEN_NS, len(data)), name
            fh = await b.open(got.ino, os.O_RDONLY)
            assert await b.read(fh, 0, 100) == data
            await b.release(fh)

    run(tmp_path, body, fs_options=OPTIONS)
