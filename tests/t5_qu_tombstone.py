"""Tier 5: removed files' Q/U objects shrink to tombstones on the in-process cluster
(issue 16; docs/qu.md, "Reclaiming removed objects").

A retention of no age, so each node's pruner looks at a removed object at once: once every
node lists its final version as the newest, each node keeps only the object's history and
that version.  A handle another mount still holds on a removed file keeps reading it as
removed (never revived), and one Byzantine node lying in its histories stops the
reclamation (nothing deleted) without making a removed object reappear or a live one go.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio
from fs_helpers import Env, run

from bftfs.fs.errors import Forgotten, NotFound, Removed
from bftfs.fsobjects import ROOT
from bftfs.policy import RetentionPolicy
from bftfs.qu import schema
from bftfs.qu.objects import MethodRefused
from bftfs.testing.byzantine.qu import make_byzantine

OPTIONS: dict[str, Any] = {
    "retention": RetentionPolicy(keep_hourly=0, keep_daily=0, keep_seconds=0.0, keep_versions=2)
}
SIZES = (0, 100, 3000, 20_000, 70_000)
#: What a removed object may keep on a node: its history (with the authenticator) and one
#: version (state with any inline content, applied table, answer).
BOUND = 1536


def footprint(kv: Any, oid: int) -> tuple[int, int, int]:
    """(versions, stored requests the object owns, bytes of all of it and the history)."""
    count = owned = size = 0
    raw = kv.get(schema.DB_RH, schema.oid_key(oid))
    size += len(raw) if raw is not None else 0
    for v in schema.iter_versions(kv, oid):
        count += 1
        size += len(kv.get(schema.DB_VER, schema.ver_key(oid, v.lt)))
        req = kv.get(schema.DB_REQ, v.lt.encode())
        if req is not None and v.objects[0] == oid:
            owned += 1
            size += len(req)
    return count, owned, size


async def until(cond: Any, within: float = 30.0) -> None:
    """Until ``cond()`` holds: a condition over the nodes' counters polled under a
    deadline (a pruner waiting to retry is never idle, and the sixth node's update may
    still be on its way)."""
    with trio.fail_after(within):
        while True:
            if cond():
                return
            await trio.sleep(0.02)


def tombstones(env: Env) -> list[int]:
    return [node.stats["qu.tombstones"] for node in env.cluster.nodes]


async def populate(env: Env) -> tuple[int, dict[bytes, int], int]:
    """A directory with one file of each size and a file kept in the root."""
    fs = env.fs
    d = (await fs.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
    files = {}
    for i, size in enumerate(SIZES):
        name = b"f%d" % i
        fh, a = await fs.create(d, name, 0o644, 0, 0, os.O_RDWR)
        await fs.write(fh, 0, os.urandom(size))
        await fs.release(fh)
        files[name] = a.ino
    fh, keep = await fs.create(ROOT, b"keep", 0o644, 0, 0, os.O_RDWR)
    await fs.write(fh, 0, b"still here")
    await fs.release(fh)
    return d, files, keep.ino


async def remove(env: Env, d: int, files: dict[bytes, int]) -> None:
    for name in files:
        await env.fs.unlink(d, name)
    await env.fs.rmdir(ROOT, b"d")


async def still_removed(env: Env, d: int, files: dict[bytes, int], keep: int) -> None:
    """Every removed object reads as removed and cannot be linked back; the kept file is
    whole and takes updates."""
    for oid in files.values():
        assert (await env.raw.query(oid, "fs.stat"))["nl"] == 0
    fs = env.fss[1]
    with pytest.raises(Removed):
        await fs.mkdir(d, b"x", 0o755, 0, 0)  # nothing is made under a removed directory
    with pytest.raises(NotFound):
        await fs.lookup(ROOT, b"d")
    fh = await fs.open(keep, os.O_RDWR)
    assert await fs.read(fh, 0, 100) == b"still here"
    await fs.write(fh, 10, b"!")
    await fs.release(fh)


def test_removed_objects_shrink_to_the_bound_and_stay_removed(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        d, files, keep = await populate(env)
        other = env.fss[1]
        stale = await other.open(files[b"f2"], os.O_RDONLY)  # another mount's handle
        before = [n.store.read(lambda kv: footprint(kv, files[b"f2"])) for n in env.cluster.nodes]
        await remove(env, d, files)
        removed = [*files.values(), d]
        await until(lambda: min(tombstones(env)) >= len(removed))
        for node in env.cluster.nodes:
            for oid in removed:
                count, owned, size = node.store.read(lambda kv, oid=oid: footprint(kv, oid))
                assert (count, owned) == (1, 0), (node.id, oid)
                assert size <= BOUND + (3000 if oid == files[b"f2"] else 0), (node.id, oid)
        assert all(b[0] > 1 for b in before)
        # The stale handle still reads what it read; the file stays removed.
        assert len(await other.read(stale, 0, 5000)) == 3000
        await other.release(stale)
        await still_removed(env, d, files, keep)

    run(tmp_path, body, **OPTIONS)


def test_a_byzantine_histories_stop_tombstones_and_revive_nothing(tmp_path: Path) -> None:
    """Node 5 forges a newer candidate in every history it sends: the other nodes never
    hear all six name the final version, so they delete nothing; after it turns honest
    they do, and turned Byzantine again it cannot bring anything back or take it away."""

    async def body(env: Env) -> None:
        d, files, keep = await populate(env)
        make_byzantine(env.cluster, 5, "forge_higher_signed")
        await remove(env, d, files)
        nodes = env.cluster.nodes[:5]
        await until(lambda: min(n.stats["qu.tombstone.waiting"] for n in nodes) >= 6)
        assert tombstones(env)[:5] == [0] * 5
        for node in nodes:
            for oid in files.values():
                assert node.store.read(lambda kv, oid=oid: footprint(kv, oid))[0] > 1
        await still_removed(env, d, files, keep)
        env.cluster.faults[5].clear()
        await env.fs.unlink(ROOT, b"keep")  # a fresh removal: looked at again at once
        await until(lambda: min(tombstones(env)[:5]) >= 1)
        make_byzantine(env.cluster, 5, "forge_higher_signed")
        for oid in files.values():
            assert (await env.raw.query(oid, "fs.stat"))["nl"] == 0
        stat = await env.raw.query(keep, "fs.stat")
        assert stat["nl"] == 0 and stat["size"] == 11
        env.cluster.faults[5].clear()

    run(tmp_path, body, **OPTIONS)


FORGET: dict[str, Any] = {
    "retention": RetentionPolicy(
        keep_hourly=0, keep_daily=0, keep_seconds=0.0, keep_versions=2, forget_seconds=0.0
    )
}


def held(env: Env, oid: int) -> list[tuple[int, int]]:
    """Per node: (has a replica history, stored versions) of ``oid``."""
    out = []
    for node in env.cluster.nodes:
        rh = node.store.read(lambda kv: kv.get(schema.DB_RH, schema.oid_key(oid)))
        count = node.store.read(lambda kv: footprint(kv, oid))[0]
        out.append((int(rh is not None), count))
    return out


def forgotten(env: Env) -> list[int]:
    return [node.stats["qu.forgotten"] for node in env.cluster.nodes]


def test_removed_objects_are_forgotten_by_every_node(tmp_path: Path) -> None:
    """With ``forget_seconds`` 0 a removed object's tombstone goes too: no node keeps
    anything of it but its id among those it forgot; another mount's handle on it answers
    ESTALE (refused ``forgotten``: the id never names an object again, issue 31), and the
    rest of the tree is untouched."""

    async def body(env: Env) -> None:
        d, files, keep = await populate(env)
        other = env.fss[1]
        stale = await other.open(files[b"f1"], os.O_RDONLY)
        await remove(env, d, files)
        removed = [*files.values(), d]
        await until(lambda: min(forgotten(env)) >= len(removed))
        for oid in removed:
            assert held(env, oid) == [(0, 0)] * 6, oid
        assert all(h >= 1 and versions >= 1 for h, versions in held(env, keep))
        with pytest.raises(MethodRefused, match="forgotten"):
            await env.raw.query(files[b"f0"], "fs.stat")
        with pytest.raises(Forgotten):
            await env.fss[1].mkdir(d, b"x", 0o755, 0, 0)
        with pytest.raises(MethodRefused, match="forgotten"):
            await env.raw.query(files[b"f1"], "fs.stat")
        await other.release(stale)
        # A name created afresh in the root works, and the kept file takes updates.
        fh, _ = await env.fs.create(ROOT, b"d", 0o644, 0, 0, os.O_RDWR)
        await env.fs.release(fh)
        fh = await env.fs.open(keep, os.O_RDWR)
        assert await env.fs.read(fh, 0, 100) == b"still here"
        await env.fs.release(fh)

    run(tmp_path, body, **FORGET)


@pytest.mark.parametrize("lie", ["forge_higher_signed", "claim_forgotten"])
def test_a_byzantine_node_cannot_make_a_live_object_forgotten(tmp_path: Path, lie: str) -> None:
    """Node 5 lies in every history it sends to the others (a newer candidate, or no
    history at all, validly authenticated).  A forged newer candidate stops forgetting
    (nothing more is deleted); claiming to have forgotten everything makes the correct
    nodes forget only what is removed: live objects and their versions stay, and read."""

    async def body(env: Env) -> None:
        d, files, keep = await populate(env)
        make_byzantine(env.cluster, 5, lie)
        await remove(env, d, files)
        nodes = env.cluster.nodes[:5]
        if lie == "forge_higher_signed":
            await until(lambda: min(n.stats["qu.tombstone.waiting"] for n in nodes) >= 6)
            assert forgotten(env)[:5] == [0] * 5
        else:
            removed = [*files.values(), d]
            await until(lambda: min(forgotten(env)[:5]) >= len(removed))
        for node in nodes:
            assert (
                node.store.read(lambda kv: kv.get(schema.DB_RH, schema.oid_key(keep))) is not None
            )
            assert (
                node.store.read(lambda kv: kv.get(schema.DB_RH, schema.oid_key(ROOT))) is not None
            )
        fh = await env.fs.open(keep, os.O_RDWR)
        assert await env.fs.read(fh, 0, 100) == b"still here"
        await env.fs.write(fh, 0, b"S")
        await env.fs.release(fh)
        with pytest.raises(NotFound):
            await env.fss[1].lookup(ROOT, b"d")
        env.cluster.faults[5].clear()

    run(tmp_path, body, **FORGET)


def test_a_node_restarted_with_tombstones_to_forget_finds_them_by_its_sweep(
    tmp_path: Path,
) -> None:
    """Every node shrinks the removed objects to tombstones; node 5 then restarts, losing
    its in-memory queue of tombstones waiting ``forget_seconds``.  The others forget them
    when due, and node 5 does too because its start-up sweep finds them."""

    async def body(env: Env) -> None:
        d, files, keep = await populate(env)
        await remove(env, d, files)
        removed = [*files.values(), d]
        await until(lambda: min(tombstones(env)) >= len(removed))
        env.cluster.crash(5)
        await env.cluster.wait_stopped(5)
        await env.cluster.recover(5)
        await until(lambda: min(forgotten(env)) >= len(removed), within=30)
        assert env.cluster.nodes[5].stats["qu.swept"] >= len(removed)
        for oid in removed:
            assert held(env, oid) == [(0, 0)] * 6, oid

    run(
        tmp_path,
        body,
        retention=RetentionPolicy(
            keep_hourly=0, keep_daily=0, keep_seconds=0.0, keep_versions=2, forget_seconds=2.0
        ),
    )
