"""Client-side checks (bftfs/rw/verify.py): VALIDATE on replies, the validated cross
checksum against poisonous writes, and the write's time against inflated TIME replies.
"""

from __future__ import annotations

from bftfs import erasure
from bftfs.rw import verify
from bftfs.rw.classify import RWThresholds
from bftfs.rw.messages import ReadReply, ReadRequest
from bftfs.rw.timestamp import ZERO, make_timestamp

TH = RWThresholds(n=6, t=1, b=1, qc=4, m=3)


def test_validate_fragment_checks_verifier_and_entry() -> None:
    enc = erasure.encode(b"block", 3, 6)
    ts = make_timestamp(9, 70000, enc.verifier)
    assert verify.validate_fragment(ts, enc.cross_checksum, enc.fragments[4], 4, 6)
    assert not verify.validate_fragment(ts, enc.cross_checksum, enc.fragments[4], 3, 6)
    assert not verify.validate_fragment(ts, enc.cross_checksum, enc.fragments[4], 6, 6)
    other = make_timestamp(9, 70000, erasure.verifier_of(b"x"))
    assert not verify.validate_fragment(other, enc.cross_checksum, enc.fragments[4], 4, 6)
    assert not verify.validate_fragment(ts, enc.cross_checksum[:-32], enc.fragments[4], 4, 5)


def test_check_read_reply_flags_a_corrupt_fragment() -> None:
    enc = erasure.encode(b"block", 3, 6)
    ts = make_timestamp(9, 70000, enc.verifier)
    req = ReadRequest(1, data=True)
    good = ReadReply((ts,), False, ZERO, enc.cross_checksum, enc.fragments[0])
    assert verify.check_read_reply(TH, 0, req, good) is None
    corrupt = ReadReply((ts,), False, ZERO, enc.cross_checksum, b"\0" + enc.fragments[0][1:])
    bad = verify.check_read_reply(TH, 0, req, corrupt)
    assert bad is not None and bad.node == 0
    witness = ReadReply((ts,), False, ZERO)
    assert verify.check_read_reply(TH, 0, ReadRequest(1, data=False), witness) is None


def test_poisonous_write_is_detected_whatever_fragments_a_reader_has() -> None:
    """Two values under one self-consistent cross checksum: VALIDATE passes at every node,
    the validated cross checksum fails for every m fragments (seed L889-895)."""
    a, b = erasure.encode(b"A" * 60, 3, 6), erasure.encode(b"B" * 60, 3, 6)
    mixed = a.fragments[:3] + b.fragments[3:]
    cc = erasure.make_cross_checksum(60, mixed)
    ts = make_timestamp(9, 70000, erasure.verifier_of(cc))
    assert all(verify.validate_fragment(ts, cc, f, i, 6) for i, f in enumerate(mixed))
    for subset in ([0, 1, 2], [3, 4, 5], [0, 3, 5], [1, 2, 4]):
        regen = verify.validate_candidate(TH, {i: mixed[i] for i in subset}, cc)
        assert not regen.valid and regen.data == b""
    honest = verify.validate_candidate(
        TH, {3: a.fragments[3], 4: a.fragments[4], 5: a.fragments[5]}, a.cross_checksum
    )
    assert honest.valid and honest.data == b"A" * 60


def test_time_replies_beyond_the_clock_bound_are_unusable() -> None:
    now, bound = 10**18, 10**9
    near = make_timestamp(now + bound - 1, 7, bytes(32))
    huge = make_timestamp(now + bound, 7, bytes(32))
    assert verify.time_reply_ok(near, now, bound)
    assert not verify.time_reply_ok(huge, now, bound)
    assert verify.time_reply_ok(ZERO, now, bound)


def test_choose_time_is_after_every_accepted_reply() -> None:
    now = 1000
    replies = {0: make_timestamp(5000, 1, bytes(32)), 1: ZERO, 2: make_timestamp(10, 1, bytes(32))}
    assert verify.choose_time(replies, now) == 5001
    assert verify.choose_time({0: ZERO}, now) == now
