"""Metadata histories ordered by FaB Paxos and executed through the file system's own
methods (``bftfs.fsobjects``, the ones Q/U runs) are linearizable, with a Byzantine leader
or a lying acceptor and a lossy, reordering, duplicating network.

Extended attributes of the root directory are registers (``fs.setxattr`` writes,
``fs.getxattr`` reads), so the Wing and Gong checker of ``bftfs.testing.linearizability``
applies; time is the simulation's delivery count, an operation's interval runs from its
first request to its client's f + 1 matching replies.  A race of ``fs.mkdir`` calls on one
name checks a two-object method: exactly one wins.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from fab_sim import (
    CLIENT_BASE,
    Behaviour,
    Network,
    equivocating_leader,
    lying_acceptor,
    silent,
)

from bftfs.fsobjects import OBJECT_TYPES, ROOT
from bftfs.qu.objects import Registry
from bftfs.quorums.fab import FabQuorums
from bftfs.testing.linearizability import READ, WRITE, Op, check

Q1 = FabQuorums.standard(1)
NOW = 10**18
KEYS = [b"user.k0", b"user.k1"]


def _network(seed: int, byzantine: dict[int, Behaviour]) -> Network:
    net = Network(
        6, Q1, Registry(OBJECT_TYPES), seed=seed, drop=0.05, duplicate=0.05, byzantine=byzantine
    )
    net.submit(CLIENT_BASE, "fs.mkroot", [ROOT], {"mode": 0o755, "uid": 0, "gid": 0, "now": NOW})
    assert net.run(net.idle)
    assert net.clients[CLIENT_BASE].done[-1][1] is True
    return net


def _drive(net: Network, plans: dict[int, list[Callable[[], None]]]) -> bool:
    """Run each client's operations one after another, all clients at once."""

    def until() -> bool:
        for cid, plan in plans.items():
            c = net.clients.get(cid)
            if plan and (c is None or c.op is None):
                plan.pop(0)()
        return not any(plans.values()) and net.idle()

    return net.run(until, 400_000)


SCENARIOS = {
    "no-fault": {},
    "equivocating-leader": {0: equivocating_leader},
    "lying-acceptor": {2: lying_acceptor},
    "silent-leader": {0: silent},
}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_xattr_registers_are_linearizable(scenario: str, seed: int) -> None:
    net = _network(seed, dict(SCENARIOS[scenario]))
    rng = random.Random(seed)
    clients = [CLIENT_BASE + 1 + i for i in range(3)]
    plans: dict[int, list[Callable[[], None]]] = {}
    for cid in clients:
        plan: list[Callable[[], None]] = []
        for k in range(8):
            key = rng.choice(KEYS)
            if rng.random() < 0.5:
                value = f"{cid}-{k}".encode()
                arg = {"name": key, "value": value, "flags": 0, "now": NOW + 1}
                plan.append(
                    lambda c=cid, a=arg, kv=(key, value): net.submit(
                        c, "fs.setxattr", [ROOT], a, tag=(WRITE, *kv)
                    )
                )
            else:
                plan.append(
                    lambda c=cid, k=key: net.submit(
                        c, "fs.getxattr", [ROOT], k, tag=(READ, k, None)
                    )
                )
        plans[cid] = plan
    assert _drive(net, plans)
    history = []
    for cid in clients:
        for _rid, ok, result, start, end, tag in net.clients[cid].done:
            kind, key, value = tag
            if kind == READ:
                assert ok or result == "no-attr"
                value = result if ok else None
            else:
                assert ok, result
            history.append(Op(key, kind, value, start, end, cid))
    assert len(history) == 24
    verdict = check(history)
    assert verdict, verdict.reason
    assert net.conflicts() == []
    # the check has teeth: a read that returned a value nobody wrote is caught
    reads = [i for i, op in enumerate(history) if op.kind == READ]
    assert reads
    bad = history[reads[0]]
    history[reads[0]] = Op(bad.key, READ, b"never-written", bad.start, bad.end, bad.client)
    assert not check(history)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_racing_mkdirs_on_one_name_have_one_winner(scenario: str) -> None:
    net = _network(7, dict(SCENARIOS[scenario]))
    clients = [CLIENT_BASE + 1 + i for i in range(4)]
    for i, cid in enumerate(clients):
        arg = {
            "p": ROOT,
            "o": 100 + i,
            "name": b"d",
            "mode": 0o755,
            "uid": 0,
            "gid": 0,
            "now": NOW + 1,
        }
        net.submit(cid, "fs.mkdir", [ROOT, 100 + i], arg)
    assert net.run(net.idle, 400_000)
    outcomes = sorted(
        (net.clients[c].done[-1][1], str(net.clients[c].done[-1][2])[:6]) for c in clients
    )
    assert [ok for ok, _ in outcomes] == [False, False, False, True]
    assert {why for ok, why in outcomes if not ok} == {"exists"}
