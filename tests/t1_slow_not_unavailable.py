"""Slow is not unavailable (issue 60, items 5 and 6): the liveness and patience rules, pure.

A node is live unless it refuses connections, or leaves requests unanswered and sends
nothing for several of its own response times (``net/liveness.py``); an operation's
patience (``outcome.Patience``) runs down only while fewer than a quorum of nodes are live
(``soft``: while no call completes, the meaning before); a quorum call past its deadline
lingers while one of its outstanding targets is live and the operation would wait
(``net/quorum.py``); a Q/U operation's short rounds end it only once its patience ran out
(``qu/attempt.py``); a nursery's exception group reaches the kernel as the one answer it
stands for (``fuse/errormap.py``).
"""

from __future__ import annotations

import errno
import random
from collections.abc import Collection

import pyfuse3
import pytest
import trio
import trio.testing

from bftfs.fs.errors import NoSpace, NotFound, Unavailable
from bftfs.fuse.callrecord import CallRecord
from bftfs.fuse.errormap import unwrap
from bftfs.fuse.handler import handler
from bftfs.fuse.kernelheld import KernelHeld
from bftfs.fuse.options import parse
from bftfs.fuse.paths import KnownPaths
from bftfs.fuse.recentlookups import RecentLookups
from bftfs.ids import NodeId
from bftfs.net.liveness import LIVE_CAP, LIVE_FACTOR, LIVE_FLOOR, PING_AFTER, Liveness
from bftfs.net.quorum import QuorumEngine, Verdict
from bftfs.outcome import ClusterUnavailable, Patience, StorageFull, bounded, patience
from bftfs.qu.attempt import MAX_SHORT_ROUNDS, Attempt, QUUnavailable
from bftfs.qu.classify import QUThresholds

N = [NodeId(i) for i in range(6)]


# Liveness --------------------------------------------------------------------------------


def test_a_node_not_asked_anything_since_it_spoke_is_live() -> None:
    lv = Liveness()
    assert lv.live(N[0], 1000.0)
    lv.heard(N[0], 0.0)
    assert lv.live(N[0], 1000.0)


def test_a_node_refusing_connections_is_down_until_one_succeeds() -> None:
    lv = Liveness()
    lv.unreachable(N[1])
    assert not lv.live(N[1], 0.0)
    lv.connected(N[1], 5.0)
    assert lv.live(N[1], 5.0)


def test_a_slow_node_that_answers_something_is_live_however_long_its_requests_wait() -> None:
    """A loaded node answering in 8 s, asked all along: it is answering, so it is live."""
    lv = Liveness()
    for t in range(0, 40, 8):
        lv.asked(N[2], float(t))
        lv.heard(N[2], float(t) + 0.5, latency=8.0)
        lv.asked(N[2], float(t) + 1.0)
    assert lv.live(N[2], 40.0)


def test_the_window_is_the_floor_or_several_of_the_nodes_own_response_times() -> None:
    lv = Liveness()
    assert lv.window(N[0]) == LIVE_FLOOR
    lv.heard(N[0], 0.0, latency=0.01)
    assert lv.window(N[0]) == LIVE_FLOOR  # a fast node still gets the floor
    lv.heard(N[3], 0.0, latency=6.0)
    assert lv.window(N[3]) == pytest.approx(LIVE_FACTOR * 6.0)
    lv.heard(N[4], 0.0, latency=1000.0)
    assert lv.window(N[4]) == LIVE_CAP


def test_a_stopped_node_is_absent_once_silent_for_its_window_since_it_was_asked() -> None:
    lv = Liveness()
    lv.heard(N[5], 99.0, latency=0.05)  # answered quickly, then stopped (SIGSTOP)
    lv.asked(N[5], 100.0)
    lv.asked(N[5], 104.0)  # later requests do not move the start of its silence
    assert lv.live(N[5], 100.0 + LIVE_FLOOR - 0.1)
    assert not lv.live(N[5], 100.0 + LIVE_FLOOR + 0.1)
    lv.heard(N[5], 120.0, latency=20.0)  # it answers again (SIGCONT): live
    assert lv.live(N[5], 121.0)


def test_a_node_silent_since_it_was_asked_is_sent_a_heartbeat_and_its_answer_counts() -> None:
    """A node whose requests wait on its own peers answers the heartbeat: live."""
    lv = Liveness()
    lv.asked(N[1], 0.0)
    assert not lv.needs_ping(N[1], PING_AFTER - 0.01)
    assert lv.needs_ping(N[1], PING_AFTER)
    lv.heard(N[1], PING_AFTER + 0.1)  # the ping's answer
    assert not lv.needs_ping(N[1], 100.0) and lv.live(N[1], 100.0)


def test_a_node_that_speaks_is_not_down_whatever_a_connection_attempt_said() -> None:
    lv = Liveness()
    lv.unreachable(N[2])  # a second connection timed out while it was stopped
    lv.heard(N[2], 1.0)  # but the old one carries its answers
    assert lv.live(N[2], 1.0)


# Patience ---------------------------------------------------------------------------------


def test_patience_does_not_run_down_while_a_quorum_is_live() -> None:
    """The defect: an operation on a busy cluster failed after ``timeo`` without a
    completed call ("rw.time: quorum not reached within 0s": its patience was gone before
    the call began, every node up)."""
    p = Patience(10.0, 0.0)
    live = {"quorum": True}
    p.live = lambda now: live["quorum"]
    assert not p.expired(100.0)
    assert p.deadline == 110.0
    live["quorum"] = False  # fewer than q live: it runs down from the last live moment
    assert not p.expired(109.0)
    assert p.expired(110.0)


def test_a_soft_patience_keeps_the_meaning_before() -> None:
    p = Patience(10.0, 0.0, soft=True)
    p.live = lambda now: True
    assert p.expired(10.0)


def test_bounded_gives_a_call_the_whole_timeout_while_a_quorum_is_live() -> None:
    with patience(10.0, 0.0) as p:
        assert p is not None
        p.live = lambda now: True
        assert bounded(10.0, 50.0) == 10.0
    with patience(10.0, 0.0, soft=True) as p:
        assert p is not None
        p.live = lambda now: True
        assert bounded(10.0, 50.0) == 0.0


def test_mount_options_soft_hard_and_the_default() -> None:
    default = parse(None)
    assert not default.soft and not default.hard
    assert parse("soft").soft and not parse("soft").hard
    assert parse("soft,hard").hard and not parse("soft,hard").soft
    assert parse("soft").to_string().count("soft") == 1
    assert parse(parse("soft").to_string()) == parse("soft")
    assert parse(default.to_string()) == default


# The quorum engine lingers -------------------------------------------------------------


def _engine(linger: object) -> QuorumEngine:
    return QuorumEngine(
        N[:6],
        label="qu.request",
        enough=lambda replies: len(replies) >= 5,
        probe_after=0.05,
        resend_after=1.0,
        timeout=10.0,
        now=0.0,
        linger=linger,  # type: ignore[arg-type]
    )


def test_a_call_lingers_past_its_deadline_while_an_outstanding_target_is_live() -> None:
    asked: list[Collection[NodeId]] = []

    def linger(outstanding: Collection[NodeId], now: float) -> bool:
        asked.append(set(outstanding))
        return now < 35.0

    e = _engine(linger)
    e.start(0.0)
    for n in N[:4]:
        assert e.on_reply(n, "ok", 1.0).verdict is Verdict.WAIT
    assert e.on_tick(10.0).verdict is Verdict.WAIT  # nodes 4, 5 busy but live
    assert e.deadline == 20.0 and asked[-1] == {N[4], N[5]}
    assert e.on_tick(20.0).verdict is Verdict.WAIT
    assert e.on_reply(N[4], "ok", 25.0).verdict is Verdict.ENOUGH  # slow, not absent
    assert e.lingered == 2


def test_a_call_ends_at_its_deadline_once_nothing_outstanding_is_live() -> None:
    e = _engine(lambda outstanding, now: False)
    e.start(0.0)
    for n in N[:4]:
        e.on_reply(n, "ok", 1.0)
    step = e.on_tick(10.0)
    assert step.verdict is Verdict.UNAVAILABLE and "within 10s" in step.reason


def test_without_linger_the_deadline_ends_the_call_as_before() -> None:
    e = _engine(None)
    e.start(0.0)
    assert e.on_tick(10.0).verdict is Verdict.UNAVAILABLE


# Short Q/U rounds ------------------------------------------------------------------------


def _attempt(clock_sleep: list[float]) -> Attempt:
    async def sleep(seconds: float) -> None:
        clock_sleep.append(seconds)
        await trio.sleep(seconds)

    return Attempt(QUThresholds.minimal(1, 1), random.Random(1), sleep, ())


def test_short_rounds_end_an_operation_only_once_its_patience_ran_out() -> None:
    """The defect: "fewer than q=5 servers answer (3 rounds in a row; 0 answered, none
    from nodes [0, 1, 2, 3, 4, 5])" with every node up and busy."""
    slept: list[float] = []
    live = {"quorum": True}

    async def main() -> None:
        st = _attempt(slept)
        with patience(10.0, trio.current_time()) as p:
            assert p is not None
            p.live = lambda now: live["quorum"]
            for _ in range(MAX_SHORT_ROUNDS + 20):  # a busy cluster: short rounds
                st.answered({})
                await st.check_short((7,))
            assert slept  # it paused between them instead of failing
            live["quorum"] = False  # then fewer than a quorum live, for timeo
            with pytest.raises(QUUnavailable, match="3 rounds in a row"):
                for _ in range(1000):
                    st.answered({})
                    await st.check_short((7,))
            assert trio.current_time() >= 10.0

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_short_rounds_end_an_operation_without_patience_or_soft_as_before() -> None:
    async def main() -> None:
        for soft in (None, True):
            st = _attempt([])
            seconds = None if soft is None else 10.0
            with patience(seconds, 0.0, soft=bool(soft)), pytest.raises(QUUnavailable):
                for _ in range(MAX_SHORT_ROUNDS):
                    st.answered({})
                    await st.check_short((7,))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# Exception groups ------------------------------------------------------------------------


def test_a_group_of_file_system_answers_is_the_one_answer_it_stands_for() -> None:
    """The defect: a listing's nursery let "ExceptionGroup: Exceptions from Trio nursery"
    reach the kernel as an unexpected error (EIO, never retried by a hard mount)."""
    g = ExceptionGroup("nursery", [NotFound("a"), ExceptionGroup("inner", [Unavailable("b")])])
    assert isinstance(unwrap(g), Unavailable)
    assert isinstance(unwrap(ExceptionGroup("n", [NotFound("a")])), NotFound)
    assert isinstance(unwrap(ExceptionGroup("n", [ClusterUnavailable("x")])), Unavailable)
    assert isinstance(unwrap(ExceptionGroup("n", [StorageFull("x")])), NoSpace)
    bug = ExceptionGroup("n", [NotFound("a"), KeyError("k")])
    assert unwrap(bug) is bug  # anything else stays what it is (a bug is logged as one)
    plain = NotFound("p")
    assert unwrap(plain) is plain


class _Host:
    """What the FUSE handler decorator reads on ``Operations`` (``fuse/handler.py``)."""

    read_only = False
    timeo: float | None = 10.0
    soft = False

    def __init__(self, hard: bool, fail: list[BaseException]) -> None:
        self.hard = hard
        self.record = CallRecord()
        self.lookups = RecentLookups()
        self.paths = KnownPaths()
        self.held = KernelHeld()
        self.fail = fail

    def revoked_in(self) -> int | None:
        return None  # a client in good standing (issue 60 item 17's revoked mount: t4_views)

    @handler
    async def readdir(self, fh: int, start: int) -> str:
        if self.fail:
            raise self.fail.pop(0)
        return "listed"


@pytest.mark.expected_logs("bftfs.fuse.operations", "WARNING")
def test_a_nursery_group_reaches_the_kernel_as_its_errno_and_a_hard_mount_retries_it() -> None:
    """The defect: ``readdir`` answered EIO with "unexpected ExceptionGroup: Exceptions
    from Trio nursery", never retried by a hard mount (issue 60 item 14)."""

    def group(*errors: Exception) -> ExceptionGroup[Exception]:
        return ExceptionGroup("Exceptions from Trio nursery", list(errors))

    async def main() -> None:
        soft = _Host(hard=False, fail=[group(NotFound("gone"))])
        with pytest.raises(pyfuse3.FUSEError) as e:
            await soft.readdir(1, 0)
        assert e.value.errno == errno.ENOENT
        assert not soft.record.eio and not soft.record.errors  # not "unexpected"
        eio = _Host(hard=False, fail=[group(Unavailable("no quorum"), NotFound("x"))])
        with pytest.raises(pyfuse3.FUSEError) as e:
            await eio.readdir(1, 0)
        assert e.value.errno == errno.EIO
        assert "unexpected" not in (eio.record.last_eio or ("", "", ""))[2]
        hard = _Host(hard=True, fail=[group(Unavailable("no quorum"))])
        assert await hard.readdir(1, 0) == "listed"  # tried again, as a hard mount does

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
