"""Tier 3: what the mount holds back is what its own calls see (issue 60, items 4 and 7),
on the in-process cluster (real node services, TCP, LMDB, keys).

A directory made and filled under a lease waits in directory write-back (its mkdir, the
creates in it: ``fs/mkdirback.py``, ``fs/writeback.py``).  Every call of this mount on
it or in it must see it as made: ``ls -l`` asks each directory's extended attributes
(``security.selinux``, the ACLs), and an xattr's name is no entry name of the directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from fs_helpers import Env, run
from t3_fs_writeback import OPTIONS, new_file

from bftfs.fs.errors import NoAttr
from bftfs.fsobjects import ROOT


def test_the_xattrs_of_a_directory_whose_mkdir_waits_are_asked_after_it(
    tmp_path: Path,
) -> None:
    """``mkdir -p top/x/y``, files in each, then ``ls -lR top``: each directory's
    ``getxattr`` of a name its leased listing lacks was taken for a lookup of that name
    (the gate guessed the method from the argument), so the waiting mkdir was not sent
    first and the servers answered "not found": ``ls: top/x: No such file or
    directory``.  It must answer "no such attribute", the directory made."""

    async def body(env: Env) -> None:
        a, b = env.fss
        leases = a.meta.leases
        assert leases is not None
        top = (await a.mkdir(ROOT, b"top", 0o755, 0, 0)).ino
        x = (await a.mkdir(top, b"x", 0o755, 0, 0)).ino
        y = (await a.mkdir(x, b"y", 0o755, 0, 0)).ino
        for d in (top, x, y):
            for i in range(3):
                await new_file(a, d, b"f%d.c" % i, b"int x;\n" * 40)
        assert leases.stats["mkdirs_deferred"] == 2
        mkdirs = a.names.mkdirs
        assert mkdirs is not None
        for d in (x, y):  # ls -l top: lstat, then the xattrs of every entry
            assert mkdirs.pending_of(d) is not None
            assert (await a.getattr(d)).nlink == (3 if d == x else 2)
            for name in (b"security.selinux", b"user.nothing"):
                with pytest.raises(NoAttr):
                    await a.getxattr(d, name)
        # An xattr query needs the directory made, not the entries held back in it.
        assert a.pending.pending_in(y)
        for d in (top, x, y):
            assert await a.listxattr(d) == []
        await a.setxattr(y, b"user.tag", b"v")
        assert await a.getxattr(y, b"user.tag") == b"v"
        # The other client sees the tree made (its listing recalls a's lease).
        bx = (await b.lookup(top, b"x")).ino
        assert bx == x
        assert {n for n, _ in await b.readdir(x)} == {b"f0.c", b"f1.c", b"f2.c", b"y"}
        assert await b.getxattr(y, b"user.tag") == b"v"

    run(tmp_path, body, fs_options=OPTIONS)
