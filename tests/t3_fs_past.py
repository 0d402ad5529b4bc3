"""Tier 3: a file's past versions read back exactly, whatever the writers' clocks (issue 17).

PASIS timestamps take the writer's clock (a hybrid clock, rw/timestamp.py), so without
care a writer whose clock lags would give its blocks Times *before* blocks an earlier
version holds, and reading that earlier version "as of its time" would show the later
writer's bytes.  Files record the newest Time of their blocks (``bt``) and writers choose
Times above it; this test makes the second writer's clock lag 30 s and checks each
version's content byte for byte, on the in-process cluster with real protocol clients.
"""

from __future__ import annotations

import functools
import os
import random
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import trio
from fs_helpers import RW_OPTIONS, qu_client, writing_client

from bftfs.fs.filesystem import open_file_system
from bftfs.fs.history import Past, PastView, Undecided
from bftfs.fsobjects import ROOT
from bftfs.qu import schema
from bftfs.qu.classify import QUThresholds
from bftfs.qu.pastread import PastReader
from bftfs.rw.client import open_rw_client
from bftfs.testing.byzantine import history
from bftfs.testing.cluster import Cluster, open_cluster

BS = 4096


def lagging_clock() -> int:
    return time.time_ns() - 30 * 10**9


async def test_a_lagging_writer_never_shows_in_an_earlier_version(tmp_path: Path) -> None:
    async with (
        open_cluster(tmp_path, clients=3, block_size=BS, inline_limit=0) as cluster,
        AsyncExitStack() as stack,
    ):
        cfg = cluster.config
        rw_a = await stack.enter_async_context(open_rw_client(cluster.client(0), cfg, **RW_OPTIONS))
        rw_b = await stack.enter_async_context(
            open_rw_client(cluster.client(1), cfg, clock_ns=lagging_clock, **RW_OPTIONS)
        )
        rw_r = await stack.enter_async_context(open_rw_client(cluster.client(2), cfg, **RW_OPTIONS))
        fs_a = await stack.enter_async_context(
            open_file_system(qu_client(cluster, 0), rw_a, cfg, rng=random.Random(1))
        )
        fs_b = await stack.enter_async_context(
            open_file_system(qu_client(cluster, 1), rw_b, cfg, rng=random.Random(2))
        )
        th = QUThresholds.from_config(cfg)
        past = Past(qu_client(cluster, 2), PastReader(cluster.client(2), th), rw_r, BS)

        # Version 1 (client A): blocks 0 and 1.  Version 2 (A): block 0 only.  Version 3
        # (B, clock 30 s behind): block 1 only.  B's block-1 Time is above the block's
        # previous version (PASIS orders each block), but without ``bt`` it would lie below
        # A's version-2 block Time, and version 2 would be read with B's block 1.
        fh, attrs = await fs_a.create(ROOT, b"f", 0o644, 0, 0, os.O_RDWR)
        await fs_a.write(fh, 0, b"1" * (2 * BS))
        await fs_a.release(fh)
        ino = attrs.ino
        fh = await fs_a.open(ino, os.O_RDWR)
        await fs_a.write(fh, 0, b"2" * BS)
        await fs_a.release(fh)
        fh = await fs_b.open(ino, os.O_RDWR)
        await fs_b.write(fh, BS, b"3" * BS)
        await fs_b.release(fh)

        hist = await past.history(ino)
        written = [v for v in hist.versions if "written" in v.changes]
        assert len(written) == 3, [(v.client, v.changes) for v in hist.versions]
        contents = [await past.content(v) for v in reversed(written)]
        assert contents == [
            b"1" * (2 * BS),
            b"2" * BS + b"1" * BS,
            b"2" * BS + b"3" * BS,
        ]
        assert hist.versions[-1].changes == ("created",) and hist.complete


def _prune_all_but_newest(cluster: Cluster, nodes: list[int], oids: list[int]) -> None:
    """As retention on ``nodes`` would: every version of ``oids`` but the newest goes."""

    def prune(kv: Any, oid: int) -> None:
        stored = schema.oldest_versions(kv, oid, 1 << 20)
        for lt, _ in stored[:-1]:
            v = schema.load_version(kv, oid, lt)
            if v is not None:
                schema.delete_version(kv, oid, v)

    for i in nodes:
        for oid in oids:
            cluster.nodes[i].store.write_now(functools.partial(prune, oid=oid))


async def test_a_time_travel_view_never_shows_a_file_a_liar_dates_too_early(
    tmp_path: Path,
) -> None:
    """Issue 31, item 1, for ``mount --at`` (:class:`PastView`): node 1 dates every
    version 1970 and the old versions are left at nodes 1 and 2 only (the others pruned
    them).  Before the file existed the view must not show it (the versions' times are
    unknown: no answer), while the newest versions, which every node reports, still read
    back.  Before the fix the view listed the file with its first contents."""
    async with writing_client(tmp_path, block_size=BS, seed=1) as (cluster, rw, fs):
        cfg = cluster.config
        th = QUThresholds.from_config(cfg)
        past = Past(qu_client(cluster, 1), PastReader(cluster.client(1), th), rw, BS)
        before = time.time_ns()
        for text in (b"first", b"second", b"third"):
            fh, a = await fs.create(ROOT, b"f", 0o644, 0, 0, os.O_RDWR | os.O_TRUNC)
            await fs.write(fh, 0, text)
            await fs.release(fh)
        fh, _ = await fs.create(ROOT, b"g", 0o644, 0, 0, os.O_RDWR)  # the root's "added f"
        await fs.release(fh)  # is old now: pruned and misdated like f's first versions
        after = time.time_ns()
        cluster.faults[1].byzantine(history.KIND_VERSIONS, history.misdate)
        _prune_all_but_newest(cluster, [0, 3, 4, 5], [ROOT, a.ino])

        then = PastView(past, before, BS)
        with pytest.raises(Undecided):
            await then.lookup(ROOT, b"f")
        now = PastView(Past(past.qu, past.reader, rw, BS), after, BS)
        found = await now.lookup(ROOT, b"f")
        fh = await now.open(found.ino, os.O_RDONLY)
        assert await now.read(fh, 0, 100) == b"third"


async def _reference_tree(past: Past, path: str, time_ns: int) -> dict[str, Any]:
    """The tree at ``time_ns`` read one object after the other with :meth:`Past.state_at`
    (the walk :meth:`Past.tree` made before issue 36): the oracle for :meth:`Past.trees`."""
    from bftfs.fs.history import Reclaimed
    from bftfs.fsobjects.dirents import all_entries

    top = await past.resolve(path, time_ns)
    out = {"": top}
    todo = [("", top)]
    while todo:
        rel, v = todo.pop(0)
        if v.state is None or v.state.get("k") != "d":
            continue
        for name, entry in sorted(all_entries(v.state["e"]).items()):
            try:
                child = await past.state_at(int(entry[0]), time_ns)
            except Reclaimed:
                continue
            if child is not None:
                crel = f"{rel}/{name.decode()}" if rel else name.decode()
                out[crel] = child
                todo.append((crel, child))
    return out


def _shape(tree: dict[str, Any]) -> list[tuple[str, int, bytes]]:
    """What a tree says, in its order: paths, objects and the versions' timestamps."""
    return [(rel, v.oid, v.lt.encode()) for rel, v in tree.items()]


async def test_trees_at_several_moments_read_concurrently_match_one_walk_per_moment(
    tmp_path: Path,
) -> None:
    """Issue 36: :meth:`Past.trees` reads each object once for every moment, its batches
    (a directory's entries) up to PARALLEL at a time; its trees must be exactly the trees
    read one object at a time at each moment (same paths in the same parents-first order,
    same versions), through renames, removals, a directory replaced by a file of the same
    name and rewritten files; and with ``whole`` it leaves each object's history at hand."""
    from bftfs.fs.history import past as pastmod

    async with writing_client(tmp_path, block_size=BS, seed=3) as (cluster, rw, fs):
        cfg = cluster.config
        th = QUThresholds.from_config(cfg)

        def past() -> Past:
            return Past(qu_client(cluster, 1), PastReader(cluster.client(1), th), rw, BS)

        async def put(parent: int, name: bytes, data: bytes) -> int:
            fh, a = await fs.create(parent, name, 0o644, 0, 0, os.O_RDWR | os.O_TRUNC)
            await fs.write(fh, 0, data)
            await fs.release(fh)
            return a.ino

        top = (await fs.mkdir(ROOT, b"t", 0o755, 0, 0)).ino
        subs = [(await fs.mkdir(top, f"d{i}".encode(), 0o755, 0, 0)).ino for i in range(3)]
        for i, d in enumerate(subs):
            for j in range(6):
                await put(d, f"f{j}".encode(), f"{i}.{j} one".encode())
        moments = [time.time_ns()]
        await put(subs[0], b"f1", b"0.1 two")
        await fs.rename(subs[1], b"f2", subs[2], b"moved")
        await fs.unlink(subs[2], b"f0")
        moments.append(time.time_ns())
        for j in (0, 1, 3, 4, 5):  # f2 was moved away
            await fs.unlink(subs[1], f"f{j}".encode())
        await fs.rmdir(top, b"d1")
        await put(top, b"d1", b"a file where a directory was")
        await put(subs[0], b"f1", b"0.1 three")
        moments.append(time.time_ns())

        want = [_shape(await _reference_tree(past(), "/t", m)) for m in moments]
        active, most = [0], [0]
        prefetch = pastmod.Past._prefetch

        async def counted(self: Past, *args: Any) -> Any:
            active[0] += 1
            most[0] = max(most[0], active[0])
            try:
                return await prefetch(self, *args)
            finally:
                active[0] -= 1

        reports: list[tuple[int, int]] = []
        reader = past()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(pastmod.Past, "_prefetch", counted)
            got = await reader.trees("/t", moments, progress=lambda d, k: reports.append((d, k)))
        assert [_shape(t) for t in got] == want
        assert 1 < most[0] <= pastmod.PARALLEL, most
        # Every object once for all three moments (the top, 3 + 1 entries under it, 18 +
        # 1 files below them), and the last report says all of them were read.
        assert reports[-1] == (len(reports), len(reports)) and len(reports) == 24, reports

        whole = past()
        got = await whole.trees("/t", moments, whole=True)
        assert [_shape(t) for t in got] == want
        assert {v.oid for t in got for v in t.values()} <= set(whole._histories)


@pytest.mark.parametrize("lie", [None, "forge-chain", "forge-states", "misdate", "empty-chain"])
async def test_a_tree_read_in_batches_is_the_one_read_object_by_object_whatever_a_liar_says(
    tmp_path: Path, lie: str | None
) -> None:
    """Issue 36: :meth:`Past.trees` reads a batch of objects' chains per ``qu.chains``
    round, with the states wanted offered by one node each.  With node 1 lying in those
    replies (forged digests and states, 1970 times, nothing at all) the trees must be the
    ones read object by object over ``qu.versions`` from honest nodes; and honestly, a
    tree of 23 objects costs a few rounds and state requests, not one of each per object
    (24 and 23 before)."""
    async with writing_client(tmp_path, block_size=BS, seed=4) as (cluster, rw, fs):
        cfg = cluster.config
        th = QUThresholds.from_config(cfg)

        def past() -> Past:
            return Past(qu_client(cluster, 1), PastReader(cluster.client(1), th), rw, BS)

        async def put(parent: int, name: bytes, data: bytes) -> None:
            fh, _ = await fs.create(parent, name, 0o644, 0, 0, os.O_RDWR | os.O_TRUNC)
            await fs.write(fh, 0, data)
            await fs.release(fh)

        top = (await fs.mkdir(ROOT, b"t", 0o755, 0, 0)).ino
        subs = [(await fs.mkdir(top, f"d{i}".encode(), 0o755, 0, 0)).ino for i in range(2)]
        for i, d in enumerate(subs):
            for j in range(10):
                await put(d, f"f{j}".encode(), f"{i}.{j} one".encode() * (j + 1))
        moments = [time.time_ns()]
        for j in range(0, 10, 3):
            await put(subs[1], f"f{j}".encode(), f"1.{j} two".encode())
        await fs.unlink(subs[0], b"f9")
        moments.append(time.time_ns())
        want = [await _reference_tree(past(), "/t", m) for m in moments]
        if lie is not None:
            for kind, wrapper in history.BEHAVIOURS[lie].items():
                cluster.faults[1].byzantine(kind, wrapper)
        reader = past()
        got = await reader.trees("/t", moments)
        for g, w in zip(got, want, strict=True):
            assert _shape(g) == _shape(w)
            assert [v.state for v in g.values()] == [v.state for v in w.values()]
        if lie is None:
            assert reader.reader.rounds <= 8 and reader.reader.fetches <= 10, reader.statistics()


async def test_a_node_silent_on_states_costs_a_reader_one_timeout_not_one_per_version(
    tmp_path: Path,
) -> None:
    """A history reader fetches each old version's state from one node that holds it, the
    first of them: a node that lets such a request time out (silent, withholding, or
    overloaded) is asked last afterwards.  Before, every version it held cost the reader a
    whole ``ROUND_TIMEOUT`` (5 s): the campaign's final history reads waited 10-50 s on one
    Byzantine node."""
    async with writing_client(tmp_path, block_size=BS, seed=5) as (cluster, rw, fs):
        cfg = cluster.config
        th = QUThresholds.from_config(cfg)

        async def put(parent: int, name: bytes, data: bytes) -> int:
            fh, attr = await fs.create(parent, name, 0o644, 0, 0, os.O_RDWR | os.O_TRUNC)
            await fs.write(fh, 0, data)
            await fs.release(fh)
            return attr.ino

        names = [f"f{i}".encode() for i in range(4)]
        inos = [await put(ROOT, name, b"old " + name) for name in names]
        moment = time.time_ns()
        for name in names:
            await put(ROOT, name, b"new " + name)

        def past() -> Past:
            return Past(qu_client(cluster, 1), PastReader(cluster.client(1), th), rw, BS)

        honest = past()
        want = [(await honest.state_at(ino, moment)).state for ino in inos]
        asked: set[str] = set()  # (the transport resends a request while it waits)

        async def silent(ctx: Any, payload: Any, handler: Any) -> Any:
            asked.add(repr(payload))
            await trio.sleep_forever()

        cluster.faults[0].byzantine(history.KIND_STATES, silent)
        reader = past()
        got = [(await reader.state_at(ino, moment)).state for ino in inos]
        assert got == want
        assert len(asked) == 1, reader.statistics()
