"""Tier 3: lease sessions across a generation change (issue 35 with issue 62's sessions;
docs/membership.md, "Generations: moving objects").

A mount's lease sessions (``fsobjects.sessions``) are objects in the lock-object half of
the id space that only their client renews.  During a move the routers move every object
a call names on first touch; a session is the mount's, not the file system's, and
``fs.movein`` refuses its state (``invalid``).  Before the fix every renewal during a move
was refused ``invalid`` (the mount's log: "lease session 1 not renewed: invalid"), and so
was another mount's recall naming the session (``recall_with_sessions``), which the file
system answered EINVAL to a write right after ``bftfs generation new``.  Here the routers
leave a session found in g where it is and run the call on g + 1, where the renewal
starts a session of its own.

Generation g is an in-process cluster of 6 nodes (t = b = 1), g + 1 one of 11 (t = b = 2),
real nodes over TCP with LMDB stores, as in ``t3_generation_router.py``.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from bftfs.fs.clients.switch import SWITCH_WAIT, Switch
from bftfs.fs.filesystem import open_file_system
from bftfs.fs.generations import GenerationalQU, wait_answering
from bftfs.fsobjects import ROOT
from bftfs.fsobjects.moves import unpack_state
from bftfs.fsobjects.sessions import DONE, MOUNT, SLOT, session_oid, session_state
from bftfs.ids import client_id
from bftfs.qu.classify import QUThresholds
from bftfs.qu.client import QUClient
from bftfs.qu.objects import MethodRefused
from bftfs.rw.client import open_rw_client
from bftfs.testing.cluster import Cluster, open_cluster

BS = 4096
SIZES: dict[str, Any] = {"block_size": BS, "inline_limit": 1024}
TERM = 30 * 10**9
MOUNT_NO = 7

_SEQ = [0]


def qu_client(cluster: Cluster, k: int) -> QUClient:
    """Client ``k``'s Q/U client with request ids of its own (several per identity)."""
    _SEQ[0] += 1
    return QUClient(
        cluster.client(k),
        QUThresholds.from_config(cluster.config),
        client_id=int(client_id(k)),
        rng=random.Random(k),
        seq_start=10**9 * _SEQ[0],
    )


def renewal(slot: int = 0) -> dict[str, Any]:
    """A renewal's argument (``fs/leases/sessions.py``), at the wall clock the nodes check."""
    return {MOUNT: MOUNT_NO, SLOT: slot, "lt": time.time_ns(), "term": TERM, DONE: []}


async def stamped(qu: Any, objects: list[int], method: str, arg: Any) -> Any:
    """``qu.update`` with a fresh lease time each try while the nodes find it ``behind``
    (a first round slower than the 2 s skew on a loaded machine), as the mount's
    ``Calls`` does (``_with_fresh_lease_time``)."""
    for _ in range(4):
        try:
            return await qu.update(objects, method, dict(arg, lt=time.time_ns()))
        except MethodRefused as e:
            if e.code != "behind":
                raise
    return await qu.update(objects, method, dict(arg, lt=time.time_ns()))


def test_sessions_of_g_stay_there_and_renewals_and_recalls_run_on_g_plus_1(
    tmp_path: Path,
) -> None:
    """Client 0's session in g, renewed there; then, through client 0's router, the same
    renewal is taken by g + 1 (a new session there, its own generation 1) and g's is left
    as it was; client 1's recall naming client 0's session (as ``recall_with_sessions``
    sends it) goes through its router too, and the file it names moves."""

    async def main() -> None:
        async with (
            open_cluster(tmp_path / "g", t=1, b=1, clients=2, **SIZES) as g,
            open_cluster(tmp_path / "g1", t=2, b=2, clients=2, seed=1, **SIZES) as g1,
            open_rw_client(g.client(1), g.config) as rw,
        ):
            assert (g.config.n, g1.config.n) == (6, 11)
            sid = session_oid(int(client_id(0)), MOUNT_NO, 0)
            in_g = await stamped(qu_client(g, 0), [sid], "session.renew", renewal())
            assert in_g["g"] == 1 and in_g["c"] == int(client_id(0))
            in_g = await stamped(qu_client(g, 0), [sid], "session.renew", renewal())
            assert in_g["g"] == 1  # renewed, not a new one
            # A file written in g, for a recall to name.
            async with open_file_system(qu_client(g, 1), rw, g.config) as fs:
                fh, a = await fs.create(ROOT, b"f", 0o644, 0, 0, os.O_RDWR)
                await fs.write(fh, 0, b"in g\n")
                await fs.release(fh)
                await fs.write_back()
                if fs.meta.leases is not None:
                    await fs.meta.leases.release_all()
            f = a.ino

            router = GenerationalQU(qu_client(g1, 0), qu_client(g, 0), mount=MOUNT_NO)
            renewed = await stamped(router, [sid], "session.renew", renewal())
            assert session_state(renewed) is not None and renewed["g"] == 1
            assert router.moves["session"] == 1 and router.moves["moved"] == 0
            again = await stamped(router, [sid], "session.renew", renewal())
            assert again["g"] == 1 and router.moves["session"] == 1  # looked at once
            # g's session is g's still; g + 1's is its own.
            assert unpack_state(await qu_client(g, 0).query(sid, "fs.state"))["e"] == in_g["e"]
            assert unpack_state(await qu_client(g1, 0).query(sid, "fs.state"))["e"] == again["e"]

            other = GenerationalQU(qu_client(g1, 1), qu_client(g, 1), mount=MOUNT_NO + 1)
            await stamped(other, [f, sid], "fs.recall", {"lt": time.time_ns()})
            assert other.moves["moved"] == 1 and other.moves["here"] == 1  # f moved, sid here
            assert unpack_state(await qu_client(g1, 1).query(f, "fs.state"))["k"] == "f"

            # A session g + 1 does not hold (client 1's, only in g) is not moved either.
            sid1 = session_oid(int(client_id(1)), MOUNT_NO, 3)
            await stamped(qu_client(g, 1), [sid1], "session.renew", renewal(3))
            third = GenerationalQU(qu_client(g1, 0), qu_client(g, 0), mount=MOUNT_NO)
            await stamped(third, [f, sid1], "fs.recall", {"lt": time.time_ns()})
            assert third.moves["session"] == 1
            assert await qu_client(g1, 0).query(sid1, "fs.state") is None

    trio.run(main)


# The switch's wait for the new generation's nodes (units: no node needed) --------------------


def test_wait_answering_counts_nodes_of_the_generation_until_a_quorum_or_stop() -> None:
    """``wait_answering``: a node counts once it answers ``gen.status`` as a node of the
    generation (frozen or not); one not started (refusing), of another generation or
    answering nonsense is asked again next round; ``stop`` ends the wait early."""
    rounds: list[int] = []
    asked: list[int] = []

    async def status(node: int) -> Any:
        asked.append(node)
        if node == 0:
            return {"g": 2, "frozen": False}
        if node == 1:
            raise OSError("connection refused")  # not started
        if node == 2:
            return {"g": 1, "frozen": True}  # an old node's answer
        return {"g": 2} if len(rounds) >= 2 else "starting"

    async def sleep(pause: float) -> None:
        rounds.append(len(rounds))

    async def main() -> set[int]:
        return await wait_answering(status, [0, 1, 2, 3, 4], 3, generation=2, sleep=sleep)

    assert trio.run(main) == {0, 3, 4}
    assert len(rounds) == 2 and asked.count(0) == 1 and asked.count(1) == 3
    stopped = trio.run(
        lambda: wait_answering(status, [0, 1], 2, generation=2, sleep=sleep, stop=lambda: True)
    )
    assert stopped == {0}


@pytest.mark.expected_logs("bftfs.fs.clients.switch", match=r"still waits for the new one's nodes")
def test_a_refused_call_waits_for_a_pending_switch_past_switch_wait() -> None:
    """A call the frozen generation refused waits for the switch as long as the session
    waits for the new nodes (pending), well past ``SWITCH_WAIT``; with no switch pending
    it fails as refused after ``SWITCH_WAIT``.  (trio's autojumping clock: no real wait.)"""
    refusal = MethodRefused("moved", "generation 2 (view 2)")

    async def main() -> None:
        switch = Switch()
        calls: list[float] = []

        async def call() -> str:
            calls.append(trio.current_time())
            if switch.epoch == 0:
                raise refusal
            return "done on the new generation"

        switch.pending = True
        async with trio.open_nursery() as nursery:
            got: list[str] = []

            async def run() -> None:
                got.append(await switch.run(call, lambda e: e is refusal))

            nursery.start_soon(run)
            await trio.sleep(5 * SWITCH_WAIT)  # the new nodes start late
            assert got == [] and calls == [0.0]
            switch.pending = False
            switch.switched()
        assert got == ["done on the new generation"] and switch.waited_pending >= 4

        alone = Switch()  # refused, and no switch under way: fails as refused
        with pytest.raises(MethodRefused):
            await alone.run(lambda: _refuse(refusal), lambda e: e is refusal)
        assert trio.current_time() >= 5 * SWITCH_WAIT + SWITCH_WAIT

    trio.run(main, clock=MockClock(autojump_threshold=0))


async def _refuse(e: BaseException) -> None:
    raise e
