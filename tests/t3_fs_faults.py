"""Tier 3: the file-system model under faults.

- **Byzantine clients**: illegal method calls sent straight to the servers (a raw Q/U
  client, bypassing every client-side check) are refused by the servers' validation of
  :mod:`bftfs.fsobjects` (seed L1918-1920), and the tree's invariants still hold.
- **A client crash between data and metadata**: blocks written, size update never sent; the
  file shows the old size and data, and a later extension never exposes the dead writer's
  bytes (the ``alloc`` reservation scheme).
- **Node faults**: the same workload with one node crashed and with one Byzantine node
  (wrong Q/U answers, corrupted PASIS fragments, and more in the slow tier).
"""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path
from typing import Any

import pytest
import rw_helpers
import trio
from fs_helpers import Env, run

from bftfs.fs.errors import Exists, Unavailable
from bftfs.fs.filesystem import open_file_system
from bftfs.fsobjects import INLINE_MAX, ROOT
from bftfs.qu.objects import MethodRefused
from bftfs.testing.byzantine import qu as qu_byzantine
from bftfs.testing.byzantine import rw as rw_byzantine

BS = 4096
SMALL = {"block_size": BS}


async def refused(env: Env, objects: list[int], method: str, arg: Any) -> str:
    """Send a raw update as a Byzantine client would; the servers' refusal code."""
    with pytest.raises(MethodRefused) as e:
        await env.raw.update(objects, method, arg)
    return e.value.code


def test_byzantine_client_illegal_calls_are_refused_by_the_servers(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        fs = env.fs
        now = env.clock[0]
        d = await fs.mkdir(ROOT, b"d", 0o755, 0, 0)
        sub = await fs.mkdir(d.ino, b"sub", 0o755, 0, 0)
        fh, f = await fs.create(d.ino, b"f", 0o644, 0, 0, 0)
        await fs.write(fh, 0, b"x" * 100)
        await fs.release(fh)
        new = 777_777
        mk = {"mode": 0o755, "uid": 0, "gid": 0, "now": now}
        # rmdir of a non-empty directory.
        arg = {"p": ROOT, "o": d.ino, "name": b"d", "now": now}
        assert await refused(env, [ROOT, d.ino], "fs.rmdir", arg) == "not-empty"
        # A duplicate name, by create and by mkdir.
        arg = {**mk, "p": d.ino, "o": new, "name": b"f", "mode": 0o100644, "d": 5, "alloc": 0}
        assert await refused(env, [d.ino, new], "fs.create", arg) == "exists"
        arg = {"p": d.ino, "o": new, "name": b"sub", **mk}
        assert await refused(env, [d.ino, new], "fs.mkdir", arg) == "exists"
        # Creating over an existing object (here: the file's own id).
        arg = {"p": ROOT, "o": f.ino, "name": b"again", "mode": 0o100644, "d": 5, "alloc": 0}
        assert await refused(env, [ROOT, f.ino], "fs.create", {**mk, **arg}) == "oid-exists"
        # Illegal names, whatever the client checked.
        for name, code in ((b"a/b", "invalid"), (b"..", "invalid"), (b"n" * 256, "name-too-long")):
            arg = {"p": ROOT, "o": new, "name": name, **mk}
            assert await refused(env, [ROOT, new], "fs.mkdir", arg) == code
        # Unlink naming the wrong object for the entry: link counts cannot be skewed.
        arg = {"p": d.ino, "o": sub.ino, "name": b"f", "now": now}
        assert await refused(env, [d.ino, sub.ino], "fs.unlink", arg) == "stale"
        # A hard link to a directory; a directory moved under itself (full chain given).
        arg = {"p": ROOT, "o": d.ino, "name": b"dl", "now": now}
        assert await refused(env, [ROOT, d.ino], "fs.link", arg) == "permission"
        arg = {"sp": ROOT, "sn": b"d", "dp": sub.ino, "dn": b"loop", "o": d.ino, "t": None,
               "flags": 0, "now": now}  # fmt: skip
        assert await refused(env, [ROOT, d.ino, sub.ino], "fs.rename", arg) == "invalid"
        # ... and with the ancestor chain left out, the servers do not take the client's word.
        deep = await fs.mkdir(sub.ino, b"deep", 0o755, 0, 0)
        other = await fs.mkdir(ROOT, b"other", 0o755, 0, 0)
        arg = {"sp": ROOT, "sn": b"other", "dp": deep.ino, "dn": b"o", "o": other.ino,
               "t": None, "flags": 0, "now": now}  # fmt: skip
        assert await refused(env, [ROOT, other.ino, deep.ino], "fs.rename", arg) == "stale"
        # Data layout: size beyond the reservation; truncation to zero keeping the data id.
        s = await env.raw.query(f.ino, "fs.stat")
        arg = {"d": s["d"], "end": s["alloc"] + 1, "mtime": now, "blocks": True, "now": now}
        assert await refused(env, [f.ino], "fs.write", arg) == "invalid"
        # Inline content (the 100-byte file is inline): its length must be the size, it
        # needs the version it replaces, it has a bound, and a size change must carry it.
        assert s["inl"]
        w = {"d": s["d"], "mtime": now, "v": s["v"], "now": now}
        for bad in (
            {**w, "end": 5, "i": b"1234"},
            {"d": s["d"], "mtime": now, "end": 4, "i": b"1234", "now": now},
            {**w, "end": INLINE_MAX + 1, "i": bytes(INLINE_MAX + 1)},
            {**w, "end": 200},
        ):
            assert await refused(env, [f.ino], "fs.write", bad) == "invalid", bad
        arg = {"size": 50, "d": s["d"], "now": now}
        assert await refused(env, [f.ino], "fs.setattr", arg) == "invalid"
        arg = {**mk, "p": d.ino, "o": new, "name": b"g", "mode": 0o100644, "d": 5, "alloc": 0}
        assert await refused(env, [d.ino, new], "fs.create", {**arg, "i": b"x"}) == "invalid"
        arg = {"size": 0, "d": s["d"], "alloc": 0, "now": now}
        assert await refused(env, [f.ino], "fs.setattr", arg) == "invalid"
        # Garbage arguments and methods on the wrong kind of object.
        assert await refused(env, [f.ino], "fs.setattr", "junk") == "invalid"
        lock = {"d": 1, "v": 0, "tok": 7, "now": now, "lease": 10**9, "alloc": 5}
        assert await refused(env, [d.ino], "fs.lock", lock) == "is-dir"
        lock.update(d=s["d"], v=s["v"])
        for bad in ({**lock, "v": None}, {**lock, "lease": 10**12}, {**lock, "tok": 0}):
            assert await refused(env, [f.ino], "fs.lock", bad) == "invalid", bad
        with pytest.raises(MethodRefused) as e:
            await env.raw.query(f.ino, "fs.readdir")
        assert e.value.code == "not-dir"
        # Nothing above changed anything.
        assert [n for n, _ in await fs.readdir(d.ino)] == [b"f", b"sub"]
        assert (await fs.getattr(f.ino)).nlink == 1
        fh = await fs.open(f.ino, os.O_RDONLY)
        assert await fs.read(fh, 0, 200) == b"x" * 100
        await fs.release(fh)

    run(tmp_path, body)


def test_a_write_lease_keeps_other_writers_out_until_released_or_expired(
    tmp_path: Path,
) -> None:
    """``fs.lock``: while one client's lease runs, another's size update, inline write and
    lock are refused ``locked``; a stale version is refused ``stale``; the holder's write
    ends the lease; an expired lease (a crashed holder) is free; only the holder unlocks."""

    async def body(env: Env) -> None:
        fs = env.fs
        now = env.clock[0]
        fh, f = await fs.create(ROOT, b"f", 0o644, 0, 0, 0)
        await fs.write(fh, 0, b"x" * 40_000)
        await fs.release(fh)
        s = await env.raw.query(f.ino, "fs.stat")
        lease = {"d": s["d"], "v": s["v"], "tok": 1, "now": now, "lease": 10**9}
        s = await env.raw.update([f.ino], "fs.lock", lease)
        other = {"d": s["d"], "v": s["v"], "tok": 2, "now": now + 10, "lease": 10**9}
        assert await refused(env, [f.ino], "fs.lock", other) == "locked"
        assert await refused(env, [f.ino], "fs.lock", {**lease, "tok": 2}) == "stale"
        write = {"d": s["d"], "v": s["v"], "tok": 2, "now": now, "mtime": now, "end": 1}
        assert await refused(env, [f.ino], "fs.write", {**write, "i": b"y"}) == "locked"
        trunc = {"size": 5, "d": s["d"], "now": now, "tok": 2, "blocks": True}
        assert await refused(env, [f.ino], "fs.setattr", trunc) == "locked"
        s = await env.raw.update([f.ino], "fs.unlock", {"tok": 2})  # not the holder's
        assert await refused(env, [f.ino], "fs.lock", {**other, "v": s["v"]}) == "locked"
        # Expired: the other client takes it; the first one's write is then refused.
        s = await env.raw.update([f.ino], "fs.lock", {**other, "v": s["v"], "now": now + 10**9})
        mine = {"d": s["d"], "v": s["v"], "tok": 1, "now": now + 10**9, "mtime": now, "end": 1}
        assert await refused(env, [f.ino], "fs.write", mine) == "locked"
        s = await env.raw.update([f.ino], "fs.write", {**mine, "tok": 2})  # ends the lease
        assert await fs.read(await fs.open(f.ino, os.O_RDONLY), 0, 5) == b"xxxxx"
        s = await env.raw.update([f.ino], "fs.lock", {**lease, "v": s["v"]})
        s = await env.raw.update([f.ino], "fs.unlock", {"tok": 1})
        await env.raw.update([f.ino], "fs.lock", {**other, "v": s["v"]})

    run(tmp_path, body)


class CrashBeforeMetadata(Exception):
    """Stands for the client process dying right after its blocks were written."""


class _CrashingClient:
    """A Q/U client that dies when it is about to send one update method; everything else
    goes to the real client (a wrapper rather than a method patched onto the instance, which
    a restart must then remember to delete)."""

    def __init__(self, inner: Any, method: str) -> None:
        self.inner = inner
        self.method = method

    async def update(self, objects: Any, name: str, arg: Any = None) -> Any:
        if name == self.method:
            raise CrashBeforeMetadata(name)
        return await self.inner.update(objects, name, arg)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def crash_before(fs: Any, method: str) -> None:
    """Make ``fs``'s Q/U client die when it is about to send ``method``."""
    fs.qu = _CrashingClient(fs.qu, method)


@pytest.mark.parametrize("inline_limit", [0, BS], ids=["blocks", "inline"])
def test_crash_between_data_and_size_update_keeps_old_size_and_data(
    tmp_path: Path, inline_limit: int
) -> None:
    async def body(env: Env) -> None:
        a, b = env.fss
        fh, f = await a.create(ROOT, b"f", 0o644, 0, 0, os.O_RDWR)
        old = b"old data " * 100
        await a.write(fh, 0, old)
        await a.flush(fh)
        # a overwrites the middle and extends the file, then dies before the size update.
        await a.write(fh, 10, b"NEW" * 10)
        await a.write(fh, len(old), b"GARBAGE" * 3000)
        crash_before(a, "fs.write")
        with pytest.raises(CrashBeforeMetadata):
            await a.flush(fh)
        assert b.rw is not a.rw
        assert a.rw.statistics()["writes"] > 0  # the blocks did reach the servers
        st = await env.raw.query(f.ino, "fs.stat")
        assert st["size"] == len(old)
        fb = await b.open(f.ino, os.O_RDWR)
        got = await b.read(fb, 0, 100_000)
        assert len(got) == len(old)
        # Blocks a overwrote inside the old size may show its new bytes (that data was
        # written), but nothing past the old end is visible.
        assert got[:10] == old[:10] and got[40:] == old[40:]
        # b extends the file past a's leftovers: the gap reads zeros, never a's bytes.
        await b.write(fb, len(old) + 30_000, b"tail")
        await b.release(fb)
        fb = await b.open(f.ino, os.O_RDONLY)
        got = await b.read(fb, 0, 100_000)
        assert got[len(old) : len(old) + 30_000] == bytes(30_000)
        assert got.endswith(b"tail") and b"GARBAGE" not in got
        await b.release(fb)
        # The same through truncation up.
        fb = await b.open(f.ino, os.O_RDWR)
        await b.setattr(f.ino, size=len(old))
        await b.release(fb)
        # a "restarts": a fresh FileSystem (no buffered state) on the same client identity.
        # (with the real client: the crash hook wrapped it)
        a = env.fss[0] = await env.stack.enter_async_context(
            open_file_system(a.qu.inner, a.rw, env.cluster.config, attr_ttl=1.0)
        )
        fh2 = await a.open(f.ino, os.O_RDWR)
        await a.write(fh2, len(old), b"G2" * 5000)
        crash_before(a, "fs.write")
        with pytest.raises(CrashBeforeMetadata):
            await a.release(fh2)
        # and restarts again: a crashed client's buffers die with it.
        env.fss[0] = await env.stack.enter_async_context(
            open_file_system(a.qu.inner, a.rw, env.cluster.config, attr_ttl=1.0)
        )
        await b.setattr(f.ino, size=len(old) + 20_000)
        fb = await b.open(f.ino, os.O_RDONLY)
        assert await b.read(fb, len(old), 20_000) == bytes(20_000)
        await b.release(fb)

    run(tmp_path, body, inline_limit=inline_limit, **SMALL)


async def workload(env: Env, seed: int) -> None:
    """Namespace and data operations from two clients, each result checked."""
    rng = random.Random(seed)
    a, b = env.fss
    d = await a.mkdir(ROOT, b"w%d" % seed, 0o755, 0, 0)
    files = {}
    for i in range(3):
        fh, f = await a.create(d.ino, b"f%d" % i, 0o644, 0, 0, os.O_RDWR)
        data = rng.randbytes(rng.randrange(1, 5 * BS))
        await a.write(fh, 0, data)
        await a.release(fh)
        files[f.ino] = data
    await b.rename(d.ino, b"f0", ROOT, b"moved%d" % seed)
    await b.link(next(iter(files)), d.ino, b"hard")
    await a.unlink(d.ino, b"f1")
    sub = await b.mkdir(d.ino, b"sub", 0o700, 0, 0)
    await a.rmdir(d.ino, b"sub")
    assert (await b.getattr(sub.ino)).nlink == 0
    await a.setxattr(d.ino, b"user.k", b"v")
    assert await b.getxattr(d.ino, b"user.k") == b"v"
    for ino, data in files.items():
        fh = await b.open(ino, os.O_RDWR)
        assert await b.read(fh, 0, len(data) + 10) == data
        await b.write(fh, len(data), b"+")
        await b.release(fh)
        fh = await a.open(ino, os.O_RDONLY)
        assert await a.read(fh, 0, len(data) + 10) == data + b"+"
        await a.release(fh)
    names = [n for n, _ in await a.readdir(d.ino)]
    assert names == [b"f2", b"hard"]


@pytest.mark.parametrize("node", [0, 4])
def test_workload_with_one_node_crashed(tmp_path: Path, node: int) -> None:
    async def body(env: Env) -> None:
        await workload(env, 1)
        env.cluster.crash(node)
        await workload(env, 2)

    run(tmp_path, body, **SMALL)


def byzantine(env: Env, node: int, qu_behaviour: str, rw_behaviour: str) -> None:
    qu_byzantine.make_byzantine(env.cluster, node, qu_behaviour)
    rw_byzantine.make_byzantine(env.cluster, node, rw_behaviour)


@pytest.mark.parametrize(
    ("node", "qu_behaviour", "rw_behaviour"),
    [(1, "wrong_answer", "corrupt-fragment"), (5, "forge_higher", "fabricate-huge-time")],
)
def test_workload_with_one_byzantine_node(
    tmp_path: Path, node: int, qu_behaviour: str, rw_behaviour: str
) -> None:
    async def body(env: Env) -> None:
        await workload(env, 1)
        byzantine(env, node, qu_behaviour, rw_behaviour)
        await workload(env, 2)

    run(tmp_path, body, **SMALL)


def _pairs() -> list[tuple[int, str, str]]:
    """Every Q/U and every PASIS Byzantine behaviour at least once, on rotating nodes.

    The full cross product (6 x 7 runs) takes over half an hour on two cores; each behaviour
    is already exercised at every placement by the protocols' own suites, so here each one
    meets the file-system workload once, paired with one of the other kind.
    """
    qus, rws = sorted(qu_byzantine.BEHAVIOURS), sorted(rw_byzantine.BEHAVIOURS)
    count = max(len(qus), len(rws))
    return [(i % 6, qus[i % len(qus)], rws[i % len(rws)]) for i in range(count)]


#: (2, forge_higher, equivocate) hung here (issue 5: a Q/U client livelock on refusals, the
#: PASIS behaviour played no part); the regression tests are in t1_qu_client.py.  Since new
#: objects share their directory's quorum (fs, 34dc1b9), this workload no longer reaches it.
@pytest.mark.slow
# A Byzantine server the client proves malevolent is reported once per client (qu/client.py).
@pytest.mark.expected_logs("bftfs.qu.ohscache", "WARNING", match=r"^Q/U server \d+ is malevolent")
@pytest.mark.parametrize(("node", "qu_behaviour", "rw_behaviour"), _pairs())
def test_workload_with_every_byzantine_behaviour(
    tmp_path: Path, node: int, qu_behaviour: str, rw_behaviour: str
) -> None:
    async def body(env: Env) -> None:
        byzantine(env, node, qu_behaviour, rw_behaviour)
        await workload(env, 3)

    run(tmp_path, body, **SMALL)


#: The transport's timeout for the crashed-nodes test: the mkdir that fails waits it out
#: in each of its short rounds (45 s at the tests' 5 s, 18 s at 2 s; t5_qu_catchup.py runs
#: at 2 s too); a live node answers in milliseconds.
CRASHED_TIMEOUT = 2.0


@pytest.mark.slow  # 18 s: the failing mkdir waits out the transport's timeout, round by round
def test_too_many_crashed_nodes_is_eio_not_a_hang(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        await env.fs.mkdir(ROOT, b"before", 0o755, 0, 0)
        for node in (0, 1):
            rw_helpers.make_crashed(env.cluster, node)
        with pytest.raises(Unavailable):
            await env.fs.mkdir(ROOT, b"after", 0o755, 0, 0)
        rw_helpers.heal(env.cluster)
        # Like NFS, EIO does not mean "did not happen": the refused-for-lack-of-quorum update
        # may complete later (its requests were delivered to the live servers and its
        # stragglers finish in the background), so a retry may find the name taken.
        with contextlib.suppress(Exists):
            await env.fs.mkdir(ROOT, b"after", 0o755, 0, 0)  # works again once nodes answer
        assert b"after" in [n for n, _ in await env.fs.readdir(ROOT)]
        await env.fs.mkdir(ROOT, b"later", 0o755, 0, 0)

    run(tmp_path, body, endpoint_options={"timeout": CRASHED_TIMEOUT}, **SMALL)


def test_a_file_created_to_be_written_is_leased_to_its_creator_until_it_closes(
    tmp_path: Path,
) -> None:
    """A create for writing takes the write lease with it (the first flush then needs no
    ``fs.lock`` round); another client's block flush waits until the creator's first
    flush or close ends it, and both writes land, in that order."""

    async def body(env: Env) -> None:
        a, b = env.fss
        fh, f = await a.create(ROOT, b"f", 0o644, 0, 0, os.O_WRONLY)
        fhb = await b.open(f.ino, os.O_WRONLY)
        await b.write(fhb, 0, b"b" * (3 * BS))
        done: list[str] = []

        async def other() -> None:
            await b.flush(fhb)
            done.append("b flushed")

        refused_twice = trio.Event()
        refusals = []
        update = b.qu.update

        async def watched(objects: Any, method: str, arg: Any = None) -> Any:
            try:
                return await update(objects, method, arg)
            except MethodRefused as e:
                refusals.append(e.code)
                if refusals.count("locked") >= 2:
                    refused_twice.set()
                raise

        b.qu.update = watched
        async with trio.open_nursery() as n:
            n.start_soon(other)
            with trio.fail_after(10):
                await refused_twice.wait()  # b found the lease held, twice
            assert done == []
            await a.release(fh)  # closed without writing: the lease is given up
            done.append("a closed")
        assert done == ["a closed", "b flushed"]
        await b.release(fhb)
        fh = await a.open(f.ino, os.O_RDONLY)
        assert await a.read(fh, 0, 4 * BS) == b"b" * (3 * BS)
        await a.release(fh)

    run(tmp_path, body, **SMALL)
