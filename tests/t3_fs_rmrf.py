"""Tier 3: ``rm -rf`` of a directory costs the same per file whatever its size (issue 62),
on the in-process cluster (real node services, TCP, LMDB, keys).

Every call of the mount on a directory first passes the gate (``CallOrder.before_call``),
which sends what the call must follow.  It read every removal held back in the directory
(``PendingUnlinks.before``) at each lookup and each removal there: a removal of the
``k``-th file of ``rm -rf`` looked at the ``k - 1`` held before it, so the whole removal
looked at ``n * (n - 1) / 2`` of them (up to the write-back bound).  The test counts that
work (``PendingUnlinks.examined``), not a time, at two sizes: it must not grow per file.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from fs_helpers import Env, run
from t3_fs_leases import until
from t3_fs_writeback import OPTIONS, exclusive, new_file

from bftfs.fs.callorder import CallOrder
from bftfs.fs.errors import NotFound
from bftfs.fs.filesystem import FileSystem
from bftfs.fs.leases import claims
from bftfs.fs.writeback.schedule import LEASE_MARGIN
from bftfs.fsobjects import ROOT

#: The two directory sizes compared (files); both below the write-back bound.
SIZES = (12, 48)


async def examined_per_removal(fs: FileSystem, d: int, n: int) -> float:
    """Make ``n`` files in ``d``, send them, remove each as ``rm`` does (the kernel's
    lookup, then the unlink): the held-back removals the gate looked at, per file."""
    for k in range(n):
        await new_file(fs, d, b"f%04d" % k, b"x\n")
    await fs.write_back()  # on the servers: each removal is held back, not cancelled
    unlinks = fs.outbox.unlinks
    assert unlinks is not None
    before, held = unlinks.examined, fs.meta.leases.stats["unlinks_deferred"]  # type: ignore[union-attr]
    for k in range(n):
        await fs.lookup(d, b"f%04d" % k)
        await fs.unlink(d, b"f%04d" % k)
    assert fs.meta.leases is not None
    assert fs.meta.leases.stats["unlinks_deferred"] - held == n, "a removal went at once"
    per_file = (unlinks.examined - before) / n
    await fs.write_back()
    assert {name for name, _ in await fs.readdir(d)} <= {b".", b".."} | {
        b"warm%d" % k for k in range(3)
    }
    return per_file


def test_rm_rf_looks_at_a_constant_number_of_held_removals_per_file(tmp_path: Path) -> None:
    """The gate's work per removed file is the same for a directory of 12 files and one of
    48 (before: it grew with the removals held back, 5.5 and 23.5 per file)."""

    async def body(env: Env) -> None:
        fs = env.fs
        per_file = []
        for size in SIZES:
            d = (await fs.mkdir(ROOT, b"d%d" % size, 0o755, 0, 0)).ino
            await exclusive(fs, d)
            per_file.append(await examined_per_removal(fs, d, size))
        assert per_file[1] <= per_file[0] + 0.5, f"held removals looked at per file: {per_file}"
        assert per_file[1] <= 2, per_file

    run(tmp_path, body, clients=1, fs_options=OPTIONS)


async def creates_read_per_file(fs: FileSystem, d: int, n: int) -> float:
    """Make ``n`` files in ``d`` as a shell does (the kernel's lookup of the new name, a
    miss, then the create and close), each create left to write-back: the held-back
    creates the gate read, per file."""
    gate = fs.meta.gate
    assert isinstance(gate, CallOrder)
    wb = fs.outbox.writeback
    assert wb is not None
    before, deferred = gate.examined, wb.stats["deferred"]
    for k in range(n):
        with pytest.raises(NotFound):
            await fs.lookup(d, b"f%04d" % k)
        await new_file(fs, d, b"f%04d" % k, b"x\n")
    assert wb.stats["deferred"] - deferred == n, "a create went at once"
    per_file = (gate.examined - before) / n
    await fs.write_back()
    assert {b"f%04d" % k for k in range(n)} <= {name for name, _ in await fs.readdir(d)}
    return per_file


def test_a_lookup_reads_the_creates_it_names_not_every_held_back_one(tmp_path: Path) -> None:
    """The gate's work per created file is the same for a directory of 12 files and one of
    48: the lookup before each create (a miss) reads the held-back creates it names and
    those that do not wait, not each create waiting there (before: 5.5 and 23.5 per file,
    up to 1 024 per call past the write-back bound)."""

    async def body(env: Env) -> None:
        fs = env.fs
        per_file = []
        for size in SIZES:
            d = (await fs.mkdir(ROOT, b"c%d" % size, 0o755, 0, 0)).ino
            await exclusive(fs, d)
            per_file.append(await creates_read_per_file(fs, d, size))
        assert per_file[1] <= per_file[0] + 0.5, f"held creates read per file: {per_file}"
        assert per_file[1] <= 2, per_file

    run(tmp_path, body, clients=1, fs_options=OPTIONS)


#: Write-back's bounds lowered so that a few dozen files pass them (in a mount: 1 024
#: closed files kept, 1 024 creates and removals held back).
KEPT, DEFERRED = 8, 16
#: Files made and removed past those bounds.
PAST = 40


async def rounds_per_removal_past_the_bounds(fs: FileSystem, d: int) -> tuple[float, dict]:
    """Make :data:`PAST` files in ``d`` (past both bounds: most closed files are not kept,
    closes have held-back creates sent early), send them, let their own exclusive leases go as a big
    directory's do before ``rm -rf`` reaches them (the kept ones bound to the session by
    the held files' sweep, ``Leases.to_session``; the others, which nothing renews, ended:
    dropped here as their term's end drops them), then remove each as ``rm`` does (the
    kernel's lookup, then the unlink) and send what was held back: the Q/U operations
    that reached the servers, per file, and by method."""
    leases, held, wb = fs.meta.leases, fs.outbox.held, fs.outbox.writeback
    assert leases is not None and held is not None and wb is not None
    held.max_kept, wb.max_deferred = KEPT, DEFERRED
    names = [b"g%04d" % k for k in range(PAST)]
    oids = [await new_file(fs, d, name, b"x\n") for name in names]
    await fs.write_back()
    kept = [o for o in oids if o in fs.cache.files]
    assert 0 < len(kept) <= KEPT, kept
    leases.to_session(kept)
    await until("kept files bound", lambda: not leases.holdings.converting & set(kept))
    for o in oids:
        if o not in kept:
            leases.holdings.drop(o)  # (what ``Holdings.live`` does at the term's end)
    assert not any(leases.exclusive_left(o) > 0 for o in oids)
    assert leases.exclusive_left(d) > 0
    before = Counter(fs.meta.methods)
    for name in names:
        await fs.lookup(d, name)
        await fs.unlink(d, name)
    await fs.write_back()
    work = {
        k: v - before[k]
        for k, v in fs.meta.methods.items()
        if v != before[k] and not k.startswith(("leased ", "known "))
    }
    assert not set(names) & {name for name, _ in await fs.readdir(d)}
    return sum(work.values()) / PAST, work


def test_rm_rf_past_the_write_back_bounds_batches_its_removals(tmp_path: Path) -> None:
    """Past the bounds of closed files kept and of work held back, with the files' own
    leases gone, a file made here under its directory's lease still held is removed as
    one below them: its lookup answered by the mount (its attributes are the mount's own:
    nobody else can have seen it), its removal held back and sent six per
    ``fs.unlinkmany`` (at the bound the held-back ones go early rather than this one
    alone).  Before: an ``fs.stat`` per file not kept and a synchronous ``fs.unlink`` per
    file (after a lease update asking the kept ones back), over two rounds a file."""

    async def body(env: Env) -> None:
        fs = env.fs
        d = (await fs.mkdir(ROOT, b"past", 0o755, 0, 0)).ino
        await exclusive(fs, d)
        per_file, work = await rounds_per_removal_past_the_bounds(fs, d)
        assert work.get("fs.stat", 0) + work.get("fs.lookupstat", 0) == 0, work
        assert work.get("fs.unlink", 0) == 0, work
        assert per_file <= 0.3, (per_file, work)

    run(tmp_path, body, clients=1, fs_options=OPTIONS)


def test_files_made_past_the_write_back_bound_go_together_not_alone(tmp_path: Path) -> None:
    """At write-back's bound a close has the oldest held-back creates sent early (an
    update's worth, ``fs.createmany``) and the next closes find room: 3 000 files made in
    one directory sent 604 creates alone before (``fs.createwrite``, a round a file:
    10.9 s), 64 now (6.4 s).  Every file is there after."""

    async def body(env: Env) -> None:
        fs = env.fs
        d = (await fs.mkdir(ROOT, b"many", 0o755, 0, 0)).ino
        await exclusive(fs, d)
        wb, leases = fs.outbox.writeback, fs.meta.leases
        assert wb is not None and leases is not None
        wb.max_deferred = DEFERRED
        before = Counter(fs.meta.methods)
        names = [b"m%04d" % k for k in range(PAST)]
        for name in names:
            await new_file(fs, d, name, b"x\n")
        assert leases.stats["create_room_asks"] >= 1, leases.stats
        await fs.write_back()
        work = {k: v - before[k] for k, v in fs.meta.methods.items() if v != before[k]}
        alone = work.get("fs.createwrite", 0) + work.get("fs.create", 0)
        assert alone <= PAST // 8, work  # (before: every one past the bound, 24)
        assert work.get("fs.createmany", 0) >= PAST // wb.batch, work
        assert set(names) <= {name for name, _ in await fs.readdir(d)}

    run(tmp_path, body, clients=1, fs_options=OPTIONS)


def test_removals_of_files_another_mount_made_ask_their_leases_ahead_and_wait(
    tmp_path: Path,
) -> None:
    """A mount removing files another mount made (a second laptop's ``rm -rf``) holds no
    lease on them: each removal went alone, an ``fs.unlink`` round in a row per file.  After
    ``CLAIM_AFTER`` removals in the directory could not wait for the file's lease, the next
    files' exclusive leases are asked for ahead (``leases/claims.py``); once granted, every
    further removal waits in write-back and goes six per ``fs.unlinkmany``.  The maker sees
    the directory empty after."""

    async def body(env: Env) -> None:
        a, b = env.fss
        d = (await a.mkdir(ROOT, b"theirs", 0o755, 0, 0)).ino
        for k in range(PAST):
            await new_file(a, d, b"t%04d" % k, b"x\n")
        await a.write_back()
        assert a.meta.leases is not None and b.meta.leases is not None
        await a.meta.leases.release_all()  # (as a reader's first look hands them over)
        leases = b.meta.leases
        listed = [(n, at.ino) for n, at in await b.readdir(d) if n not in (b".", b"..")]
        assert len(listed) == PAST
        before = Counter(b.meta.methods)
        for k, (name, _) in enumerate(listed):
            await b.lookup(d, name)
            await b.unlink(d, name)
            if k + 1 == claims.CLAIM_AFTER:  # (the leases come in the background)
                rest = [o for _, o in listed[k + 1 :]]
                await until(
                    "the directory's and the next files' exclusive leases",
                    lambda rest=rest: (
                        leases.exclusive_left(d) > 2 * LEASE_MARGIN
                        and all(leases.exclusive_left(o) > 0 for o in rest)
                    ),
                )
        assert leases.stats["claims_asked"] == PAST - claims.CLAIM_AFTER, leases.stats
        await b.write_back()
        work = {k: v - before[k] for k, v in b.meta.methods.items() if v != before[k]}
        assert work.get("fs.unlink", 0) == claims.CLAIM_AFTER, work
        assert work.get("fs.unlinkmany", 0) <= PAST // 3, work
        assert not {n for n, _ in await a.readdir(d)} - {b".", b".."}

    run(tmp_path, body, clients=2, fs_options=OPTIONS)
