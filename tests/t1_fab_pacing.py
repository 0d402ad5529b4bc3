"""Retransmissions back off (bftfs/fab/pacing.py).

On real nodes a tick is 50 ms of wall time; when a round takes longer (16 node processes
on two cores), resending every waiting proposal and PULL at every tick multiplied the
protocol's messages tenfold (each resent PROPOSE costs ``n^2`` ACCEPTED) and mounts got
EIO.  A replica that hears nothing back now resends each thing after 1, 2, 4, 8, 8, ...
ticks, and still resends it for as long as it waits.
"""

from __future__ import annotations

import pytest
from fab_sim import CLIENT_BASE, keys_for

from bftfs.fab.client import request
from bftfs.fab.messages import Checkpoint, Learned, Propose, Pull, Request, encode
from bftfs.fab.pacing import Backoff, RoundTimer
from bftfs.fab.replica import Replica, Settings
from bftfs.quorums.fab import FabQuorums
from bftfs.testing.testobjects import registry

Q2 = FabQuorums.standard(2)  # n = 11
TICKS = 40


def test_backoff_doubles_up_to_its_cap_and_forgets_what_is_answered() -> None:
    b: Backoff[str] = Backoff(1, 8)
    fired = [t for t in range(1, 40) if b.due(["x"], t)]
    assert fired == [2, 4, 8, 16, 24, 32]  # first seen at tick 1
    b.sent("y", 40)
    assert b.due(["y"], 40) == [] and b.due(["y"], 41) == ["y"]
    assert b.due([], 42) == [] and len(b) == 0  # answered: forgotten
    with pytest.raises(ValueError):
        Backoff(4, 2)
    with pytest.raises(ValueError):
        Settings(resend=4, resend_cap=2)


def _replica(me: int, cap: int = 8) -> Replica:
    settings = Settings(timeout=10**6, resend=1, resend_cap=cap)
    return Replica(me, Q2, keys_for(me), registry(), settings)


def _sent(replica: Replica, kind: type, ticks: int) -> int:
    return sum(1 for _ in range(ticks) for _, m in replica.tick().sends if isinstance(m, kind))


def _request(rid: int = 1) -> bytes:
    value = request(CLIENT_BASE, keys_for(CLIENT_BASE), Q2.a, rid, "counter.increment", [1], 1)
    return encode(Request(value))


def test_an_unanswered_proposal_is_resent_with_backoff_not_every_tick() -> None:
    leader = _replica(0)
    step = leader.step(CLIENT_BASE, _request())
    assert [type(m) for _, m in step.sends] == [Propose]
    resent = _sent(leader, Propose, TICKS)
    assert 4 <= resent <= 7, resent  # ticks 1, 3, 7, 15, 23, 31, 39; every tick: 40


def test_a_missing_slot_is_pulled_with_backoff_not_every_tick() -> None:
    follower = _replica(3)
    assert follower.step(CLIENT_BASE, _request()).rejection is None  # held, nothing learned
    pulls = _sent(follower, Pull, TICKS)
    assert 4 <= pulls <= 7, pulls


def test_a_checkpoint_statement_is_resent_with_backoff_until_stable() -> None:
    node = _replica(3)
    node.checkpoints.state(16, b"d" * 32)  # my statement; nobody else's arrives
    resent = _sent(node, Checkpoint, TICKS)
    assert 4 <= resent <= 7, resent


def test_the_round_timer_waits_about_two_rounds_within_its_bounds() -> None:
    t: RoundTimer[int] = RoundTimer(2, 16)
    assert t.first() == 2  # no round seen
    for slot in range(40):
        t.start(slot, 10 * slot)
        t.done(slot, 10 * slot + 5)
    assert t.first() == 10  # rounds of 5 ticks
    t.start(99, 0)
    t.keep({1, 2})
    t.done(99, 1000)  # forgotten: no sample
    assert t.first() == 10
    for slot in range(40):
        t.start(slot, 0)
        t.done(slot, 100)
    assert t.first() == 16


def test_a_leader_whose_rounds_are_slow_waits_longer_before_resending() -> None:
    """Acknowledgements that come 8 ticks after each proposal (a loaded machine, not a
    lost message): after a few such rounds the leader no longer resends a proposal
    before its answers can have come."""
    leader = _replica(0, cap=32)
    need = -(-(Q2.l + Q2.f + 1) // 2)
    for rid in range(1, 13):
        (_, p), *_ = leader.step(CLIENT_BASE, _request(rid)).sends
        assert isinstance(p, Propose)
        for _ in range(8):
            leader.tick()
        for learner in range(1, need + 1):
            leader.step(learner, encode(Learned(p.slot, p.pn, p.value)))
        assert leader.leader.satisfied(p.slot)
    leader.step(CLIENT_BASE, _request(13))
    quiet = 0
    while not any(isinstance(m, Propose) for _, m in leader.tick().sends):
        quiet += 1
    assert 10 <= quiet <= 16, quiet  # about two rounds; with a fixed first wait: 0
