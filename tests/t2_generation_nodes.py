"""Generations on the nodes (issue 35; docs/membership.md, "Generations: the nodes"), with an
in-process cluster of real nodes (TCP, LMDB) that has views: once the view starting a move
to a new generation is pushed, the old generation's nodes answer ``gen.status`` frozen,
refuse a client's own Q/U update, query (but the move's ``fs.state``) and PASIS write with
``moved``, still answer the move's reads and block reads, take an ``fs.release`` and
repairs (a ``settle`` of an update that reached only some of them before the freeze), and
push recalls of the leases they store; once the move
is finished they answer ``retired`` to everything but ``view.get`` and ``gen.status``.  A
restart keeps each state."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio

from bftfs.crypto import Identity
from bftfs.fsobjects.leases import SHARED
from bftfs.fsobjects.limits import ROOT
from bftfs.ids import NodeId
from bftfs.membership import admin
from bftfs.membership.client import ClientViews, generation_status
from bftfs.membership.configview import write_signed
from bftfs.membership.view import PREVIOUS, ViewNode, sign
from bftfs.membership.viewkeys import AdminChains
from bftfs.net.errors import RemoteError
from bftfs.outcome import GenerationMoved
from bftfs.qu.messages import KIND_LATEST, KIND_REQUEST, VERSION, parse_latest_reply
from bftfs.qu.objects import MethodRefused
from bftfs.rw.client import RWClient
from bftfs.testing.cluster import Cluster, open_cluster, qu_client

COUNTER = 77
BLOCK = 0x5000


async def push(cluster: Cluster, blob: bytes, number: int) -> None:
    """The signed view to every node of the cluster (as client 0): each holds it after
    (taken now, or forwarded to it by a node that took it first; a node that took the view
    retiring it answers nothing more but ``retired``)."""
    ep = cluster.client(0)
    for i in range(cluster.config.n):
        try:
            got = await ep.call(NodeId(i), "view.install", blob)
        except RemoteError as e:
            assert e.code == "retired", e
            continue
        assert got["view"] == number, (i, got)


async def new_generation(cluster: Cluster, tmp_path: Path, n: int) -> tuple[Any, list[Any]]:
    """The view starting a move to ``n`` new nodes (t = b = 1), signed with every node's
    key for it; the new nodes' ports stay bound (never served) for the test's length."""
    cfg = cluster.config
    v1, _ = admin.current(cfg)
    listeners = [await trio.open_tcp_listeners(0, host="127.0.0.1") for _ in range(n)]
    rows = []
    for i, ls in enumerate(listeners):
        ident = Identity.generate(NodeId(i))
        admin.new_chain(cfg, tmp_path / "g2" / f"node{i}", ident.public, v1.number + 1)
        rows.append(ViewNode(NodeId(i), "127.0.0.1", ls[0].socket.getsockname()[1], ident.public))
    v2 = admin.with_generation(v1, rows, 1, 1, n - 2, n - 3)
    v2 = admin.with_view_keys(AdminChains(cfg.admin_key_path), v2)
    return v2, listeners


async def statuses(cluster: Cluster) -> dict[int, Any]:
    return await generation_status(cluster.client(1), list(range(cluster.config.n)))


@pytest.mark.expected_logs("bftfs.node", match=r"frozen \(view 2 moves to generation 2\)")
@pytest.mark.parametrize("seed", [35])
def test_old_generation_nodes_freeze_serve_repairs_and_retire(
    tmp_path: Path, seed: int, expect_log: Any
) -> None:
    async def main() -> None:
        async with open_cluster(tmp_path, views=True, seed=seed) as cluster:
            assert cluster.admin_key is not None
            mover, other = qu_client(cluster, 0, seed), qu_client(cluster, 1, seed)
            rw = RWClient(cluster.client(0), cluster.config)
            await mover.update(COUNTER, "counter.increment", 5)
            await rw.write_block(BLOCK, b"before the move")
            now = time.time_ns()
            await other.update(ROOT, "fs.mkroot", {"mode": 0o755, "uid": 0, "gid": 0, "now": now})
            lease = {"kind": SHARED, "lt": time.time_ns(), "term": 60 * 10**9}
            await other.update(ROOT, "fs.lease", lease)
            assert {s["frozen"] for s in (await statuses(cluster)).values()} == {False}
            with pytest.raises(RemoteError, match="forbidden"):  # listings are between nodes
                await cluster.client(1).call(NodeId(0), KIND_LATEST, {"v": VERSION})

            # An increment that reaches nodes 0-2 only: 3-5 hold it until after the freeze.
            gate, reached = trio.Event(), trio.Event()
            answered: set[int] = set()

            async def held(ctx: Any, payload: Any, handler: Any) -> Any:
                await gate.wait()
                return await handler(ctx, payload)

            def answering(i: int) -> Any:
                async def wrapper(ctx: Any, payload: Any, handler: Any) -> Any:
                    reply = await handler(ctx, payload)
                    answered.add(i)
                    if answered == {0, 1, 2}:
                        reached.set()
                    return reply

                return wrapper

            for i in range(6):
                cluster.faults[i].byzantine(KIND_REQUEST, held if i > 2 else answering(i))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(mover.update, COUNTER, "counter.increment", 1)
                await reached.wait()
                nursery.cancel_scope.cancel()
            recalled: set[int] = set()
            all_recalled = trio.Event()

            def on_push(node: Any, body: Any) -> None:
                if body == {"recall": [ROOT]}:
                    recalled.add(int(node))
                if len(recalled) == 6:
                    all_recalled.set()

            cluster.client(1).on_push = on_push

            v2, listeners = await new_generation(cluster, tmp_path, 7)
            await push(cluster, sign(v2, cluster.admin_key), 2)
            for i in range(6):
                cluster.faults[i].honest()
            gate.set()  # the held increments now meet frozen nodes: refused, not taken

            # Asked through a client's endpoint of the previous generation, which admits
            # each node only on its proof with the previous rows' key for view 2.
            write_signed(cluster.config.view_path, sign(v2, cluster.admin_key))
            views, ep = ClientViews(cluster.config), cluster.twin(1)
            views.attach(ep, generation=PREVIOUS)
            got = await generation_status(ep, list(range(6)))
            assert got == {
                i: {"g": 1, "frozen": True, "retired": False, "view": 2} for i in range(6)
            }
            assert views.unproven == 0
            # Every node pushed a recall of the leased root to its holder.
            with trio.fail_after(5):
                await all_recalled.wait()
            with pytest.raises(GenerationMoved, match=r"nodes \[0, 1, 2, 3, 4, 5\] refused"):
                await rw.write_block(BLOCK, b"after the freeze")
            assert all(node.stats["rw.refused.moved"] >= 1 for node in cluster.nodes)
            # The increment left on nodes 0-2 (r of them: repairable) is completed by a
            # repair the frozen nodes 3-5 take, its own client's settle.
            ok = [node.stats["qu.ok"] for node in cluster.nodes]
            await mover.settle(COUNTER)
            assert all(cluster.nodes[i].stats["qu.ok"] > ok[i] for i in (3, 4, 5))
            assert await mover.query(ROOT, "fs.state") is not None  # the move's read
            # A client's own new operations are refused `moved`, and so are its queries
            # but the move's read: only a mount that has not taken the view yet asks them,
            # and the new generation may have changed what they would read.
            with pytest.raises(MethodRefused) as refused:
                await other.update(COUNTER, "counter.increment", 1)
            assert refused.value.code == "moved"
            with pytest.raises(MethodRefused) as refused:
                await other.query(COUNTER, "counter.fetch")
            assert refused.value.code == "moved"
            assert await other.update(ROOT, "fs.release", {"lt": time.time_ns()}) is None
            assert await rw.read_block(BLOCK) == b"before the move"
            # ...and they list their objects to clients (the background mover walks them).
            listed = await other.ep.call(NodeId(2), KIND_LATEST, {"v": VERSION})
            assert {COUNTER, ROOT} <= {oid for oid, _ in parse_latest_reply(listed)[0]}

            # A restart keeps the freeze.
            cluster.crash(4)
            await cluster.recover(4)
            assert (await statuses(cluster))[4]["frozen"] is True
            assert set(cluster.nodes[4].catch_ups) == {"qu", "rw"}  # catch-up goes on
            # Frozen nodes still reach each other (object sync, catch-up): new sessions are
            # admitted on the previous rows' proofs.
            for i in (0, 1, 2, 3, 5):
                await cluster.nodes[i].endpoint.call(NodeId(4), "ping", b"")
                await cluster.nodes[4].endpoint.call(NodeId(i), "ping", b"")
            assert {node.views.unproven for node in cluster.nodes} == {0}

            # The move is finished: the old nodes are retired.
            v3 = admin.finished_generation(v2)
            v3 = admin.with_view_keys(AdminChains(cluster.config.admin_key_path), v3)
            with expect_log("bftfs.node", match="retired .* may be powered off", count=6):
                await push(cluster, sign(v3, cluster.admin_key), 3)
            got = await statuses(cluster)
            assert got == {i: {"g": 1, "frozen": False, "retired": True, "view": 3} for i in got}
            with pytest.raises(RemoteError) as retired:
                await cluster.client(1).call(NodeId(2), "ping", b"")
            assert retired.value.code == "retired"
            cluster.crash(2)
            with expect_log("bftfs.node", match="retired .* may be powered off", count=1):
                await cluster.recover(2)
            assert (await statuses(cluster))[2]["retired"] is True
            assert cluster.nodes[2].catch_ups == {}  # nothing to catch up from retired peers
            with pytest.raises(RemoteError, match="retired"):
                await cluster.client(1).call(NodeId(2), "stats", None)
            for ls in listeners:
                for lst in ls:
                    await lst.aclose()

    trio.run(main)
