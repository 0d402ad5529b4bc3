"""Tier 1: a write-back task's wake-up (``fs/writeback/alarm.py``): only what comes due
before the task's sleep ends wakes it (each wake-up is a pass over everything held back)."""

from __future__ import annotations

import trio
import trio.testing

from bftfs.fs.writeback.alarm import Alarm


def woken_at(*dues: tuple[float, float | None]) -> float:
    """When a task sleeping until 10 s wakes, given ``(when, due)`` calls of ``due`` made
    meanwhile (trio's virtual clock)."""
    alarm = Alarm()
    woke: list[float] = []

    async def main() -> None:
        async def sleeper() -> None:
            await alarm.sleep_until(trio.current_time() + 10)
            woke.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            start = trio.current_time()
            nursery.start_soon(sleeper)
            for when, due in dues:
                await trio.sleep_until(start + when)
                alarm.due(None if due is None else start + due)
        woke[0] -= start

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert alarm.until == float("-inf")  # awake again
    return woke[0]


def test_something_due_after_the_sleep_ends_does_not_wake_the_task() -> None:
    assert woken_at((1, 20), (2, 10.5)) == 10


def test_something_due_sooner_wakes_it_at_once() -> None:
    assert woken_at((1, 20), (3, 5)) == 3


def test_a_due_without_a_time_wakes_it_at_once() -> None:
    assert woken_at((4, None)) == 4
