"""Tier 1: the pure parts of the Listeners register (issue 68, seed 003 figure 3.1).

Timestamps and quorum sizes, the writer's choice of timestamp (W8), the reader's bounded
state and decision rule (R5-R13, Theorem 3), the server's rules (single version, the
Listeners pattern's baseline, the guards of section 3.6.1) and the wire checks.
"""

from __future__ import annotations

import pytest

from bftfs.listeners import messages as m
from bftfs.listeners import server
from bftfs.listeners.reader import ReadOp
from bftfs.listeners.stamps import CAP, INITIAL, INITIAL_VALUE, Sizes, Stamp, Stored, next_stamp
from bftfs.listeners.writer import WriteOp


class Regs(dict[bytes, Stored]):
    def put(self, key: bytes, value: Stored) -> None:
        self[key] = value


def test_sizes_follow_the_threshold_construction() -> None:
    assert (Sizes.of(4).f, Sizes.of(4).quorum, Sizes.of(4).gateway) == (1, 3, 4)
    assert (Sizes.of(7).f, Sizes.of(7).quorum, Sizes.of(7).gateway) == (2, 5, 7)
    with pytest.raises(ValueError, match="3f"):
        Sizes(6, 2)


def test_next_stamp_is_the_smallest_of_the_writers_set_above_both() -> None:
    assert next_stamp(Stamp(5, 3), INITIAL, 7) == Stamp(5, 7)
    assert next_stamp(Stamp(5, 9), INITIAL, 7) == Stamp(6, 7)
    assert next_stamp(Stamp(2, 1), Stamp(8, 7), 7) == Stamp(9, 7)


def test_writer_waits_for_a_quorum_and_ignores_forged_counters() -> None:
    w = WriteOp(Sizes.of(4), range(4), 9, INITIAL, b"d")
    assert w.on_ts(0, Stamp(CAP - 1, 1)) is None  # a faulty node's: not counted
    assert w.on_ts(1, Stamp(3, 2)) is None
    assert w.on_ts(1, Stamp(3, 2)) is None  # a duplicate counts once
    assert w.on_ts(2, Stamp(1, 2)) is None
    assert w.on_ts(7, Stamp(1, 2)) is None  # not a node of the write
    value = w.on_ts(3, Stamp(2, 2))
    assert value == Stored(Stamp(3, 9), b"d")
    assert not w.on_ack(0, Stamp(3, 1)) and not w.on_ack(0, value.stamp)
    assert not w.on_ack(1, value.stamp)
    assert w.on_ack(2, value.stamp)


def test_reader_decides_on_a_quorum_of_identical_values() -> None:
    new, old = Stored(Stamp(2, 1), b"new"), Stored(Stamp(1, 1), b"old")
    r = ReadOp(Sizes.of(4), range(4))
    # A completed write at 0, 1 and 2; node 3 lags and node 2 (faulty) reports the old one:
    assert r.on_value(3, old) is None and r.on_value(2, old) is None  # f + 1: not enough
    assert r.on_value(0, new) is None
    assert r.on_value(2, Stored(Stamp(2, 1), b"lie")) is None  # equivocation: its own vote
    assert r.on_value(3, new) is None  # node 3's echo of the write
    assert r.on_value(1, new) == new
    assert r.echoes == 2 and r.messages == 6


def test_reader_keeps_only_the_f_plus_one_largest_stamps() -> None:
    r = ReadOp(Sizes.of(4), range(4))
    r.on_value(0, Stored(Stamp(1, 1), b"a"))
    r.on_value(1, Stored(Stamp(CAP - 1, 5), b"forged"))
    r.on_value(2, Stored(Stamp(3, 1), b"c"))
    assert r.top == {Stamp(CAP - 1, 5), Stamp(3, 1)}
    assert all(stamp in r.top for _, stamp in r.answer)
    for k in range(4, 40):  # echoes of stamps outside T are not kept
        r.on_value(0, Stored(Stamp(k % 3, 2), b"e"))
        assert r.held <= 4 * (Sizes.of(4).f + 2)
    r.on_value(3, Stored(Stamp(3, 1), b"c"))
    r.on_value(0, Stored(Stamp(3, 1), b"c"))
    assert r.decided == Stored(Stamp(3, 1), b"c")


def test_server_keeps_one_version_and_only_the_senders_stamps() -> None:
    regs = Regs()
    assert server.query_ts(regs, b"k") == INITIAL
    assert server.accept(regs, 5, b"k", Stored(Stamp(2, 5), b"two"))
    assert not server.accept(regs, 5, b"k", Stored(Stamp(1, 5), b"one"))
    assert server.current(regs, b"k") == Stored(Stamp(2, 5), b"two")
    with pytest.raises(server.Refused):
        server.accept(regs, 5, b"k", Stored(Stamp(9, 6), b"not mine"))


def test_listeners_get_every_store_newer_than_their_start() -> None:
    regs, table = Regs(), server.ListenerTable()
    server.accept(regs, 5, b"k", Stored(Stamp(2, 5), b"two"))
    assert table.open(7, 1, b"k", server.current(regs, b"k"), 0.0).stamp == Stamp(2, 5)
    table.open(7, 2, b"other", INITIAL_VALUE, 0.0)
    server.accept(regs, 5, b"k", Stored(Stamp(4, 5), b"four"))
    assert table.echoes(b"k", Stored(Stamp(4, 5), b"four")) == [
        server.Echo(7, 1, Stored(Stamp(4, 5), b"four"))
    ]
    # Older than the node's value but newer than the read's start: echoed too.
    late = Stored(Stamp(3, 6), b"three")
    assert not server.accept(regs, 6, b"k", late)
    assert table.echoes(b"k", late) == [server.Echo(7, 1, late)]
    assert table.echoes(b"k", Stored(Stamp(1, 6), b"old")) == []
    assert table.complete(7, 1) and not table.complete(7, 1)
    assert table.echoes(b"k", Stored(Stamp(5, 5), b"five")) == []


def test_listener_guards_bound_a_reader_that_never_completes() -> None:
    table = server.ListenerTable(per_reader=2, max_echoes=1, lifetime=10.0)
    for rid in range(3):
        table.open(7, rid, b"k", INITIAL_VALUE, float(rid))
    assert len(table) == 2 and table.dropped == 1  # the oldest went
    assert len(table.echoes(b"k", Stored(Stamp(1, 1), b"a"))) == 2
    assert table.echoes(b"k", Stored(Stamp(2, 1), b"b")) == []  # echo limit: dropped
    assert len(table) == 0
    table.open(8, 1, b"k", INITIAL_VALUE, 0.0)
    assert table.expire(5.0) == 0 and table.expire(11.0) == 1


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"k": "text"},
        {"k": b""},
        {"k": b"x" * (m.MAX_KEY + 1)},
        {"k": b"x", "s": [1], "d": b""},
        {"k": b"x", "s": [CAP, 1], "d": b""},
        {"k": b"x", "s": [1, -1], "d": b""},
        {"k": b"x", "s": [True, 1], "d": b""},
        {"k": b"x", "s": [1, 1], "d": b"x" * (m.MAX_DATA + 1)},
        {"k": b"x", "s": [1, 1], "d": "text"},
    ],
)
def test_malformed_stores_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        m.parse_store_request(bad)


def test_wire_forms_round_trip() -> None:
    value = Stored(Stamp(3, 9), b"data")
    assert m.parse_store_request(m.store_request(b"k", value)) == (b"k", value)
    assert m.parse_value(m.echo_push(4, value)[m.PUSH]) == (4, value)
    assert m.parse_read_request(m.read_request(b"k", 4)) == (b"k", 4)
    assert m.parse_stamp_reply(m.stamp_reply(value.stamp)) == value.stamp
    assert m.parse_done_request(m.done_request(4)) == 4
    with pytest.raises(ValueError):
        m.parse_done_request({"r": -1})
