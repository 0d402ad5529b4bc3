"""Tier 3: lease sessions (issue 62) on the in-process cluster (real node services, TCP,
LMDB, keys): a mount's shared leases are bound to its session and cost one renewal per
slot and half of what a renewal gives, however many objects it holds; a holder that never releases
(dead, or alive and ignoring the recalls pushed to it) holds another client's change off
until its session's end at the recall, no longer.

Q/U updates are counted by method (``Meta.methods``); waits are conditions under
deadlines."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from fs_helpers import Env, run

from bftfs.fs.filesystem import FileSystem
from bftfs.fsobjects import ROOT
from bftfs.fsobjects.leases import LEASE_SKEW, SHARED, session_holders
from bftfs.fsobjects.moves import unpack_state
from bftfs.fsobjects.sessions import session_oid, slot_for
from bftfs.qu.objects import MethodRefused

#: The shortest lease term a mount takes (``lease=10``).
TERM = 10.0


async def until(what: str, probe: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = trio.current_time() + timeout
    while not probe():
        assert trio.current_time() < deadline, f"{what}: not within {timeout} s"
        await trio.sleep(0.02)


def updates(fs: FileSystem) -> dict[str, int]:
    """Q/U updates sent so far by lease method (taking, renewing, sessions)."""
    return {m: fs.meta.methods[m] for m in ("fs.lease", "session.renew", "fs.release")}


async def hold_for(fs: FileSystem, inos: list[int], seconds: float) -> dict[str, int]:
    """Use every object of ``inos`` about once a second for ``seconds``: the lease
    updates sent meanwhile."""
    before = updates(fs)
    end = trio.current_time() + seconds
    while trio.current_time() < end:
        for ino in inos:
            await fs.getattr(ino)
        await trio.sleep(1.0)
    after = updates(fs)
    return {m: after[m] - before[m] for m in after}


async def leased_files(fs: FileSystem, count: int, parent: int) -> list[int]:
    """Make ``count`` files in directory ``parent`` and query each until the mount holds a
    lease on it bound to its session; their inode numbers."""
    inos = []
    for i in range(count):
        fh, attr = await fs.create(parent, b"f%d" % i, 0o644, 0, 0, os.O_WRONLY)
        await fs.release(fh)
        inos.append(attr.ino)
    leases = fs.meta.leases
    assert leases is not None
    deadline = trio.current_time() + 60
    while True:
        held = [leases.held.get(i) for i in inos]
        if all(h is not None and h.slot is not None for h in held):
            return inos
        unbound = sum(h is not None and h.slot is None for h in held)
        missing = sum(h is None for h in held)
        assert trio.current_time() < deadline, (unbound, missing, dict(leases.stats))
        for ino in inos:
            await fs.getattr(ino)
        await trio.sleep(0.05)


@pytest.mark.slow
def test_renewals_do_not_grow_with_the_objects_leased(tmp_path: Path) -> None:
    """Two clients side by side, each with a directory of its own: three terms holding 20
    leased files on one, three holding 200 on the other: the same session renewals (one
    slot each: files are made congruent to their directory), no lease renewed on its
    own, and no lease taken again."""

    async def body(env: Env) -> None:
        held: dict[int, dict[str, int]] = {}

        async def hold(fs: FileSystem, count: int) -> None:
            d = await fs.mkdir(ROOT, b"d%d" % count, 0o755, 0, 0)
            held[count] = await hold_for(fs, await leased_files(fs, count, d.ino), 3 * TERM)

        for fs in env.fss:
            assert fs.meta.leases is not None and fs.meta.leases.sessions is not None
        async with trio.open_nursery() as nursery:
            for fs, count in zip(env.fss, (20, 200), strict=True):
                nursery.start_soon(hold, fs, count)
        few, many = held[20], held[200]
        assert few["fs.lease"] == many["fs.lease"] == 0, (few, many)
        renewed = [fs.meta.leases.stats["renewed"] for fs in env.fss if fs.meta.leases]
        assert renewed == [0, 0], renewed
        # Half of the 5 s a renewal gives apart: about twelve in three terms, for 20
        # files as for 200.
        assert 8 <= few["session.renew"] <= 16, few
        assert abs(many["session.renew"] - few["session.renew"]) <= 2, (few, many)

    run(tmp_path, body, fs_options={"lease_term": TERM})


async def _bound_raw_lease(env: Env) -> tuple[int, int, int]:
    """The raw client (no lease table: it never answers a recall) takes a shared lease
    on the root bound to its session of mount 0: (session id, slot, the session's end)."""
    raw = env.raw
    n = env.cluster.config.n
    slot = slot_for(raw.client_id, 0, ROOT, n)
    sid = session_oid(raw.client_id, 0, slot)
    term = int(TERM * 1e9)
    renew = {"lm": 0, "s": slot, "term": term, "lt": time.time_ns(), "done": []}
    state = await raw.update(sid, "session.renew", renew)
    arg = {"kind": SHARED, "lt": time.time_ns(), "term": term, "sb": 1, "s": slot}
    await raw.update([ROOT, sid], "fs.lease", arg)
    return sid, slot, state["e"]


@pytest.mark.parametrize("renews", [False, True], ids=["dead", "ignoring-recalls"])
@pytest.mark.slow
def test_a_holder_that_never_releases_holds_others_off_until_its_session_ends(
    tmp_path: Path, renews: bool
) -> None:
    """A bound lease whose holder never releases: dead (it renews nothing), the other
    client's change lands once the session ended; alive and renewing its session four
    times a second while ignoring the recall pushed to it, the change lands at the
    session's end as the recall found it, and the holder's renewals list the object
    recalled from then on."""

    async def body(env: Env) -> None:
        b = env.fss[1]
        sid, slot, _ = await _bound_raw_lease(env)
        listed: set[int] = set()

        async def renew_forever() -> None:
            while True:
                await trio.sleep(0.25)
                arg = {"lm": 0, "s": slot, "term": int(TERM * 1e9), "lt": time.time_ns()}
                try:
                    state = await env.raw.update(sid, "session.renew", arg)
                    listed.update(r[0] for r in state["r"])
                except MethodRefused:
                    pass

        started = time.monotonic()
        async with trio.open_nursery() as nursery:
            if renews:
                nursery.start_soon(renew_forever)
            with trio.fail_after(40):
                await b.mkdir(ROOT, b"d", 0o755, 0, 0)
            nursery.cancel_scope.cancel()
        waited = time.monotonic() - started
        assert waited <= TERM + LEASE_SKEW / 1e9 + 6, waited
        if renews:
            assert waited >= TERM / 2, waited  # it was held off: the session ran on
            assert listed == {ROOT}, listed
        state = unpack_state(await env.raw.query(ROOT, "fs.state"))
        assert session_holders(state) == []

    run(tmp_path, body, fs_options={"lease_term": TERM})


def test_a_mount_that_releases_on_the_push_lets_the_change_through_at_once(
    tmp_path: Path,
) -> None:
    """The ordinary path: the holder mount's shared lease on the root is bound to its
    session; another mount's mkdir recalls it, the holder releases at the push, and the
    mkdir lands well within a term."""

    async def body(env: Env) -> None:
        a, b = env.fss
        leases = a.meta.leases
        assert leases is not None
        for _ in range(3):
            await a.readdir(ROOT)
        await until("a bound lease on the root", lambda: ROOT in leases.held)
        assert leases.held[ROOT].slot is not None
        assert leases.stats["session_renewals"] >= 1
        started = time.monotonic()
        await b.mkdir(ROOT, b"d", 0o755, 0, 0)
        assert time.monotonic() - started < TERM / 2
        assert b"d" in [e[0] for e in await a.readdir(ROOT)]

    run(tmp_path, body, fs_options={"lease_term": TERM})
