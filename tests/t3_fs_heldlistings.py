"""Tier 3: what the mount holds back is what its own calls see (issue 60, items 4 and 7),
on the in-process cluster (real node services, TCP, LMDB, keys).

A directory made and filled under a lease waits in directory write-back (its mkdir, the
creates in it: ``fs/writeback/mkdirs.py``, ``fs/writeback/``).  Every call of this mount on
it or in it must see it as made: ``ls -l`` asks each directory's extended attributes
(``security.selinux``, the ACLs), and an xattr's name is no entry name of the directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from fs_helpers import Env, run
from t3_fs_writeback import OPTIONS, new_file

from bftfs.fs.errors import NoAttr
from bftfs.fsobjects import ROOT
from bftfs.net.server import HandlerError
from bftfs.qu.messages import KIND_REQUEST


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
        assert a.outbox.creates.pending_in(y)
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


def test_a_call_waiting_for_a_create_of_a_failed_batch_waits_until_it_is_sent_alone(
    tmp_path: Path,
) -> None:
    """Write-back sends the creates of a directory together (``fs.createmany``); when that
    update fails, each is sent alone, one after another.  A call that waits for one of
    them (a ``stat`` of the last file, a listing's attributes) must wait until it is made:
    released when the batch failed, it reached the servers before the file and answered
    "not found" (issue 60 item 7: with a node just stopped, ``diff -r`` said "Only in" for
    the last files copied, the mount log "entries left out, their objects gone" 233 ms
    after "sent together failed" in the same directory)."""

    async def body(env: Env) -> None:
        a, _ = env.fss
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        names = [b"f%d.c" % i for i in range(6)]
        inos = [await new_file(a, d, name, b"int x;\n") for name in names]
        assert len(a.outbox.creates.pending_in(d)) == 6  # held back in the mount
        seen, waiting = trio.Event(), trio.Event()

        async def refuse_batches(ctx: Any, payload: Any, honest: Any) -> Any:
            if b"fs.createmany" not in bytes(payload):
                return await honest(ctx, payload)
            seen.set()
            await waiting.wait()  # the batch fails once the stat waits for it
            raise HandlerError("refused", "this test refuses creates sent together")

        for faults in env.cluster.faults:
            faults.byzantine(KIND_REQUEST, refuse_batches)
        got: list[int] = []

        async def stat_the_last() -> None:
            await seen.wait()  # the batch is on its way: the stat waits for it
            got.append((await a.getattr(inos[-1])).size)

        async with trio.open_nursery() as n:
            n.start_soon(a.write_back)
            n.start_soon(stat_the_last)
            await seen.wait()
            await trio.testing.wait_all_tasks_blocked()
            waiting.set()
        for faults in env.cluster.faults:
            faults.honest()
        assert got == [7]
        assert {n for n, _ in await a.readdir(d)} == set(names)

    run(tmp_path, body, fs_options=OPTIONS)
