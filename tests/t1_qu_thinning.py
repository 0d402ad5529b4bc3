"""Tier 1: Q/U versions thinned by history's schedule (issue 36), on the nodes' store steps
and a history walk over them, time injected.

``qu.retention.thin_step`` must keep exactly what ``bftfs/thinning.py`` keeps of a chain
(plus the candidates, the newest ``keep_versions``, the young and each snapshot's moment),
leave a record of every version it thins, and a history read (``qu.pastread``) must step
over those records to older kept versions while reporting each thinned one as such, so
that a read of its moment is told "reclaimed" and never given an older state.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import trio
from qu_helpers import MemCluster, MemEndpoint
from t1_retention_days import DAY0, FILE, OID, SEC, _qu_put

from bftfs.ids import client_id
from bftfs.node.qu_server import replica_retention
from bftfs.policy import RetentionPolicy
from bftfs.qu import schema
from bftfs.qu.objects import Registry
from bftfs.qu.past import THINNED, current_at, versions_step
from bftfs.qu.pastread import End, PastReader
from bftfs.qu.retention import thin_step
from bftfs.qu.schema import load_rh
from bftfs.qu.timestamp import Timestamp
from bftfs.thinning import DAY_NS, HOUR_NS, kept

MIN_NS = 60 * SEC


def _week(seed: int, count: int) -> list[int]:
    """``count`` update moments over four days, seeded: bursts a few minutes apart."""
    rng = random.Random(seed)
    out: list[int] = []
    t = DAY0 + 8 * HOUR_NS
    while len(out) < count:
        t += rng.choice([rng.randrange(1, 20) * MIN_NS, rng.randrange(1, 12) * HOUR_NS])
        out.append(t)
    return out


def _cluster(policy: RetentionPolicy, pins: tuple[int, ...] = ()) -> MemCluster:
    retention = dataclasses.replace(replica_retention(policy), pins=lambda _kv: pins)
    return MemCluster(reg=Registry([FILE]), retention=retention)


def _expected(
    cl: MemCluster,
    lts: list[Timestamp],
    moments: list[int],
    now: int,
    policy: RetentionPolicy,
    pins: tuple[int, ...],
) -> set[int]:
    """Indices of the versions (``lts``, stored at ``moments``) a node must still hold:
    the schedule's, the replica history's candidates and what they condition on, the
    newest keep_versions, and the version current at each pin."""
    rh, _ = load_rh(cl.kvs[0], OID)
    floor = min(min(c.lt, c.lt_co) if c.lt_co is not None else c.lt for c in rh)
    out = set(kept(moments, now, policy.schedule()))
    out |= {i for i, lt in enumerate(lts) if lt >= floor}
    out |= set(range(len(moments) - policy.keep_versions, len(moments)))
    for p in pins:
        before = [i for i, t in enumerate(moments) if t <= p]
        out |= {before[-1]} if before else set()
    return out


@pytest.mark.parametrize("seed", range(6))
def test_thinning_keeps_exactly_what_the_schedule_says_and_records_the_rest(seed: int) -> None:
    policy = RetentionPolicy()  # 15 minutes, 48 hours, 7 days
    moments = _week(seed, 40)
    pins = (moments[5] + MIN_NS // 2,)  # a snapshot between two versions
    cl = _cluster(policy, pins)
    for seq, t in enumerate(moments, start=1):
        _qu_put(cl, seq, f"v{seq}", t)
    lts = [v.lt for v in schema.iter_versions(cl.kvs[0], OID)]
    assert len(lts) == len(moments)
    now = moments[-1] + 2 * DAY_NS + 3 * HOUR_NS
    want = _expected(cl, lts, moments, now, policy, pins)
    assert 0 < len(want) < len(moments)
    for s in range(cl.th.n):
        kv = cl.kvs[s]
        res = thin_step(kv, cl.cfgs[s], OID, now)
        held = {lts.index(v.lt) for v in schema.iter_versions(kv, OID)}
        assert held == want, s
        assert res.thinned == len(moments) - len(want) and res.dropped == 0
        records = {lts.index(lt) for lt, _, _ in schema.thinned_records(kv, OID)}
        assert records == set(range(len(moments))) - want
        # The chain still reaches the first version, thinned ones reported as such.
        page = versions_step(kv, OID, lts[-1], 256)
        assert [e[0] for e in page] == [lt.encode() for lt in reversed(lts)]
        reported = {len(lts) - 1 - k for k, e in enumerate(page) if e[2] == THINNED}
        assert reported == set(range(len(moments))) - want
        # Revisited when the next kept version's period ends, and a second look then
        # thins exactly what the schedule lets go by then.
        assert res.revisit_ns is not None and res.revisit_ns > now
        assert thin_step(kv, cl.cfgs[s], OID, now).thinned == 0
    later = now + 5 * DAY_NS
    res = thin_step(cl.kvs[0], cl.cfgs[0], OID, later)
    held = {lts.index(v.lt) for v in schema.iter_versions(cl.kvs[0], OID)}
    assert held == _expected(cl, lts, moments, later, policy, pins)


def test_without_a_schedule_nothing_is_thinned() -> None:
    """The control: the old policy (no hourly or daily tier) thins nothing inside its
    keep_seconds, so the test above is not passing for some other reason."""
    policy = RetentionPolicy(keep_seconds=30 * DAY_NS / SEC, keep_hourly=0, keep_daily=0)
    moments = _week(1, 20)
    cl = _cluster(policy)
    for seq, t in enumerate(moments, start=1):
        _qu_put(cl, seq, f"v{seq}", t)
    assert thin_step(cl.kvs[0], cl.cfgs[0], OID, moments[-1] + DAY_NS).thinned == 0
    assert len(schema.iter_versions(cl.kvs[0], OID)) == len(moments)


def _walk(cl: MemCluster, start: Timestamp) -> list[tuple[int | None, bool, object]]:
    """A client's history walk of OID over the cluster: (time, thinned, state) newest
    first, and how it ended."""
    reader = PastReader(MemEndpoint(cl, int(client_id(0))), cl.th)  # type: ignore[arg-type]

    async def run() -> list[tuple[int | None, bool, object]]:
        walk = await reader.walk(OID, start)
        assert walk.end is End.INITIAL
        states = await reader.states(OID, walk.versions)
        return [(a.time_ns, a.thinned, states.get(a.lt)) for a in walk.versions]

    return trio.run(run)


def test_a_history_read_steps_over_thinned_versions_and_reads_their_moments_as_reclaimed() -> None:
    policy = RetentionPolicy()
    moments = _week(3, 30)
    cl = _cluster(policy)
    for seq, t in enumerate(moments, start=1):
        _qu_put(cl, seq, f"v{seq}", t)
    now = moments[-1] + 3 * DAY_NS
    lts = [v.lt for v in schema.iter_versions(cl.kvs[0], OID)]
    for s in range(cl.th.n):
        thin_step(cl.kvs[s], cl.cfgs[s], OID, now)
    start = lts[-1]
    chain = list(reversed(_walk(cl, start)))  # oldest first
    assert [t for t, _, _ in chain] == moments  # every version, with its time
    thinned = {i for i, (_, thin, _) in enumerate(chain) if thin}
    assert thinned == set(range(len(moments))) - _expected(cl, lts, moments, now, policy, ())
    for _t, thin, state in chain:
        assert (state is None) == thin  # a kept version's state, checked by its digest
    # The version current at each moment: a kept one's own, a thinned one "reclaimed".
    times = [t for t, _, _ in reversed(chain)]
    for i, t in enumerate(moments):
        found = current_at(times, t + SEC)
        assert found.index is not None
        assert len(moments) - 1 - found.index == i
        assert chain[i][1] == (i in thinned)


def test_nodes_that_thinned_at_different_moments_still_agree() -> None:
    """Thinning runs on each node's own clock: two nodes that have not thinned yet must not
    stop a read (the others' records bridge the chain), and the versions they still hold
    read back whole where b + 1 of them agree."""
    policy = RetentionPolicy()
    moments = _week(4, 20)
    cl = _cluster(policy)
    for seq, t in enumerate(moments, start=1):
        _qu_put(cl, seq, f"v{seq}", t)
    now = moments[-1] + 3 * DAY_NS
    late = {0, 1}  # b + 1 nodes still hold everything
    for s in range(cl.th.n):
        if s not in late:
            thin_step(cl.kvs[s], cl.cfgs[s], OID, now)
    start = schema.iter_versions(cl.kvs[0], OID)[-1].lt
    chain = _walk(cl, start)
    assert [t for t, _, _ in reversed(chain)] == moments
    assert not any(thin for _, thin, _ in chain)  # b + 1 agreeing digests win
    for s in late:
        thin_step(cl.kvs[s], cl.cfgs[s], OID, now)
    assert any(thin for _, thin, _ in _walk(cl, start))


def test_history_space_counts_older_versions_the_strings_only_they_use_and_records() -> None:
    """``bftfs status``'s Q/U history figure (``qu.retention.history_space``): states of
    10 kB are stored split (``qu.blob``); an object written A, B, B: every version but
    the newest counts, and A's string, which only an older version uses, but not B's,
    which the newest uses too; a thinned record counts; a second object's versions do not
    mix with the first's; pages of one, two or three records give the same sum."""
    from bftfs.kv import MemoryKV
    from bftfs.qu.blobs import HASH_SIZE
    from bftfs.qu.canon import pack
    from bftfs.qu.retention import HistoryCursor, HistorySpace, history_space

    kv = MemoryKV()
    a, b = random.Random(1).randbytes(10_000), random.Random(2).randbytes(10_000)
    co = ZERO_TS = Timestamp(0, False, 0, bytes(32))
    for oid, values in ((OID, [a, b, b]), (OID + 1, [a])):
        kv.put(schema.DB_RH, schema.oid_key(oid), b"")
        co = ZERO_TS
        for k, value in enumerate(values, 1):
            lt = Timestamp(k, False, 1, bytes([k]) * 32)
            state = pack({"k": "f", "i": value})  # a small file, its content inline
            v = schema.Version(lt, schema.METHOD, state, pack({}), co, None, True, (oid,), k)
            schema.store_version(kv, oid, v)
            co = lt
    records = [len(k) + len(v) for k, v in kv.scan(schema.DB_VER, b"", b"\xff" * 64)]
    assert len(records) == 4 and all(r < 1_000 for r in records)  # split: strings apart
    got, more = history_space(kv, None, 100)
    assert more is None
    older = records[0] + records[1] + HASH_SIZE + len(a)
    assert (got.older_versions, got.older_bytes, got.thinned) == (2, older, 0)
    schema.store_thinned(kv, OID, Timestamp(9, False, 1, bytes(32)), co, 9)
    after, _ = history_space(kv, None, 100)
    assert after.thinned == 1 and after.bytes == older + after.thinned_bytes > older
    for size in (1, 2, 3):  # pages of a record or a few, stopping inside an object
        paged = HistorySpace()
        cursor: HistoryCursor | None = None
        while True:
            page, cursor = history_space(kv, cursor, size)
            paged.add(page)
            if cursor is None:
                break
        assert paged == after, size
