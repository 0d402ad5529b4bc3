"""Tier 1: the foreground-first gate of a node's background work (node/yielding.py).

The rule is pure (time is an argument): a step goes at once while the foreground is
quiet; while it is busy, one slice of ``slice`` seconds opens every ``floor`` seconds, so
background work never starves, and a step held sleeps until the next slice.  The gate
itself runs under trio's ``MockClock``, with a counter standing in for the server's
``client_inflight`` (a plain int the server keeps).
"""

from __future__ import annotations

from collections import Counter

import trio
import trio.testing

from bftfs.node.yielding import Foreground, Gate, GateRule


def test_a_quiet_foreground_never_holds_a_step() -> None:
    rule = GateRule(floor=0.1, slice=0.01)
    assert [rule.wait(t / 1000, busy=False) for t in range(0, 1000, 7)] == [0.0] * 143
    assert rule.slice_start == float("-inf")  # no slice was needed


def test_a_busy_foreground_gets_one_slice_per_floor() -> None:
    rule = GateRule(floor=0.1, slice=0.01)
    assert rule.wait(5.0, busy=True) == 0.0  # the first slice opens at once
    assert rule.wait(5.009, busy=True) == 0.0  # inside the slice: goes
    assert abs(rule.wait(5.011, busy=True) - 0.089) < 1e-9  # past it: until the next
    assert abs(rule.wait(5.05, busy=True) - 0.05) < 1e-9
    assert rule.wait(5.05, busy=False) == 0.0  # quiet again: goes, no slice used
    assert rule.wait(5.1, busy=True) == 0.0 and rule.slice_start == 5.1


def test_by_default_a_busy_foreground_lets_one_step_through_per_floor() -> None:
    """A slice of 0 (the node's default): steps asking at the same instant go one at a
    time, a floor apart, whichever task asks."""
    rule = GateRule()
    assert rule.slice == 0.0 and rule.floor == 0.05
    assert rule.wait(1.0, busy=True) == 0.0
    assert abs(rule.wait(1.0, busy=True) - 0.05) < 1e-9  # another task, same instant
    assert rule.wait(1.05, busy=True) == 0.0
    assert abs(rule.wait(1.05, busy=True) - 0.05) < 1e-9
    assert rule.wait(1.06, busy=False) == 0.0  # quiet: every step goes


def test_under_a_load_that_never_pauses_background_gets_its_share() -> None:
    """Steps asking every millisecond for 10 s of a busy foreground: about slice / floor
    of them go (10 per slice, one slice per floor), none starve for longer than a floor."""
    rule = GateRule(floor=0.1, slice=0.01)
    went = [t for t in range(10_000) if rule.wait(t / 1000, busy=True) == 0.0]
    assert 950 <= len(went) <= 1100, len(went)
    gaps = [b - a for a, b in zip(went, went[1:], strict=False)]
    assert max(gaps) <= 100


def test_the_gate_waits_while_requests_are_in_flight_and_goes_at_the_floor() -> None:
    inflight = [0]
    last = [-1.0]
    stats: Counter[str] = Counter()
    gate = Gate(Foreground(lambda: inflight[0], lambda: last[0]), stats, GateRule(0.1, 0.01))
    clock = trio.testing.MockClock(autojump_threshold=0)
    went: list[float] = []

    async def main() -> None:
        await gate.step()  # quiet: at once
        assert trio.current_time() == 0.0 and stats["bg.waits"] == 0
        inflight[0] = 1  # a client request is being answered, and stays so
        for _ in range(3):
            await gate.step()  # the first opens a slice at once, the others wait a floor
            went.append(trio.current_time())
            await gate.step()  # inside that slice: at once
            assert trio.current_time() == went[-1]
            await trio.sleep(0.02)  # the step's work outlasts the slice
        inflight[0] = 0
        last[0] = trio.current_time()  # it was answered just now
        await gate.step()
        went.append(trio.current_time())

    trio.run(main, clock=clock)
    # Once the request was answered, a step asked within the RECENT gap after it waited
    # for the next slice (no polling), then went.
    assert [round(t, 3) for t in went] == [0.0, 0.1, 0.2, 0.3]
    assert stats["bg.steps"] == 8 and stats["bg.floor"] == 3 and stats["bg.waits"] == 3
