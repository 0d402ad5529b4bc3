"""Tier 3: ``getxattr`` of an object the servers just said has no extended attributes is
answered "no such attribute" in the mount for ``attr_ttl`` (``MetadataCache.no_xattrs_seen``),
as the kernel answers ``stat`` from the attributes it keeps: ``ls -l`` of a directory
another client filled asks every entry for ``security.selinux`` right after the listing,
a query apiece before.  Another client's ``setxattr`` shows once ``attr_ttl`` has passed;
this mount's own at once.  In-process cluster (real node services, TCP, LMDB)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
from fs_helpers import Env, run

from bftfs.fs.errors import NoAttr
from bftfs.fsobjects import ROOT

SELINUX = b"security.selinux"


async def filled_by_a(env: Env) -> list[int]:
    """Client a makes a directory of three files and sends them; their inode numbers."""
    a = env.fss[0]
    d = await a.mkdir(ROOT, b"d", 0o755, 0, 0)
    inos = []
    for i in range(3):
        fh, f = await a.create(d.ino, b"f%d" % i, 0o644, 0, 0, os.O_WRONLY)
        await a.write(fh, 0, b"x")
        await a.release(fh)
        inos.append(f.ino)
    await a.write_back()
    return inos


def test_a_listing_tells_which_entries_have_no_extended_attributes(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        a, b = env.fss
        inos = await filled_by_a(env)
        d = await b.lookup(ROOT, b"d")
        assert len(await b.readdir(d.ino)) == 3
        sent = b.meta.methods["fs.getxattr"]
        for ino in inos:
            with pytest.raises(NoAttr):
                await b.getxattr(ino, SELINUX)
        assert b.meta.methods["fs.getxattr"] == sent, b.meta.methods
        assert b.meta.methods["known fs.getxattr"] == 3
        # Its own setxattr is seen at once, within attr_ttl too.
        await b.setxattr(inos[0], b"user.k", b"v")
        assert await b.getxattr(inos[0], b"user.k") == b"v"

    run(tmp_path, body, attr_ttl=30.0)


def test_another_clients_setxattr_shows_once_attr_ttl_passed(tmp_path: Path) -> None:
    ttl = 0.5

    async def body(env: Env) -> None:
        a, b = env.fss
        inos = await filled_by_a(env)
        d = await b.lookup(ROOT, b"d")
        await b.readdir(d.ino)
        await a.setxattr(inos[1], b"user.k", b"v")
        await trio.sleep(ttl)  # (the timeout itself is what is tested)
        assert await b.getxattr(inos[1], b"user.k") == b"v"

    run(tmp_path, body, attr_ttl=ttl)


def test_a_leased_files_own_setxattr_is_seen_at_once(tmp_path: Path) -> None:
    """Under a lease the mount keeps the names of a file's extended attributes (a stat
    saying it has none); its own ``setxattr`` drops them, so the name set is found."""

    async def body(env: Env) -> None:
        a = env.fss[0]
        assert a.meta.leases is not None
        leases = a.meta.leases
        fh, f = await a.create(ROOT, b"f", 0o644, 0, 0, os.O_WRONLY)
        await a.write(fh, 0, b"x")
        await a.release(fh)
        await a.write_back()
        with trio.fail_after(20):  # leases are taken in the background after uses
            while f.ino not in leases.held or f.ino not in leases.answers.xattrs:
                with pytest.raises(NoAttr):
                    await a.getxattr(f.ino, SELINUX)
                await a.getattr(f.ino)
                await trio.sleep(0.01)
        await a.setxattr(f.ino, b"user.k", b"v")
        assert await a.getxattr(f.ino, b"user.k") == b"v"
        assert await a.listxattr(f.ino) == [b"user.k"]

    run(tmp_path, body, fs_options={"lease_term": 30.0})
