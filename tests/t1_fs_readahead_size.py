"""Tier 1: the read-ahead window's largest size sized from the links (issue 65).

A fixed 8 MiB window covered a 25 ms one-way, 50 Mbit/s link's round (about 1 MB of data)
but not a 100 ms, 200 Mbit/s one's (15 MB): the read ran at 0.34x of the links' bound
(docs/wan.md).  ``net/rtt.bandwidth_delay`` takes each connection's measured rate and
shortest round trip; ``fs/files/window.readahead_largest`` asks for twice their product,
never below the configured size (what a LAN keeps) nor above the ceiling.
"""

from __future__ import annotations

import math

from bftfs.fs.files import DEFAULT_READAHEAD_MAX
from bftfs.fs.files.window import DEFAULT_READAHEAD_CEILING, GAIN, readahead_largest
from bftfs.net.rtt import RttEstimator, RttTable, bandwidth_delay

MIB = 1 << 20


def links(rate_per_link: float, one_way_s: float, n: int = 6) -> list[tuple[float, float]]:
    """``n`` links of the same rate (bytes/s) and round trip."""
    return [(rate_per_link, 2 * one_way_s)] * n


def test_a_lan_and_the_bars_wan_keep_the_configured_window() -> None:
    lan = bandwidth_delay(links(1e9, 50e-6), 3)
    wan25 = bandwidth_delay(links(50e6 / 8, 0.025), 3)
    for rate, round_s in (lan, wan25):
        got = readahead_largest(rate, round_s, DEFAULT_READAHEAD_MAX, DEFAULT_READAHEAD_CEILING)
        assert got == DEFAULT_READAHEAD_MAX
    assert wan25 == (3 * 50e6 / 8, 0.05)


def test_a_long_fat_link_gets_twice_its_bandwidth_delay_product() -> None:
    rate, round_s = bandwidth_delay(links(200e6 / 8, 0.1), 3)
    assert (rate, round_s) == (75e6, 0.2)
    got = readahead_largest(rate, round_s, DEFAULT_READAHEAD_MAX, DEFAULT_READAHEAD_CEILING)
    assert got == int(GAIN * 75e6 * 0.2) == 30_000_000
    # Half the window (what is in flight just before a refill) still covers a round.
    assert got / 2 >= rate * round_s


def test_the_window_never_passes_the_ceiling_nor_falls_below_the_floor() -> None:
    assert readahead_largest(1e9, 1.0, 8 * MIB, 64 * MIB) == 64 * MIB
    assert readahead_largest(1e9, 1.0, 8 * MIB, 4 * MIB) == 8 * MIB
    assert readahead_largest(0.0, 0.2, 8 * MIB, 64 * MIB) == 8 * MIB
    assert readahead_largest(75e6, 0.0, 8 * MIB, 64 * MIB) == 8 * MIB


def test_a_read_counts_the_m_fastest_links_and_waits_for_the_farthest_of_them() -> None:
    measured = [(10e6, 0.05), (30e6, 0.2), (20e6, 0.1), (5e6, 0.01), (0.0, 0.001)]
    assert bandwidth_delay(measured, 3) == (60e6, 0.2)
    assert bandwidth_delay(measured, 1) == (30e6, 0.2)


def test_nothing_is_measured_until_m_links_have_a_rate_and_a_round_trip() -> None:
    assert bandwidth_delay([], 3) == (0.0, 0.0)
    assert bandwidth_delay([(10e6, 0.05), (10e6, math.inf), (0.0, 0.05)], 2) == (0.0, 0.0)
    assert bandwidth_delay([(10e6, 0.05), (10e6, 0.06)], 2) == (20e6, 0.06)


def test_the_shortest_round_trip_leaves_out_the_queueing_in_later_samples() -> None:
    est = RttEstimator()
    assert est.least == math.inf
    for r in (0.21, 0.2, 0.9, 1.4, 0.6):  # big replies queued behind one another
        est.sample(r)
    assert est.least == 0.2
    assert est.srtt is not None and est.srtt > 0.4
    table = RttTable()
    assert table.least(3) == math.inf
    table.sample(3, 0.3, 1.0)
    table.sample(3, 0.25, 2.0)
    assert table.least(3) == 0.25
