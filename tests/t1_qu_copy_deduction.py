"""Tier 1: a copy never abandons an established version because deduction counted its
barrier complete from another object's histories (found by ``t2_qu_hunt``, seed 40).

A multi-object barrier is accepted by each server for all its objects at once, so a
server listing it at object 8 accepted it at object 7 too (deduction, ``classify.py``).
But a copy takes ObjCand from the request's histories *of object 7*: only histories taken
after the barrier list every version their servers accepted before it.  A client whose
histories of 7 are older than the barrier (a stale honest client, whose fresh reads were
of 8 only; or a Byzantine client on purpose) made every server copy 7's version from before
an increment that had completed at all six, and the increment was lost.
"""

from __future__ import annotations

from qu_helpers import MemCluster, send

from bftfs.ids import client_id
from bftfs.qu.classify import OpType, View, classify
from bftfs.qu.history import OHSEntry
from bftfs.qu.messages import ReplyStatus
from bftfs.qu.reply import Reply
from bftfs.qu.request import Operation, Request

ALL = range(6)
ME = int(client_id(0))


def ohs_of(replies: dict[int, Reply], objects: tuple[int, ...]) -> dict[int, dict[int, OHSEntry]]:
    """The multi-OHS the replies of one round make (their histories, per object)."""
    return {o: {s: r.hist[i] for s, r in replies.items()} for i, o in enumerate(objects)}


def test_a_copy_is_not_made_from_histories_older_than_its_barrier() -> None:
    cl = MemCluster(seed=40)
    both = (7, 8)
    # 1. add_all on 7 and 8: complete at all six (7 = 1, 8 = 1).
    got = send(
        cl, ALL, Request(ME, both, {7: {}, 8: {}}, Operation("counter.add_all", False, 1, 1))
    )
    assert all(r.status is ReplyStatus.OK for r in got.values())
    old = ohs_of(got, both)  # what the stale client keeps of object 7
    # 2. An increment of 7 completes at all six: 7 = 2, and its client has seen it.
    got = send(cl, ALL, Request(ME, (7,), {7: old[7]}, Operation("counter.increment", False, 1, 2)))
    assert {r.answer for r in got.values()} == {2}
    assert all(r.status is ReplyStatus.OK for r in got.values())
    # 3. An update of 8 reaches one server only: incomplete, so 8 needs a barrier.
    one = send(cl, [0], Request(ME, (8,), {8: old[8]}, Operation("counter.increment", False, 5, 3)))
    fresh8 = dict(old[8])
    fresh8[0] = one[0].hist[0]
    # 4. A two-object barrier over 7's old histories and 8's fresh ones: every server
    #    accepts it (their newest at 7, the increment, is older than the barrier).
    got = send(cl, ALL, Request(ME, both, {7: old[7], 8: fresh8}, None))
    assert all(r.status is ReplyStatus.OK and r.type == "barrier" for r in got.values())
    after = ohs_of(got, both)
    # 5. The repair request that follows, again with 7's old histories and 8's from the
    #    barrier round: deduction shows the barrier at all six at object 7 too, but 7's
    #    histories predate it and do not show the increment.
    stale = {7: old[7], 8: after[8]}
    got = send(cl, ALL, Request(ME, both, stale, None))
    # 6. Whatever that made (and the repair after it), a reader sees the increment: 7 is
    #    2.  (It was 1: every server had copied 7's version from before the increment.)
    latest = send(cl, ALL, Request(ME, (7,), {7: ohs_of(got, both)[7]}, None))
    fetch = Operation("counter.fetch", True, None, 0)
    shown = {7: ohs_of(latest, (7,))[7]}
    answers = {r.answer for r in send(cl, ALL, Request(ME, (7,), shown, fetch)).values()}
    assert answers == {2}
    # Why: the barrier is complete at 7 by deduction, but no history of 7 lists it.
    view = View(stale, cl.th)
    assert view.order(7, view.latest_candidate(7, True)) == 6
    assert classify(view, 7).type is OpType.BARRIER  # not a copy from older histories
