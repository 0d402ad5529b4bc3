"""The quorum engine (``bftfs/net/quorum.py``): scripted events in, steps out.

Like etcd raft's ``Step`` tests: no network, no trio, no clock; each test feeds events with
explicit times and checks the decisions.  The driver (``net/driver.py``) is tested at the
end on trio's ``MockClock`` with a scripted transmitter, where the timing is the point.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from bftfs.ids import NodeId
from bftfs.net.driver import QuorumDriver
from bftfs.net.quorum import (
    QuorumEngine,
    QuorumUnavailable,
    Step,
    Verdict,
    live_first,
)

N = [NodeId(i) for i in range(6)]


def at_least(k: int) -> Callable[[Any], bool]:
    return lambda replies: len(replies) >= k


#: The default predicate of :func:`engine`: three valid replies.
THREE = at_least(3)


def engine(
    *,
    targets: list[NodeId] | None = None,
    enough: Callable[[Any], bool] = THREE,
    accept: Callable[[NodeId, Any], bool] | None = None,
    initial: int | None = 3,
    probe_after: float = 0.5,
    resend_after: float = 1.0,
    timeout: float = 10.0,
) -> QuorumEngine:
    return QuorumEngine(
        N[:5] if targets is None else targets,
        label="ping",
        enough=enough,
        accept=accept,
        initial=initial,
        probe_after=probe_after,
        resend_after=resend_after,
        timeout=timeout,
        now=0.0,
    )


def wait(*probe: int, resend: tuple[int, ...] = ()) -> Step:
    return Step(Verdict.WAIT, probe=tuple(map(NodeId, probe)), resend=tuple(map(NodeId, resend)))


# Starting ---------------------------------------------------------------------------------


def test_start_asks_the_initial_targets_in_order() -> None:
    assert engine().start(0.0) == wait(0, 1, 2)


def test_start_asks_every_target_by_default_and_at_least_one() -> None:
    assert engine(initial=None).start(0.0) == wait(0, 1, 2, 3, 4)
    assert engine(initial=0).start(0.0) == wait(0)


def test_start_is_enough_when_the_predicate_holds_over_nothing() -> None:
    e = engine(enough=lambda rs: True)
    assert e.start(0.0).verdict is Verdict.ENOUGH
    assert e.done and e.in_flight == frozenset()


def test_start_without_targets_is_unavailable() -> None:
    step = engine(targets=[]).start(0.0)
    assert step.verdict is Verdict.UNAVAILABLE
    assert "0 valid of 0" in step.reason


def test_duplicate_targets_are_asked_once() -> None:
    assert engine(targets=[N[1], N[0], N[1]], initial=None).start(0.0) == wait(1, 0)


# Replies ----------------------------------------------------------------------------------


def test_enough_valid_replies_end_the_call() -> None:
    e = engine()
    e.start(0.0)
    assert e.on_reply(N[0], "a", 0.1) == wait()
    assert e.on_reply(N[2], "c", 0.1) == wait()
    assert e.on_reply(N[1], "b", 0.2).verdict is Verdict.ENOUGH
    assert e.result.replies == {N[0]: "a", N[1]: "b", N[2]: "c"}
    # Everything after the verdict repeats it.
    assert e.on_failure(N[3], "late", 0.3).verdict is Verdict.ENOUGH
    assert e.on_tick(99.0).verdict is Verdict.ENOUGH


def test_an_invalid_reply_is_recorded_and_a_spare_probed() -> None:
    e = engine(accept=lambda node, r: r != "forged")
    e.start(0.0)
    assert e.on_reply(N[1], "forged", 0.1) == wait(3)
    assert e.result.errors == {N[1]: "invalid reply"}
    assert N[1] not in e.result.replies


def test_a_failure_is_recorded_and_a_spare_probed() -> None:
    e = engine()
    e.start(0.0)
    assert e.on_failure(N[0], "refused: no", 0.1) == wait(3)
    assert e.on_failure(N[1], "unreachable", 0.1) == wait(4)
    assert e.on_failure(N[2], "unreachable", 0.1) == wait()  # no spare left
    assert e.result.errors == {N[0]: "refused: no", N[1]: "unreachable", N[2]: "unreachable"}


def test_a_node_whose_connection_broke_still_counts_when_it_answers() -> None:
    e = engine(initial=None, enough=at_least(9))
    e.start(0.0)
    e.on_lost(N[1], 0.1)  # still in flight: the driver retries it by other means
    assert e.on_reply(N[1], "ok", 0.2) == wait()
    assert e.result.replies == {N[1]: "ok"}


def test_everyone_answered_without_enough_is_unavailable() -> None:
    e = engine(initial=None, enough=at_least(5), accept=lambda n, r: r == "ok")
    e.start(0.0)
    for n in N[:4]:
        assert e.on_reply(n, "ok", 0.1) == wait()
    step = e.on_reply(N[4], "forged", 0.1)
    assert step.verdict is Verdict.UNAVAILABLE
    assert "4 valid of 5" in step.reason and "invalid reply" in step.reason


def test_events_from_nodes_not_asked_are_ignored() -> None:
    e = engine()
    e.start(0.0)
    assert e.on_reply(N[4], "x", 0.1) == wait()  # a spare: never asked
    assert e.on_failure(N[4], "x", 0.1) == wait()
    assert e.on_lost(N[4], 0.1) == wait()
    assert e.result.replies == {} and e.result.errors == {}
    assert e.on_reply(N[0], "a", 0.1) == wait()
    assert e.on_reply(N[0], "again", 0.1) == wait()  # a duplicate answer
    assert e.result.replies == {N[0]: "a"}


def test_predicate_exceptions_pass_through() -> None:
    def boom(replies: Any) -> bool:
        if replies:
            raise RuntimeError("bug in enough")
        return False

    e = engine(enough=boom)
    e.start(0.0)
    with pytest.raises(RuntimeError, match="bug in enough"):
        e.on_reply(N[0], "a", 0.1)


# Time -------------------------------------------------------------------------------------


def test_a_slow_quorum_probes_one_spare_per_probe_interval() -> None:
    e = engine(probe_after=0.5)
    e.start(0.0)
    assert e.wake_at() == 0.5
    assert e.on_tick(0.4) == wait()
    assert e.on_tick(0.5) == wait(3)
    assert e.wake_at() == 1.0  # the timer restarts with each probe
    assert e.on_reply(N[0], "a", 0.7) == wait()
    assert e.wake_at() == 1.0  # a reply is not progress enough to restart it
    assert e.on_tick(1.0) == wait(4)
    assert e.wake_at() == 10.0  # no spare left: only the deadline
    assert e.on_tick(5.0) == wait()


def test_trouble_probes_a_spare_at_once() -> None:
    e = engine()
    e.start(0.0)
    assert e.on_trouble(0.01) == wait(3)
    assert e.on_trouble(0.02) == wait(4)
    assert e.on_trouble(0.03) == wait()
    assert e.in_flight == frozenset(N[:5])


def test_a_lost_connection_probes_a_spare_and_keeps_the_node_in_flight() -> None:
    e = engine()
    e.start(0.0)
    e.watch(N[0], 0.0)
    assert e.on_lost(N[0], 0.1) == wait(3)
    assert N[0] in e.in_flight
    assert e.on_tick(0.55) == wait()  # unwatched: no resend (and no probe before 0.6)


def test_watched_requests_are_resent_and_an_overdue_one_probes() -> None:
    e = engine(initial=2, probe_after=5.0, resend_after=1.0)
    e.start(0.0)
    e.watch(N[0], 0.0)
    e.watch(N[1], 0.5)
    assert e.wake_at() == 1.0
    assert e.on_tick(1.0) == wait(2, resend=(0,))
    assert e.wake_at() == 1.5
    assert e.on_reply(N[1], "b", 1.2) == wait()
    assert e.wake_at() == 2.0
    assert e.on_tick(2.0) == wait(3, resend=(0,))


def test_the_deadline_makes_the_call_unavailable() -> None:
    e = engine(timeout=2.0)
    e.start(0.0)
    e.on_reply(N[0], "a", 1.0)
    step = e.on_tick(2.0)
    assert step.verdict is Verdict.UNAVAILABLE
    assert step.reason == "ping: quorum not reached within 2s"
    assert e.result.replies == {N[0]: "a"}


def test_a_reply_after_the_deadline_does_not_count() -> None:
    e = engine(timeout=2.0, enough=at_least(1))
    e.start(0.0)
    assert e.on_reply(N[0], "a", 2.0).verdict is Verdict.UNAVAILABLE
    assert e.result.replies == {}


def test_live_first_keeps_order_and_moves_the_down_to_the_end() -> None:
    assert live_first([N[2], N[0], N[1], N[0]], set()) == [N[2], N[0], N[1]]
    assert live_first([N[0], N[1], N[2], N[3]], {N[1], N[0]}) == [N[2], N[3], N[0], N[1]]


def test_the_engine_imports_no_io_library() -> None:
    code = (
        "import sys; import bftfs.net.quorum; "
        "print(sorted(m for m in ('trio', 'msgpack', 'nacl', 'socket') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


# The driver on a mock clock ---------------------------------------------------------------


class Script:
    """A transmitter whose nodes answer after scripted delays (None: never)."""

    def __init__(self, delays: dict[NodeId, float | None], nursery: trio.Nursery) -> None:
        self.delays = delays
        self.nursery = nursery
        self.driver: QuorumDriver | None = None
        self.sent: list[tuple[float, NodeId]] = []
        self.resent: list[tuple[float, NodeId]] = []
        self.settled: list[Verdict] = []

    def send(self, node: NodeId) -> None:
        assert self.driver is not None
        self.sent.append((trio.current_time(), node))
        self.driver.watch(node)
        delay = self.delays.get(node)
        if delay is not None:
            self.nursery.start_soon(self._answer, node, delay)

    async def _answer(self, node: NodeId, delay: float) -> None:
        await trio.sleep(delay)
        assert self.driver is not None
        self.driver.reply(node, f"r{node}")

    def resend(self, node: NodeId) -> None:
        self.resent.append((trio.current_time(), node))

    def settle(self, verdict: Verdict) -> None:
        self.settled.append(verdict)


def drive(delays: dict[NodeId, float | None], **kwargs: Any) -> tuple[Script, Any, float]:
    """Run one quorum call over ``delays`` on an autojumping mock clock."""
    out: dict[str, Any] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            script = Script(delays, nursery)
            e = engine(targets=list(delays), **kwargs)
            script.driver = QuorumDriver(e)
            out["script"] = script
            t0 = trio.current_time()
            try:
                out["result"] = await script.driver.run(script)
            except Exception as exc:  # QuorumUnavailable, or a predicate's error
                out["result"] = exc
            out["took"] = trio.current_time() - t0
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return out["script"], out["result"], out["took"]


def test_driver_returns_at_the_quorum_without_waiting_for_the_slow() -> None:
    script, result, took = drive(
        {N[0]: 0.01, N[1]: 0.02, N[2]: 30.0, N[3]: 0.03}, initial=None, enough=at_least(3)
    )
    assert set(result.replies) == {N[0], N[1], N[3]}
    assert took == pytest.approx(0.03)
    assert script.settled == [Verdict.ENOUGH]
    assert script.resent == []


def test_driver_probes_after_probe_after_and_resends_when_due() -> None:
    script, result, took = drive(
        {N[0]: 0.01, N[1]: None, N[2]: 0.01, N[3]: 0.01},
        initial=3,
        probe_after=0.5,
        resend_after=0.2,
        enough=at_least(3),
    )
    # N1 never answers: at 0.2 it is overdue, so it is resent and the spare N3 probed.
    assert script.resent == [(pytest.approx(0.2), N[1])]
    assert script.sent[-1] == (pytest.approx(0.2), N[3])
    assert set(result.replies) == {N[0], N[2], N[3]}
    assert took == pytest.approx(0.21)


def test_driver_times_out_with_the_partial_result() -> None:
    script, result, took = drive(
        {N[0]: 0.01, N[1]: None, N[2]: None}, initial=None, timeout=2.0, resend_after=0.5
    )
    assert isinstance(result, QuorumUnavailable)
    assert str(result) == "ping: quorum not reached within 2s"
    assert set(result.result.replies) == {N[0]}
    assert took == pytest.approx(2.0)
    assert script.settled == [Verdict.UNAVAILABLE]
    assert [t for t, _ in script.resent] == pytest.approx([0.5, 0.5, 1.0, 1.0, 1.5, 1.5])


def test_driver_raises_a_predicate_error_in_the_callers_task() -> None:
    def boom(replies: Any) -> bool:
        if replies:
            raise ValueError("bad predicate")
        return False

    script, result, _ = drive({N[0]: 0.01, N[1]: 0.02}, initial=None, enough=boom)
    assert isinstance(result, ValueError) and str(result) == "bad predicate"
    assert script.settled == [Verdict.UNAVAILABLE]  # the stragglers are dropped


def test_driver_handles_reports_made_while_acting_on_a_step() -> None:
    """A transmitter that reports synchronously from ``send`` (a closed connection does)."""

    class Refusing:
        def __init__(self) -> None:
            self.driver: QuorumDriver | None = None
            self.sent: list[NodeId] = []

        def send(self, node: NodeId) -> None:
            assert self.driver is not None
            self.sent.append(node)
            self.driver.failed(node, "connection closed")

        def resend(self, node: NodeId) -> None:
            raise AssertionError

        def settle(self, verdict: Verdict) -> None:
            pass

    async def main() -> None:
        tx = Refusing()
        tx.driver = QuorumDriver(engine(initial=2))
        with pytest.raises(QuorumUnavailable, match="0 valid of 5"):
            await tx.driver.run(tx)
        assert tx.sent == N[:5]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_driver_raises_a_send_error_in_the_callers_task_not_the_reporters() -> None:
    """A payload function that raises while a reply is being taken in (in a connection's
    reader task, in the endpoint) ends the call in the caller's task."""

    class Fragile(Script):
        def send(self, node: NodeId) -> None:
            if node == N[3]:
                raise KeyError("no payload for node 3")
            super().send(node)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            tx = Fragile({N[0]: 0.01, N[1]: 0.01, N[2]: 0.01, N[3]: 0.01}, nursery)
            tx.driver = QuorumDriver(engine(targets=N[:4], initial=3, accept=lambda n, r: False))
            with pytest.raises(KeyError, match="no payload"):
                await tx.driver.run(tx)
            assert tx.settled == [Verdict.UNAVAILABLE]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
