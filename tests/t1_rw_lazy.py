"""Tier 1: lazy verification's pure decisions (bftfs/rw/lazy.py): responsibility, the NOTIFY
rules against ``b`` liars, budgets and the order blocks are verified in, and the
garbage-collection floor under the retention policy."""

from __future__ import annotations

import gc
import itertools
import random
from dataclasses import replace

import pytest
from rw_helpers import ts

from bftfs import erasure
from bftfs.kv import MemoryKV
from bftfs.policy import PolicyError, RetentionPolicy, VerificationPolicy, verification_from
from bftfs.rw import collect, replica
from bftfs.rw.gcplan import gc_plan
from bftfs.rw.lazy import (
    COOPERATIVE_SLACK,
    POISONOUS,
    VERIFIED,
    Backlog,
    NotifyBook,
    responsible,
)
from bftfs.rw.messages import BlockId, MessageError, Notify, ReadReply, ReadRequest, WriteRequest
from bftfs.rw.timestamp import ZERO, Timestamp


def test_responsibility_is_b_plus_one_consecutive_nodes() -> None:
    assert responsible(0, 6, 1) == (0, 1)
    assert responsible(11, 6, 2) == (5, 0, 1)
    # Every node leads as many blocks as any other.
    leads = [responsible(k, 5, 1)[0] for k in range(50)]
    assert sorted(set(leads)) == [0, 1, 2, 3, 4] and len(set(leads.count(x) for x in leads)) == 1


@pytest.mark.parametrize("b", [1, 2])
def test_b_liars_alone_can_neither_flag_nor_discard_nor_set_the_floor(b: int) -> None:
    good, poison = ts(10), ts(20, tag=1)
    book = NotifyBook(b)
    for liar in range(b):
        book.record(liar, 7, poison, VERIFIED)
        book.record(liar, 7, good, POISONOUS)
    assert book.flagged(7) is None and book.floor(7) is None and book.poisonous(7) == set()
    # One correct node verifying the good version: the floor is at most what it verified.
    book.record(10, 7, good, VERIFIED)
    assert book.flagged(7) is None  # b liars + 1 do not agree on anything
    assert book.floor(7) == good  # the (b+1)-th highest: the correct node's
    assert book.poisonous(7) == set()


def test_b_plus_one_identical_notifies_are_trusted() -> None:
    v = ts(5)
    book = NotifyBook(1)
    book.record(0, 3, v, VERIFIED)
    assert book.flagged(3) is None
    book.record(1, 3, v, VERIFIED)
    assert book.flagged(3) == v and book.floor(3) == v
    assert book.told_by(3, v) == {0, 1}
    p = ts(9, tag=2)
    book.record(2, 3, p, POISONOUS)
    book.record(3, 3, p, POISONOUS)
    assert book.poisonous(3) == {p}


def test_the_floor_is_the_b_plus_one_th_highest_across_versions() -> None:
    book = NotifyBook(2)
    for node, t in enumerate([50, 40, 30, 20]):
        book.record(node, 1, ts(t), VERIFIED)
    assert book.floor(1) == ts(30)
    # A node's newer NOTIFY replaces its older one; an older one never lowers it.
    book.record(3, 1, ts(60), VERIFIED)
    book.record(3, 1, ts(10), VERIFIED)
    assert book.floor(1) == ts(40)


def test_the_book_forgets_the_least_recently_told_blocks_first() -> None:
    book = NotifyBook(1, max_blocks=3)
    for block in range(5):
        book.record(0, block, ts(1), VERIFIED)
    assert len(book) == 3 and book.told_by(0, ts(1)) == set()
    assert book.told_by(4, ts(1)) == {0}


def test_the_book_holds_no_object_the_collector_walks_per_notify() -> None:
    """Issue 62: a full book (65 536 blocks, a NOTIFY from each peer) held a record, a list
    and a timestamp object per NOTIFY, which every full collection of the node walked;
    now each block's NOTIFYs are one untracked dict of encoded timestamps."""
    book = NotifyBook(1)
    for block in range(50):
        for node in range(5):
            book.record(node, block, ts(block + node), VERIFIED)
    gc.collect()
    assert not any(gc.is_tracked(told) for told in book._blocks.values())
    assert book.floor(3) == ts(6) and book.told_by(3, ts(7)) == {4}


POLICY = VerificationPolicy(
    settle_seconds=1.0, idle_seconds=0.0, fallback_seconds=10.0, per_client_block=2, per_client=5
)


def test_budgets_force_verification() -> None:
    bl = Backlog(POLICY, me=0, n=6, b=1)  # responsible for blocks 0 and 5 mod 6
    assert not bl.wrote(6, ts(1), 100, now=0.0)
    assert not bl.wrote(6, ts(2), 100, now=0.0)
    assert bl.wrote(6, ts(3), 100, now=0.0)  # a third version by one client on one block
    assert bl.pick(0.0, idle=False, pressure=False).block == 6  # forced: not idle, unsettled
    # Another client's versions on other blocks count against that client only.
    assert not bl.wrote(2, ts(1, writer=7), 200, now=0.0)
    for k, block in enumerate((12, 13, 18)):
        forced = bl.wrote(block, ts(4 + k), 100, now=0.0)
    assert forced and 100 in bl.over_budget and bl.by_client(100) == 6
    bl.settled(6, ts(3))
    assert bl.by_client(100) == 3 and 100 not in bl.over_budget


def test_a_forced_block_waits_for_its_responsible_nodes_up_to_twice_the_budget() -> None:
    """A budget forces a block on its ``b + 1`` responsible nodes; the others wait for
    their NOTIFYs until the client holds twice its budgets there (COOPERATIVE_SLACK)."""
    assert COOPERATIVE_SLACK == 2
    owner, waiter = Backlog(POLICY, me=1, n=6, b=1), Backlog(POLICY, me=3, n=6, b=1)
    for bl in (owner, waiter):  # block 1: nodes 1 and 2 are responsible
        for k in range(3):
            reached = bl.wrote(1, ts(1 + k), 100, now=0.0)
        assert reached  # a third version on one block: the budget is reached on both
    assert owner.pick(0.0, idle=False, pressure=False).block == 1
    assert waiter.pick(0.0, idle=False, pressure=False) is None
    # Past twice per_client_block (4) the waiting node verifies the block itself.
    waiter.wrote(1, ts(4), 100, now=0.0)
    assert waiter.pick(0.0, idle=False, pressure=False) is None
    waiter.wrote(1, ts(5), 100, now=0.0)
    assert waiter.pick(0.0, idle=False, pressure=False).block == 1
    # The node-wide budget likewise: per_client = 5 versions, forced at once on an owner,
    # on a node waiting for NOTIFYs only past 10.
    bl = Backlog(POLICY, me=3, n=6, b=1)
    for k in range(10):
        bl.wrote(1 + 6 * k, ts(1 + k), 100, now=0.0)  # nodes 1 and 2 responsible
    assert 100 in bl.over_budget and bl.pick(0.0, idle=False, pressure=False) is None
    bl.wrote(61, ts(11), 100, now=0.0)
    assert bl.pick(0.0, idle=False, pressure=False).block == 61
    # A NOTIFY-settled block leaves the waiting node's backlog as a verified one does.
    bl.settled(61, ts(11))
    assert bl.by_client(100) == 10
    # With every node verifying for itself (mode lazy) nobody waits.
    alone = Backlog(replace(POLICY, mode="lazy"), me=3, n=6, b=1)
    for k in range(3):
        alone.wrote(1, ts(1 + k), 100, now=0.0)
    assert alone.pick(0.0, idle=False, pressure=False).block == 1


STREAMING = VerificationPolicy(
    settle_seconds=1.0,
    idle_seconds=0.05,
    fallback_seconds=10.0,
    per_client_block=2,
    per_client=5,
    stream_seconds=1.0,
    stream_idle_seconds=0.5,
    stream_bytes=10_000,
)


def test_a_stream_raises_the_node_wide_budget_to_stream_bytes_and_no_further() -> None:
    bl = Backlog(STREAMING, me=0, n=6, b=1)
    # While a stream lasts, ten 1000-byte versions on ten blocks (over per_client = 5)
    # are left for later: the budget is 10 000 bytes.
    for k in range(10):
        assert not bl.wrote(10 + k, ts(1 + k), 100, now=0.0, size=1000, streaming=True)
    assert bl.by_client(100) == 10 and bl.bytes_by_client(100) == 10_000
    assert 100 not in bl.over_budget and bl.pick(0.0, idle=False, pressure=False) is None
    # One byte more and the stream is over its budget: its writes are verified first.
    assert bl.wrote(30, ts(20), 100, now=0.0, size=1, streaming=True)
    assert 100 in bl.over_budget
    assert bl.pick(0.0, idle=False, pressure=False).block == 30
    # The per-block budget binds inside a stream as before.
    bl2 = Backlog(STREAMING, me=0, n=6, b=1)
    assert not bl2.wrote(1, ts(1), 100, now=0.0, size=1, streaming=True)
    assert not bl2.wrote(1, ts(2), 100, now=0.0, size=1, streaming=True)
    assert bl2.wrote(1, ts(3), 100, now=0.0, size=1, streaming=True)


def test_outside_a_stream_the_budget_is_per_client_versions_again() -> None:
    bl = Backlog(STREAMING, me=0, n=6, b=1)
    for k in range(8):
        bl.wrote(10 + k, ts(1 + k), 100, now=0.0, size=10, streaming=True)
    assert 100 not in bl.over_budget  # 8 versions, 80 bytes: inside the stream budget
    # The stream ended (a gap); the next write is judged by per_client = 5 versions.
    assert bl.wrote(36, ts(30), 100, now=2.0, size=10, streaming=False)
    assert 100 in bl.over_budget
    assert bl.pick(2.0, idle=False, pressure=False).block == 36  # that write first
    # Verified down to per_client versions, the client is within its budget again.
    for k in range(4):
        bl.settled(10 + k, ts(1 + k))
    assert bl.by_client(100) == 5 and bl.bytes_by_client(100) == 50
    assert 100 not in bl.over_budget


def test_seeded_streams_never_leave_more_than_the_bounds_unverified() -> None:
    """Whatever a client writes, streaming or not, once its forced blocks are verified it
    holds at most ``per_client`` versions or ``stream_bytes`` bytes (what a stream left is
    not forced by a later write outside a stream: that write's block is, so it grows no
    further, and idle time catches up with the rest)."""
    rng = random.Random(19)
    bl = Backlog(STREAMING, me=0, n=6, b=1)
    for k in range(2000):
        streaming = rng.random() < 0.7
        size = rng.randrange(1, 3000)
        bl.wrote(rng.randrange(200), ts(k + 1), 100, now=float(k), size=size, streaming=streaming)
        while (pick := bl.pick(float(k), idle=False, pressure=False)) is not None:
            bl.settled(pick.block, ts(k + 1))
        count, held = bl.by_client(100), bl.bytes_by_client(100)
        # Nobody here NOTIFYs: the blocks others are responsible for wait up to twice the
        # budgets (COOPERATIVE_SLACK), then this node verifies them itself.
        slack = COOPERATIVE_SLACK
        assert count <= slack * STREAMING.per_client or held <= slack * STREAMING.stream_bytes
        assert held == sum(
            size
            for debt in bl._debts.values()
            for t, size in debt.sizes.items()
            if debt.versions[t] == 100
        )


def test_stream_state_needs_a_long_run_of_requests_and_yields_longer_to_it() -> None:
    from bftfs.rw.lazy import stream_state

    p = STREAMING
    # A short run (0.3 s of requests): not a stream; idle after idle_seconds.
    s = stream_state(p, now=10.31, last_request=10.3, busy_since=10.0)
    assert not s.streaming and s.idle_after == p.idle_seconds
    # A run of 1.2 s, last request 0.1 s ago: a stream; verification waits 0.5 s of quiet.
    s = stream_state(p, now=11.3, last_request=11.2, busy_since=10.0)
    assert s.streaming and s.idle_after == p.stream_idle_seconds
    # 0.5 s of quiet ends it.
    s = stream_state(p, now=11.7, last_request=11.2, busy_since=10.0)
    assert not s.streaming and s.idle_after == p.idle_seconds
    # stream_seconds = 0 turns streams off; idle_seconds above stream_idle_seconds wins.
    off = VerificationPolicy(stream_seconds=0.0)
    assert not stream_state(off, now=100.0, last_request=100.0, busy_since=0.0).streaming
    slow = VerificationPolicy(idle_seconds=2.0, stream_idle_seconds=0.5)
    s = stream_state(slow, now=100.0, last_request=100.0, busy_since=0.0)
    assert s.streaming and s.idle_after == 2.0


def test_the_backlog_counts_blocks_to_verify_by_object() -> None:
    from bftfs.rw.messages import block_id

    bl = Backlog(STREAMING, me=0, n=6, b=1)
    for k in range(3):
        bl.wrote(block_id(5, k), ts(1), 1, 0.0)
    bl.wrote(block_id(5, 0), ts(2), 1, 0.0)  # a second version
    bl.wrote(block_id(6, 0), ts(1), 1, 0.0)
    assert bl.object_backlog(block_id(5, 9)) == 3 and bl.object_backlog(block_id(6, 1)) == 1
    bl.settled(block_id(5, 0), ts(1))  # one version of two: still due
    assert bl.object_backlog(block_id(5, 0)) == 3
    bl.settled(block_id(5, 0), ts(2))
    bl.settled(block_id(6, 0), ts(1))
    assert bl.object_backlog(block_id(5, 0)) == 2 and bl.object_backlog(block_id(6, 0)) == 0


def test_a_client_read_of_an_unverified_block_waits_like_a_stream_without_its_budget() -> None:
    from bftfs.rw.lazy import stream_state

    p = STREAMING
    # A short run of requests, one of them a read of a block still to verify 0.1 s ago:
    # verification waits for stream_idle_seconds of quiet, but it is not a stream.
    s = stream_state(p, now=10.31, last_request=10.3, busy_since=10.0, backlog_read=10.21)
    assert not s.streaming and s.idle_after == p.stream_idle_seconds
    # 0.5 s after that read, idle_seconds again.
    s = stream_state(p, now=10.71, last_request=10.3, busy_since=10.0, backlog_read=10.21)
    assert not s.streaming and s.idle_after == p.idle_seconds
    # stream_seconds = 0 turns this off with streams.
    off = VerificationPolicy(stream_seconds=0.0)
    s = stream_state(off, now=10.0, last_request=10.0, busy_since=10.0, backlog_read=10.0)
    assert s.idle_after == off.idle_seconds


def test_b_plus_one_peers_must_hold_within_the_window_for_a_node_to_hold() -> None:
    from bftfs.rw.lazy import HoldBook

    book = HoldBook(b=1)
    assert not book.held(3, now=10.0, window=0.5)  # one peer (perhaps lying): no
    assert not book.held(3, now=10.2, window=0.5)  # the same one again: still no
    assert book.held(4, now=10.3, window=0.5)  # a second peer: one of them is correct
    assert not book.held(4, now=10.75, window=0.5)  # peer 3's is 0.55 s old: too old
    assert book.held(3, now=10.8, window=0.5)
    two = HoldBook(b=2)
    assert [two.held(p, now=1.0, window=0.5) for p in (1, 2, 3)] == [False, False, True]


def test_nodes_fall_back_in_groups_of_b_plus_one_in_ring_order() -> None:
    from bftfs.rw.lazy import fallback_delay

    # n = 6, b = 1, block 6: responsible 0 and 1; then {2, 3} after 10 s, {4, 5} after 20 s.
    assert [fallback_delay(6, me, 6, 1, 10.0) for me in range(6)] == [0, 0, 10, 10, 20, 20]
    # n = 26, b = 5: 20 nodes fall back in four groups of six (the last one of two).
    delays = sorted(fallback_delay(3, me, 26, 5, 1.0) for me in range(26))
    assert delays == [0.0] * 6 + [1.0] * 6 + [2.0] * 6 + [3.0] * 6 + [4.0] * 2
    bl = Backlog(POLICY, me=5, n=6, b=1)
    bl.wrote(6, ts(1), 100, now=0.0)  # node 5 is in the second group for block 6
    assert bl.pick(10.0, idle=True, pressure=False) is None
    assert bl.next_due(10.0) == pytest.approx(10.0)
    assert bl.pick(20.0, idle=True, pressure=False).reason == "fallback"


def test_own_blocks_go_first_by_yield_once_settled_others_after_the_fallback() -> None:
    bl = Backlog(POLICY, me=0, n=6, b=1)
    bl.wrote(6, ts(1), 100, now=0.0)  # responsible: 0, 1
    bl.wrote(12, ts(1), 100, now=0.0)
    bl.wrote(12, ts(2), 101, now=0.0)  # two versions: higher yield
    bl.wrote(3, ts(1), 100, now=0.0)  # responsible: 3, 4 (not this node)
    assert bl.pick(0.5, idle=True, pressure=False) is None  # not settled yet
    assert bl.next_due(0.5) == pytest.approx(0.5)
    assert bl.pick(1.0, idle=False, pressure=False) is None  # not idle
    assert bl.pick(1.0, idle=True, pressure=False).block == 12
    bl.settled(12, ts(2))
    assert bl.pick(1.0, idle=True, pressure=False).block == 6
    bl.settled(6, ts(1))
    assert bl.pick(5.0, idle=True, pressure=False) is None  # block 3 waits for NOTIFYs
    pick = bl.pick(10.0, idle=True, pressure=False)
    assert (pick.block, pick.reason) == (3, "fallback")
    # Pressure: an own block at once, settled or not, idle or not; others' still wait.
    bl.settled(3, ts(1))
    bl.wrote(9, ts(1), 100, now=10.0)  # responsible: 3, 4
    assert bl.pick(10.0, idle=False, pressure=True) is None
    bl.wrote(24, ts(1), 100, now=10.0)  # responsible: 0, 1
    assert bl.pick(10.0, idle=False, pressure=True).block == 24


def test_a_wave_takes_distinct_blocks_in_the_order_single_picks_would() -> None:
    """``pick_many`` is ``pick`` repeated with each block settled: forced blocks first,
    then own blocks by yield, then others' after their fallback; no block twice, at most
    ``limit``, and the backlog unchanged (the same wave is picked again until settled)."""
    bl = Backlog(POLICY, me=0, n=6, b=1)
    for block, versions in ((6, 1), (12, 3), (18, 2), (3, 1)):  # 3: nodes 3 and 4's
        for v in range(versions):
            bl.wrote(block, ts(v + 1), 100 + v, now=0.0)
    assert bl.pick_many(1.0, idle=False, pressure=False, limit=8) == []  # not idle
    wave = bl.pick_many(1.0, idle=True, pressure=False, limit=8)
    assert [p.block for p in wave] == [12, 18, 6]  # own, most versions first; 3 waits
    assert [p.block for p in bl.pick_many(1.0, idle=True, pressure=False, limit=2)] == [12, 18]
    assert bl.pick_many(1.0, idle=True, pressure=False, limit=8) == wave  # nothing taken
    wave = bl.pick_many(10.0, idle=True, pressure=False, limit=8)
    assert [(p.block, p.reason) for p in wave][-1] == (3, "fallback")
    # One at a time gives the same order.
    singles = []
    while (pick := bl.pick(10.0, idle=True, pressure=False)) is not None:
        singles.append(pick)
        bl.settled(pick.block, ts(9))
    assert singles == wave
    # Forced blocks lead a wave even when the node is not idle; under pressure the rest of
    # the wave is any own block at once.
    tight = VerificationPolicy(settle_seconds=1.0, per_client_block=1)
    bl = Backlog(tight, me=0, n=6, b=1)
    bl.wrote(6, ts(1), 100, now=0.0)
    bl.wrote(12, ts(1), 100, now=0.0)
    bl.wrote(12, ts(2), 100, now=0.0)  # two by one client on one block: forced
    assert [p.reason for p in bl.pick_many(0.0, idle=False, pressure=False, limit=4)] == ["forced"]
    wave = bl.pick_many(0.0, idle=False, pressure=True, limit=4)
    assert [(p.block, p.reason) for p in wave] == [(12, "forced"), (6, "own")]
    assert VerificationPolicy(wave_blocks=1).validate().wave_blocks == 1
    for bad in (0, 129):
        with pytest.raises(PolicyError, match="wave_blocks"):
            VerificationPolicy(wave_blocks=bad).validate()


def test_a_failed_verification_backs_off() -> None:
    bl = Backlog(POLICY, me=0, n=6, b=1)
    bl.wrote(6, ts(1), 100, now=0.0)
    bl.failed(6, now=2.0)
    assert bl.pick(2.5, idle=True, pressure=False) is None
    assert bl.pick(3.0, idle=True, pressure=False).block == 6
    bl.failed(6, now=3.0)
    assert bl.failures(6) == 2 and bl.pick(4.5, idle=True, pressure=False) is None


SEC = 10**9


@pytest.mark.parametrize(
    ("keep_seconds", "keep_versions", "pressure", "floor_index"),
    [
        (0.0, 1, False, 0),  # only the verified newest
        (0.0, 2, False, 1),
        (25.0, 1, False, 2),  # versions at t >= 75 s are young
        (25.0, 1, True, 0),  # pressure: age does not count
        (1000.0, 1, False, 4),  # everything is young
    ],
)
def test_gc_floor_follows_the_retention_policy(
    keep_seconds: float, keep_versions: int, pressure: bool, floor_index: int
) -> None:
    hosted = [ts(t * SEC) for t in (100, 90, 75, 60, 50)]
    floor = gc_plan(
        hosted[0],
        hosted,
        100 * SEC,
        RetentionPolicy(
            keep_hourly=0, keep_daily=0, keep_seconds=keep_seconds, keep_versions=keep_versions
        ),
        pressure=pressure,
    ).floor
    assert floor == hosted[floor_index]


def test_gc_floor_never_rises_above_the_verified_version() -> None:
    hosted = [ts(t * SEC) for t in (100, 90, 80)]  # 100 and 90 are unverified, newer
    for k, d in itertools.product((1, 2, 3), (0.0, 5.0)):
        floor = gc_plan(hosted[2], hosted, 100 * SEC, RetentionPolicy(d, k)).floor
        assert floor <= hosted[2]
    assert gc_plan(ZERO, [], 0, RetentionPolicy()).floor == ZERO


def test_policy_tables_are_checked() -> None:
    assert verification_from({"mode": "lazy", "settle_seconds": 2}).settle_seconds == 2.0
    with pytest.raises(PolicyError, match="mode"):
        verification_from({"mode": "sometimes"})
    with pytest.raises(PolicyError, match="unknown"):
        verification_from({"colour": "blue"})
    with pytest.raises(PolicyError, match="per_client"):
        verification_from({"per_client_block": 10, "per_client": 5})
    with pytest.raises(PolicyError, match="must be a int"):
        verification_from({"per_client": 1.5})


# --- the store steps (bftfs/rw/replica.py) and the wire format --------------------------------


def _store(kv: MemoryKV, block: int, stamps: list[Timestamp]) -> None:
    for s in stamps:
        frags = erasure.encode(b"x", 2, 4)
        req = WriteRequest(BlockId(block), s, frags.cross_checksum, frags.fragments[0])
        replica.store_write(kv, req)


def test_verified_step_flags_discards_and_collects_in_one_step() -> None:
    kv = MemoryKV()
    stamps = [ts(t * SEC) for t in (10, 20, 30, 40)]
    _store(kv, 1, stamps)
    res = collect.verified_step(
        kv,
        1,
        mark=stamps[2],
        flag=stamps[2],
        poisonous=[stamps[3]],
        now_ns=40 * SEC,
        retention=RetentionPolicy(keep_hourly=0, keep_daily=0, keep_seconds=0.0, keep_versions=1),
    )
    assert (res.flagged, res.discarded, res.collected) == (True, 1, 2)
    assert collect.hosted_step(kv, 1) == [stamps[2]]
    assert collect.verified_of(kv, 1) == stamps[2] and replica.floor_of(kv, 1) == stamps[2]
    reply = replica.read_step(kv, ReadRequest(BlockId(1), data=False))
    assert reply.verified and reply.history == (stamps[2],)
    # A version proven poisonous at or below the verified mark cannot exist: never deleted.
    res = collect.verified_step(
        kv, 1, mark=ZERO, flag=None, poisonous=[stamps[2]], now_ns=0, retention=RetentionPolicy()
    )
    assert res.discarded == 0 and collect.hosted_step(kv, 1) == [stamps[2]]


def test_unverified_step_pages_through_what_is_left_to_verify() -> None:
    kv = MemoryKV()
    for block in (1, 2, 3):
        _store(kv, block, [ts(10, tag=block), ts(20, tag=block)])
    collect.verified_step(
        kv,
        2,
        mark=ts(20, tag=2),
        flag=ts(20, tag=2),
        poisonous=(),
        now_ns=0,
        retention=RetentionPolicy(),
    )
    page = collect.unverified_step(kv, None, 2)
    assert [b for b, _ in page.versions] == [1, 1] and page.after == 2
    rest = collect.unverified_step(kv, page.after, 2)
    assert [b for b, _ in rest.versions] == [3, 3]
    assert collect.unverified_step(kv, rest.after, 2).after is None


def test_notify_and_the_verified_flag_on_the_wire() -> None:
    entries = ((BlockId(5), ts(1), VERIFIED), (BlockId(6), ts(2), POISONOUS))
    assert Notify.from_wire(Notify(entries).to_wire()) == Notify(entries)
    bad = Notify(entries).to_wire()
    bad["e"][0][2] = "fine"
    with pytest.raises(MessageError, match="status"):
        Notify.from_wire(bad)
    with pytest.raises(MessageError):
        Notify.from_wire({"v": 1, "e": []})
    req = ReadRequest(BlockId(5), data=False)
    reply = ReadReply((ts(1),), False, ZERO, verified=True)
    assert ReadReply.from_wire(reply.to_wire(), req, n=4, max_fragment=10).verified
    with pytest.raises(MessageError, match="vf"):
        ReadReply.from_wire(
            {**ReadReply((), False, ZERO).to_wire(), "vf": True}, req, n=4, max_fragment=10
        )


def test_full_refusals_from_more_than_b_nodes_mean_the_storage_is_full() -> None:
    from bftfs.net.errors import refusal_code
    from bftfs.net.quorum import QuorumResult, QuorumUnavailable
    from bftfs.outcome import StorageFull
    from bftfs.rw.client import _storage_full

    assert refusal_code("refused: full: nearly full") == "full"
    assert refusal_code("refused: bad-fragment: x") == "bad-fragment"
    assert refusal_code("no reply in time") is None and refusal_code("refused: odd") is None

    def failed(codes: list[str]) -> QuorumUnavailable:
        errors = {i: f"refused: {c}: why" for i, c in enumerate(codes)}
        return QuorumUnavailable("short", QuorumResult({}, errors))  # type: ignore[arg-type]

    assert _storage_full(failed(["full"]), b=1) is None  # one liar cannot claim it
    assert isinstance(_storage_full(failed(["full", "full"]), b=1), StorageFull)
    assert _storage_full(failed(["full", "bad-verifier"]), b=1) is None
    group = BaseExceptionGroup("g", [ValueError("x"), failed(["full", "full", "full"])])
    assert isinstance(_storage_full(group, b=2), StorageFull)


def test_gc_floor_keeps_the_version_current_at_each_snapshot() -> None:
    hosted = [ts(t * SEC) for t in (100, 90, 75, 60, 50)]
    policy = RetentionPolicy(keep_hourly=0, keep_daily=0, keep_seconds=0.0, keep_versions=1)
    # A snapshot at 80 s pins the version of 75 s (the newest at or before it), even under
    # pressure; one before every hosted version pins nothing.
    for pressure in (False, True):
        got = gc_plan(
            hosted[0], hosted, 100 * SEC, policy, pressure=pressure, pins=[80 * SEC]
        ).floor
        assert got == hosted[2]
    assert gc_plan(hosted[0], hosted, 100 * SEC, policy, pins=[10 * SEC]).floor == hosted[0]


def _due_by_scan(bl: Backlog, now: float) -> tuple[str, set[int]] | None:
    """What the backlog may pick at ``now`` when idle, found the plain way: every block
    looked at (the seed's rule: own settled blocks with the most unverified versions, else
    others' blocks past their fallback delay, likewise)."""
    own: dict[int, int] = {}
    other: dict[int, int] = {}
    for block, debt in bl._debts.items():
        if debt.retry_at > now:
            continue
        mine = bl.me in responsible(block, bl.n, bl.b)
        wait = bl.policy.settle_seconds if mine else bl._fallback(block)
        if now - debt.last_write >= wait:
            (own if mine else other)[block] = len(debt.versions)
    for reason, found in (("own", own), ("fallback", other)):
        if found:
            top = max(found.values())
            return reason, {b for b, c in found.items() if c == top}
    return None


def test_the_heaps_pick_what_a_scan_of_every_block_would() -> None:
    """Backlog keeps its order in heaps (a scan per pick made verifying a 200 MiB file's
    3 200 blocks cost seconds of CPU per node); on seeded random writes, settlements,
    failures and time steps every pick is one a full scan allows, and next_due never
    says later than the first block a scan finds due."""
    import random

    rng = random.Random(19)
    policy = VerificationPolicy(settle_seconds=1.0, fallback_seconds=5.0, per_client_block=10**6)
    bl = Backlog(policy, me=2, n=6, b=1)
    now = 0.0
    counter = itertools.count(1)
    for _ in range(3000):
        now += rng.choice([0.0, 0.1, 0.5, 2.0])
        action = rng.random()
        if action < 0.5:
            bl.wrote(rng.randrange(40), ts(next(counter)), rng.randrange(3), now)
        elif action < 0.6 and bl._debts:
            bl.failed(rng.choice(list(bl._debts)), now)
        else:
            expected = _due_by_scan(bl, now)
            pick = bl.pick(now, idle=True, pressure=False)
            if expected is None:
                assert pick is None or pick.reason == "forced"
                due = bl.next_due(now)
                assert due is None or due > 0.0
                continue
            assert pick is not None and pick.reason == expected[0]
            assert pick.block in expected[1]
            assert bl.next_due(now) == 0.0
            bl.settled(pick.block, ts(10**9))


def test_the_heaps_stay_bounded_under_a_load_with_no_idle_time() -> None:
    """Every write pushes a heap entry and stale ones leave only when they reach the top;
    with no idle time nothing is picked, so without compaction 20 000 writes over 50
    blocks would leave about 20 000 entries behind."""
    policy = VerificationPolicy(
        settle_seconds=0.05, fallback_seconds=0.2, per_client_block=10**6, per_client=10**6
    )
    bl = Backlog(policy, me=0, n=6, b=1)
    for k in range(20_000):
        now = k * 0.01
        bl.wrote(k % 50, ts(k + 1), 100, now)
        assert bl.pick(now, idle=False, pressure=False) is None
        bl.next_due(now)
    entries = len(bl._pending) + len(bl._ready_own) + len(bl._ready_other)
    assert entries <= 4 * (len(bl) + 16)
    # And the order survived the rebuilds: the block with the most versions goes first.
    pick = bl.pick(1000.0, idle=True, pressure=False)
    assert pick is not None and pick.reason == "own"
    assert len(bl._debts[pick.block].versions) == max(len(d.versions) for d in bl._debts.values())
