"""Tier 3: a past tree written back through a file system (``fs/history/restore.py``, ``bftfs
restore`` into the cluster; issue 36), on the in-process cluster with real protocol
clients: the restored tree reads back as it was (contents inline and in blocks, modes,
times, a symbolic link), with its small files sent several to an update by directory
write-back; restored in place, files that are as they were get no new version."""

from __future__ import annotations

import os
import random
import stat as st
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from fs_helpers import RW_OPTIONS, _metadata_client

from bftfs.fs.filesystem import FileSystem, open_file_system
from bftfs.fs.history import Past, TreeWriter
from bftfs.fs.session import past_of
from bftfs.fsobjects import ROOT
from bftfs.rw.client import open_rw_client
from bftfs.testing.cluster import open_cluster

BS = 4096
#: Files of the tree: inline ones (at most the inline limit) and ones in blocks.
FILES = 20


@asynccontextmanager
async def cluster_fs(
    tmp_path: Path, engine: str = "qu"
) -> AsyncIterator[tuple[FileSystem, FileSystem, Any, Any]]:
    """A writer (as a mount opens it: write-behind, leases, write-back), a plain second
    client, a maker of history readers (each reads histories afresh) and one of plain
    clients (nothing cached: what the servers hold now), on a cluster of metadata
    ``engine``."""
    async with (
        open_cluster(tmp_path, clients=3, block_size=BS, inline_limit=1024, engine=engine) as cl,
        AsyncExitStack() as stack,
    ):

        def meta(k: int) -> Any:
            """Client ``k``'s Q/U client, or its FaB client on a FaB cluster."""
            return _metadata_client(cl, k, 0)

        cfg = cl.config
        rws = [
            await stack.enter_async_context(open_rw_client(cl.client(k), cfg, **RW_OPTIONS))
            for k in range(3)
        ]
        writer = await stack.enter_async_context(
            open_file_system(
                meta(0),
                rws[0],
                cfg,
                rng=random.Random(1),
                write_behind=True,
                lease_term=30.0,
                commit=5.0,
            )
        )
        assert writer.meta.leases is not None  # recalls are pushed to it, as to a mount
        writer.meta.leases.listen(cl.client(0), cfg.node_ids)
        other = await stack.enter_async_context(
            open_file_system(meta(1), rws[1], cfg, rng=random.Random(2))
        )

        def past() -> Past:
            return past_of(cfg, meta(2), cl.client(2), rws[2])

        async def fresh() -> FileSystem:
            return await stack.enter_async_context(
                open_file_system(meta(1), rws[1], cfg, rng=random.Random(3))
            )

        yield writer, other, past, fresh


async def put(fs: FileSystem, parent: int, name: bytes, data: bytes, mode: int = 0o644) -> int:
    fh, attr = await fs.create(parent, name, st.S_IFREG | mode, 0, 0, os.O_RDWR)
    await fs.write(fh, 0, data)
    await fs.release(fh)
    return attr.ino


async def read_tree(fs: FileSystem, ino: int) -> dict[str, Any]:
    """Every entry under directory ``ino``: (mode, mtime, bytes or link target or None)."""
    out: dict[str, Any] = {}
    for name, attr in await fs.readdir(ino):
        key = name.decode()
        if st.S_ISDIR(attr.mode):
            inner = await read_tree(fs, attr.ino)
            out[key] = (attr.mode, attr.mtime_ns, None)
            out.update({f"{key}/{k}": v for k, v in inner.items()})
        elif st.S_ISLNK(attr.mode):
            out[key] = (attr.mode, None, await fs.readlink(attr.ino))
        else:
            fh = await fs.open(attr.ino, os.O_RDONLY)
            data = await fs.read(fh, 0, attr.size + 1)
            await fs.release(fh)
            out[key] = (attr.mode, attr.mtime_ns, data)
    return out


async def build(fs: FileSystem) -> tuple[int, dict[str, int]]:
    """``/tree``: two directories of files (half inline, half in blocks), one read-only,
    and a link; its object id and the files' ids by name."""
    rng = random.Random(36)
    tree = (await fs.mkdir(ROOT, b"tree", 0o755, 0, 0)).ino
    sub = (await fs.mkdir(tree, b"sub", 0o750, 0, 0)).ino
    ids = {}
    for i in range(FILES):
        data = rng.randbytes(300 if i % 2 else 3 * BS + 17)
        where, prefix = (tree, "") if i < FILES // 2 else (sub, "sub/")
        ids[f"{prefix}f{i}"] = await put(fs, where, f"f{i}".encode(), data, 0o600 + i % 3)
    await fs.symlink(tree, b"link", b"sub/f15", 0, 0)
    await fs.write_back()
    return tree, ids


async def rewrite(fs: FileSystem, ino: int, data: bytes) -> None:
    fh = await fs.open(ino, os.O_RDWR | os.O_TRUNC)
    await fs.write(fh, 0, data)
    await fs.release(fh)


@pytest.mark.parametrize("engine", ["qu", "fab"])
async def test_a_restored_tree_reads_back_as_it_was_its_small_files_batched(
    tmp_path: Path, engine: str
) -> None:
    """Restored elsewhere (``/copy/of/tree``, its parents made): the tree as it was, the
    small files' creates sent several to an update with their content, and each file's
    times and mode sent with its content, not in an update of their own (both engines:
    FaB's versions, ``fs/history/fab.py``)."""
    async with cluster_fs(tmp_path, engine) as (writer, other, new_past, fresh):
        tree, ids = await build(other)
        then = await read_tree(other, tree)
        moment = writer.clock_ns()
        await trio.sleep(0.01)
        await rewrite(other, ids["f0"], b"changed")
        await other.unlink(tree, b"f1")
        past = new_past()
        (tree_then,) = await past.trees("/tree", [moment])
        tw = TreeWriter(writer, past.content, uid=0, gid=0, as_root=True)
        counts = await tw.write(tree_then, "/copy/of/tree")
        copy = (await other.lookup((await other.lookup(ROOT, b"copy")).ino, b"of")).ino
        assert await read_tree(other, (await other.lookup(copy, b"tree")).ino) == then
        assert (counts.files, counts.links, counts.dirs) == (FILES, 1, 2)
        sent = writer.methods
        assert sent["fs.createmany"] >= 2 and sent["fs.createwrite"] == 0, sent
        assert sent["fs.setattr"] <= 2, sent  # the two directories' times, no file's


@pytest.mark.parametrize("engine", ["qu", "fab"])
@pytest.mark.slow
async def test_restored_in_place_only_what_changed_gets_a_new_version(
    tmp_path: Path, engine: str
) -> None:
    """Restored over itself with the tree as it is now: the rewritten, removed and
    chmod-ed files come back, the others get no new version (nor are their blocks read);
    on both engines."""
    async with cluster_fs(tmp_path, engine) as (writer, other, new_past, fresh):
        tree, ids = await build(other)
        then = await read_tree(other, tree)
        moment = writer.clock_ns()
        await trio.sleep(0.01)
        await rewrite(other, ids["f0"], b"changed")
        await other.unlink(tree, b"f1")
        await other.setattr(ids["sub/f12"], mode=0o644)
        past = new_past()
        lengths = {rel: len((await past.history(oid)).versions) for rel, oid in ids.items()}
        past = new_past()
        old, now = await past.trees("/tree", [moment, writer.clock_ns()])
        tw = TreeWriter(writer, past.content, uid=0, gid=0, as_root=True)
        counts = await tw.write(old, "/tree", current=now)
        assert await read_tree(await fresh(), tree) == then
        # Unchanged: the other files and the link.
        assert (counts.unchanged, counts.files, counts.links) == (FILES - 2, 3, 0), counts
        past = new_past()
        for rel, oid in ids.items():
            grown = len((await past.history(oid)).versions) - lengths[rel]
            if rel in ("f0", "sub/f12"):
                assert grown >= 1, rel  # (a truncation and the write: one or two)
            elif rel != "f1":  # (made again: a new object)
                assert grown == 0, rel


async def test_a_tree_of_several_directories_is_sent_several_directories_at_once(
    tmp_path: Path,
) -> None:
    """Four directories of small files restored elsewhere: their ``fs.createmany``
    updates overlap (different directories' updates need not follow one another; one
    after the other, a 1 000-file tree's were ~170 rounds in a row), every directory is
    made and gets its times, and the tree reads back as it was."""
    async with cluster_fs(tmp_path) as (writer, other, new_past, fresh):
        top = (await other.mkdir(ROOT, b"many", 0o755, 0, 0)).ino
        for d in range(4):
            sub = (await other.mkdir(top, f"d{d}".encode(), 0o755, 0, 0)).ino
            for i in range(12):
                await put(other, sub, f"f{i}".encode(), bytes([d, i]) * 50)
        then = await read_tree(other, top)
        moment = writer.clock_ns()
        past = new_past()
        (tree_then,) = await past.trees("/many", [moment])
        in_flight, most = [0], [0]
        update_now = writer.meta.update_now

        async def watched(objects: Any, method: str, arg: Any) -> Any:
            if method != "fs.createmany":
                return await update_now(objects, method, arg)
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
            try:
                return await update_now(objects, method, arg)
            finally:
                in_flight[0] -= 1

        writer.meta.update_now = watched  # type: ignore[method-assign]
        tw = TreeWriter(writer, past.content, uid=0, gid=0, as_root=True)
        counts = await tw.write(tree_then, "/copy")
        copy = (await other.lookup(ROOT, b"copy")).ino
        assert await read_tree(await fresh(), copy) == then
        assert (counts.files, counts.dirs) == (48, 5)
        per_update = writer.outbox.writeback.batch  # 12 files a directory: whole updates
        assert writer.methods["fs.createmany"] >= 4 * -(-12 // per_update), writer.methods
        assert most[0] >= 2, most  # one directory after the other: 1
