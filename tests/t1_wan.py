"""The WAN bed's pure parts (issue 65): the netem command lines built from a link, both
directions of a host's cable; the user-space wire's rate, buffer and byte count (on
pipes)."""

from __future__ import annotations

import os
import random

import pytest

from bftfs.testing.wan import Direction, Link, netem_args, queue_limit, tc_commands


def test_a_link_with_everything_names_delay_jitter_loss_and_rate() -> None:
    link = Link(delay_ms=25, jitter_ms=2.5, loss=0.001, rate_mbit=100)
    assert netem_args(link) == [
        "netem",
        "delay",
        "25ms",
        "2.5ms",
        "loss",
        "0.1%",
        "rate",
        "100mbit",
    ]


def test_a_plain_link_is_a_netem_with_nothing_and_a_delay_alone_has_no_jitter() -> None:
    assert netem_args(Link()) == ["netem"]
    assert netem_args(Link(delay_ms=150)) == ["netem", "delay", "150ms"]


def test_both_ends_of_the_cable_get_the_qdisc_the_hosts_end_in_its_namespace() -> None:
    cmds = tc_commands(Link(delay_ms=10), ("bflab120", "bfpab120"), "bfhab120")
    tail = ["root", "netem", "delay", "10ms"]
    assert cmds == [
        ["tc", "qdisc", "replace", "dev", "bflab120", *tail],
        ["tc", "-n", "bfhab120", "qdisc", "replace", "dev", "bfpab120", *tail],
    ]


def test_a_link_buffer_is_netems_limit_in_packets() -> None:
    link = Link(delay_ms=25, rate_mbit=100, queue_ms=12)  # 150 000 bytes: 100 packets
    assert netem_args(link)[-4:] == ["rate", "100mbit", "limit", "100"]
    assert queue_limit(Link(queue_ms=12)) is None  # no rate, nothing waits for it


def test_the_wire_drops_what_finds_a_full_buffer_and_counts_what_it_carried() -> None:
    """At 8 Mbit/s a 5000-byte frame takes 5 ms; a 10 ms buffer holds the frames that start
    within 10 ms, and the fourth one at once finds it full (tail drop)."""
    src_r, src_w = os.pipe()
    dst_r, dst_w = os.pipe()
    try:
        os.set_blocking(src_r, False)
        link = Link(delay_ms=20, rate_mbit=8, queue_ms=10)
        d = Direction(src_r, dst_w, link, random.Random(1))
        for _ in range(4):
            os.write(src_w, b"x" * 5000)
            d.take(100.0)
        assert (d.carried, d.dropped) == (20_000, 1)
        assert [round(due - 100.0, 6) for due, _ in d.queue] == [0.025, 0.03, 0.035]
        assert d.give(100.026) == pytest.approx(100.03)  # the first went; the next is due
        assert os.read(dst_r, 65536) == b"x" * 5000
    finally:
        for fd in (src_r, src_w, dst_r, dst_w):
            os.close(fd)
