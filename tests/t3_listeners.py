"""Tier 3: the Listeners register on four real node processes (issue 68).

``bftfs node`` processes (real TCP, MAC'd sessions, LMDB) of a four-node cluster (its Q/U
and PASIS thresholds ``t = 1, b = 0``; the register's own ``f = 1`` of ``n = 3f + 1``),
clients ``client0..2`` each a :class:`~bftfs.listeners.client.ListenersClient` on its own
endpoint, reading and writing two registers at once.  Every history (an operation's
interval from its call to its return) must be linearizable
(``bftfs/testing/linearizability.py``):

- with node 1 killed (SIGKILL) halfway: the operations after it go on with three nodes;
- with node 3 running ``--byzantine listeners-liar`` (each of its answers and echoes
  stale, forged or equivocating: ``bftfs/testing/byzantine/listeners.py``), seen lying.

Reads made one at a time, with no write in flight, decide on the first answers: no echo.
A read that cannot gather a quorum (two nodes down) times out and starts again until a
node is back (section 3.6.1).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from listeners_helpers import LIAR, register_cluster

from bftfs.config import ClusterConfig
from bftfs.connect import open_client
from bftfs.ids import NodeId
from bftfs.listeners import messages as m
from bftfs.listeners.client import ListenersClient
from bftfs.listeners.stamps import INITIAL_VALUE
from bftfs.net.endpoint import Endpoint
from bftfs.net.errors import RemoteError
from bftfs.testing.linearizability import Recorder, check
from bftfs.testing.processes import ProcessCluster

KEYS = (b"alpha", b"beta")
CLIENTS = 3
OPS = 24


async def _worker(
    c: ListenersClient, k: int, rec: Recorder, halfway: trio.Event, count: list[int]
) -> None:
    rng = random.Random(k)
    for i in range(OPS):
        key = rng.choice(KEYS)
        if rng.random() < 0.5:
            data = b"c%d-%d" % (k, i)
            with rec.write(key, data, k):
                await c.write(key, data)
        else:
            with rec.read(key, k) as box:
                box.append((await c.read(key)).data)
        count[0] += 1
        if count[0] == CLIENTS * OPS // 2:
            halfway.set()


async def _settled(c: ListenersClient, key: bytes, correct: list[int]) -> None:
    """Wait until each of the ``correct`` nodes holds the value a read of ``key`` returns."""
    stamp = (await c.read(key)).stamp
    for node in correct:
        while True:
            reply = await c.endpoint.call(NodeId(node), m.KIND_TS, m.ts_request(key))
            if m.parse_stamp_reply(reply) >= stamp:
                break
            await trio.sleep(0.05)


async def _workload(
    cfg: ClusterConfig, correct: list[int], at_halfway: Callable[[], None] | None = None
) -> tuple[Recorder, list[ListenersClient]]:
    """The clients' concurrent operations, then sequential reads; ``correct``: the nodes
    that are correct and up at the end."""
    rec = Recorder(trio.current_time)
    nodes = [NodeId(s.id) for s in cfg.nodes]
    halfway, count = trio.Event(), [0]
    clients: list[ListenersClient] = []
    async with trio.open_nursery() as outer:
        for k in range(CLIENTS):
            ep = await outer.start(_endpoint, cfg, f"client{k}")
            clients.append(ListenersClient(ep, nodes, rng=random.Random(k)))
        async with trio.open_nursery() as nursery:
            for k, c in enumerate(clients):
                nursery.start_soon(_worker, c, k, rec, halfway, count)
            if at_halfway is not None:
                await halfway.wait()
                await trio.to_thread.run_sync(at_halfway)
        # Sequential reads once the last writes reached every correct node still up
        # (a write returns at a quorum; its STORE to the last node may still travel, and
        # a read would wait for that node's echo): one round each.
        for key in KEYS:
            await _settled(clients[0], key, correct)
        before = clients[0].stats["echo_reads"]
        for key in KEYS:
            for _ in range(3):
                with rec.read(key, 0) as box:
                    box.append((await clients[0].read(key)).data)
        assert clients[0].stats["echo_reads"] == before, dict(clients[0].stats)
        outer.cancel_scope.cancel()
    return rec, clients


async def _endpoint(cfg: ClusterConfig, name: str, task_status: trio.TaskStatus[Endpoint]) -> None:
    async with open_client(cfg, name) as ep:
        task_status.started(ep)
        await trio.sleep_forever()


def test_atomic_with_a_node_killed_halfway(tmp_path: Path) -> None:
    with register_cluster(tmp_path / "c", CLIENTS + 1) as pc:
        rec, clients = trio.run(_workload, pc.config, [0, 2, 3], lambda: pc.kill(1))
        assert pc.pid(1) is None
    assert len(rec.ops) == CLIENTS * OPS + 2 * 3  # every operation returned
    verdict = check(rec.ops, initial=b"")
    assert verdict, verdict.reason
    assert sum(c.stats["writes"] for c in clients) > 0


async def _liar_answers(cfg: ClusterConfig, liar: int) -> tuple[list[bytes], list[bytes]]:
    """What the correct quorum reads, and what the liar answers to READs, for each key."""
    async with open_client(cfg, f"client{CLIENTS}") as ep:
        c = ListenersClient(ep, [NodeId(s.id) for s in cfg.nodes])
        truth = [(await c.read(key)).data for key in KEYS]
        said = []
        for i, key in enumerate(KEYS * 4):
            reply = await ep.call(NodeId(liar), m.KIND_READ, m.read_request(key, 1 << 50 | i))
            said.append(m.parse_value(reply)[1].data)
            await ep.call(NodeId(liar), m.KIND_DONE, m.done_request(1 << 50 | i))
    return truth, said


def test_atomic_with_a_lying_node(tmp_path: Path) -> None:
    liar = 3
    with register_cluster(tmp_path / "c", CLIENTS + 1, {liar: LIAR}) as pc:
        rec, _clients = trio.run(_workload, pc.config, [0, 1, 2])
        truth, said = trio.run(_liar_answers, pc.config, liar)
    verdict = check(rec.ops, initial=b"")
    assert verdict, verdict.reason
    assert any(s not in truth for s in said), ("the liar told the truth every time", said)


async def _read_through_an_outage(pc: ProcessCluster) -> tuple[bytes, int]:
    """Write, lose a quorum (nodes 2 and 3 killed): a read does not return but restarts
    after each time-out; with node 3 back (its LMDB kept the value), a read returns the
    value written."""
    cfg = pc.config
    async with open_client(cfg, "client0") as ep:
        c = ListenersClient(ep, [NodeId(s.id) for s in cfg.nodes], read_timeout=0.5)
        await c.write(b"k", b"before the outage")
        await _settled(c, b"k", [0, 1, 2, 3])  # node 3 must keep it through SIGKILL
        for i in (2, 3):
            await trio.to_thread.run_sync(pc.kill, i)
        with trio.move_on_after(2.0) as cut:
            await c.read(b"k")
        assert cut.cancelled_caught, "a read returned without a quorum"
        restarts = c.stats["restarts"]
        await trio.to_thread.run_sync(pc.start, 3)
        return (await c.read(b"k")).data, restarts


@pytest.mark.slow
def test_a_read_restarts_until_a_quorum_answers(tmp_path: Path) -> None:
    with register_cluster(tmp_path / "c", CLIENTS + 1) as pc:
        data, restarts = trio.run(_read_through_an_outage, pc)
    assert data == b"before the outage"
    assert restarts >= 2


async def _store_refused(cfg: ClusterConfig) -> str:
    """What node 0 answers a register STORE (a client's one step to fill its disk)."""
    async with open_client(cfg, "client0") as ep:
        try:
            await ep.call(NodeId(0), m.KIND_STORE, m.store_request(b"k", INITIAL_VALUE))
        except RemoteError as e:
            return str(e)
    return "stored"


def test_a_node_not_started_with_listeners_serves_no_registers(tmp_path: Path) -> None:
    """Registers have no storage charge yet: only ``bftfs node --listeners`` serves them."""
    with register_cluster(tmp_path / "c", CLIENTS + 1, serve=False) as pc:
        answer = trio.run(_store_refused, pc.config)
    assert answer != "stored"
    assert "lr.store" in answer, answer
