"""What a FaB replica keeps across a restart (``bftfs/fab/durable.py``,
``Replica.restore``): written as changes after every step of a simulated run with a view
change, checkpoints and log collection, then read back into a new replica, it is the state
the running one had; a step whose changes the store refused sends nothing, and the next
write is whole; the accepted values it brings back make it refuse a second value at
a proposal number it voted in (the seed's acceptor rejoin, L7655-7661); a damaged store is
refused, not half read."""

from __future__ import annotations

from typing import Any

import pytest
from fab_sim import CLIENT_BASE, Network, keys_for, silent
from t1_fab_protocol import _increments

from bftfs.fab import durable
from bftfs.fab.client import request
from bftfs.fab.execution import NOOP
from bftfs.fab.messages import Propose, Request, encode
from bftfs.fab.replica import Replica, Settings
from bftfs.fab.service import FabShell
from bftfs.kv import MemoryKV
from bftfs.quorums.fab import FabQuorums
from bftfs.testing.testobjects import registry

Q1 = FabQuorums.standard(1)
NODE = 2


def _persisted(r: Replica, kv: MemoryKV) -> None:
    """Write ``r``'s changes to ``kv`` after each of its steps and ticks, as the node
    does (``node/fab_server.py``)."""
    changes = durable.Durable(r)
    step, tick = r.step, r.tick

    def stepped(sender: int, data: bytes) -> Any:
        out = step(sender, data)
        durable.write(kv, changes.changes())
        return out

    def ticked() -> Any:
        out = tick()
        durable.write(kv, changes.changes())
        return out

    setattr(r, "step", stepped)  # noqa: B010 - an instance's methods, wrapped
    setattr(r, "tick", ticked)  # noqa: B010


def _run() -> tuple[Network, MemoryKV]:
    net = Network(6, Q1, registry(), seed=21, settings=Settings(window=16, interval=8),
                  byzantine={0: silent})  # fmt: skip
    kv = MemoryKV()
    _persisted(net.replicas[NODE], kv)
    assert _increments(net, 30)
    return net, kv


def test_a_restored_replica_continues_from_what_the_running_one_had() -> None:
    net, kv = _run()
    r = net.replicas[NODE]
    assert r.election.regency >= 1 and r.checkpoints.stable >= 24  # view change, GC
    image = durable.load(kv)
    assert image is not None
    back = net._replica(NODE)
    back.restore(image)
    assert back.execution.executed == r.execution.executed == 30
    assert back.execution.objects == r.execution.objects
    assert back.execution.sessions.table == r.execution.sessions.table
    assert (back.execution.owners, back.execution.usage) == (r.execution.owners, r.execution.usage)
    assert back.acceptor.accepted == r.acceptor.accepted
    assert back.learner.learned == r.learner.learned
    assert back.election.regency == r.election.regency
    assert back.checkpoints.stable == r.checkpoints.stable
    assert back.checkpoints.certificate == r.checkpoints.certificate
    # collected slots were deleted from the store, not only from memory
    low = durable._slot_key(b"a", r.checkpoints.stable + 1)
    assert list(kv.scan(durable.DB, b"a", low)) == []


def test_a_restored_acceptor_refuses_a_second_value_where_it_voted() -> None:
    net, kv = _run()
    r = net.replicas[NODE]
    image = durable.load(kv)
    assert image is not None
    pn = r.election.regency
    slot = max(s for s, (p, _) in r.acceptor.accepted.items() if p == pn)
    assert r.acceptor.accepted[slot][1] != NOOP
    other = encode(Propose(pn, slot, NOOP))
    leader = r.election.leader(pn)

    back = net._replica(NODE)
    back.restore(image)
    assert "equivocation" in (back.step(leader, other).rejection or "")

    image.accepted = {}  # a node that forgot its votes takes the second value
    forgetful = net._replica(NODE)
    forgetful.restore(image)
    assert forgetful.step(leader, other).rejection is None


def test_a_fresh_store_has_no_image_and_a_damaged_one_is_refused() -> None:
    kv = MemoryKV()
    assert durable.load(kv) is None
    kv.put(durable.DB, b"r", b"\xc1 not msgpack")
    with pytest.raises(ValueError, match="does not parse"):
        durable.load(kv)


async def test_a_step_the_store_could_not_write_sends_nothing_and_the_next_write_is_whole(
    expect_log: Any,
) -> None:
    net = Network(6, Q1, registry(), seed=3)
    leader = net.replicas[0]  # the leader of regency 0: a request makes it propose
    kv = MemoryKV()
    changes = durable.Durable(leader)
    full = [True]

    def persist() -> None:
        out = changes.changes()
        if full[0]:
            changes.forget()
            raise OSError("map full")
        durable.write(kv, out)

    shell = FabShell(leader, lambda client, body: 1, persist=persist)
    queued = lambda: sum(q[1].statistics().current_buffer_used for q in shell._queues.values())  # noqa: E731
    value = request(CLIENT_BASE, keys_for(CLIENT_BASE), 6, 1, "counter.increment", [1], 1)
    with expect_log("bftfs.fab.service", "ERROR", match="not written", count=1):
        await shell.handle(CLIENT_BASE, encode(Request(value)))
    assert (shell.statistics().unsaved, queued()) == (1, 0)
    assert durable.load(kv) is None

    full[0] = False
    await shell.apply(leader.tick())  # the proposal is resent, after a whole write
    assert queued() > 0
    assert durable.load(kv) is not None


def test_a_restored_acceptor_still_reports_its_commit_proofs() -> None:
    """Parameterized FaB (4 nodes, f = 1): the commit proofs an acceptor gathered are kept
    (Lemma 48 counts on every correct holder reporting one in its REP) and collected with
    the log."""
    net = Network(4, FabQuorums.cluster(4, 1), registry(), seed=22,
                  settings=Settings(window=16, interval=8), byzantine={3: silent})  # fmt: skip
    kv = MemoryKV()
    _persisted(net.replicas[1], kv)
    assert _increments(net, 12)
    r = net.replicas[1]
    assert r.acceptor.commits is not None and r.acceptor.commits.proofs
    image = durable.load(kv)
    assert image is not None and image.proofs == r.acceptor.commits.proofs
    back = net._replica(1)
    back.restore(image)
    assert back.acceptor.commits is not None
    assert back.acceptor.commits.proofs == r.acceptor.commits.proofs
    assert back.acceptor.rep(5) == r.acceptor.rep(5)
    low = durable._slot_key(b"k", r.checkpoints.stable + 1)
    assert r.checkpoints.stable >= 8 and list(kv.scan(durable.DB, b"k", low)) == []
