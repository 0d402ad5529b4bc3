"""Tier 3: a handle on a file that every node has forgotten (issue 31, item 4), on the
in-process cluster (real node services, TCP, LMDB) with a retention that forgets removed
objects within about a second.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest
import trio
from fs_helpers import Env, run
from t5_qu_tombstone import until

from bftfs.fs.errors import FsError
from bftfs.fsobjects import ROOT
from bftfs.policy import RetentionPolicy
from bftfs.qu import schema
from bftfs.qu.objects import MethodRefused

#: Retention that forgets a removed object within about a second.
FORGET_SOON = RetentionPolicy(
    keep_hourly=0, keep_daily=0, keep_seconds=0.2, keep_versions=1, forget_seconds=0.2
)


def forgotten(env: Env) -> list[int]:
    return [node.stats["qu.forgotten"] for node in env.cluster.nodes]


def test_a_handle_on_a_forgotten_file_answers_estale_at_once(tmp_path: Path) -> None:
    """Issue 31, item 4: one client holds a handle on a file another removed; once every
    node forgot the file, ``link`` on that handle must answer ESTALE, bounded.  Before the
    fix the directory's history still listed the removal's two-object candidate, the
    servers could not object-sync the forgotten version ("object sync failed") and the
    client retried at once, for ever."""

    async def body(env: Env) -> None:
        remover, holder = env.fss
        fh, a = await remover.create(ROOT, b"f", 0o644, 0, 0, os.O_RDWR)
        await remover.write(fh, 0, b"doomed")
        await remover.release(fh)
        assert (await holder.lookup(ROOT, b"f")).ino == a.ino  # the holder's handle
        before = forgotten(env)
        await remover.unlink(ROOT, b"f")
        await until(lambda: all(a > b for a, b in zip(forgotten(env), before, strict=True)))
        with trio.fail_after(20), pytest.raises(FsError) as stale:
            await holder.link(a.ino, ROOT, b"g")
        assert stale.value.errno == errno.ESTALE, stale.value
        # The id is never an object again: a client that makes a directory with it (the
        # ids are the clients' choice) is refused, and the old handle stays stale.
        arg = {"mode": 0o755, "uid": 0, "gid": 0, "p": ROOT, "o": a.ino, "name": b"reuse"}
        with trio.fail_after(20), pytest.raises(MethodRefused) as refused:
            await env.raw.update([ROOT, a.ino], "fs.mkdir", dict(arg, now=time.time_ns()))
        assert refused.value.code == "forgotten"
        with trio.fail_after(20), pytest.raises(FsError) as stale:
            await holder.getattr(a.ino)
        assert stale.value.errno == errno.ESTALE, stale.value
        assert b"reuse" not in {name for name, _ in await holder.readdir(ROOT)}

    run(tmp_path, body, retention=FORGET_SOON)


def test_an_object_forgotten_without_a_record_fails_in_bounded_time(tmp_path: Path) -> None:
    """An object forgotten before nodes kept the ids they forgot (the record deleted here on
    every node): the operation's needed version is on no server, and the client gives up
    after a bounded number of backed-off rounds (EIO) instead of re-sending for ever."""

    async def body(env: Env) -> None:
        remover, holder = env.fss
        fh, a = await remover.create(ROOT, b"f", 0o644, 0, 0, os.O_RDWR)
        await remover.release(fh)
        assert (await holder.lookup(ROOT, b"f")).ino == a.ino
        before = forgotten(env)
        await remover.unlink(ROOT, b"f")
        await until(lambda: all(a > b for a, b in zip(forgotten(env), before, strict=True)))
        for node in env.cluster.nodes:
            await node.store.write(lambda kv: kv.delete(schema.DB_GONE, schema.oid_key(a.ino)))
        with trio.fail_after(20), pytest.raises(FsError) as failed:
            await holder.link(a.ino, ROOT, b"g")
        assert failed.value.errno == errno.EIO and "no server holds" in str(failed.value)

    run(tmp_path, body, retention=FORGET_SOON)
