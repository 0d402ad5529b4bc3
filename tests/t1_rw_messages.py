"""Timestamps and the wire format (bftfs/rw/timestamp.py, bftfs/rw/messages.py): ordering,
round trips, and rejection of every malformed field.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bftfs import erasure
from bftfs.rw.messages import (
    MAX_HISTORY,
    MessageError,
    ReadReply,
    ReadRequest,
    TimeReply,
    TimeRequest,
    WriteReply,
    WriteRequest,
    block_id,
)
from bftfs.rw.timestamp import (
    MAX_TIME,
    ZERO,
    Timestamp,
    TimestampError,
    make_timestamp,
    next_time,
    plausible,
)

stamps = st.builds(
    Timestamp,
    st.integers(0, MAX_TIME),
    st.integers(0, 2**32 - 1),
    st.binary(min_size=32, max_size=32),
)


@given(stamps, stamps)
def test_byte_order_is_timestamp_order(a: Timestamp, b: Timestamp) -> None:
    assert (a < b) == (a.encode() < b.encode())
    assert Timestamp.decode(a.encode()) == a


def test_timestamp_decode_rejects_wrong_sizes() -> None:
    for raw in (b"", b"x" * 43, b"x" * 45, "x" * 44):
        with pytest.raises(TimestampError):
            Timestamp.decode(raw)  # type: ignore[arg-type]


def test_make_timestamp_range_checks() -> None:
    with pytest.raises(ValueError):
        make_timestamp(0, 1, bytes(32))
    with pytest.raises(ValueError):
        make_timestamp(1, 2**32, bytes(32))
    assert make_timestamp(1, 1, bytes(32)) > ZERO


def test_time_always_increases_and_follows_the_clock() -> None:
    assert next_time(100, 50) == 101
    assert next_time(100, 500) == 500
    assert plausible(160, 100, 60) and not plausible(161, 100, 60)


def test_block_id_layout() -> None:
    assert block_id(1, 2) == (1 << 64) + 2
    with pytest.raises(ValueError):
        block_id(-1, 0)


ENC = erasure.encode(b"payload", 3, 6)
TS = make_timestamp(5, 70000, ENC.verifier)


def round_trip_read(req: ReadRequest) -> ReadRequest:
    return ReadRequest.from_wire(req.to_wire(), prev=req.below is not None)


def test_requests_round_trip() -> None:
    assert TimeRequest.from_wire(TimeRequest(3).to_wire()) == TimeRequest(3)
    w = WriteRequest(3, TS, ENC.cross_checksum, ENC.fragments[1])
    assert WriteRequest.from_wire(w.to_wire(), n=6, max_fragment=100) == w
    for r in (ReadRequest(3, True), ReadRequest(3, False, TS, True), ReadRequest(3, True, TS)):
        assert round_trip_read(r) == r


def test_replies_round_trip() -> None:
    assert TimeReply.from_wire(TimeReply(TS).to_wire()) == TimeReply(TS)
    assert WriteReply.from_wire(WriteReply(True).to_wire()) == WriteReply(True)
    stale = WriteReply(False, TS)
    assert WriteReply.from_wire(stale.to_wire()) == stale and not stale.ok
    fresh = WriteRequest(3, TS, ENC.cross_checksum, ENC.fragments[1], fresh=True)
    assert WriteRequest.from_wire(fresh.to_wire(), n=6, max_fragment=100) == fresh
    req = ReadRequest(3, True)
    reply = ReadReply((TS,), False, ZERO, ENC.cross_checksum, ENC.fragments[0])
    assert ReadReply.from_wire(reply.to_wire(), req, n=6, max_fragment=100) == reply


def bad_write(**change: Any) -> dict[str, Any]:
    msg = WriteRequest(3, TS, ENC.cross_checksum, ENC.fragments[1]).to_wire()
    msg.update(change)
    return msg


@pytest.mark.parametrize(
    "msg",
    [
        None,
        [],
        {"v": 1},
        bad_write(v=2),
        bad_write(b=b"short"),
        bad_write(b="not bytes" * 2),
        bad_write(ts=b"x"),
        bad_write(cc=ENC.cross_checksum[:-1]),
        bad_write(f=b"x" * 101),
        bad_write(f=None),
        bad_write(fr=1),
    ],
)
def test_malformed_writes_are_one_error_family(msg: Any) -> None:
    with pytest.raises(MessageError):
        WriteRequest.from_wire(msg, n=6, max_fragment=100)


def reply_msg(**change: Any) -> dict[str, Any]:
    msg = ReadReply((TS,), False, ZERO, ENC.cross_checksum, ENC.fragments[0]).to_wire()
    msg.update(change)
    return msg


OLDER = make_timestamp(4, 70000, ENC.verifier)


@pytest.mark.parametrize(
    "msg,req",
    [
        (reply_msg(h="x"), ReadRequest(3, True)),
        (reply_msg(h=[TS.encode()] * (MAX_HISTORY + 1)), ReadRequest(3, True)),
        (reply_msg(h=[OLDER.encode(), TS.encode()]), ReadRequest(3, True)),  # ascending
        (reply_msg(h=[TS.encode(), TS.encode()]), ReadRequest(3, True)),  # repeated
        (reply_msg(h=[TS.encode(), ZERO.encode()]), ReadRequest(3, True)),  # lists ZERO
        (reply_msg(), ReadRequest(3, True, TS)),  # not strictly below the bound
        (reply_msg(more=True, h=[], cc=None, f=None), ReadRequest(3, True)),
        (reply_msg(more=1), ReadRequest(3, True)),
        (reply_msg(fl=b"x"), ReadRequest(3, True)),
        (reply_msg(cc=None), ReadRequest(3, True)),  # data asked, none given
        (reply_msg(), ReadRequest(3, False)),  # witness given data
        (reply_msg(h=[], f=b"x", cc=None), ReadRequest(3, True)),
    ],
)
def test_malformed_read_replies_are_rejected(msg: Any, req: ReadRequest) -> None:
    with pytest.raises(MessageError):
        ReadReply.from_wire(msg, req, n=6, max_fragment=100)


def test_inclusive_bound_admits_the_bound_itself() -> None:
    req = ReadRequest(3, True, TS, inclusive=True)
    assert ReadReply.from_wire(reply_msg(), req, n=6, max_fragment=100).latest == TS


def test_write_reply_must_be_ok() -> None:
    with pytest.raises(MessageError):
        WriteReply.from_wire({"ok": False, "new": True})
    with pytest.raises(MessageError):
        WriteReply.from_wire({"ok": 1, "new": True})
    with pytest.raises(MessageError):
        TimeReply.from_wire({"ts": 5})
