"""Tier 3: Byzantine Listeners on four real node processes (issue 68, seed 003 section 3.5).

``bftfs node --listeners`` processes (real TCP, MAC'd sessions, LMDB) of a four-node
cluster serve the ``bl.*`` kinds (``bftfs/listeners/bnodeside.py``), with the MAC vectors
keyed by the nodes' real pairwise keys:

- a writer that stops after its STORE reached one node: the nodes forward it among
  themselves (S9-S18), every node ends up holding it, and a later reader returns it
  (Lemmas 15, 16);
- three clients reading and writing two registers at once: the history is linearizable
  and every operation returns.
"""

from __future__ import annotations

import random
from pathlib import Path

import trio

from bftfs.config import ClusterConfig
from bftfs.connect import open_client
from bftfs.ids import NodeId
from bftfs.listeners import bmessages as bm
from bftfs.listeners.auth import data_hash
from bftfs.listeners.bclient import BListenersClient
from bftfs.listeners.bserver import Forward
from bftfs.listeners.stamps import INITIAL, Stamp
from bftfs.testing.linearizability import Recorder, check
from bftfs.testing.processes import ProcessCluster

KEYS = (b"alpha", b"beta")
CLIENTS = 3
OPS = 16


def _cluster(home: Path) -> ProcessCluster:
    return ProcessCluster(
        home,
        n=4,
        t=1,
        b=0,
        clients=CLIENTS + 1,
        map_size=1 << 28,
        durable=False,
        node_args={i: ["--listeners"] for i in range(4)},
    )


def _nodes(cfg: ClusterConfig) -> list[NodeId]:
    return [NodeId(s.id) for s in cfg.nodes]


async def _held(c: BListenersClient, node: NodeId, key: bytes) -> Stamp:
    """The timestamp ``node`` holds for ``key`` (its answer to QUERY TS)."""
    reply = await c.endpoint.call(node, bm.KIND_TS, bm.ts_request(key, data_hash(b""), INITIAL))
    return bm.parse_ts_reply(reply, len(c.nodes))[0]


async def _abandoned(cfg: ClusterConfig) -> tuple[bytes, Stamp, list[Stamp]]:
    nodes = _nodes(cfg)
    async with open_client(cfg, "client0") as ep:
        await BListenersClient(ep, nodes).write(b"k", b"first")
    async with open_client(cfg, "client1") as ep:  # the writer that stops
        c = BListenersClient(ep, nodes)
        op = await c.prepare(b"k", b"abandoned")
        assert op.write is not None
        stamp = op.write.value.stamp
        await ep.call(nodes[0], bm.KIND_STORE, bm.store_request(Forward(op.write, {}, 3)))
    async with open_client(cfg, "client2") as ep:
        reader = BListenersClient(ep, nodes)
        with trio.fail_after(30):
            for node in nodes:  # the forwarding reaches every node (polled)
                while True:
                    if await _held(reader, node, b"k") >= stamp:
                        break
                    await trio.sleep(0.05)
        got = await reader.read(b"k")
        held = [await _held(reader, node, b"k") for node in nodes]
    return got.data, stamp, held


def test_a_write_whose_client_stops_after_one_store_completes(tmp_path: Path) -> None:
    with _cluster(tmp_path / "c") as pc:
        data, stamp, held = trio.run(_abandoned, pc.config)
    assert data == b"abandoned"
    assert held == [stamp] * 4


async def _worker(c: BListenersClient, k: int, rec: Recorder) -> None:
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


async def _workload(cfg: ClusterConfig) -> Recorder:
    rec = Recorder(trio.current_time)
    async with (
        open_client(cfg, "client0") as e0,
        open_client(cfg, "client1") as e1,
        open_client(cfg, "client2") as e2,
    ):
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for k, ep in enumerate((e0, e1, e2)):
                    c = BListenersClient(ep, _nodes(cfg), rng=random.Random(k))
                    nursery.start_soon(_worker, c, k, rec)
    return rec


def test_concurrent_clients_are_atomic(tmp_path: Path) -> None:
    with _cluster(tmp_path / "c") as pc:
        rec = trio.run(_workload, pc.config)
    assert len(rec.ops) == CLIENTS * OPS
    verdict = check(rec.ops, initial=b"")
    assert verdict, verdict.reason
