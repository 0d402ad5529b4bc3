"""Tier 1: the pure decisions of a restarted server's catch-up (``bftfs/node/qu_catchup.py``)."""

from __future__ import annotations

from typing import Any

import pytest
from qu_helpers import MemCluster, send, wire
from t1_qu_classify import TH, A, B, cand, ohs, ts, view
from t1_qu_replica import C0, inc

from bftfs.ids import client_id as cid
from bftfs.node.qu_catchup import behind, target
from bftfs.qu import schema
from bftfs.qu.adoption import Current, adopt_step
from bftfs.qu.history import OHSEntry
from bftfs.qu.messages import MessageError, ReplyStatus, parse_latest_reply
from bftfs.qu.objsync import parse_current_reply
from bftfs.qu.reads import handle_fetch, handle_sync, read_version
from bftfs.qu.request import Operation, Request
from bftfs.qu.timestamp import INITIAL, ZERO, Candidate, Timestamp


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


# Catch-up from the current state (issue 31 item 12) -------------------------------------

OTHERS = [0, 1, 2, 3, 4]  # server 5 was away


def _away_cluster() -> tuple[MemCluster, Candidate, dict[int, dict[int, OHSEntry]]]:
    """Object 7 updated three times while server 5 was down; its latest candidate and the
    others' histories (the evidence)."""
    cl = MemCluster()
    cl.down = {5}
    send(cl, OTHERS, Request(C0, (7,), {7: {}}, inc(1, 5)))
    for seq in (2, 3):
        o = {s: cl.ohs_entry(s, 7) for s in OTHERS}
        send(cl, OTHERS, Request(C0, (7,), {7: o}, inc(seq, 2)))
    cl.down = set()
    evidence = {7: {s: cl.ohs_entry(s, 7) for s in OTHERS}}
    latest = max(cl.ohs_entry(0, 7).rh, key=lambda c: c.lt)
    return cl, latest, evidence


def _current(cl: MemCluster, host: int, lt: Timestamp, oid: int = 7) -> Current:
    got = parse_current_reply(wire(handle_sync(cl.kvs[host], oid, lt)))
    assert got is not None
    return Current(*got)


def test_a_server_takes_the_current_version_when_the_history_to_replay_is_gone() -> None:
    cl, latest, evidence = _away_cluster()
    assert adopt_step(
        cl.kvs[5], cl.cfgs[5], {7: latest}, evidence, {7: _current(cl, 0, latest.lt)}, 0
    )
    assert read_version(cl.kvs[5], 7, latest.lt) == 9  # 5 + 2 + 2
    assert latest in cl.ohs_entry(5, 7).rh
    # What a server that accepted it holds: the same kind and stored answer (a retried
    # request is answered alike), and the next update needs no object sync there.
    assert schema.version_accepted(cl.kvs[5], 7, latest.lt) == schema.version_accepted(
        cl.kvs[0], 7, latest.lt
    )
    synced = cl.syncs
    o = {s: cl.ohs_entry(s, 7) for s in range(6)}
    rep = send(cl, [5], Request(C0, (7,), {7: o}, inc(4, 1)))[5]
    assert rep.status is ReplyStatus.OK and rep.answer == 10 and cl.syncs == synced


def test_taking_the_current_version_needs_b_plus_1_servers_listing_exactly_it() -> None:
    cl, latest, evidence = _away_cluster()
    current = {7: _current(cl, 0, latest.lt)}
    few = {7: {s: e for s, e in evidence[7].items() if s == 0}}  # b listings: one could lie
    assert adopt_step(cl.kvs[5], cl.cfgs[5], {7: latest}, few, current, 0) == ()
    forged = Candidate(latest.lt, ZERO, latest.objects)  # its conditioned-on time forged
    assert adopt_step(cl.kvs[5], cl.cfgs[5], {7: forged}, evidence, current, 0) == ()
    synced = {7: Current(current[7].state, current[7].applied, schema.SYNCED, None)}
    assert adopt_step(cl.kvs[5], cl.cfgs[5], {7: latest}, evidence, synced, 0) == ()
    assert cl.ohs_entry(5, 7).rh == (INITIAL,)  # nothing was taken


def test_a_host_reply_without_its_kind_is_not_taken_over() -> None:
    assert parse_current_reply({"s": b"x", "ap": b"y"}) is None  # an older node
    assert parse_current_reply({"s": b"x", "ap": b"y", "k": "synced"}) is None
    assert parse_current_reply({"s": b"x", "ap": b"y", "k": "copy", "a": None}) == (
        b"x",
        b"y",
        "copy",
        None,
    )


def test_status_says_what_a_catch_up_left_behind() -> None:
    from bftfs.cli.status import catch_up_summary

    left = {"state": "incomplete", "behind": 197, "done": 8, "failed": 189, "skipped": 0}
    assert catch_up_summary({"qu.catchup": left}) == "qu incomplete 8/197 (189 failed)"
    assert (
        catch_up_summary({"qu.catchup": {"state": "done", "behind": 3, "done": 3}}) == "qu done 3/3"
    )


def test_a_lying_host_cannot_choose_the_current_version_taken() -> None:
    from bftfs.qu.objsync import SyncVotes
    from bftfs.testing.byzantine.qu import wrong_sync

    votes = SyncVotes(TH.b, full=True)
    good = {"s": b"state", "ap": b"ap", "k": "method", "a": 3}
    lie = wrong_sync(0, 1, "qu.sync", {}, lambda: good)
    assert not votes.add(lie) and not votes.add(good) and votes.result() is None
    assert votes.add(dict(good)) and votes.result() == (b"state", b"ap", "method", 3)


def test_a_multi_object_candidate_is_taken_at_all_its_objects_at_once() -> None:
    """Objects 7 and 8 created, then updated together (one LT, a conditioned-on time of
    its own at each object) while server 5 was away: it takes the candidate at both."""
    cl = MemCluster()
    cl.down = {5}
    send(cl, OTHERS, Request(C0, (7,), {7: {}}, inc(1, 5)))
    send(cl, OTHERS, Request(C0, (8,), {8: {}}, inc(2, 1)))
    both = {o: {s: cl.ohs_entry(s, o) for s in OTHERS} for o in (7, 8)}
    add = Operation("counter.add_all", False, 3, 3)
    assert send(cl, OTHERS, Request(C0, (7, 8), both, add))[0].status is ReplyStatus.OK
    cl.down = set()
    evidence = {o: {s: cl.ohs_entry(s, o) for s in OTHERS} for o in (7, 8)}
    cands = {o: max(cl.ohs_entry(0, o).rh, key=lambda c: c.lt) for o in (7, 8)}
    assert cands[7].lt == cands[8].lt and cands[7].lt_co != cands[8].lt_co
    current = {o: _current(cl, 0, cands[o].lt, o) for o in (7, 8)}
    assert adopt_step(cl.kvs[5], cl.cfgs[5], cands, evidence, current, 0) == (7, 8)
    assert [read_version(cl.kvs[5], o, cands[o].lt) for o in (7, 8)] == [8, 4]
    assert all(cands[o] in cl.ohs_entry(5, o).rh for o in (7, 8))


def _stray_at_the_newcomer() -> tuple[MemCluster, Candidate, Request]:
    """Object 7 at every server; then an update of another client reaches server 5 alone
    (it lost to the others' updates: a stray there, newer than the conditioned-on time of
    the latest candidate), while two updates complete at servers 0-4.  The latest
    candidate and the stored request that made it."""
    cl = MemCluster()
    send(cl, list(range(6)), Request(C0, (7,), {7: {}}, inc(1, 5)))
    first = {s: cl.ohs_entry(s, 7) for s in range(6)}
    c1 = int(cid(1))
    stray = send(cl, [5], Request(c1, (7,), {7: first}, inc(1, 1)))[5]
    assert stray.status is ReplyStatus.OK
    for seq in (2, 3):
        o = {s: cl.ohs_entry(s, 7) for s in OTHERS}
        send(cl, OTHERS, Request(C0, (7,), {7: o}, inc(seq, 2)))
    latest = max(cl.ohs_entry(0, 7).rh, key=lambda c: c.lt)
    assert max(c.lt for c in cl.ohs_entry(5, 7).rh) > latest.lt_co  # the stray is newer
    raw = handle_fetch(cl.kvs[0], latest.lt)
    assert raw is not None
    return cl, latest, Request.from_wire(raw, cl.th.n)


def test_a_newcomer_holding_a_stray_candidate_takes_the_agreed_current_version() -> None:
    """Issue 60 item 15: a replaced node's catch-up failed one object on every pass for
    minutes, ``fail not current``: it held a candidate newer than the latest candidate's
    conditioned-on time (an update that lost to the others' reached it alone), so the
    replay's currency check refused, and taking the current version refused alike.  The
    others agree on the latest candidate (b + 1 byte-identical versions): the newcomer
    takes it; its stray stays below it in its history, as at any server that held one."""
    cl, latest, original = _stray_at_the_newcomer()
    evidence = {7: {s: cl.ohs_entry(s, 7) for s in OTHERS}}
    replay = Request(original.client, original.objects, original.mohs, original.op, evidence)
    rep = send(cl, [5], replay)[5]
    assert rep.status is ReplyStatus.FAIL and "not current" in (rep.why or "")
    current = {7: _current(cl, 0, latest.lt)}
    assert adopt_step(cl.kvs[5], cl.cfgs[5], {7: latest}, evidence, current, 0) == (7,)
    assert read_version(cl.kvs[5], 7, latest.lt) == 9
    assert max(cl.ohs_entry(5, 7).rh, key=lambda c: c.lt) == latest
    # Never behind what it takes: a candidate older than its own newest is not taken.
    older = {7: _current(cl, 0, latest.lt_co)}
    at_co = next(c for c in cl.ohs_entry(0, 7).rh if c.lt == latest.lt_co)
    assert adopt_step(cl.kvs[5], cl.cfgs[5], {7: at_co}, evidence, older, 0) == ()


def test_a_latest_barrier_is_taken_without_a_version_to_fetch() -> None:
    """A repairing client that stopped between its barrier and its copy leaves a barrier
    as an object's latest candidate; a newcomer whose replay of it cannot apply takes it as
    accepted: a barrier's version holds no state, the same at every server."""
    cl, _, _ = _stray_at_the_newcomer()
    o = {s: cl.ohs_entry(s, 7) for s in OTHERS}
    send(cl, [0, 1], Request(C0, (7,), {7: o}, inc(4, 1)))  # it stops there
    o = {s: cl.ohs_entry(s, 7) for s in OTHERS}
    bar = send(cl, OTHERS, Request(int(cid(2)), (7,), {7: o}, None))
    assert {r.type for r in bar.values()} == {"barrier"}
    latest = max(cl.ohs_entry(0, 7).rh, key=lambda c: c.lt)
    assert latest.lt.barrier
    evidence = {7: {s: cl.ohs_entry(s, 7) for s in OTHERS}}
    current = {7: Current(None, schema.EMPTY_APPLIED, schema.BARRIER, None)}
    assert adopt_step(cl.kvs[5], cl.cfgs[5], {7: latest}, evidence, current, 0) == (7,)
    assert max(cl.ohs_entry(5, 7).rh, key=lambda c: c.lt) == latest


def test_a_node_left_behind_by_its_catch_up_makes_the_cluster_degraded() -> None:
    from types import SimpleNamespace

    from bftfs.cli.status import STATUS_DEGRADED, STATUS_HEALTHY, cluster_health
    from bftfs.local import NodeStatus

    def node(i: int, qu: dict, rw: dict) -> NodeStatus:
        stats = {"progress": {"qu.catchup": qu, "rw.catchup": rw}}
        return NodeStatus(i, f"127.0.0.1:{1000 + i}", 1, True, stats, None)

    done = {"state": "done", "behind": 3, "done": 3, "failed": 0}
    running = {"state": "running", "behind": 9, "done": 1, "failed": 2}
    left = {"state": "incomplete", "behind": 197, "done": 8, "failed": 189}
    cfg: Any = SimpleNamespace(t=1)
    code, _, problems, _ = cluster_health(cfg, [node(0, done, done), node(1, running, done)], [])
    assert (code, problems) == (STATUS_HEALTHY, [])
    code, _, problems, _ = cluster_health(cfg, [node(0, done, done), node(1, left, done)], [])
    assert code == STATUS_DEGRADED
    assert problems == ["node 1 has not caught up (left behind: qu 189)"]
