"""Suspects and stuck connections (``bftfs/net/suspects.py``) and the quorum engine's
reserve (``QuorumEngine(reserve=)``): scripted events with explicit times, no network."""

from __future__ import annotations

from bftfs.ids import NodeId
from bftfs.net.quorum import QuorumEngine, Verdict
from bftfs.net.suspects import (
    CONNECTING_FLOOR,
    SUSPECT_SECONDS,
    Suspects,
    connect_patience,
    suspects_last,
)

N = [NodeId(i) for i in range(6)]


def engine(reserve: int, initial: int | None = None) -> QuorumEngine:
    """Five replies of six targets wanted, the last ``reserve`` held back."""
    targets, _ = suspects_last(N, set(N[:reserve]))
    return QuorumEngine(
        targets,
        label="w",
        enough=lambda replies: len(replies) >= 5,
        initial=initial,
        probe_after=0.5,
        resend_after=1.0,
        timeout=10.0,
        now=0.0,
        reserve=reserve,
    )


def test_a_suspect_is_held_back_from_a_call_to_every_node() -> None:
    e = engine(reserve=1)
    assert e.start(0.0).probe == tuple(N[1:])  # node 0 suspect: the other five
    # Slower than probe_after is no reason to ask it (the timer wakes for it only at
    # reserve_wait, min(max(probe_after, resend_after), timeout / 4)) ...
    assert e.wake_at() == e.reserve_wait == 1.0
    assert e.on_tick(0.6).probe == ()
    # ... a failure of another is.
    assert e.on_failure(N[3], "refused", 0.7).probe == (N[0],)
    for n in (N[0], N[1], N[2], N[4], N[5]):
        step = e.on_reply(n, "ok", 0.8)
    assert step.verdict is Verdict.ENOUGH


def test_an_overdue_target_releases_the_reserve() -> None:
    e = engine(reserve=1, initial=5)
    e.start(0.0)
    for n in N[1:6]:
        e.watch(n, 0.0)
    assert e.on_tick(1.0).probe == (N[0],)  # resends due: the others are in trouble


def test_when_every_other_answered_short_of_enough_the_reserve_is_asked_at_once() -> None:
    e = QuorumEngine(
        suspects_last(N, {N[0]})[0],
        label="q",
        enough=lambda replies: sum(v == "ok" for v in replies.values()) >= 5,
        probe_after=0.5,
        resend_after=1.0,
        timeout=10.0,
        now=0.0,
        reserve=1,
    )
    assert e.start(0.0).probe == tuple(N[1:])
    for n in N[1:5]:
        assert e.on_reply(n, "ok", 0.1).probe == ()
    # A valid reply that does not count (a refusal a protocol accepts): nothing is left
    # in flight, so the suspect is the only way on; without it the call would wait for
    # its deadline and fail.
    assert e.on_reply(N[5], "refused", 0.1).probe == (N[0],)
    assert e.on_reply(N[0], "ok", 0.2).verdict is Verdict.ENOUGH


def test_without_a_reserve_the_timer_probes_as_before() -> None:
    e = engine(reserve=0, initial=5)
    assert e.start(0.0).probe == tuple(N[:5])
    assert e.on_tick(0.5).probe == (N[5],)


def test_suspects_last_keeps_a_call_that_has_only_suspects() -> None:
    assert suspects_last(N[:3], {N[0]}) == ([N[1], N[2], N[0]], 1)
    assert suspects_last(N[:2], {N[0], N[1]}) == ([N[0], N[1]], 0)
    assert suspects_last(N[:2], set()) == ([N[0], N[1]], 0)


def test_suspicion_lasts_from_the_latest_proof() -> None:
    s = Suspects()
    s.suspect(2, "frame_oversized", 100.0)
    assert s.suspected(N, 100.0 + SUSPECT_SECONDS - 1) == {N[2]}
    assert s.suspected(N, 100.0 + SUSPECT_SECONDS) == set()
    s.suspect(2, "malformed", 150.0)
    assert s.suspected(N, 100.0 + SUSPECT_SECONDS) == {N[2]}
    assert s.reasons[(2, "frame_oversized")] == 1


def test_a_connection_attempt_far_past_its_round_trip_is_stuck() -> None:
    s = Suspects()
    s.connect_started(1, 10.0)
    s.connect_started(4, 10.0)
    rto = {1: 0.001, 4: 0.5}.__getitem__
    assert connect_patience(0.001) == CONNECTING_FLOOR
    # Node 1 answers its TCP set-up in a millisecond: 50 ms of handshake is far past it;
    # node 4 is far away (a 0.5 s RTO): it gets four of them.
    assert s.stuck(N, 10.0 + CONNECTING_FLOOR + 0.01, rto) == {N[1]}
    assert s.stuck(N, 12.1, rto) == {N[1], N[4]}
    s.connect_ended(1)
    assert s.stuck(N, 12.1, rto) == {N[4]}


def test_an_attempt_that_kept_a_caller_waiting_stays_stuck_until_it_ends() -> None:
    """A caller waited its patience (the RTO unknown then: the floor); the attempt's TCP
    set-up, sampled since on a loaded machine, now gives the node more: it stays stuck,
    so the calls that follow do not ask it first and wait for it again (CI: five reads
    of sixteen paid two rounds)."""
    s = Suspects()
    rto = {3: 0.2}.__getitem__
    s.connect_overdue(3)  # no attempt under way: nothing to mark
    s.connect_started(3, 10.0)
    assert s.stuck([N[3]], 10.0 + CONNECTING_FLOOR + 0.01, rto) == set()
    s.connect_overdue(3)
    assert s.stuck([N[3]], 10.0 + CONNECTING_FLOOR + 0.01, rto) == {N[3]}
    s.connect_ended(3)
    s.connect_started(3, 20.0)
    assert s.stuck([N[3]], 20.1, rto) == set()


def test_the_reserve_is_asked_when_silent_targets_leave_the_others_short() -> None:
    """Nine targets, seven replies wanted, node 0 suspect; nodes 1 and 2 are silent
    (crashed, withholding: no failure, no trouble reported).  The six that answer cannot
    make the quorum: the reserve is asked ``reserve_wait`` after the others were, well
    within the call's patience (before: only at the deadline, and the call failed)."""
    nine = [NodeId(i) for i in range(9)]
    e = QuorumEngine(
        suspects_last(nine, {nine[0]})[0],
        label="rw.time",
        enough=lambda replies: len(replies) >= 7,
        probe_after=0.05,
        resend_after=1.0,
        timeout=5.0,
        now=0.0,
        reserve=1,
    )
    assert e.start(0.0).probe == tuple(nine[1:])
    for n in nine[3:]:
        assert e.on_reply(n, "ok", 0.01).probe == ()
    assert e.on_tick(0.5).probe == ()  # slower than probe_after: no reason yet
    assert e.wake_at() == e.reserve_wait == 1.0
    assert e.on_tick(1.0).probe == (nine[0],)
    assert e.on_reply(nine[0], "ok", 1.01).verdict is Verdict.ENOUGH
    assert e.reserve_answered == [nine[0]]


def test_the_reserve_never_waits_past_a_quarter_of_a_short_call() -> None:
    short = QuorumEngine(
        suspects_last(N, {N[0], N[1]})[0],
        label="w",
        enough=lambda replies: len(replies) >= 5,
        probe_after=0.5,
        resend_after=1.0,
        timeout=0.4,
        now=0.0,
        reserve=2,
    )
    short.start(0.0)
    assert short.wake_at() == 0.1
    assert short.on_tick(0.1).probe == (N[0], N[1])  # every suspect left, at once


def test_a_suspect_that_answers_correctly_is_pardoned() -> None:
    s = Suspects()
    s.suspect(3, "malformed", 0.0)
    s.suspect(4, "push_flood", 0.0)
    s.pardon([NodeId(3)])
    assert s.suspected(N, 1.0) == {N[4]}
