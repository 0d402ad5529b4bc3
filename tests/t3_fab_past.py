"""Tier 3: the file system's past on a FaB cluster (issue 39; ``fs/fabpast.py`` over the
versions FaB nodes keep, ``fab/versions.py``), on the in-process cluster with real
protocol clients: paths and contents as they were at earlier moments, after writes, a
rename and a remove, read by a client that did nothing else (its first read syncs);
histories, trees at several moments, snapshots.  Under Q/U the same :class:`Past` calls
walk Q/U's chains (``t3_fs_past.py``)."""

from __future__ import annotations

import os
import random
import time
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio
from fs_helpers import RW_OPTIONS, _metadata_client
from t3_fs_pastrestore import cluster_fs, put, rewrite

from bftfs.fs.fabpast import FabPast
from bftfs.fs.filesystem import FileSystem, open_file_system
from bftfs.fs.past import NotThen, Past
from bftfs.fs.pastrestore import TreeWriter
from bftfs.fs.session import past_of
from bftfs.fsobjects import ROOT
from bftfs.net.frames import DEFAULT_MAX_FRAME
from bftfs.qu.canon import canonical
from bftfs.qu.objects import MethodRefused
from bftfs.rw.client import open_rw_client
from bftfs.testing.cluster import open_cluster

BS = 4096


async def _write(fs: FileSystem, parent: int, name: bytes, data: bytes) -> int:
    fh, a = await fs.create(parent, name, 0o644, 0, 0, os.O_RDWR | os.O_TRUNC)
    await fs.write(fh, 0, data)
    await fs.release(fh)
    return a.ino


async def _content(past: Past, path: str, t: int) -> bytes:
    return await past.content(await past.resolve(path, t))


async def test_paths_and_contents_as_they_were_on_a_fab_cluster(tmp_path: Path) -> None:
    async with (
        open_cluster(tmp_path, clients=2, block_size=BS, inline_limit=0, engine="fab") as cluster,
        AsyncExitStack() as stack,
    ):
        cfg = cluster.config
        rw = await stack.enter_async_context(open_rw_client(cluster.client(0), cfg, **RW_OPTIONS))
        fs = await stack.enter_async_context(
            open_file_system(_metadata_client(cluster, 0, 0), rw, cfg, rng=random.Random(1))
        )
        t0 = time.time_ns()
        d = (await fs.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        f = await _write(fs, d, b"f", b"one" * 2000)  # two blocks
        t1 = time.time_ns()
        await _write(fs, d, b"f", b"two")
        t2 = time.time_ns()
        await fs.rename(d, b"f", ROOT, b"g")
        t3 = time.time_ns()
        await fs.unlink(ROOT, b"g")
        await _write(fs, d, b"h", b"three")
        t4 = time.time_ns()

        reader = await stack.enter_async_context(
            open_rw_client(cluster.client(1), cfg, **RW_OPTIONS)
        )
        past = past_of(cfg, _metadata_client(cluster, 1, 0), cluster.client(1), reader)
        assert isinstance(past, FabPast)
        assert await _content(past, "/d/f", t1) == b"one" * 2000
        assert await _content(past, "/d/f", t2) == b"two"
        assert await _content(past, "/g", t3) == b"two"
        assert await _content(past, "/d/h", t4) == b"three"
        for path, t in (("/d", t0), ("/d/f", t3), ("/g", t2), ("/g", t4), ("/d/h", t3)):
            with pytest.raises(NotThen):
                await past.resolve(path, t)

        trees = await past.trees("/", [t1, t3, t4])
        assert [sorted(t) for t in trees] == [
            ["", "d", "d/f"],
            ["", "d", "g"],
            ["", "d", "d/h"],
        ]
        assert trees[1]["g"].oid == f

        hist = await past.history(f)
        assert hist.complete and hist.versions[-1].changes == ("created",)
        assert hist.versions[-1].time_ns is not None and t0 < hist.versions[-1].time_ns < t1
        times = [v.time_ns for v in hist.versions]
        assert times == sorted(times, reverse=True) and len(set(times)) == len(times)
        assert any("written" in v.changes for v in hist.versions)
        assert hist.at(t0) is None  # before it was created

        await past.snapshot_create("before-rename", t2)
        assert await past.snapshots() == {"before-rename": t2}
        assert "syncs" in past.statistics()


async def test_a_request_time_years_ahead_is_refused_and_moves_no_versions_clock(
    tmp_path: Path,
) -> None:
    """A FaB request id is its client's declared time, the time of the versions it makes
    (``fab/versions.py``): one ten years ahead is refused ``ahead`` by every correct node
    (``node/fab_server.py`` admit), or it would date every later version of every object
    after it.  Fails without the check (the update is executed)."""
    async with open_cluster(tmp_path, clients=1, engine="fab") as cluster:
        meta = _metadata_client(cluster, 0, 0)
        arg = {"mode": 0o755, "uid": 0, "gid": 0, "now": time.time_ns()}
        meta.rid = time.time_ns() + 10 * 365 * 86400 * 10**9
        with pytest.raises(MethodRefused) as refused:
            await meta.update([ROOT], "fs.mkroot", arg)
        assert str(refused.value).startswith("ahead")
        replicas = [f.fab_replica for f in cluster.faults if f.fab_replica is not None]
        assert len(replicas) == 6
        assert all(r.execution.versions.clock < time.time_ns() for r in replicas)
        meta.rid = time.time_ns()  # the same request at a true time is made
        await meta.update([ROOT], "fs.mkroot", arg)


async def test_a_history_larger_than_a_frame_is_read_in_pages(tmp_path: Path) -> None:
    """One object whose versions together exceed the 8 MiB frame limit (40 versions of a
    file with ~240 KiB of extended attributes): its history reads back whole, each version
    with its own value, in pages (``fab/pastclient.py``).  Without pages a node's answer is
    one oversized frame and the read fails (``VersionsUnavailable``)."""
    async with (
        open_cluster(tmp_path, clients=2, block_size=BS, engine="fab") as cluster,
        AsyncExitStack() as stack,
    ):
        cfg = cluster.config
        rw = await stack.enter_async_context(open_rw_client(cluster.client(0), cfg, **RW_OPTIONS))
        fs = await stack.enter_async_context(
            open_file_system(_metadata_client(cluster, 0, 0), rw, cfg, rng=random.Random(1))
        )
        f = await _write(fs, ROOT, b"f", b"x")
        rng = random.Random(40)
        for name in (b"user.a", b"user.b", b"user.c"):
            await fs.setxattr(f, name, rng.randbytes(60_000))
        values = [rng.randbytes(60_000) for _ in range(40)]
        moments = []
        for v in values:
            await fs.setxattr(f, b"user.v", v)
            moments.append(time.time_ns())
        reader = await stack.enter_async_context(
            open_rw_client(cluster.client(1), cfg, **RW_OPTIONS)
        )
        meta = _metadata_client(cluster, 1, 0)
        past = past_of(cfg, meta, cluster.client(1), reader)
        hist = await past.history(f)
        assert hist.complete
        sizes = sum(len(canonical(v.state)) for v in hist.versions)
        assert sizes > DEFAULT_MAX_FRAME  # (it could not come in one frame)
        xattrs = [
            v.state["x"][b"user.v"] for v in reversed(hist.versions) if b"user.v" in v.state["x"]
        ]
        assert xattrs == values
        for moment, v in zip(moments, values, strict=True):
            state = (await past.state_at(f, moment)).state
            assert state is not None and state["x"][b"user.v"] == v


@pytest.mark.slow
async def test_a_tree_of_300_files_logs_and_restores_as_it_was(tmp_path: Path) -> None:
    """Hundreds of files under FaB history: three directories of 100 files (one in ten in
    PASIS blocks), then a tenth of them rewritten, removed and added.  A directory's log
    names every file added and removed; the tree restored elsewhere as it was before the
    changes holds every file with its bytes, as the nodes' versions and a fresh client
    read them (``benchmarks/results/2026-11-27-fab-history-scale.md``: the same on node
    processes, timed).  18 to 30 s here, most of it the FaB rounds of writing 300 files twice;
    reading them back one by one through a file system would take 20 s more."""
    async with cluster_fs(tmp_path, "fab") as (writer, _, new_past, fresh):
        rng = random.Random(300)
        top = (await writer.mkdir(ROOT, b"scale", 0o755, 0, 0)).ino
        subs = [(await writer.mkdir(top, f"d{d}".encode(), 0o755, 0, 0)).ino for d in range(3)]
        files, then = {}, {}
        for d, sub in enumerate(subs):
            for i in range(100):
                then[f"d{d}/f{i}"] = rng.randbytes(5000 if i % 10 == 0 else 300)
                files[d, i] = await put(writer, sub, f"f{i}".encode(), then[f"d{d}/f{i}"])
        await writer.write_back()
        moment = writer.clock_ns()
        await trio.sleep(0.01)  # (versions after it are dated after it)
        for i in range(0, 100, 10):
            await rewrite(writer, files[0, i + 1], b"rewritten")
            await writer.unlink(subs[0], f"f{i + 2}".encode())
            await put(writer, subs[0], f"new{i}".encode(), b"new")
        await writer.write_back()
        past = new_past()
        changes = {c for v in (await past.history(subs[0])).versions for c in v.changes}
        assert {f"added f{i}" for i in range(100)} <= changes
        assert {f"added new{i}" for i in range(0, 100, 10)} <= changes
        assert {f"removed f{i + 2}" for i in range(0, 100, 10)} <= changes
        (tree_then,) = await past.trees("/scale", [moment])
        tw = TreeWriter(writer, past.content, uid=0, gid=0, as_root=True)
        counts = await tw.write(tree_then, "/copy")
        await writer.write_back()
        assert counts.files == 300
        (copy,) = await new_past().trees("/copy", [writer.clock_ns()])
        assert sorted(copy) == sorted(["", "d0", "d1", "d2", *then])
        assert {rel: await past.content(copy[rel]) for rel in then} == then
        reader = await fresh()
        for rel in ("d0/f1", "d0/f2", "d2/f90"):  # (a rewritten, a removed, a block file)
            ino = (await reader.lookup(ROOT, b"copy")).ino
            for name in rel.split("/"):
                ino = (await reader.lookup(ino, name.encode())).ino
            fh = await reader.open(ino, os.O_RDONLY)
            assert await reader.read(fh, 0, 10_000) == then[rel]
            await reader.release(fh)
