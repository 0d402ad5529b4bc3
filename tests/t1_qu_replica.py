"""Tier 1: the Q/U server step over MemoryKV (seed Figure 4.3 lines 1000-1118, 4.3.5-4.3.7).

A scripted client (no network) sends requests to chosen servers; each test checks one rule
of ``s_request``: culling, repeated requests, currency, optimistic queries, method
refusals, inline-repair authorisation, object sync, pruning, retention, byte-identical
versions, and multi-object all-or-nothing; then Table 4.1 is replayed step by step.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from qu_helpers import MemCluster, send

from bftfs.ids import client_id
from bftfs.qu import schema
from bftfs.qu.classify import OpType, View, classify, inline_target
from bftfs.qu.core import merge, outcome
from bftfs.qu.history import OHSEntry
from bftfs.qu.messages import ReplyStatus
from bftfs.qu.reads import read_version, versions
from bftfs.qu.request import Operation, Request
from bftfs.qu.schema import load_request
from bftfs.qu.serverconfig import Retention
from bftfs.qu.timestamp import INITIAL, ZERO

C0, C1 = int(client_id(0)), int(client_id(1))
ALL = range(6)
PQ = [0, 1, 2, 3, 4]


def inc(seq: int, amount: int = 1) -> Operation:
    return Operation("counter.increment", False, amount, seq)


FETCH = Operation("counter.fetch", True, None, 0)


def fresh_ohs(cl: MemCluster, oid: int, servers=ALL) -> dict[int, OHSEntry]:
    return {s: cl.ohs_entry(s, oid) for s in servers}


def test_identical_requests_give_byte_identical_timestamps_and_objects() -> None:
    cl = MemCluster()
    reps = send(cl, ALL, Request(C0, (7,), {7: {}}, inc(1, 5)))
    lts = {r.lt for r in reps.values()}
    assert len(lts) == 1 and all(r.status is ReplyStatus.OK for r in reps.values())
    (lt,) = lts
    raw = {cl.kvs[s].get(schema.DB_VER, schema.ver_key(7, lt)) for s in ALL}
    assert len(raw) == 1  # byte-identical object versions everywhere
    rh = {cl.kvs[s].get(schema.DB_RH, schema.oid_key(7)) for s in ALL}
    assert len(rh) == 6  # histories are equal, but each authenticator is its own server's
    assert {r.hist[0].rh for r in reps.values()} == {reps[0].hist[0].rh}


def test_repeated_request_runs_the_method_once_and_repeats_the_answer() -> None:
    cl = MemCluster()
    req = Request(C0, (7,), {7: {}}, inc(1, 5))
    first = send(cl, PQ, req)
    again = send(cl, PQ, req)
    assert [r.answer for r in again.values()] == [5] * 5
    assert {r.lt for r in again.values()} == {first[0].lt}
    assert read_version(cl.kvs[0], 7, first[0].lt) == 5
    assert len(versions(cl.kvs[0], 7)) == 1


def test_stale_ohs_fails_with_history_and_optimistic_query_answer() -> None:
    cl = MemCluster()
    send(cl, PQ, Request(C0, (7,), {7: {}}, inc(1, 5)))
    stale = send(cl, PQ, Request(C1, (7,), {7: {}}, inc(1, 1)))
    assert all(r.status is ReplyStatus.FAIL for r in stale.values())
    q = send(cl, ALL, Request(C1, (7,), {7: {}}, FETCH))
    # Servers 0-4 are ahead: they answer on their latest version and say so (L2526-2536).
    assert [q[s].answer for s in PQ] == [5] * 5 and q[5].status is ReplyStatus.OK
    mohs = merge({7: {}}, (7,), q)
    out = outcome(q, View(mohs, cl.th), cl.th, True)
    assert out.answer == 5


def test_tampered_history_is_culled_and_reported() -> None:
    cl = MemCluster()
    send(cl, PQ, Request(C0, (7,), {7: {}}, inc(1, 5)))
    o = fresh_ohs(cl, 7, PQ)
    forged = OHSEntry(o[1].rh, tuple(bytes(16) for _ in range(6)))  # Byzantine client
    o[1] = forged
    reps = send(cl, PQ, Request(C0, (7,), {7: o}, inc(2, 1)))
    assert all(r.culled == ((1,),) for r in reps.values())
    # With one of five histories culled <1> has order 4 < q: nobody accepts a method.
    assert all(r.status is ReplyStatus.FAIL for r in reps.values())
    assert read_version(cl.kvs[0], 7, reps[0].hist[0].rh[0].lt) == 5


def test_illegal_method_calls_are_refused_without_state_change() -> None:
    cl = MemCluster()
    bad = Operation("counter.increment", False, -3, 1)
    reps = send(cl, PQ, Request(C0, (7,), {7: {}}, bad))
    assert {(r.status, r.why) for r in reps.values()} == {(ReplyStatus.REFUSED, "bad-amount")}
    wrong_class = Operation("counter.increment", True, 1, 0)  # an update sent as a query
    reps = send(cl, PQ, Request(C0, (7,), {7: {}}, wrong_class))
    assert {r.why for r in reps.values()} == {"wrong-class"}
    unknown = Operation("counter.explode", False, None, 1)
    assert {r.why for r in send(cl, [0], Request(C0, (7,), {7: {}}, unknown)).values()} == {
        "no-such-method"
    }
    assert versions(cl.kvs[0], 7) == []


def test_timestamp_in_another_clients_name_needs_evidence() -> None:
    cl = MemCluster()
    req = Request(C0, (7,), {7: {}}, inc(1, 5))
    send(cl, [0, 1, 2], req)
    stolen = send(cl, [5], req, sender=C1)
    assert stolen[5].status is ReplyStatus.REFUSED
    ev = {7: fresh_ohs(cl, 7, [0, 1])}  # b+1 = 2 servers vouch for the candidate
    lt = cl.ohs_entry(0, 7).rh[0].lt
    repaired = send(cl, [5], Request(C0, (7,), req.mohs, req.op, ev), sender=C1)
    assert repaired[5].status is ReplyStatus.OK and repaired[5].lt == lt


def test_object_sync_fetches_b_plus_1_matching_versions() -> None:
    cl = MemCluster()
    send(cl, PQ, Request(C0, (7,), {7: {}}, inc(1, 5)))
    o = fresh_ohs(cl, 7, PQ)
    reps = send(cl, [1, 2, 3, 4, 5], Request(C0, (7,), {7: o}, inc(2, 2)))
    assert all(r.status is ReplyStatus.OK for r in reps.values()) and cl.syncs == 1
    assert read_version(cl.kvs[5], 7, reps[5].lt) == 7
    synced = [v for v in versions(cl.kvs[5], 7) if v.kind == schema.SYNCED]
    assert len(synced) == 1 and not synced[0].accepted


def test_wrong_object_sync_state_from_one_host_is_outvoted() -> None:
    from bftfs.testing.byzantine.qu import wrong_sync

    cl = MemCluster()
    cl.byzantine[0] = wrong_sync
    send(cl, PQ, Request(C0, (7,), {7: {}}, inc(1, 5)))
    o = fresh_ohs(cl, 7, PQ)
    reps = send(cl, [5], Request(C0, (7,), {7: o}, inc(2, 2)))
    assert reps[5].answer == 7


def test_method_prunes_history_barrier_and_copy_do_not() -> None:
    cl = MemCluster()
    send(cl, PQ, Request(C0, (7,), {7: {}}, inc(1)))
    send(cl, PQ, Request(C0, (7,), {7: fresh_ohs(cl, 7, PQ)}, inc(2)))
    rh = cl.ohs_entry(0, 7).rh
    assert len(rh) == 2 and INITIAL not in rh  # pruned below the conditioned-on <1>
    # A barrier (repair request on a repairable OHS) keeps everything.
    o = fresh_ohs(cl, 7, PQ)
    send(cl, [0, 1, 2], Request(C0, (7,), {7: o}, inc(3)))
    o = fresh_ohs(cl, 7, PQ)
    bar = send(cl, PQ, Request(C1, (7,), {7: o}, None))
    assert {r.type for r in bar.values()} == {"barrier"}
    rh = cl.ohs_entry(0, 7).rh
    assert len(rh) == 3 and rh[0].lt.barrier  # {barrier, <3>, <2>}: nothing pruned


def test_versions_are_kept_unless_retention_allows_deleting() -> None:
    # keep 2: versions 5 and 6, and 4, which the history's oldest candidate is conditioned on.
    for keep, expect in ((None, 6), (2, 3)):
        cl = MemCluster(retention=Retention(keep_last=keep))
        for seq in range(1, 7):
            send(cl, PQ, Request(C0, (7,), {7: fresh_ohs(cl, 7, PQ)}, inc(seq)))
        vs = versions(cl.kvs[0], 7)
        assert len(vs) == expect
        assert read_version(cl.kvs[0], 7, vs[-1].lt) == 6


def test_retention_keeps_young_versions_and_what_the_history_still_names() -> None:
    sec = 10**9
    cl = MemCluster(retention=Retention(keep_last=1, keep_seconds=60.0))
    for seq in range(1, 5):
        cl.now_ns = seq * sec
        send(cl, PQ, Request(C0, (7,), {7: fresh_ohs(cl, 7, PQ)}, inc(seq)))
    assert len(versions(cl.kvs[0], 7)) == 4  # all younger than a minute
    cl.now_ns = 63 * sec  # versions stored at 1 s and 2 s are now older than a minute
    send(cl, PQ, Request(C0, (7,), {7: fresh_ohs(cl, 7, PQ)}, inc(5)))
    vs = versions(cl.kvs[0], 7)
    assert [v.stored_ns for v in vs] == [3 * sec, 4 * sec, 63 * sec]
    assert read_version(cl.kvs[0], 7, vs[-1].lt) == 5
    # The stored requests went with their versions; the kept ones still prove links.
    assert all(load_request(cl.kvs[0], v.lt) is not None for v in vs)


def test_a_snapshot_pins_the_version_current_at_its_moment() -> None:
    """A pinned moment (snapshot) keeps the version that was current then, and with it the
    newer ones; versions before it still go (issue 17)."""
    sec = 10**9
    pins = [2 * sec + sec // 2]  # between the versions stored at 2 s and 3 s
    cl = MemCluster(retention=Retention(keep_last=1, keep_seconds=0.0, pins=lambda kv: pins))
    for seq in range(1, 6):
        cl.now_ns = seq * sec
        send(cl, PQ, Request(C0, (7,), {7: fresh_ohs(cl, 7, PQ)}, inc(seq)))
    assert [v.stored_ns for v in versions(cl.kvs[0], 7)][0] == 2 * sec
    pins.clear()  # the snapshot deleted: the next update lets the old ones go
    cl.now_ns = 6 * sec
    send(cl, PQ, Request(C0, (7,), {7: fresh_ohs(cl, 7, PQ)}, inc(6)))
    assert [v.stored_ns for v in versions(cl.kvs[0], 7)][0] > 2 * sec


def test_multi_object_update_is_all_or_nothing() -> None:
    cl = MemCluster()
    send(cl, PQ, Request(C0, (1,), {1: {}}, inc(1, 10)))
    m = {1: fresh_ohs(cl, 1, PQ), 2: {}}
    over = Operation("counter.transfer", False, [1, 2, 11], 2)
    reps = send(cl, PQ, Request(C0, (1, 2), m, over))
    assert {r.why for r in reps.values()} == {"insufficient"}
    assert versions(cl.kvs[0], 2) == [] and len(versions(cl.kvs[0], 1)) == 1
    ok = Operation("counter.transfer", False, [1, 2, 4], 3)
    reps = send(cl, PQ, Request(C0, (1, 2), m, ok))
    lt = reps[0].lt
    assert all(r.status is ReplyStatus.OK and r.lt == lt for r in reps.values())
    assert read_version(cl.kvs[3], 1, lt) == 6 and read_version(cl.kvs[3], 2, lt) == 4
    c1, c2 = cl.ohs_entry(3, 1).rh[0], cl.ohs_entry(3, 2).rh[0]
    assert c1.lt == c2.lt == lt and c1.objects == c2.objects == (1, 2)


def test_multi_object_candidate_needs_its_other_objects_for_repair() -> None:
    cl = MemCluster()
    op = Operation("counter.add_all", False, 1, 1)
    send(cl, [0, 1, 2], Request(C0, (1, 2), {1: {}, 2: {}}, op))  # client dies mid-way
    o1 = fresh_ohs(cl, 1, PQ)
    reps = send(cl, PQ, Request(C1, (1,), {1: o1}, FETCH))
    assert {r.status for r in reps.values()} == {ReplyStatus.NEED}
    assert {r.need for r in reps.values()} == {(2,)}
    # With object 2's histories as context, the candidate is classified by deduction.
    m = {1: o1, 2: fresh_ohs(cl, 2, PQ)}
    v = View(m, cl.th)
    assert classify(v, 1).type is OpType.BARRIER
    assert inline_target(v) is not None and inline_target(v).objects == (1, 2)


def test_table_4_1_example_execution() -> None:
    """Seed Table 4.1 (L2701-2827) with b=1: X, Y and Z on servers s0..s5.

    The seed's table shows Y's contending set as <3,1>, but line 1102 gives Time 2 to any
    candidate conditioned on an OHS whose latest time is 1, as Y's is; we follow the
    pseudo-code, so from there on our times are one lower than the table's labels.  The
    classifications, who fails, and the conditioned-on chain are the table's.
    """
    cl = MemCluster()
    X, Y = C0, C1
    th = cl.th
    PX, PY = [0, 1, 2, 3, 4], [1, 2, 3, 4, 5]
    setv = lambda v, seq: Operation("kv.put", False, ["v", v], seq)  # noqa: E731
    get = Operation("kv.get", True, "v", 0)
    # X completes get(): <0,0> complete, value is the initial one (absent -> heart).
    r = send(cl, PX, Request(X, (9,), {9: {}}, get))
    assert all(x.status is ReplyStatus.OK and x.answer is None for x in r.values())
    # X completes set(club): <1,0> established at s0..s4.
    r = send(cl, PX, Request(X, (9,), {9: {}}, setv("club", 1)))
    x_ohs = merge({9: {}}, (9,), r)
    assert {x.lt.time for x in r.values()} == {1}
    # Y begins get() at s1..s5: <1,0> is repairable (order 4).
    r = send(cl, PY, Request(Y, (9,), {9: {}}, get))
    y_ohs = merge({9: {}}, (9,), r)
    v = View(y_ohs, th)
    c1 = classify(v, 9).obj
    assert c1.lt.time == 1 and v.order(9, c1) == 4 and inline_target(v) == c1
    # ... Y performs inline repair: s5 accepts <1,0> (same timestamp), now complete.
    stored = Request.from_wire(cl.handle(0, Y, "qu.fetch", {"lt": c1.lt.encode()})["r"], 6)
    ev = {9: y_ohs[9]}
    r = send(cl, [5], Request(stored.client, stored.objects, stored.mohs, stored.op, ev), Y)
    assert r[5].status is ReplyStatus.OK and r[5].lt == c1.lt
    y_ohs = merge(y_ohs, (9,), r)
    r = send(cl, PY, Request(Y, (9,), y_ohs, get))
    assert {x.answer for x in r.values()} == {"club"}
    y_ohs = merge(y_ohs, (9,), r)
    # X attempts set(diamond) while Y attempts set(heart): s4 sees Y's first.
    rx = send(cl, [0, 1, 2], Request(X, (9,), x_ohs, setv("diamond", 2)))
    ry = send(cl, [4, 5], Request(Y, (9,), y_ohs, setv("heart", 2)))
    rx.update(send(cl, [3, 4], Request(X, (9,), x_ohs, setv("diamond", 2))))
    ry.update(send(cl, [3], Request(Y, (9,), y_ohs, setv("heart", 2))))
    assert [rx[s].status for s in PX] == [ReplyStatus.OK] * 4 + [ReplyStatus.FAIL]
    assert [ry[s].status for s in (3, 4, 5)] == [ReplyStatus.FAIL, ReplyStatus.OK, ReplyStatus.OK]
    x_ohs = merge(x_ohs, (9,), rx)
    v = View(x_ohs, th)
    c2 = classify(v, 9)
    assert c2.type is OpType.BARRIER and c2.obj.lt.time == 2 and v.order(9, c2.obj) == 4
    # Y backs off; X completes a barrier, then a copy of the potential <2,1>.
    r = send(cl, PX, Request(X, (9,), x_ohs, None))
    assert {x.type for x in r.values()} == {"barrier"}
    barrier = r[0].lt
    assert barrier.barrier and barrier.time == 3  # the table's 4b
    x_ohs = merge(x_ohs, (9,), r)
    assert classify(View(x_ohs, th), 9).type is OpType.COPY
    r = send(cl, PX, Request(X, (9,), x_ohs, None))
    assert {x.type for x in r.values()} == {"copy"} and r[0].lt.time == 4  # table's <5,2>
    copy = r[0].lt
    assert {cl.ohs_entry(s, 9).rh[0].lt_co for s in PX} == {c2.obj.lt}
    x_ohs = merge(x_ohs, (9,), r)
    # X crashes in set(spade): <5,4> reaches s0..s2 only (table's <6,5>).
    r = send(cl, [0, 1, 2], Request(X, (9,), x_ohs, setv("spade", 3)))
    spade = r[0].lt
    assert cl.ohs_entry(0, 9).rh == tuple(c for c in cl.ohs_entry(0, 9).rh if c.lt >= copy)
    # Y's get at s1..s5: spade incomplete (order 2), the copy repairable (order 4);
    # Z's get at s0..s4: spade repairable (order 3), so Z may inline-repair it.
    r = send(cl, PY, Request(Y, (9,), {9: {}}, get))
    y_ohs = merge({9: {}}, (9,), r)
    vy = View(y_ohs, th)
    sp = next(c for c in vy.candidates(9) if c.lt == spade)
    assert vy.order(9, sp) == 2 and classify(vy, 9).obj.lt == copy
    assert vy.order(9, classify(vy, 9).obj) == 4 and inline_target(vy) is None
    Z = int(client_id(2))
    r = send(cl, PX, Request(Z, (9,), {9: {}}, get))
    z_ohs = merge({9: {}}, (9,), r)
    vz = View(z_ohs, th)
    assert inline_target(vz) == sp and vz.order(9, sp) == 3
    # Y barriers (the table's 7b) and copies forward the established copy (table's <8,5>).
    r = send(cl, PY, Request(Y, (9,), y_ohs, None))
    assert {x.type for x in r.values()} == {"barrier"}
    y_ohs = merge(y_ohs, (9,), r)
    # Z's inline repair arrives at s3 and s4 after Y's barrier: they refuse (Z backs off).
    stored = Request.from_wire(cl.handle(0, Z, "qu.fetch", {"lt": spade.encode()})["r"], 6)
    ev = {9: z_ohs[9]}
    r = send(cl, [3, 4], Request(stored.client, stored.objects, stored.mohs, stored.op, ev), Z)
    assert {x.status for x in r.values()} == {ReplyStatus.FAIL}
    r = send(cl, PY, Request(Y, (9,), y_ohs, None))
    assert {x.type for x in r.values()} == {"copy"}
    final = r[1].lt
    assert {
        x.answer for x in send(cl, PY, Request(Y, (9,), merge(y_ohs, (9,), r), get)).values()
    } == {"diamond"}
    # The conditioned-on chain: final copy -> copy of <2,1> -> <2,1> -> <1,0> -> <0,0>.
    chain, lt = [], final
    while lt != ZERO:
        ver = schema.load_version(cl.kvs[1], 9, lt)
        chain.append(lt)
        lt = ver.lt_co
    assert chain[1:] == [copy, c2.obj.lt, c1.lt] and spade not in chain


@settings(max_examples=25)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([C0, C1]),
            st.lists(st.integers(0, 5), min_size=1, max_size=6, unique=True),
            st.integers(1, 3),
            st.booleans(),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_any_delivery_pattern_gives_identical_versions_per_timestamp(steps: list) -> None:
    """Whatever subsets requests reach, two servers never hold different versions (or
    different candidates) under one timestamp (L2189-2192, L2201-2205)."""
    cl = MemCluster()
    cache = {C0: {}, C1: {}}
    seqs = {C0: 0, C1: 0}
    for client, servers, amount, repair in steps:
        seqs[client] += 1
        op = None if repair else inc(seqs[client], amount)
        reps = send(cl, servers, Request(client, (7,), {7: cache[client]}, op))
        cache[client] = merge({7: cache[client]}, (7,), reps)[7]
    data: dict = {}
    meta: dict = {}
    for s in ALL:
        for v in versions(cl.kvs[s], 7):
            assert data.setdefault(v.lt, (v.state, v.applied)) == (v.state, v.applied)
            if v.accepted:  # synced copies know only the data
                m = (v.kind, v.lt_co, v.objects, v.answer)
                assert meta.setdefault(v.lt, m) == m


def test_object_sync_asks_the_named_hosts_first_and_never_itself() -> None:
    from bftfs.qu.objsync import sync_order

    assert sync_order(2, [4, 2, 0], 6) == [4, 0, 1, 3, 5]
    assert sync_order(0, [], 4) == [1, 2, 3]


def test_object_sync_needs_b_plus_1_identical_answers() -> None:
    from bftfs.qu.objsync import SyncVotes

    votes = SyncVotes(b=2)
    good, bad = {"s": b"state", "ap": b"ap"}, {"s": b"forged", "ap": b"ap"}
    assert not votes.add(good) and not votes.add(bad) and not votes.add(None)
    assert not votes.add({"s": 7, "ap": b"x"})  # malformed: counts for nothing
    assert not votes.add(bad) and not votes.add(good)
    assert not votes.decided() and votes.result() is None
    assert votes.add(good) and votes.decided()
    assert votes.result() == (b"state", b"ap")


def test_object_sync_asks_one_more_host_only_for_a_disagreeing_or_bad_answer() -> None:
    """``SyncVotes.promising``: an answer that agrees with all before it waits for the
    other hosts asked (``b + 1`` hosts suffice when they agree); a malformed or
    disagreeing one has the transport probe another at once."""
    from bftfs.qu.objsync import SyncVotes

    good, bad = {"s": b"state", "ap": b"ap"}, {"s": b"forged", "ap": b"ap"}
    votes = SyncVotes(b=1)
    assert votes.promising(good) and votes.promising(good) and votes.decided()
    votes = SyncVotes(b=1)
    assert not votes.promising({"s": 7, "ap": b"x"})  # malformed
    assert votes.promising(good)
    assert not votes.promising(bad)  # disagrees: probe at once
    assert votes.promising(good) and votes.result() == (b"state", b"ap")
    votes = SyncVotes(b=2)
    assert votes.promising(bad) and not votes.promising(good) and not votes.promising(None)
