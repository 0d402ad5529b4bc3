"""Measured round-trip times (issue 65, ``bftfs/net/rtt.py``): RFC 6298's estimator, the
timeout rule ``max(floor, k * RTO)`` and which nodes a quorum call asks last."""

from __future__ import annotations

import random
import socket

import pytest
import trio

from bftfs.crypto import Identity, KeyRing
from bftfs.ids import NodeId, client_id
from bftfs.net.endpoint import open_endpoint
from bftfs.net.errors import TransportError
from bftfs.net.rtt import (
    ALPHA,
    BETA,
    GRANULARITY,
    OVERDUE_FLOOR,
    OVERDUE_K,
    SLOW_MARGIN,
    STALE,
    RttEstimator,
    RttTable,
    stretch,
)


def test_the_first_sample_sets_srtt_to_it_and_rttvar_to_half_of_it() -> None:
    est = RttEstimator()
    assert est.srtt is None and est.rto() == 0.0
    est.sample(0.3, now=1.0)
    assert est.srtt == 0.3 and est.rttvar == 0.15 and est.samples == 1 and est.at == 1.0
    assert est.rto() == pytest.approx(0.3 + 4 * 0.15)


def test_later_samples_follow_rfc_6298_rttvar_before_srtt() -> None:
    est = RttEstimator()
    est.sample(0.1)
    est.sample(0.5)
    rttvar = (1 - BETA) * 0.05 + BETA * abs(0.1 - 0.5)  # with the old SRTT
    srtt = (1 - ALPHA) * 0.1 + ALPHA * 0.5
    assert est.rttvar == pytest.approx(rttvar) and est.srtt == pytest.approx(srtt)
    assert est.rto() == pytest.approx(srtt + 4 * rttvar)


def test_steady_samples_converge_to_the_rtt_and_rto_to_it_plus_the_granularity() -> None:
    est = RttEstimator()
    for _ in range(200):
        est.sample(0.05)
    assert est.srtt == pytest.approx(0.05) and est.rttvar < 1e-9
    assert est.rto() == pytest.approx(0.05 + GRANULARITY)


def test_jittered_samples_keep_rto_above_nearly_all_of_them() -> None:
    """The point of RTTVAR: a timeout of one RTO rarely fires on a node merely jittery."""
    rng = random.Random(65)
    est = RttEstimator()
    late = 0
    for _ in range(2000):
        r = 0.3 + rng.uniform(-0.05, 0.05)
        late += r > est.rto() and est.samples > 10
        est.sample(r)
    assert late < 20, late


def test_a_negative_sample_is_ignored() -> None:
    est = RttEstimator()
    est.sample(-1.0)
    assert est.srtt is None and est.samples == 0


def test_the_timeout_rule_is_the_floor_without_samples_and_never_below_it() -> None:
    assert stretch(1.0, 4.0, None) == 1.0
    assert stretch(1.0, 4.0, RttEstimator()) == 1.0
    near = RttEstimator()
    near.sample(0.0002)  # a loopback: the floor, as before
    assert stretch(1.0, 4.0, near) == 1.0
    far = RttEstimator()
    far.sample(0.6)  # 300 ms one-way: 4 * (0.6 + 4 * 0.3)
    assert stretch(1.0, 4.0, far) == pytest.approx(7.2)


def test_a_150_ms_node_is_given_more_than_it_takes_and_a_dead_one_at_most_the_floor() -> None:
    """At 150 ms one-way (0.3 s a round trip) the 1 s status query gave up on a node that
    needs three round trips (TCP, handshake, the call); stretched, it has 4 RTOs.  A node
    never heard from (dead) has the floor, as before."""
    table = RttTable()
    table.sample(5, 0.3, now=0.0)
    assert table.timeout(5, 1.0, 4.0) > 3 * 0.3
    assert table.timeout(5, 1.0, 4.0) == pytest.approx(4 * (0.3 + 4 * 0.15))
    assert table.timeout(4, 1.0, 4.0) == 1.0
    assert table.rto(4) == 0.0 and table.srtt(4) == 0.0 and table.get(4) is None


def _wan(now: float = 0.0) -> RttTable:
    table = RttTable()
    for node in range(5):
        for _ in range(5):
            table.sample(node, 0.05 + node * 0.001, now)
    for _ in range(5):
        table.sample(5, 0.3, now)
    return table


def test_a_node_far_slower_than_the_others_is_asked_last() -> None:
    table = _wan()
    assert table.slow(range(6), now=1.0) == {5}
    assert table.slow(range(5), now=1.0) == set()  # the others: none far slower


def test_nodes_at_loopback_jitter_are_not_slow() -> None:
    """Below ``SLOW_MARGIN`` above the median nobody is slow, whatever the ratio: a loaded
    machine's 10 ms hiccup on a 0.2 ms loopback must not reorder quorums."""
    table = RttTable()
    for node in range(5):
        table.sample(node, 0.0002, 0.0)
    table.sample(5, SLOW_MARGIN / 2, 0.0)
    assert table.slow(range(6), 0.0) == set()


def test_a_stale_estimate_or_too_few_samples_make_no_node_slow() -> None:
    table = _wan(now=0.0)
    assert table.slow(range(6), now=STALE + 1) == set()
    few = RttTable()
    few.sample(0, 0.05, 0.0)
    few.sample(1, 0.5, 0.0)
    assert few.slow([0, 1], 0.0) == set()


def test_a_node_silent_since_asked_for_a_few_of_its_rtos_is_asked_last() -> None:
    """A node hung or cut off is passed over within a few round trips (never below the
    floor), long before ``Liveness`` judges it absent; nothing fails for it."""
    table = _wan()
    asked = {0: 10.0, 5: 10.0}
    near = 10.0 + OVERDUE_FLOOR  # node 0's 4 RTOs are below the floor
    assert table.overdue(range(6), asked, near - 0.01) == set()
    assert table.overdue(range(6), asked, near + 0.01) == {0}
    far = 10.0 + OVERDUE_K * table.rto(5)  # node 5: 4 of its own RTOs
    assert far > near
    assert table.overdue(range(6), asked, far - 0.01) == {0}
    assert table.overdue(range(6), asked, far + 0.01) == {0, 5}
    never = RttTable()  # no sample: the floor
    assert never.overdue([7], {7: 0.0}, OVERDUE_FLOOR + 0.01) == {7}
    assert table.ask_last(range(6), {}, 1.0) == {5}  # slow, not overdue
    assert table.ask_last(range(6), {0: 0.0}, 1.0) == {0, 5}


def test_a_call_to_a_node_refusing_connections_fails_at_its_timeout() -> None:
    """The stretched deadline only moves forward while time is left: a node that refuses
    every connection (a port bound but not listening: RST at once) is given up at the
    call's timeout, as before (a deadline moved to "now" at each turn once made this call
    spin for ever, and ``bftfs status`` with a node stopped hang)."""
    node, client = Identity.generate(NodeId(0)), Identity.generate(client_id(0))
    ring = KeyRing(client, {node.pid: node.public})
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        addrs = {NodeId(0): closed.getsockname()}

        async def main() -> float:
            async with open_endpoint(ring, addrs, timeout=0.3, resend_after=0.05) as ep:
                start = trio.current_time()
                with trio.fail_after(30), pytest.raises(TransportError):
                    await ep.call(NodeId(0), "ping", None)
                assert ep.faults[(0, "unreachable")] == 1
                return trio.current_time() - start

        took = trio.run(main)
    assert 0.3 <= took < 30
