"""The quota of metadata records under FaB (bftfs/fab/execution.py): each object state is
charged to the client that last wrote it, and a client's update that grows the states
past its quota is refused ``quota`` - by every correct node alike, since execution is
replicated and the quota is one cluster-wide figure.  Another client is not affected,
shrinking always passes, nodes are never refused, and the charges are rebuilt from a
snapshot exactly."""

from __future__ import annotations

from fab_sim import Network, keys_for, lying_leader

from bftfs.fab.client import request
from bftfs.fab.execution import Execution
from bftfs.fab.messages import Reply
from bftfs.ids import CLIENT_ID_BASE
from bftfs.quorums.fab import FabQuorums
from bftfs.testing.testobjects import registry

Q = FabQuorums.standard(1)
#: Client principals (the simulation's usual ids, from 1000, are node ids to ``is_node``).
A, B, NODE = CLIENT_ID_BASE, CLIENT_ID_BASE + 1, 3
QUOTA = 2000


def _put(client: int, rid: int, oid: int, key: str, size: int) -> bytes:
    return request(client, keys_for(client), Q.a, rid, "kv.put", [oid], [key, b"x" * size])


def test_a_client_past_its_quota_is_refused_and_others_are_not() -> None:
    ex = Execution(registry(), QUOTA)
    slot = 0

    def run(value: bytes) -> Reply:
        nonlocal slot
        slot += 1
        reply = ex.apply(slot, value)
        assert reply is not None
        return reply

    results = [run(_put(A, i + 1, 1, f"k{i}", 300)) for i in range(8)]
    refused = [r for r in results if not r.ok]
    assert refused and all(r.result == "quota" for r in refused)
    assert results[0].ok and ex.usage[A] <= QUOTA  # what fitted went in
    assert run(_put(B, 1, 2, "b", 1500)).ok  # another client has its own quota
    assert run(_put(NODE, 1, 3, "n", 5000)).ok  # nodes are never refused
    # Shrinking passes at the quota; what it gives back can be used again.
    shrink = request(A, keys_for(A), Q.a, 20, "kv.delete", [1], "k0")
    assert run(shrink).ok
    assert run(_put(A, 21, 1, "k0", 100)).ok
    # B overwriting A's object takes over its charge: A is charged nothing more for it.
    a_before = ex.usage[A]
    assert run(_put(B, 2, 1, "k1", 1)).ok
    assert A not in ex.usage and ex.usage[B] > 1500 and a_before > 0
    again = Execution(registry(), QUOTA)
    assert again.install(ex.snapshot())
    assert (again.owners, again.usage, again.digest()) == (ex.owners, ex.usage, ex.digest())


def test_every_correct_node_refuses_alike_and_the_client_gets_the_refusal() -> None:
    """On a lossy simulated network with a lying leader, client A's puts past the quota
    are answered ``quota`` (``f + 1`` matching replies), B's all go in, and the correct
    nodes executed the same charges."""
    net = Network(6, Q, registry(), seed=5, drop=0.05, byzantine={0: lying_leader}, quota=QUOTA)
    plan = {A: [(1, 400)] * 7, B: [(2, 200)] * 7}

    def until() -> bool:
        for cid, puts in plan.items():
            c = net.clients.get(cid)
            if puts and (c is None or c.op is None):
                oid, size = puts.pop()
                rid = 1 if c is None else c.rid + 1
                net.submit(cid, "kv.put", [oid], [f"k{rid}", b"x" * size])
        return not any(plan.values()) and net.idle()

    assert net.run(until, 400_000)
    a = [d[1:3] for d in net.clients[A].done]
    assert (False, "quota") in a and a[0] == (True, None)
    assert all(ok for ok, _ in (d[1:3] for d in net.clients[B].done))
    top = max(net.replicas[i].execution.executed for i in net.correct())
    net.run(lambda: all(net.replicas[i].execution.executed >= top for i in net.correct()))
    usages = {
        tuple(sorted(net.replicas[i].execution.usage.items()))
        for i in net.correct()
        if net.replicas[i].execution.executed == top
    }
    assert len(usages) == 1
