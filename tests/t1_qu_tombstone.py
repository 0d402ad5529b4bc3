"""Tier 1: tombstones of finished Q/U objects (docs/qu.md, "Reclaiming removed objects").

The pure decisions (which versions go, whether every server's word is in) and the store
step on the in-memory replicas: a finished object shrinks to its history and final
version, a live or young or pinned one does not, and afterwards a repeated request still
gets its answer, a stale one is still refused, and an update conditioned on the final
version runs exactly as on a server that kept everything.
"""

from __future__ import annotations

from typing import Any

from qu_helpers import MemCluster, send

from bftfs.ids import client_id
from bftfs.qu import schema
from bftfs.qu.history import OHSEntry
from bftfs.qu.messages import ReplyStatus
from bftfs.qu.objects import Class, Method, MethodRefused, ObjectType, Registry
from bftfs.qu.reads import versions
from bftfs.qu.request import Operation, Request
from bftfs.qu.serverconfig import Retention
from bftfs.qu.timestamp import Candidate, Timestamp
from bftfs.qu.tombstones import tombstone_agreed, tombstone_plan, tombstone_step, tombstone_target

C0 = int(client_id(0))
ALL = range(6)
SEC = 10**9
OID = 7


def _put(states: dict[int, Any], arg: Any) -> tuple[dict[int, Any], Any]:
    ((oid, state),) = states.items()
    if state == "gone":
        raise MethodRefused("gone")
    return {oid: arg}, state


def _touch(states: dict[int, Any], arg: Any) -> tuple[dict[int, Any], Any]:
    """An update a finished object still takes (a write through an open handle)."""
    ((oid, state),) = states.items()
    return {oid: state}, [state, arg]


LIFE = ObjectType(
    "life",
    (Method("life.put", Class.UPDATE, _put), Method("life.touch", Class.UPDATE, _touch)),
    finished=lambda state: state == "gone",
)


def cluster(keep_seconds: float = 10.0, pins: list[int] | None = None) -> MemCluster:
    pinned = pins if pins is not None else []
    return MemCluster(
        reg=Registry([LIFE]),
        retention=Retention(keep_last=2, keep_seconds=keep_seconds, pins=lambda kv: pinned),
    )


def ohs(cl: MemCluster) -> dict[int, OHSEntry]:
    return {s: cl.ohs_entry(s, OID) for s in ALL}


def put(cl: MemCluster, seq: int, value: Any) -> Request:
    req = Request(C0, (OID,), {OID: ohs(cl)}, Operation("life.put", False, value, seq))
    cl.now_ns = seq * SEC
    replies = send(cl, ALL, req)
    assert all(r.status is ReplyStatus.OK for r in replies.values())
    return req


def removed(cl: MemCluster) -> tuple[Request, Request]:
    """Values 1, 2, then "gone": (the request before the last, the last)."""
    put(cl, 1, 1)
    before = put(cl, 2, 2)
    return before, put(cl, 3, "gone")


def last_lt(cl: MemCluster) -> Timestamp:
    return max(c.lt for c in cl.ohs_entry(0, OID).rh)


def shrink(cl: MemCluster, s: int, now_ns: int) -> int:
    kv, cfg = cl.kvs[s], cl.cfgs[s]
    final = tombstone_target(kv, cfg, OID, now_ns)
    if final is None:
        return 0
    assert tombstone_agreed(final, {t: cl.ohs_entry(t, OID).rh for t in ALL}, cl.th.n)
    return tombstone_step(kv, cfg, OID, final, now_ns)


def test_plan_keeps_the_final_young_and_pinned_versions() -> None:
    lts = [Timestamp(t, False, C0, bytes(32)) for t in range(1, 6)]
    stored = [(lt, t * SEC) for t, lt in enumerate(lts, start=1)]
    final = lts[-1]
    assert tombstone_plan(stored, final, 10 * SEC, ()) == lts[:-1]
    assert tombstone_plan(stored, final, 3 * SEC, ()) == lts[:3]  # 4 and 5 are young
    # The version current at 2.5 s (stored at 2 s) stays for the snapshot.
    assert tombstone_plan(stored, final, 10 * SEC, (2 * SEC + SEC // 2,)) == [
        lts[0],
        lts[2],
        lts[3],
    ]


def test_agreement_needs_every_server_with_the_final_version_newest() -> None:
    lt = [Timestamp(t, False, C0, bytes(32)) for t in range(4)]
    final = lt[2]
    good = (Candidate(lt[2], lt[1], (OID,)), Candidate(lt[1], lt[0], (OID,)))
    assert tombstone_agreed(final, dict.fromkeys(range(6), good), 6)
    assert not tombstone_agreed(final, dict.fromkeys(range(5), good), 6)  # one not heard
    lagging = (Candidate(lt[1], lt[0], (OID,)),)
    assert not tombstone_agreed(final, {**dict.fromkeys(range(5), good), 5: lagging}, 6)
    newer = (Candidate(lt[3], lt[2], (OID,)), *good)  # a candidate after it (in flight, or forged)
    assert not tombstone_agreed(final, {**dict.fromkeys(range(5), good), 5: newer}, 6)
    # Servers with no history of the object (forgotten already, or a lost disk) count as
    # agreeing; servers not heard do not.
    assert tombstone_agreed(final, dict.fromkeys(range(4), good), 6, forgotten=2)
    assert not tombstone_agreed(final, dict.fromkeys(range(4), good), 6, forgotten=1)
    assert not tombstone_agreed(final, {**dict.fromkeys(range(4), good), 4: lagging}, 6, 1)


def test_a_finished_object_shrinks_to_its_history_and_final_version() -> None:
    cl = cluster()
    _, last = removed(cl)
    rh_before = [cl.ohs_entry(s, OID) for s in ALL]
    assert len(versions(cl.kvs[0], OID)) == 3  # all younger than keep_seconds
    assert shrink(cl, 0, 12 * SEC) == 0  # stored at 3 s: younger than 10 s
    deleted = shrink(cl, 0, 14 * SEC)
    vs = versions(cl.kvs[0], OID)
    assert [v.lt for v in vs] == [max(c.lt for c in rh_before[0].rh)]
    assert deleted == 3  # versions 1 and 2, and the request that made "gone"
    assert all(schema.load_request(cl.kvs[0], lt) is None for lt in (vs[0].lt, last_lt(cl)))
    assert [cl.ohs_entry(s, OID) for s in ALL] == rh_before  # histories untouched
    assert shrink(cl, 0, 15 * SEC) == 0  # already a tombstone
    # A repeated request still gets its stored answer, at the same timestamp.
    again = send(cl, [0], last)[0]
    assert again.status is ReplyStatus.OK and again.answer == 2 and again.lt == vs[0].lt


def test_after_the_tombstone_requests_behave_as_without_it() -> None:
    """A stale request (conditioned on a version that went) is refused as not current,
    the finished state refuses a revival, and an update it still takes gives the same
    version on a shrunk server as on one that kept everything."""
    kept, shrunk = cluster(), cluster()
    for cl in (kept, shrunk):
        before, _ = removed(cl)
    for s in ALL:
        assert shrink(shrunk, s, 20 * SEC) > 0
    for cl in (kept, shrunk):
        stale = send(cl, ALL, Request(C0, (OID,), before.mohs, Operation("life.put", False, 9, 9)))
        assert {r.status for r in stale.values()} == {ReplyStatus.FAIL}
    results = []
    for cl in (kept, shrunk):
        cl.now_ns = 21 * SEC
        revive = send(
            cl, ALL, Request(C0, (OID,), {OID: ohs(cl)}, Operation("life.put", False, 5, 10))
        )
        assert {(r.status, r.why) for r in revive.values()} == {(ReplyStatus.REFUSED, "gone")}
        touch = Request(C0, (OID,), {OID: ohs(cl)}, Operation("life.touch", False, "x", 11))
        results.append({s: (r.status, r.lt, r.answer) for s, r in send(cl, ALL, touch).items()})
        assert schema.load_version(cl.kvs[0], OID, results[-1][0][1]).state is not None
    assert results[0] == results[1]


def test_live_barrier_topped_and_pinned_objects_are_left() -> None:
    cl = cluster()
    put(cl, 1, 1)
    put(cl, 2, 2)
    assert tombstone_target(cl.kvs[0], cl.cfgs[0], OID, 100 * SEC) is None  # live
    pins = [2 * SEC + SEC // 2]
    cl = cluster(pins=pins)
    removed(cl)
    shrink(cl, 0, 100 * SEC)
    assert [v.stored_ns for v in versions(cl.kvs[0], OID)] == [2 * SEC, 3 * SEC]
    cl = cluster(keep_seconds=0.0)
    removed(cl)
    no_retention = MemCluster(reg=Registry([LIFE]))
    removed(no_retention)
    assert tombstone_target(no_retention.kvs[0], no_retention.cfgs[0], OID, 100 * SEC) is None
