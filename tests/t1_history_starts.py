"""Tier 1: ``qu.starts``, where many objects' history walks start (issue 36,
``bftfs/qu/pastmany.py``).

A server answers its replica history of each object; the client takes as an object's
start only what a Q/U query's client rule takes (``established_answer_point``): a
candidate ``q`` of a quorum of servers list, with nothing newer listed by ``r``.  With
``n = 6, b = 1`` (``q = 5, r = 3``) one server lying in every way it can about its own
history never makes an invented, incomplete or superseded version the start; at worst the
object does not settle (and starts with a query of its own).
"""

from __future__ import annotations

import hashlib

import pytest

from bftfs.kv import MemoryKV
from bftfs.qu import schema
from bftfs.qu.classify import QUThresholds
from bftfs.qu.history import INITIAL_RH, ReplicaHistory, make_authenticator, make_rh, rh_wire
from bftfs.qu.messages import MessageError
from bftfs.qu.pastmany import (
    MAX_OBJECTS,
    established_start,
    parse_starts_reply,
    parse_starts_request,
    starts_request,
    starts_step,
)
from bftfs.qu.timestamp import INITIAL, ZERO, Candidate, Timestamp

TH = QUThresholds.minimal(t=1, b=1)  # n 6, q 5, r 3
OID = 7


def ts(t: int, *, barrier: bool = False) -> Timestamp:
    return Timestamp(t, barrier, 3, hashlib.blake2b(str(t).encode(), digest_size=32).digest())


def cand(t: int, co: int, *, barrier: bool = False) -> Candidate:
    return Candidate(ts(t, barrier=barrier), ts(co) if co else ZERO, (OID,))


V1, V2, V3 = cand(1, 0), cand(2, 1), cand(3, 2)  # V3 complete everywhere, honestly


def honest(*extra: Candidate) -> ReplicaHistory:
    """A benign server's pruned history: the complete V3, V2 before it, and ``extra``."""
    return make_rh([V3, V2, *extra])


def reports(liar: ReplicaHistory | None, count: int = 5, **others: ReplicaHistory) -> dict:
    """``count`` servers' reports: server 1 tells ``liar`` (None: the truth), servers named
    ``s<k>`` in ``others`` tell theirs, the rest the honest history."""
    out = {s: others.get(f"s{s}", honest()) for s in range(count)}
    if liar is not None:
        out[1] = liar
    return out


def test_a_quorum_of_honest_histories_starts_at_the_complete_version() -> None:
    assert established_start(OID, reports(None), TH) == V3.lt
    assert established_start(OID, reports(None, count=6), TH) == V3.lt


@pytest.mark.parametrize(
    "lie",
    [
        make_rh([cand(9, 3), V3, V2]),  # an invented newer version on top
        make_rh([cand(9, 3)]),  # only an invented version
        make_rh([cand(9, 3, barrier=True), V3]),  # an invented newer barrier
        make_rh([V2, V1]),  # stale: the complete version hidden
        INITIAL_RH,  # forgot the object
        make_rh([cand(9, 0), cand(8, 0), cand(7, 0), V3]),  # a forged chain of its own
    ],
    ids=["newer", "invented", "barrier", "stale", "forgot", "forged-chain"],
)
def test_one_liar_never_moves_the_start_it_can_only_keep_it_unsettled(
    lie: ReplicaHistory,
) -> None:
    # From five servers a liar hiding V3 leaves it at order 4 < q: not settled (None),
    # never V2; from all six V3 is complete again.  Nothing it invents is ever the start.
    for count in (5, 6):
        got = established_start(OID, reports(lie, count), TH)
        assert got in (V3.lt, None), (count, got)
    assert established_start(OID, reports(lie, 6), TH) == V3.lt


def test_an_incomplete_newer_version_is_never_the_start_nor_passed_over() -> None:
    # V4 reached two benign servers and the liar says it holds it too: order 3 = r, so it
    # may yet complete.  The start is neither V4 (incomplete, possibly never observed) nor
    # V3 (possibly superseded): the object asks with a query, which repairs.
    v4 = cand(4, 3)
    got = reports(make_rh([v4, V3]), s2=honest(v4), s3=honest(v4))
    assert established_start(OID, got, TH) is None
    # Held by one benign server alone (order 2 with the liar's claim) V4 cannot have
    # completed: V3 is still the established version.
    got = reports(make_rh([v4, V3]), s2=honest(v4))
    assert established_start(OID, got, TH) == V3.lt


def test_an_older_version_the_liar_inflates_is_not_taken_over_the_newer() -> None:
    # The liar claims V2 is its newest; V2 is listed 5 times (complete) but V3, listed by
    # four, is newer with order >= r: not settled rather than V2.
    assert established_start(OID, reports(make_rh([V2])), TH) is None


def test_fewer_than_a_quorum_settle_nothing() -> None:
    assert established_start(OID, reports(None, count=4), TH) is None


def test_an_object_no_server_holds_starts_at_the_initial_version() -> None:
    assert established_start(OID, {s: INITIAL_RH for s in range(5)}, TH) == INITIAL.lt


def test_the_server_answers_its_stored_history_of_each_object() -> None:
    kv = MemoryKV()
    rh = honest()
    schema.store_rh(kv, OID, rh, make_authenticator(OID, rh, 6, lambda s: bytes(32)))
    raw = starts_step(kv, parse_starts_request(starts_request([OID, 99])))
    assert raw == [rh_wire(rh), rh_wire(INITIAL_RH)]
    assert parse_starts_reply(raw, 2) == [rh, INITIAL_RH]


@pytest.mark.parametrize(
    "body",
    [
        None,
        {},
        {"o": []},
        {"o": [1] * 2},
        {"o": [0]},
        {"o": [-1]},
        {"o": "1"},
        {"o": list(range(1, MAX_OBJECTS + 2))},
    ],  # fmt: skip
)
def test_a_malformed_request_is_refused(body: object) -> None:
    with pytest.raises(MessageError):
        parse_starts_request(body)


@pytest.mark.parametrize(
    "reply",
    [None, [], [rh_wire(INITIAL_RH)] * 3, [[]] * 2, [rh_wire(honest())[::-1]] * 2, [5, 6]],
)
def test_a_malformed_reply_is_refused(reply: object) -> None:
    with pytest.raises(MessageError):
        parse_starts_reply(reply, 2)
