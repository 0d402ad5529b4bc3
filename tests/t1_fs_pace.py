"""Tier 1: write-behind sized from the measured round trip and bandwidth (issue 65).

A sequential writer's links idle between two background flushes (the last
acknowledgement, the ``fs.write`` round, the next flush's start); the fixed 32 MiB bound
(16 MiB of data) kept a 50 Mbit/s x 6 link WAN at 25 ms one-way busy about 0.6 of the
time (docs/wan.md).  ``fs/files/pace.py`` sizes the bound from what the flushes measure:
the LAN keeps the floor, the WAN gets the window its bandwidth and idle ask for, and the
memory stays under the ceiling.
"""

from __future__ import annotations

import pytest

from bftfs.fs.files import DEFAULT_BEHIND_LIMIT
from bftfs.fs.files.pace import (
    COUNTED,
    DEFAULT_BEHIND_MAX,
    FLUSHES_PER_CYCLE,
    TARGET,
    Pace,
    behind_window,
)

MIB = 1 << 20
#: The WAN bed of docs/wan.md: the links allow 18.7 MB/s of a file's blocks, and a flush
#: leaves them idle about 0.15 s (two 75 ms rounds at 25 ms one-way) when nothing else
#: slows it.
WAN_RATE, WAN_IDLE = 3 * 50e6 / 8, 0.15


def busy(limit: int, rate: float, idle_s: float) -> float:
    """The model's fraction of the time the links carry blocks with bound ``limit``."""
    data = limit / COUNTED
    return data / (data + FLUSHES_PER_CYCLE * idle_s * rate)


def test_the_fixed_bound_leaves_a_wan_link_below_the_bar_and_the_measured_one_does_not() -> None:
    assert busy(DEFAULT_BEHIND_LIMIT, WAN_RATE, WAN_IDLE) < 0.8  # why the bar was missed
    limit = behind_window(WAN_RATE, WAN_IDLE, DEFAULT_BEHIND_LIMIT, DEFAULT_BEHIND_MAX)
    assert DEFAULT_BEHIND_LIMIT < limit <= DEFAULT_BEHIND_MAX
    assert busy(limit, WAN_RATE, WAN_IDLE) == pytest.approx(TARGET)


def test_a_lan_keeps_the_floor_and_a_slower_network_meets_the_ceiling() -> None:
    lan = behind_window(100e6, 0.004, DEFAULT_BEHIND_LIMIT, DEFAULT_BEHIND_MAX)
    assert lan == DEFAULT_BEHIND_LIMIT
    far = behind_window(WAN_RATE, 1.0, DEFAULT_BEHIND_LIMIT, DEFAULT_BEHIND_MAX)
    assert far == DEFAULT_BEHIND_MAX  # the memory bound holds whatever the idle
    # A ceiling below the floor (a caller bounding memory tightly) keeps the floor.
    assert behind_window(WAN_RATE, 1.0, 256 * 1024, 0) == 256 * 1024


def test_nothing_measured_is_the_floor() -> None:
    assert Pace().limit(DEFAULT_BEHIND_LIMIT, DEFAULT_BEHIND_MAX) == DEFAULT_BEHIND_LIMIT
    assert behind_window(0.0, WAN_IDLE, 7, 99) == 7
    assert behind_window(WAN_RATE, 0.0, 7, 99) == 7


def test_the_pace_follows_the_background_flushes() -> None:
    pace = Pace()
    pace.flushed(0, 0.0, 1.0, 0.1)  # a flush of no blocks measures nothing
    assert pace.flushes == 0
    # 9 blocks of 1 MiB in 0.6 s, 20 ms before the first, the update round 80 ms (the
    # bed's flushes, before): the rate leaves one round out of the blocks' time.
    pace.flushed(9 * MIB, 0.02, 0.6, 0.08)
    assert pace.rate == pytest.approx(9 * MIB / 0.52)
    assert pace.idle_s == pytest.approx(0.02 + 2 * 0.08)
    first = pace.limit(DEFAULT_BEHIND_LIMIT, DEFAULT_BEHIND_MAX)
    assert first > 2 * DEFAULT_BEHIND_LIMIT
    # A faster round (the machine idle again) moves it down a quarter of the way.
    pace.flushed(9 * MIB, 0.02, 0.6 - 0.04, 0.04)
    assert pace.idle_s == pytest.approx(0.18 - (0.18 - 0.10) / 4)
    assert DEFAULT_BEHIND_LIMIT < pace.limit(DEFAULT_BEHIND_LIMIT, DEFAULT_BEHIND_MAX) < first
    # A one-wave flush: its rate counts at most half its time as the round.
    pace = Pace()
    pace.flushed(2 * MIB, 0.0, 0.1, 0.08)
    assert pace.rate == pytest.approx(2 * MIB / 0.05)
