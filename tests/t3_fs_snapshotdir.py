"""The snapshot browser a live mount serves (``fs/history/snapshots.py``, issue 36) on the
in-process cluster, at the file-system layer: what the kernel never sends through a real
mount (a create of ``.snapshots`` it would answer EEXIST itself, a live entry of that name
made before mounts showed snapshots) and the routing of file handles, which the view and
the live file system both number from 1."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest
from fs_helpers import qu_client, writing_client

from bftfs.fs.errors import FsError
from bftfs.fs.history import PAST_FH, SNAPDIR, SNAPDIR_NAME, Past, SnapshotBrowser, is_live
from bftfs.fsobjects import ROOT
from bftfs.qu.classify import QUThresholds
from bftfs.qu.pastread import PastReader

BS = 4096


async def _errno_of(call: object) -> int:
    with pytest.raises(FsError) as e:
        await call  # type: ignore[misc]
    return e.value.errno


async def test_the_browser_routes_by_inode_and_handle_and_guards_the_name(
    tmp_path: Path,
) -> None:
    async with writing_client(tmp_path, block_size=BS, seed=36) as (cluster, rw, live):
        cfg = cluster.config
        past = Past(
            qu_client(cluster, 0), PastReader(cluster.client(0), QUThresholds.from_config(cfg)),
            rw, BS,
        )  # fmt: skip
        browser = SnapshotBrowser(live, past, BS)

        async def put(name: bytes, data: bytes) -> int:
            fh, a = await live.create(ROOT, name, 0o644, 0, 0, os.O_RDWR | os.O_TRUNC)
            await live.write(fh, 0, data)
            await live.release(fh)
            return a.ino

        ino = await put(b"f", b"then" * 2000)  # in blocks
        # A live directory named .snapshots, made below the browser (as before it existed)
        await live.mkdir(ROOT, SNAPDIR_NAME, 0o755, 0, 0)
        await past.snapshot_create("s1", time.time_ns())
        await put(b"f", b"now")

        # The live entry is shadowed: neither listed nor found; the snapshots' directory is
        names = [n for n, _ in await browser.readdir(ROOT)]
        assert b"f" in names and SNAPDIR_NAME not in names
        assert (await browser.lookup(ROOT, SNAPDIR_NAME)).ino == SNAPDIR
        assert [n for n, _ in await browser.readdir(SNAPDIR)] == [b"s1"]
        root = await browser.lookup(SNAPDIR, b"s1")
        assert not is_live(root.ino) and root.ino != SNAPDIR
        assert (await browser.lookup(root.ino, b"..")).ino == SNAPDIR
        assert (await browser.lookup(SNAPDIR, b"..")).ino == ROOT
        f = await browser.lookup(root.ino, b"f")
        assert f.ino != ino and not is_live(f.ino)

        # Handles: the live one and the view's are both the first each opened
        live_fh = await browser.open(ino, os.O_RDONLY)
        past_fh = await browser.open(f.ino, os.O_RDONLY)
        assert live_fh < PAST_FH <= past_fh
        assert await browser.read(live_fh, 0, 100) == b"now"
        assert await browser.read(past_fh, 0, 8) == b"thenthen"
        assert await _errno_of(browser.write(past_fh, 0, b"x")) == errno.EROFS
        await browser.release(past_fh)
        await browser.release(live_fh)

        # The name is taken in the root, and nothing under .snapshots changes
        for call in (
            browser.create(ROOT, SNAPDIR_NAME, 0o644, 0, 0, os.O_RDWR),
            browser.mkdir(ROOT, SNAPDIR_NAME, 0o755, 0, 0),
            browser.symlink(ROOT, SNAPDIR_NAME, b"f", 0, 0),
            browser.link(ino, ROOT, SNAPDIR_NAME),
        ):
            assert await _errno_of(call) == errno.EEXIST
        for call in (
            browser.rename(ROOT, b"f", ROOT, SNAPDIR_NAME),
            browser.rename(ROOT, SNAPDIR_NAME, ROOT, b"g"),
            browser.rmdir(ROOT, SNAPDIR_NAME),
            browser.create(root.ino, b"new", 0o644, 0, 0, os.O_RDWR),
            browser.mkdir(SNAPDIR, b"s2", 0o755, 0, 0),
            browser.setattr(f.ino, mode=0o600),
            browser.setxattr(SNAPDIR, b"user.x", b"1"),
            browser.link(f.ino, ROOT, b"stolen"),
            browser.rename(root.ino, b"f", ROOT, b"g"),
        ):
            assert await _errno_of(call) == errno.EROFS
        assert await live.lookup(ROOT, b"f")  # still there, untouched
