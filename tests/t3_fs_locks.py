"""Tier 3: file locks between clients on the in-process cluster (real node services, TCP,
LMDB, keys; issue 37), through each client's lock manager (``fs/locks.py``): a conflict
refused by the servers, ranges that do not overlap held at once, a waiter that gets the
lock once it is free and one a cancellation ends, a holder whose lease lapsed released
for the others and told (EIO) at its next lock operation, a renewed one kept.

Every wait is a condition under a deadline (:func:`until`)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from fs_helpers import Env, run

from bftfs.fs import locks as locks_module
from bftfs.fs.errors import LockLost, WouldBlock
from bftfs.fs.locks import FLOCK, OFFSET_MAX, POSIX, READ, UNLOCK, WRITE, LockManager
from bftfs.fsobjects import ROOT
from bftfs.fsobjects.locks import lock_object
from bftfs.qu.objects import MethodRefused
from bftfs.testing.byzantine.switching import install

#: Seconds a lock lives unless renewed, in the tests of lapse: over the holder's margin
#: (5 s), so a lapse takes seconds, not the default half minute.  At 5.5 the holder
#: trusted a lock half a second from asking, and under ``make test``'s load the waiter's
#: next call came later and found its fresh lock lapsed (``LockLost``).
SHORT = 8.0


async def until(what: str, probe: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = trio.current_time() + timeout
    while not probe():
        assert trio.current_time() < deadline, f"{what}: not within {timeout} s"
        await trio.sleep(0.01)


async def a_file(env: Env) -> int:
    fh, attr = await env.fss[0].create(ROOT, b"f", 0o644, 0, 0, os.O_RDWR)
    await env.fss[0].write(fh, 0, b"x" * 1000)
    await env.fss[0].release(fh)
    return attr.ino


def test_a_conflict_is_refused_and_ranges_that_do_not_overlap_are_held_at_once(
    tmp_path: Path,
) -> None:
    async def body(env: Env) -> None:
        f = await a_file(env)
        a, b = (LockManager(fs.meta) for fs in env.fss)
        await a.lock(f, 1, POSIX, 7, WRITE, 0, 99, wait=False, pid=123)
        with pytest.raises(WouldBlock):
            await b.lock(f, 1, POSIX, 7, READ, 50, 60, wait=False)
        await b.lock(f, 1, POSIX, 7, WRITE, 100, OFFSET_MAX, wait=False)  # not overlapping
        await b.lock(f, 1, FLOCK, 7, WRITE, 0, OFFSET_MAX, wait=False)  # another domain
        assert await b.test(f, POSIX, 7, READ, 0, 10) == (WRITE, 0, 99, 0)
        assert await a.test(f, POSIX, 8, READ, 0, 10) == (WRITE, 0, 99, 123)  # its own pid
        assert await a.test(f, POSIX, 7, WRITE, 0, 99) is None  # its own lock
        await a.lock(f, 1, POSIX, 7, UNLOCK, 0, 49, wait=False)  # cut: 50..99 still held
        await b.lock(f, 1, POSIX, 7, WRITE, 0, 49, wait=False)
        with pytest.raises(WouldBlock):
            await b.lock(f, 1, POSIX, 7, READ, 99, 99, wait=False)
        await a.unlock_owner(f, 7)  # a close
        await b.lock(f, 1, POSIX, 7, WRITE, 0, OFFSET_MAX, wait=False)
        await b.release(1)  # the open file's last close: everything b took through it
        assert not b.holds(f)
        await a.lock(f, 2, POSIX, 9, WRITE, 0, OFFSET_MAX, wait=False)
        await a.release(2)

    run(tmp_path, body)


def test_a_waiter_is_woken_when_the_lock_frees_and_a_cancelled_one_takes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The waiter would poll only after a minute here: it gets the lock at once all the
    same, woken by the nodes' push when the holder's release freed the lock; a false
    wake-up (a Byzantine node's) costs it one refused retry, garbage pushes nothing."""
    monkeypatch.setattr(locks_module, "WAIT_FIRST", 60.0)
    monkeypatch.setattr(locks_module, "WAIT_MAX", 60.0)

    async def body(env: Env) -> None:
        f = await a_file(env)
        a, b = (LockManager(fs.meta) for fs in env.fss)
        b.listen(env.cluster.client(1), list(env.cluster.config.node_ids))
        await a.lock(f, 1, FLOCK, 1, WRITE, 0, OFFSET_MAX, wait=False)
        with trio.move_on_after(0.5) as cancelled:  # a signal to the waiting process
            await b.lock(f, 1, FLOCK, 2, WRITE, 0, OFFSET_MAX, wait=True)
        assert cancelled.cancelled_caught and not b.holds(f)
        got = trio.Event()

        async def waiter() -> None:
            await b.lock(f, 1, FLOCK, 2, READ, 0, OFFSET_MAX, wait=True)
            got.set()

        async with trio.open_nursery() as nursery:
            registered = b.stats["registered"]
            nursery.start_soon(waiter)
            await until("the waiter waits", lambda: b.stats["registered"] > registered)
            # A Byzantine node's false wake-up costs a retry, refused: the waiter waits again.
            b.on_push(3, {"unlocked": [lock_object(f)]})
            await until("it waits again", lambda: b.stats["registered"] > registered + 1)
            for garbage in ({"unlocked": "x"}, {"unlocked": [True, -1, 5]}, {"unlocked": [0] * 99}):
                b.on_push(3, garbage)
            assert b.stats["pushes_malformed"] == 5 and not got.is_set()
            await a.release(1)
            with trio.fail_after(10):  # long before its poll
                await got.wait()
        assert b.holds(f, 2) and b.stats["woken"] == 2
        with pytest.raises(WouldBlock):
            await a.lock(f, 1, FLOCK, 1, WRITE, 0, OFFSET_MAX, wait=False)
        await b.release(1)

    run(tmp_path, body)


@pytest.mark.slow  # a term of 8 s waited out
@pytest.mark.expected_logs("bftfs.fs.locks", match="lost")
def test_a_lapsed_holder_is_released_and_told_a_renewed_one_keeps_its_lock(
    tmp_path: Path,
) -> None:
    """Client 0 stops renewing (cut off, dead): its lock ends on the servers one term
    after it was taken and client 2 gets it; client 0's next lock operation on the file
    answers EIO, once.  Client 1 renews (``run``): its lock outlives the term."""

    async def body(env: Env) -> None:
        f = await a_file(env)
        lapsing, renewing, other = (LockManager(fs.meta, term=SHORT) for fs in env.fss)
        await lapsing.lock(f, 1, POSIX, 1, WRITE, 0, 9, wait=False)
        await renewing.lock(f, 1, POSIX, 1, WRITE, 10, 19, wait=False)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(renewing.run)
            start = trio.current_time()
            with trio.fail_after(SHORT + 10):
                await other.lock(f, 1, POSIX, 1, WRITE, 0, 9, wait=True)
            assert trio.current_time() - start > SHORT - 3  # not before the lease could end
            with pytest.raises(WouldBlock):  # renewed past its first term
                await other.lock(f, 1, POSIX, 1, READ, 10, 19, wait=False)
            nursery.cancel_scope.cancel()
        with pytest.raises(LockLost):
            await lapsing.lock(f, 1, POSIX, 1, READ, 100, 109, wait=False)
        await lapsing.lock(f, 1, POSIX, 1, READ, 100, 109, wait=False)  # EIO once
        for m in (lapsing, renewing, other):
            await m.release_all()

    run(tmp_path, body, clients=3)


@pytest.mark.expected_logs("bftfs.fs.locks", match="lost")
def test_a_renewal_that_finds_the_locks_gone_makes_them_lost(tmp_path: Path) -> None:
    """The servers no longer hold this mount's lock (here a second lock manager of the same
    mount dropped every lock of the mount behind the first's back): the renewal answers
    less than the mount holds, and the next lock operation answers EIO."""

    async def body(env: Env) -> None:
        f = await a_file(env)
        mine, same_client = LockManager(env.fss[0].meta), LockManager(env.fss[0].meta)
        await mine.lock(f, 1, POSIX, 1, WRITE, 0, 9, wait=False)
        await same_client.lock(f, 1, POSIX, 2, READ, 20, 29, wait=False)
        await same_client.release_all()  # drops every lock of the client on the file
        mine.files[f].until = trio.current_time()  # make the renewal due now
        await mine.renew_due()
        assert f in mine.lost
        with pytest.raises(LockLost):
            await mine.lock(f, 1, POSIX, 1, WRITE, 0, 9, wait=False)

    run(tmp_path, body)


# What the campaign's switching Byzantine node makes the client and the other nodes log
# (``t5_campaign.py``): a culled history, a node catching up that a liar left incomplete.
@pytest.mark.expected_logs("bftfs.qu.ohscache", "WARNING", match=r"^Q/U server \d+ is malevolent")
@pytest.mark.expected_logs(
    "bftfs.node.qu_catchup", "WARNING", match=r"^Q/U catch-up: \{'state': 'incomplete'"
)
def test_a_switching_byzantine_node_cannot_make_two_clients_hold_one_exclusive_lock(
    tmp_path: Path,
) -> None:
    """Node 1 lies anew for every request (the campaign's Byzantine node: forged
    candidates, equivocation, withheld replies, made-up answers and refusals).  Two clients
    race for one exclusive range, each holding it for a few checkpoints when it gets it:
    never both at once, and both get it in turn (the lies cost time, never the lock)."""

    async def body(env: Env) -> None:
        f = await a_file(env)
        install(env.cluster, 1, seed=37, byzantine=True)
        managers = [LockManager(fs.meta) for fs in env.fss]
        inside: set[int] = set()
        held = [0, 0]

        async def contend(k: int) -> None:
            m = managers[k]
            while min(held) < 3:
                try:
                    await m.lock(f, 1, POSIX, 1, WRITE, 0, 99, wait=False)
                except WouldBlock:
                    await trio.sleep(0.01)
                    continue
                assert not inside, f"client {k} got the lock while {inside} held it"
                inside.add(k)
                held[k] += 1
                for _ in range(3):
                    await trio.sleep(0.005)
                inside.discard(k)
                await m.lock(f, 1, POSIX, 1, UNLOCK, 0, 99, wait=False)
                await trio.sleep(0.05)  # the other's turn

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for k in range(2):
                    nursery.start_soon(contend, k)

    run(tmp_path, body)


@pytest.mark.parametrize(("offset_s", "refused"), [(3.0, "ahead"), (-3.0, "behind"), (0.0, None)])
def test_nodes_refuse_a_lock_lease_time_off_their_clock(
    tmp_path: Path, offset_s: float, refused: str | None
) -> None:
    """A lock's lease runs from the time its taker declares: nodes take it only within
    the lease skew (2 s) of their own clock, both ways, so nobody keeps a lock past its
    term by a time ahead, nor takes one that ends early on the nodes by a time behind."""

    async def body(env: Env) -> None:
        f = await a_file(env)
        arg = {"m": 1, "d": POSIX, "o": 1, "t": WRITE, "s": 0, "e": 9, "term": 10**10}
        arg["lt"] = time.time_ns() + int(offset_s * 1e9)
        try:
            await env.raw.update(lock_object(f), "fs.setlk", arg)
            got = None
        except MethodRefused as e:
            got = e.code
        assert got == refused or (refused is not None and refused in str(got))

    run(tmp_path, body)
