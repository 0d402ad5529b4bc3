"""The WAN bed's pure parts (issue 65): the netem command lines built from a link, both
directions of a host's cable."""

from __future__ import annotations

from bftfs.testing.wan import Link, netem_args, tc_commands


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
