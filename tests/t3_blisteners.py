"""Tier 3: Byzantine Listeners on four real node processes (issue 68, seed 003 section 3.5).

``bftfs node --listeners`` processes (real TCP, MAC'd sessions, LMDB) of a four-node
cluster serve the ``bl.*`` kinds (``bftfs/listeners/bnodeside.py``), with the MAC vectors
keyed by the nodes' real pairwise keys:

- a writer that stops after its STORE reached one node: the nodes forward it among
  themselves (S9-S18), every node ends up holding it, and a later reader returns it
  (Lemmas 15, 16);
- three clients reading and writing two registers at once: the history is linearizable
  and every operation returns;
- the same with node 3 running ``--byzantine listeners-liar`` (its ``bl.*`` answers made
  up, bad MAC vectors, STOREs acknowledged but neither stored nor forwarded, made-up
  writes sent to the other nodes: ``bftfs/testing/byzantine/listeners.py``) and a fourth
  client, a process of its own, SIGKILLed in the middle of a write (its STORE reached one
  correct node only): every read returns, the history (the killed write pending) is
  linearizable, the killed write is completed by the nodes' forwarding, and the liar is
  seen lying.
"""

from __future__ import annotations

import random
import signal
import sys
from pathlib import Path

import trio
from listeners_helpers import LIAR, register_cluster

from bftfs.config import ClusterConfig
from bftfs.connect import open_client
from bftfs.ids import NodeId
from bftfs.listeners import bmessages as bm
from bftfs.listeners import messages as m
from bftfs.listeners.auth import data_hash
from bftfs.listeners.bclient import BListenersClient
from bftfs.listeners.bserver import Forward
from bftfs.listeners.stamps import INITIAL, Stamp
from bftfs.local import query_status
from bftfs.testing.clis import bftfs_cli
from bftfs.testing.linearizability import Recorder, check

KEYS = (b"alpha", b"beta")
CLIENTS = 3
OPS = 16


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
    with register_cluster(tmp_path / "c", CLIENTS + 2) as pc:
        data, stamp, held = trio.run(_abandoned, pc.config)
    assert data == b"abandoned"
    assert held == [stamp] * 4


async def _revoked(cfg: ClusterConfig) -> list[list[int]]:
    """Each node's list of clients its register rules refuse (its ``blisteners`` progress)."""
    statuses = await query_status(cfg, timeout=10.0)
    assert all(st.stats is not None for st in statuses), statuses
    return [list(st.stats["progress"]["blisteners"]["revoked"]) for st in statuses if st.stats]


async def _written_then_revoked(cfg: ClusterConfig, home: Path) -> tuple[list, list, int]:
    async with open_client(cfg, "client1") as ep:
        await BListenersClient(ep, _nodes(cfg)).write(b"k", b"before")
    before = await _revoked(cfg)
    await trio.to_thread.run_sync(bftfs_cli, home, "client", "revoke", "client1")
    (cid,) = [int(c.id) for c in cfg.clients if c.name == "client1"]
    with trio.fail_after(60):
        after = await _revoked(cfg)
        while any(cid not in r for r in after):
            await trio.sleep(0.1)  # polled: the view reaches each node in its own time
            after = await _revoked(cfg)
    return before, after, cid


def test_bftfs_client_revoke_reaches_every_nodes_register_rules(tmp_path: Path) -> None:
    """Lemma 20 needs the administrator's revocation in every correct node's rules; the
    operator's command is ``bftfs client revoke``, whose view the nodes follow."""
    with register_cluster(tmp_path / "c", CLIENTS) as pc:
        before, after, cid = trio.run(_written_then_revoked, pc.config, pc.home)
    assert before == [[]] * 4
    assert after == [[cid]] * 4


async def _worker(
    c: BListenersClient, k: int, rec: Recorder, reads: tuple[bytes, ...] = KEYS
) -> None:
    """``OPS`` reads and writes of random registers of ``KEYS``, reads also of ``reads``."""
    rng = random.Random(k)
    for i in range(OPS):
        key = rng.choice(reads)
        if key in KEYS and rng.random() < 0.5:
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
    with register_cluster(tmp_path / "c", CLIENTS + 2) as pc:
        rec = trio.run(_workload, pc.config)
    assert len(rec.ops) == CLIENTS * OPS
    verdict = check(rec.ops, initial=b"")
    assert verdict, verdict.reason


#: The client process killed mid-write: QUERY TS and PROPOSE TS to all, its STORE to one
#: correct node alone, then it says so and waits for its SIGKILL.  That node is one whose
#: TS OK is in ``K`` (so it vouches for the write and forwards it): a STORE that reached only
#: a node outside ``K``, with the liar's bad vector in ``K``, is vouched for by no one, and
#: the write never takes place (which Byznearizability allows a stopped client's write).
KILLED_WRITER = """
import sys, trio
from pathlib import Path
from bftfs.config import load
from bftfs.connect import open_client
from bftfs.ids import NodeId
from bftfs.listeners import bmessages as bm
from bftfs.listeners.bclient import BListenersClient
from bftfs.listeners.bserver import Forward

async def main():
    cfg = load(Path(sys.argv[1]))
    nodes = [NodeId(s.id) for s in cfg.nodes]
    async with open_client(cfg, sys.argv[2]) as ep:
        op = await BListenersClient(ep, nodes).prepare(sys.argv[3].encode(), b"killed")
        to = min(q for q in op.write.k_map if q != int(sys.argv[4]))
        await ep.call(NodeId(to), bm.KIND_STORE, bm.store_request(Forward(op.write, {}, 3)))
        print("stored", flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


#: The register of the killed write (read by the others, written by no one else).
GAMMA = b"gamma"


class _Killed(Exception):
    """The killed client's write ends without returning (a pending operation)."""


async def _killed_write(cfg: ClusterConfig, rec: Recorder, liar: int) -> None:
    name = f"client{CLIENTS}"
    toml = str(cfg.home / "cluster.toml")
    args = [sys.executable, "-c", KILLED_WRITER, toml, name, "gamma", str(liar)]
    try:
        with rec.write(GAMMA, b"killed", CLIENTS):
            proc = await trio.lowlevel.open_process(args, stdout=-1)
            try:
                assert proc.stdout is not None
                line = b""
                while not line.endswith(b"\n"):
                    chunk = await proc.stdout.receive_some(64)
                    assert chunk, "the writer process ended before its STORE"
                    line += chunk
                assert line == b"stored\n", line
            finally:
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
            raise _Killed
    except _Killed:
        pass


async def _with_a_liar(cfg: ClusterConfig, liar: int) -> tuple[Recorder, int, dict[str, int]]:
    rec = Recorder(trio.current_time)
    nodes = _nodes(cfg)
    async with (
        open_client(cfg, "client0") as e0,
        open_client(cfg, "client1") as e1,
        open_client(cfg, "client2") as e2,
    ):
        cs = [
            BListenersClient(ep, nodes, rng=random.Random(k)) for k, ep in enumerate((e0, e1, e2))
        ]
        with trio.fail_after(180):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_killed_write, cfg, rec, liar)
                for k, c in enumerate(cs):
                    nursery.start_soon(_worker, c, k, rec, KEYS + (GAMMA,))
            for node in [n for n in nodes if int(n) != liar]:  # forwarding completes it
                while True:  # polled
                    if await _held(cs[0], node, GAMMA) > INITIAL:
                        break
                    await trio.sleep(0.05)
            truth: dict[bytes, bytes] = {}
            for key in (*KEYS, GAMMA):  # every read returns, once nothing is in flight too
                for _ in range(2):
                    with rec.read(key, 0) as box:
                        truth[key] = (await cs[0].read(key)).data
                        box.append(truth[key])
            lied = 0  # READs the liar answers with other than what the correct nodes hold
            for i, key in enumerate(KEYS * 4):
                reply = await e1.call(NodeId(liar), bm.KIND_READ, m.read_request(key, i))
                lied += m.parse_value(reply)[1].data != truth[key]
                await e1.call(NodeId(liar), bm.KIND_DONE, m.done_request(i))
    statuses = await query_status(cfg, timeout=10.0)
    lies = {}
    for st in statuses:
        if int(st.id) == liar and st.stats is not None:
            lies = dict(st.stats["progress"].get("blisteners-liar") or {})
    return rec, lied, lies


def test_atomic_with_a_lying_node_and_a_client_killed_mid_write(tmp_path: Path) -> None:
    liar = 3
    with register_cluster(tmp_path / "c", CLIENTS + 2, {liar: LIAR}) as pc:
        rec, lied, lies = trio.run(_with_a_liar, pc.config, liar)
    ops = [op for op in rec.ops if op.end is not None]
    assert len(ops) == CLIENTS * OPS + 2 * 3  # every operation but the killed one
    killed = [op for op in rec.ops if op.end is None]
    assert len(killed) == 1 and killed[0].value == b"killed", rec.ops
    verdict = check(rec.ops, initial=b"")
    assert verdict, verdict.reason
    assert [op.value for op in ops[-2:]] == [b"killed"] * 2  # the last reads, of gamma
    assert lied > 0, "the liar told the truth to every READ"
    assert lies.get("fabricated", 0) > 0 and lies.get("withheld", 0) > 0, lies
