"""Slow is not unavailable for PASIS reads and writes (this round's "timeouts take
slowness for failure"; ``rw/calls.py``, module docstring).

Found in ``make test`` at load 12-18 with every node up: a read failed with
``ReadFailed: ... bad: {3: 'no reply in time', 4: 'no reply in time', 5: 'no reply in
time'}`` - nodes that merely answered later than the client's patience were counted bad,
exactly like nodes that sent a provably wrong reply.  Here ``t + 1`` real nodes (real TCP,
real LMDB) hold every request for longer than the client's patience (the fault
injector's ``delay``, which holds the node's answers back deterministically: the other
nodes cannot decide without one of them).  Before the fix the read and the write failed;
now the silent nodes are asked again with twice the patience until they answer.  Nodes
really gone (crashed: connections refused) still fail the read at once, as before.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import trio
from rw_helpers import rw_cluster

from bftfs.net import liveness
from bftfs.rw.failures import ReadFailed, WriteFailed
from bftfs.rw.messages import KIND_READ_LATEST
from bftfs.testing.cluster import Cluster

#: The client's patience per quorum call (seconds) in these tests.
PATIENCE = 0.4
#: How long the slow nodes hold every request: longer than the patience, well within the
#: transport's liveness window (``net/liveness.LIVE_FLOOR``), so they are slow, not gone.
SLOW = 3 * PATIENCE


def _slow(cluster: Cluster, nodes: range) -> None:
    """``nodes`` hold every request they get (pings too) for :data:`SLOW` seconds."""
    for i in nodes:
        cluster.faults[i].delay(SLOW)


async def test_a_read_waits_for_t_plus_1_nodes_slower_than_its_patience(tmp_path: Path) -> None:
    """n = 6, t = 1: with nodes 4 and 5 answering after 3 patiences, only 4 < n - t
    nodes answer in time.  Before: ReadFailed (``no reply in time`` counted as bad).
    After: the read asks them again with more patience and returns the value."""
    data = random.Random(60).randbytes(4096)
    options = {"timeout": PATIENCE}
    async with rw_cluster(tmp_path, clients=1, client_options=options) as (cl, (rw,)):
        assert (cl.config.n, cl.config.t) == (6, 1)
        with trio.fail_after(120):
            await rw.write_block(7, data)
            _slow(cl, range(cl.config.n - cl.config.t - 1, cl.config.n))
            assert await rw.read_block(7) == data
        st = rw.statistics()
        assert st["patient_rounds"] >= 1  # the silent nodes were asked again
        assert st["reads"] == 1


async def test_a_write_waits_for_t_plus_1_nodes_slower_than_its_patience(tmp_path: Path) -> None:
    """The same for a write: only 4 nodes acknowledge within the patience, 5 are needed.
    Before: WriteFailed.  After: the silent nodes are asked again (only they: the
    acknowledgements already counted stay counted) and the write completes."""
    data = random.Random(61).randbytes(4096)
    options = {"timeout": PATIENCE}
    async with rw_cluster(tmp_path, clients=1, client_options=options) as (cl, (rw,)):
        _slow(cl, range(cl.config.n - cl.config.t - 1, cl.config.n))
        with trio.fail_after(120):
            await rw.write_block(8, data)
            for f in cl.faults:
                f.clear()
            assert await rw.read_block(8) == data
        assert rw.statistics()["patient_rounds"] >= 1


@pytest.mark.slow
async def test_a_read_waits_for_nodes_slower_than_their_liveness_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nodes whose read handler takes longer than the transport's liveness window, but
    whose process runs (they answer heartbeats at once): slow, not absent.  The window is
    lowered to 3 s and the handlers take 6 s; patience 0.5 s, so the read's rounds last
    1, 2, 4 and 8 s (each round to the silent nodes alone, unbatched: the batcher's
    calls kept the client's 0.5 s and failed the items, ``RWCalls._quorum``).  Before:
    ReadFailed after the first round."""
    monkeypatch.setattr(liveness, "LIVE_FLOOR", 3.0)
    handler_takes = 6.0

    async def slow_read(ctx: Any, payload: Any, honest: Any) -> Any:
        await trio.sleep(handler_takes)  # the node's fault profile: a loaded machine
        return await honest(ctx, payload)

    data = random.Random(63).randbytes(4096)
    async with rw_cluster(tmp_path, clients=1, client_options={"timeout": 0.5}) as (cl, (rw,)):
        with trio.fail_after(120):
            await rw.write_block(10, data)
            for i in range(cl.config.n - cl.config.t - 1, cl.config.n):
                cl.faults[i].byzantine(KIND_READ_LATEST, slow_read)
            assert await rw.read_block(10) == data
        # How many rounds it took depends on the load: the transport stretches the 0.5 s by
        # the response times it measured (one round once with three slow-suite workers).
        assert rw.statistics()["patient_rounds"] >= 1


@pytest.mark.parametrize("write", [False, True])
async def test_t_plus_1_nodes_crashed_still_fail_at_once(tmp_path: Path, write: bool) -> None:
    """Nodes really gone (crashed: connection refused) are not waited for: the read (or
    the write) fails with its outcome, without asking them again."""
    data = random.Random(62).randbytes(4096)
    options = {"timeout": PATIENCE}
    async with rw_cluster(tmp_path, clients=1, client_options=options) as (cl, (rw,)):
        await rw.write_block(9, data)
        for i in range(cl.config.n - cl.config.t - 1, cl.config.n):
            cl.crash(i)
            await cl.wait_stopped(i)
        with trio.fail_after(60):
            if write:
                with pytest.raises(WriteFailed):
                    await rw.write_block(9, data)
            else:
                with pytest.raises(ReadFailed):
                    await rw.read_block(9)
        assert rw.statistics()["patient_rounds"] == 0
