"""Tier 1: history that lasts (issue 36), on one node's store steps with time injected.

The steps a node runs - Q/U pruning and tombstones (``qu.retention``, ``qu.tombstones``)
under the retention a node builds from ``[retention]`` (``node.qu_server.replica_retention``),
PASIS verification's collection (``rw.collect.verified_step``) and READ_PREV
(``rw.replica.read_step``) - over versions dated days ago, the node's "now" passed in:
a file removed three days ago is still there under the default policy, a thinned moment
reads as reclaimed rather than as an older version, and a snapshot keeps its own moment
only.
"""

from __future__ import annotations

from typing import Any

from qu_helpers import MemCluster, send
from rw_helpers import ts

from bftfs import erasure
from bftfs.ids import client_id
from bftfs.kv import MemoryKV
from bftfs.node.qu_server import replica_retention
from bftfs.policy import RetentionPolicy, VerificationPolicy
from bftfs.qu.messages import ReplyStatus
from bftfs.qu.objects import Class, Method, MethodRefused, ObjectType, Registry
from bftfs.qu.reads import versions
from bftfs.qu.request import Operation, Request
from bftfs.qu.retention import drop_requests, prune_step
from bftfs.qu.schema import load_request, load_rh
from bftfs.qu.tombstones import tombstone_target
from bftfs.rw import collect, replica
from bftfs.rw.gcplan import gc_plan
from bftfs.rw.lazy import squeezed
from bftfs.rw.messages import BlockId, ReadRequest, WriteRequest
from bftfs.rw.timestamp import MAX_WRITER, Timestamp
from bftfs.thinning import DAY_NS, HOUR_NS

SEC = 10**9
C0 = int(client_id(0))
OID = 7
#: Day 0 of the tests, 00:00 UTC (2026-11-23).
DAY0 = 1_763_856_000 * SEC


def _put(states: dict[int, Any], arg: Any) -> tuple[dict[int, Any], Any]:
    ((oid, state),) = states.items()
    if state == "gone":
        raise MethodRefused("gone")
    return {oid: arg}, state


FILE = ObjectType(
    "file", (Method("file.put", Class.UPDATE, _put),), finished=lambda state: state == "gone"
)


def _qu_put(cl: MemCluster, seq: int, value: Any, at_ns: int) -> None:
    ohs = {s: cl.ohs_entry(s, OID) for s in range(cl.th.n)}
    req = Request(C0, (OID,), {OID: ohs}, Operation("file.put", False, value, seq))
    cl.now_ns = at_ns
    replies = send(cl, range(cl.th.n), req)
    assert all(r.status is ReplyStatus.OK for r in replies.values())


def _store_block(kv: MemoryKV, block: int, stamp: Timestamp, data: bytes) -> None:
    frags = erasure.encode(data, 2, 4)
    replica.store_write(
        kv, WriteRequest(BlockId(block), stamp, frags.cross_checksum, frags.fragments[0])
    )


def _as_of(kv: MemoryKV, block: int, time_ns: int) -> tuple[tuple[Timestamp, ...], Timestamp]:
    """READ_PREV at or below a moment, as ``RWClient.read_as_of`` asks: (history, floor)."""
    cap = Timestamp(time_ns, MAX_WRITER, b"\xff" * 32)
    reply = replica.read_step(kv, ReadRequest(BlockId(block), True, below=cap, inclusive=True))
    return reply.history, reply.floor


def test_a_file_removed_three_days_ago_is_still_there_under_the_default_policy() -> None:
    policy = RetentionPolicy()  # the defaults a new cluster.toml gets
    # Its attributes (Q/U): written at 09:00 and 10:00 on day 0, removed at 12:00.
    cl = MemCluster(reg=Registry([FILE]), retention=replica_retention(policy))
    _qu_put(cl, 1, "first", DAY0 + 9 * HOUR_NS)
    _qu_put(cl, 2, "second", DAY0 + 10 * HOUR_NS)
    _qu_put(cl, 3, "gone", DAY0 + 12 * HOUR_NS)
    # Its one block (PASIS): the same two contents, then given back (an empty version).
    kv = MemoryKV()
    first, second, given_back = (ts(DAY0 + h * HOUR_NS) for h in (9, 10, 12))
    _store_block(kv, 1, first, b"first")
    _store_block(kv, 1, second, b"second")
    _store_block(kv, 1, given_back, b"")

    three_days = DAY0 + 3 * DAY_NS + 12 * HOUR_NS
    for s in range(cl.th.n):
        assert prune_step(cl.kvs[s], cl.cfgs[s], OID, three_days) == 0
        assert tombstone_target(cl.kvs[s], cl.cfgs[s], OID, three_days) is None
        assert [v.state is not None for v in versions(cl.kvs[s], OID)] == [True] * 3
    collect.verified_step(
        kv, 1, mark=given_back, flag=given_back, poisonous=(), now_ns=three_days, retention=policy
    )
    # The day's last contents stay (the removal does not stand for the day); the earlier
    # contents of that day are thinned, and a read at their moment is told so.
    assert collect.hosted_step(kv, 1) == [given_back, second]
    history, floor = _as_of(kv, 1, DAY0 + 11 * HOUR_NS)  # before the removal
    assert history[0] == second and floor <= second
    _history, floor = _as_of(kv, 1, DAY0 + 9 * HOUR_NS + 30 * 60 * SEC)
    assert floor.time > DAY0 + 9 * HOUR_NS + 30 * 60 * SEC  # reclaimed, not "empty"

    # Past the week's horizon, the history goes and the tombstone may shrink.
    eight_days = DAY0 + 8 * DAY_NS
    assert tombstone_target(cl.kvs[0], cl.cfgs[0], OID, eight_days) is not None
    collect.verified_step(
        kv, 1, mark=given_back, flag=None, poisonous=(), now_ns=eight_days, retention=policy
    )
    assert collect.hosted_step(kv, 1) == [given_back]


def test_with_the_schedule_off_the_same_removal_is_gone_after_keep_seconds() -> None:
    """The control: the old policy (only keep_seconds) loses it, so the test above is not
    passing for some other reason."""
    policy = RetentionPolicy(keep_hourly=0, keep_daily=0)
    kv = MemoryKV()
    stamps = [ts(DAY0 + h * HOUR_NS) for h in (9, 10, 12)]
    for stamp, data in zip(stamps, (b"first", b"second", b""), strict=True):
        _store_block(kv, 1, stamp, data)
    collect.verified_step(
        kv, 1, mark=stamps[2], flag=None, poisonous=(), now_ns=DAY0 + DAY_NS, retention=policy
    )
    assert collect.hosted_step(kv, 1) == [stamps[2]]


def test_stored_requests_go_after_keep_seconds_while_their_versions_stay() -> None:
    """History keeps Q/U versions to its horizon; the request each one stored (what
    inline repair and link proofs fetch) goes after ``keep_seconds``, but for those of the
    replica history's candidates and the versions they were conditioned on."""
    policy = RetentionPolicy()
    cl = MemCluster(reg=Registry([FILE]), retention=replica_retention(policy))
    hours = (9, 10, 11, 12, 13)
    for seq, hour in enumerate(hours, start=1):
        _qu_put(cl, seq, f"v{seq}", DAY0 + hour * HOUR_NS)
    soon = DAY0 + 9 * HOUR_NS + 10 * 60 * SEC  # the first is 10 minutes old: nothing goes
    assert drop_requests(cl.kvs[0], cl.cfgs[0], OID, soon) == 0
    later = DAY0 + 13 * HOUR_NS + 16 * 60 * SEC
    for s in range(cl.th.n):
        kv = cl.kvs[s]
        lts = [v.lt for v in versions(kv, OID)]
        assert all(load_request(kv, lt) is not None for lt in lts)
        rh, _ = load_rh(kv, OID)
        floor = min(min(c.lt, c.lt_co) if c.lt_co is not None else c.lt for c in rh)
        below = [lt < floor for lt in lts]
        assert any(below) and not all(below)
        assert drop_requests(kv, cl.cfgs[s], OID, later) == sum(below)
        assert drop_requests(kv, cl.cfgs[s], OID, later) == 0  # gone already
        assert [load_request(kv, lt) is None for lt in lts] == below
        assert len(versions(kv, OID)) == len(hours)  # the versions stay
    # The old rule (no request_seconds): a request lives as long as its version.
    keep_all = MemCluster(reg=Registry([FILE]), retention=replica_retention(policy))
    object.__setattr__(keep_all.cfgs[0].retention, "request_seconds", None)
    for seq, hour in enumerate(hours, start=1):
        _qu_put(keep_all, seq, f"v{seq}", DAY0 + hour * HOUR_NS)
    assert drop_requests(keep_all.kvs[0], keep_all.cfgs[0], OID, DAY0 + DAY_NS) == 0


def test_a_snapshot_keeps_its_moment_and_not_everything_after_it() -> None:
    """Versions at 50, 60, 75, 90, 100 s; a snapshot at 80 s; nothing else old kept.  The
    snapshot keeps 75 s (current at its moment), not 90 s; a read at 95 s is told the
    version it needs is gone, a read at 80 s gets 75 s."""
    policy = RetentionPolicy(keep_seconds=0.0, keep_versions=1, keep_hourly=0, keep_daily=0)
    kv = MemoryKV()
    stamps = [ts(t * SEC) for t in (50, 60, 75, 90, 100)]
    for stamp in stamps:
        _store_block(kv, 1, stamp, b"x")
    res = collect.verified_step(
        kv,
        1,
        mark=stamps[-1],
        flag=None,
        poisonous=(),
        now_ns=200 * SEC,
        retention=policy,
        pins=[80 * SEC],
    )
    assert collect.hosted_step(kv, 1) == [stamps[4], stamps[2]]
    assert res.collected == 3 and res.revisit_ns == 0
    history, floor = _as_of(kv, 1, 95 * SEC)
    assert history == () and floor > Timestamp(95 * SEC, MAX_WRITER, b"\xff" * 32)
    history, floor = _as_of(kv, 1, 80 * SEC)
    assert history == (stamps[2],) and floor <= stamps[2]
    # A live read is untouched: the newest version is there with everything it needs.
    live = replica.read_step(kv, ReadRequest(BlockId(1), True))
    assert live.history[0] == stamps[4]
    # Deleting the snapshot lets 75 s go at the next collection, and its hole record with
    # it once the floor passes.
    collect.verified_step(
        kv, 1, mark=stamps[-1], flag=None, poisonous=(), now_ns=200 * SEC, retention=policy
    )
    assert collect.hosted_step(kv, 1) == [stamps[4]]
    assert list(kv.scan("rw.thinned", b"", b"\xff" * 80)) == []


def test_a_version_kept_by_the_schedule_is_looked_at_again_when_its_period_ends() -> None:
    policy = RetentionPolicy(keep_seconds=0.0, keep_versions=1, keep_hourly=2, keep_daily=0)
    kv = MemoryKV()
    stamps = [ts(DAY0 + m * 60 * SEC) for m in (10, 50, 70)]  # 00:10, 00:50, 01:10
    for stamp in stamps:
        _store_block(kv, 1, stamp, b"x")
    res = collect.verified_step(
        kv,
        1,
        mark=stamps[2],
        flag=None,
        poisonous=(),
        now_ns=DAY0 + 90 * 60 * SEC,
        retention=policy,
    )
    assert collect.hosted_step(kv, 1) == [stamps[2], stamps[1]]  # 00:10 thinned
    assert res.revisit_ns == stamps[1].time + 2 * HOUR_NS
    page = collect.unverified_step(kv, None, 10, retention=policy)
    assert page.revisits == ((BlockId(1), stamps[1].time + 2 * HOUR_NS),)


def test_a_node_short_of_space_thins_the_oldest_history_first() -> None:
    """Between pool_fraction and data_fraction of the map in use, every tier of the
    schedule shortens in proportion: versions from 6 and 3 days ago go before yesterday's;
    at data_fraction only the newest stays.  The newest is never at stake."""
    policy, v, size = RetentionPolicy(), VerificationPolicy(), 1000
    now = DAY0 + 10 * DAY_NS + 12 * HOUR_NS  # noon: each older version is its day's last
    hosted = [ts(now - age) for age in (0, HOUR_NS, DAY_NS, 3 * DAY_NS, 6 * DAY_NS)]

    def kept_at(used: int) -> list[Timestamp]:
        plan = gc_plan(hosted[0], hosted, now, squeezed(policy, used, size, v))
        return [t for t in hosted if t >= plan.floor and t not in plan.thinned]

    assert squeezed(policy, 700, size, v) is policy  # below pool_fraction (0.75)
    assert kept_at(700) == hosted
    assert kept_at(800) == hosted[:4]  # a third of the way: 6 days ago goes first
    assert kept_at(850) == hosted[:3]  # two thirds: 3 days ago too
    assert kept_at(900) == hosted[:2]  # at data_fraction: keep_versions (2) only
    assert kept_at(10**6) == hosted[:2]
