"""Two mounts of one client identity under FaB, and the bounds of the table that keeps
exactly once per ``(client, stream)`` (bftfs/fab/sessions.py, execution.py, replica.py).

Each mount sends its own increasing request ids.  With one last id per client, a node
drops the slower mount's requests (their ids are not above the other mount's), and its
calls never complete; with a stream per mount, every request of both completes, exactly
once.  A client holding its key cannot grow a node's table or held requests beyond
fixed bounds, nor push out another client's entries, and a request whose stream was
evicted is never run twice.
"""

from __future__ import annotations

import random

import pytest
from fab_sim import CLIENT_BASE, Network, keys_for, lying_leader

from bftfs.fab.client import request
from bftfs.fab.execution import Execution, operation, parse_operation
from bftfs.fab.messages import Request, encode
from bftfs.fab.replica import Replica
from bftfs.fab.sessions import EXPIRED, GONE, STREAMS, Sessions
from bftfs.qu.canon import canonical
from bftfs.quorums.fab import FabQuorums
from bftfs.testing.testobjects import registry

Q = FabQuorums.standard(1)
OTHER = CLIENT_BASE + 1


def _value(rid: int, stream: int, client: int = CLIENT_BASE, amount: int = 1) -> bytes:
    return request(client, keys_for(client), Q.a, rid, "counter.increment", [1], amount, stream)


@pytest.mark.parametrize(
    ("drop", "byzantine"),
    [(0.0, {}), (0.1, {}), (0.05, {0: lying_leader})],
    ids=["reliable", "lossy", "lossy-lying-leader"],
)
def test_two_mounts_of_one_identity_interleave_and_each_request_runs_once(
    drop: float, byzantine: dict
) -> None:
    """Two mounts of one client (streams 11 and 22, ids from 1 each) and another client
    increment counter 1 concurrently, 12 times each, on a lossy network with duplicates
    (and a lying leader): every call completes, its answer is the counter after it, and
    the counter ends at the number of calls (no request ran twice, none was lost)."""
    net = Network(6, Q, registry(), seed=39, drop=drop, duplicate=0.05, byzantine=byzantine)
    mounts = {11: CLIENT_BASE, 22: CLIENT_BASE, OTHER: OTHER}
    left = dict.fromkeys(mounts, 12)

    def until() -> bool:
        for handle, cid in mounts.items():
            c = net.clients.get(handle)
            if left[handle] and (c is None or c.op is None):
                left[handle] -= 1
                mount = None if handle == cid else handle
                net.submit(cid, "counter.increment", [1], 1, mount=mount)
        return not any(left.values()) and net.idle()

    assert net.run(until, 600_000), {h: len(c.done) for h, c in net.clients.items()}
    answers = sorted(d[2] for c in net.clients.values() for d in c.done)
    assert answers == list(range(1, 37))  # each increment once, each answered once
    assert all(d[1] for c in net.clients.values() for d in c.done)
    assert not net.conflicts()
    top = max(net.replicas[i].execution.executed for i in net.correct())
    ex = [net.replicas[i].execution for i in net.correct()]
    assert net.run(lambda: all(e.executed >= top for e in ex), 50_000)
    assert len({canonical(e.sessions.table) for e in ex if e.executed == top}) == 1
    assert len(ex[0].sessions.table[CLIENT_BASE][1]) == 2  # one live entry per mount


def test_an_attacker_with_one_key_cannot_grow_the_table_or_evict_another_client() -> None:
    """One client runs requests on 500 streams: its table keeps ``STREAMS`` replies and
    ``GONE`` ids, another client's entry stays, and every request of an evicted stream
    that ran is refused ``expired`` when it comes again, never run twice."""
    ex = Execution(registry())
    slot = 0

    def apply(value: bytes) -> object:
        nonlocal slot
        slot += 1
        return ex.apply(slot, value)

    assert apply(_value(5, 1, OTHER)).ok  # type: ignore[union-attr]
    ran = [apply(_value(s + 1, s)) for s in range(500)]
    assert all(r.ok for r in ran)  # type: ignore[union-attr]
    floor, live, gone = ex.sessions.table[CLIENT_BASE]
    assert (len(live), len(gone)) == (STREAMS, GONE)
    assert ex.sessions.verdict(OTHER, 1, 5)[0] == "again"  # untouched
    count = ex.objects[1]
    for s in range(500):  # every request that ran, again: none runs a second time
        reply = apply(_value(s + 1, s))
        assert reply is not None
        if s in live:  # its reply again, as it was
            assert reply == ran[s]
        else:
            assert not reply.ok and reply.result[0] == EXPIRED
    assert ex.objects[1] == count
    # An evicted stream's next id runs (its mount goes on), and so does a fresh stream
    # above the floor; a fresh stream at or below the floor is refused, not run.
    remembered = next(iter(gone))
    assert apply(_value(gone[remembered][0] + 1, remembered)).ok  # type: ignore[union-attr]
    assert floor == 500 - STREAMS - GONE  # the last folded stream's id
    refused = apply(_value(floor, 10**6))
    assert refused is not None and refused.result == [EXPIRED, floor]
    assert apply(_value(floor + 1, 10**6 + 1)).ok  # type: ignore[union-attr]


def test_one_clients_streams_cannot_fill_a_nodes_held_requests() -> None:
    """Requests of one client on 100 streams at a node that does not lead: it holds at
    most ``STREAMS`` of that client's, and another client's held request stays."""
    r = Replica(3, Q, keys_for(3), registry())
    assert r.step(OTHER, encode(Request(_value(1, 0, OTHER)))).rejection is None
    for s in range(100):
        assert r.step(CLIENT_BASE, encode(Request(_value(1, s)))).rejection is None
    assert len([k for k in r.intake.held if k[0] == CLIENT_BASE]) == STREAMS
    assert (OTHER, 0) in r.intake.held


def test_the_table_is_deterministic_and_round_trips_through_a_snapshot() -> None:
    """Two executions of one seeded sequence of requests (three clients, random streams
    and ids, evictions) have equal digests; a snapshot installed elsewhere gives the same
    digest, and a table beyond the bounds or of the wrong shape is refused."""
    rng = random.Random(7)
    values = [
        _value(rng.randint(1, 40), rng.randrange(12), CLIENT_BASE + rng.randrange(3))
        for _ in range(400)
    ]
    a, b = Execution(registry()), Execution(registry())
    for slot, v in enumerate(values, 1):
        a.apply(slot, v)
        b.apply(slot, v)
    assert a.digest() == b.digest()
    c = Execution(registry())
    assert c.install(a.snapshot()) and c.digest() == a.digest()
    big = {CLIENT_BASE: [0, {s: [1, s, True, 1] for s in range(STREAMS + 1)}, {}]}
    for table in (big, {CLIENT_BASE: [0, {}, {1: [1]}]}, {-1: [0, {}, {}]}, [], {1: "x"}):
        assert not Sessions().install(table)
        assert not c.install(canonical([1, {}, table, {}]))
    assert c.digest() == a.digest()


def test_operations_without_a_stream_or_with_a_hostile_one_do_not_parse() -> None:
    op = operation(CLIENT_BASE, 1, "counter.increment", [1], 1, 9)
    assert parse_operation(op) is not None and parse_operation(op).stream == 9  # type: ignore[union-attr]
    for raw in (
        [CLIENT_BASE, 1, "counter.increment", [1], 1],  # the old form, no stream
        [CLIENT_BASE, 1, "counter.increment", [1], 1, -1],
        [CLIENT_BASE, 1, "counter.increment", [1], 1, True],
        [CLIENT_BASE, 1, "counter.increment", [1], 1, b"s"],
        [CLIENT_BASE, 1, "counter.increment", [1], 1, 2, 3],
    ):
        assert parse_operation(canonical(raw)) is None


def test_a_snapshot_of_the_first_format_installs_and_old_ids_never_run_again() -> None:
    """A node upgraded from the format with one last reply per client restores its own
    snapshot: that client's ids up to its last one are expired on every stream (none runs
    twice), a mount's next id runs, and nothing is charged until it is written again."""
    ex = Execution(registry())
    first_format = canonical([3, {1: 7}, {CLIENT_BASE: [40, 3, True, 7]}])
    assert ex.install(first_format)
    assert (ex.executed, ex.objects, ex.owners) == (3, {1: 7}, {})
    old = ex.apply(4, _value(40, 99))
    assert old is not None and not old.ok and old.result[0] == EXPIRED
    new = ex.apply(5, _value(41, 99))
    assert new is not None and new.ok and ex.objects[1] == 8
    assert not Execution(registry()).install(canonical([3, {1: 7}, {CLIENT_BASE: 5}]))
