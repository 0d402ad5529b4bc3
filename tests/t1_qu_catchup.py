"""Tier 1: the pure decisions of a restarted server's catch-up (``bftfs/node/qu_catchup.py``)."""

from __future__ import annotations

import pytest
from t1_qu_classify import TH, A, B, cand, ohs, ts, view

from bftfs.node.qu_catchup import behind, target
from bftfs.qu.messages import MessageError, parse_latest_reply


def test_an_object_is_behind_only_when_b_plus_1_servers_list_it_newer() -> None:
    own = {1: ts(3), 2: ts(3)}
    honest = {1: ts(5), 2: ts(3), 3: ts(1)}
    liar = {1: ts(9), 2: ts(99), 4: ts(7), 5: ts(7)}  # one Byzantine server inventing work
    assert behind(own, [honest, honest, liar], TH.b) == [3, 1]  # oldest first
    assert behind(own, [liar], TH.b) == []
    assert behind({}, [honest, dict(honest)], TH.b) == [3, 2, 1]  # never touched here


def test_the_latest_candidate_is_caught_up_when_a_client_could_inline_repair_it() -> None:
    # Complete at servers 0, 1, 3, 4, 5 while server 2 was down: order 4 without server 3.
    o = ohs([B, A], [B, A], [A], None, [B, A], [B, A])
    assert target(view(o), 1, 2) == B
    assert target(view(o), 1, 0) is None  # server 0 holds it already
    lone = ohs([B, A], [A], [A], [A], [A], [A])  # order 1 < r: contention, not ours
    assert target(view(lone), 1, 2) is None
    newer = cand(ts(2, client=7), A.lt)  # a competing update, newer, at 3 servers (r)
    two = ohs([B, A], [B, A], [A], [newer, A], [newer, A], [newer, A])
    assert target(view(two), 1, 2) == newer  # what a client's inline repair would finish
    assert target(view(ohs(*[[A]] * 6)), 1, 2) is None  # nothing newer than what we hold


def test_a_latest_listing_must_ascend_and_be_bounded() -> None:
    items, more = parse_latest_reply(
        {"o": [[1, ts(2).encode()], [5, ts(1).encode()]], "more": True}
    )
    assert [o for o, _ in items] == [1, 5] and more
    for bad in ({"o": [[5, ts(2).encode()], [1, ts(1).encode()]]}, {"o": "x"}, [], {"o": [[1]]}):
        with pytest.raises(MessageError):
            parse_latest_reply(bad)
