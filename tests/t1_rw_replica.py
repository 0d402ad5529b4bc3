"""Storage-node steps (bftfs/rw/replica.py) over MemoryKV: WRITE validation, idempotence,
TIME_REQUEST, READ_LATEST / READ_PREV with bounded histories, and collection floors.
"""

from __future__ import annotations

import pytest

from bftfs import erasure
from bftfs.kv import MemoryKV
from bftfs.rw import collect, forget, repairs, replica, scrubstep
from bftfs.rw.messages import ReadRequest, WriteRequest
from bftfs.rw.schema import DB_VERSIONS, StoredVersion, split_key, version_key
from bftfs.rw.timestamp import DEFAULT_MAX_AHEAD_NS, ZERO, Timestamp, make_timestamp

N, M = 6, 3
NOW = 10**18


def version(data: bytes, time: int, writer: int = 70000) -> tuple[Timestamp, erasure.Encoded]:
    enc = erasure.encode(data, M, N)
    return make_timestamp(time, writer, enc.verifier), enc


def write(kv: MemoryKV, block: int, data: bytes, time: int, node: int = 2) -> Timestamp:
    stamp, enc = version(data, time)
    req = WriteRequest(block, stamp, enc.cross_checksum, enc.fragments[node])
    replica.check_write(req, node=node, n=N, now_ns=NOW, max_ahead_ns=DEFAULT_MAX_AHEAD_NS)
    assert replica.store_write(kv, req).new
    return stamp


def check(req: WriteRequest, node: int = 2, now: int = NOW) -> None:
    replica.check_write(req, node=node, n=N, now_ns=now, max_ahead_ns=DEFAULT_MAX_AHEAD_NS)


def test_valid_write_is_stored_and_repeated_write_is_idempotent() -> None:
    kv = MemoryKV()
    stamp, enc = version(b"data", 100)
    req = WriteRequest(7, stamp, enc.cross_checksum, enc.fragments[2])
    check(req)
    assert replica.store_write(kv, req).new
    assert not replica.store_write(kv, req).new
    assert replica.has_version(kv, 7, stamp)
    raw = kv.get(DB_VERSIONS, version_key(7, stamp))
    assert raw is not None and StoredVersion.decode(raw).fragment == enc.fragments[2]


def test_fragment_for_another_node_is_refused() -> None:
    stamp, enc = version(b"data", 100)
    with pytest.raises(replica.WriteRefused) as e:
        check(WriteRequest(7, stamp, enc.cross_checksum, enc.fragments[3]), node=2)
    assert e.value.code == "bad-fragment"


def test_cross_checksum_not_matching_verifier_is_refused() -> None:
    stamp, enc = version(b"data", 100)
    other = erasure.encode(b"other", M, N)
    with pytest.raises(replica.WriteRefused) as e:
        check(WriteRequest(7, stamp, other.cross_checksum, other.fragments[2]))
    assert e.value.code == "bad-verifier"


def test_zero_timestamp_and_wrong_sized_cross_checksum_are_refused() -> None:
    _, enc = version(b"data", 100)
    with pytest.raises(replica.WriteRefused):
        check(WriteRequest(7, ZERO, enc.cross_checksum, enc.fragments[2]))
    stamp, _ = version(b"data", 100)
    with pytest.raises(replica.WriteRefused):
        replica.check_write(
            WriteRequest(7, stamp, enc.cross_checksum, enc.fragments[2]),
            node=2,
            n=N + 1,
            now_ns=NOW,
            max_ahead_ns=DEFAULT_MAX_AHEAD_NS,
        )


def test_time_too_far_ahead_of_the_node_clock_is_refused() -> None:
    stamp, enc = version(b"data", NOW + DEFAULT_MAX_AHEAD_NS)
    check(WriteRequest(7, stamp, enc.cross_checksum, enc.fragments[2]))  # exactly the bound
    stamp, enc = version(b"data", NOW + DEFAULT_MAX_AHEAD_NS + 1)
    with pytest.raises(replica.WriteRefused) as e:
        check(WriteRequest(7, stamp, enc.cross_checksum, enc.fragments[2]))
    assert e.value.code == "too-far-ahead"


def test_time_request_returns_the_greatest_version_of_the_block_only() -> None:
    kv = MemoryKV()
    assert replica.time_step(kv, 5).latest == ZERO
    write(kv, 4, b"neighbour-below", 900)
    write(kv, 6, b"neighbour-above", 999)
    assert replica.time_step(kv, 5).latest == ZERO
    a = write(kv, 5, b"a", 10)
    b = write(kv, 5, b"b", 30)
    write(kv, 5, b"c", 20)
    assert replica.time_step(kv, 5).latest == b and a < b


def test_keys_sort_by_block_then_time() -> None:
    stamps = [version(b"x", t)[0] for t in (1, 2**40, 2**63)]
    keys = [version_key(b, s) for b in (1, 2, 2**100) for s in stamps]
    assert keys == sorted(keys)
    assert split_key(keys[4]) == (2, stamps[1])


def test_read_latest_and_prev_with_bounded_history() -> None:
    kv = MemoryKV()
    write(kv, 4, b"other block", 50)
    write(kv, 6, b"other block", 1)
    stamps = [write(kv, 5, bytes([i]) * 10, 10 * (i + 1)) for i in range(5)]  # 10..50
    latest = replica.read_step(kv, ReadRequest(5, data=True), history=3)
    assert latest.history == tuple(reversed(stamps))[:3] and latest.more
    assert latest.floor == ZERO
    assert latest.cross_checksum is not None and latest.fragment is not None
    assert erasure.fragment_matches(latest.cross_checksum, 2, latest.fragment)
    # READ_PREV is strictly below (spec H.2) ...
    prev = replica.read_step(kv, ReadRequest(5, data=False, below=stamps[2]), history=3)
    assert prev.history == (stamps[1], stamps[0]) and not prev.more
    assert prev.fragment is None and prev.cross_checksum is None  # a read witness
    # ... and the inclusive form fetches one exact version.
    exact = replica.read_step(kv, ReadRequest(5, data=True, below=stamps[2], inclusive=True))
    assert exact.latest == stamps[2] and exact.fragment is not None
    first = replica.read_step(kv, ReadRequest(5, data=True, below=stamps[0]))
    assert first.history == () and not first.more and first.fragment is None
    empty = replica.read_step(kv, ReadRequest(9, data=True))
    assert empty.history == () and empty.latest is None


def test_collection_deletes_below_the_floor_and_reports_it() -> None:
    kv = MemoryKV()
    stamps = [write(kv, 5, bytes([i]), 10 * (i + 1)) for i in range(4)]
    other = write(kv, 6, b"x", 1)
    done = collect.collect_step(kv, 5, stamps[2])
    assert done.deleted == 2 and done.floor == stamps[2]
    assert collect.collect_step(kv, 5, stamps[1]).deleted == 0  # the floor only rises
    reply = replica.read_step(kv, ReadRequest(5, data=False))
    assert reply.history == (stamps[3], stamps[2]) and reply.floor == stamps[2]
    assert replica.read_step(kv, ReadRequest(6, data=False)).history == (other,)
    # A write below the floor is acknowledged and not stored.
    stamp, enc = version(b"late repair", 5)
    req = WriteRequest(5, stamp, enc.cross_checksum, enc.fragments[2])
    assert not replica.store_write(kv, req).new
    assert not replica.has_version(kv, 5, stamp)


def test_history_must_be_positive() -> None:
    with pytest.raises(ValueError):
        replica.read_step(MemoryKV(), ReadRequest(1, data=False), history=0)


def test_fresh_write_conflicts_with_any_version_at_or_above_it() -> None:
    kv = MemoryKV()
    later = write(kv, 5, b"later", 50)
    stamp, enc = version(b"guess", 40)
    req = WriteRequest(5, stamp, enc.cross_checksum, enc.fragments[2], fresh=True)
    assert replica.fresh_conflict(kv, req) == later
    assert (
        replica.fresh_conflict(kv, WriteRequest(5, stamp, req.cross_checksum, req.fragment)) is None
    )
    above, enc2 = version(b"guess", 60)
    fresh = WriteRequest(5, above, enc2.cross_checksum, enc2.fragments[2], fresh=True)
    assert replica.fresh_conflict(kv, fresh) is None
    assert replica.store_write(kv, fresh).new
    assert replica.fresh_conflict(kv, fresh) is None  # a resend of an executed write is fine


def test_scrub_finds_stored_versions_that_no_longer_validate() -> None:
    kv = MemoryKV()
    stamps = [write(kv, block, b"data %d" % block, 100 + block) for block in range(5)]
    stamps.append(write(kv, 2, b"newer", 200))
    # Bit rot in block 1's fragment, in block 3's cross checksum; block 4 unreadable.
    for block, damage in ((1, "fragment"), (3, "cc"), (4, "garbage")):
        key = version_key(block, stamps[block])
        stored = StoredVersion.decode(kv.get(DB_VERSIONS, key))
        if damage == "fragment":
            frag = bytes([stored.fragment[0] ^ 1]) + stored.fragment[1:]
            kv.put(
                DB_VERSIONS, key, StoredVersion(stored.flags, stored.cross_checksum, frag).encode()
            )
        elif damage == "cc":
            cc = stored.cross_checksum[:-1] + bytes([stored.cross_checksum[-1] ^ 1])
            kv.put(DB_VERSIONS, key, StoredVersion(stored.flags, cc, stored.fragment).encode())
        else:
            kv.put(DB_VERSIONS, key, b"\x01")
    whole = scrubstep.scrub_step(kv, None, 100, node=2, n=N)
    assert whole.checked == 6 and whole.cursor is None
    assert whole.damaged == [(1, stamps[1]), (3, stamps[3]), (4, stamps[4])]
    # Page by page, the same versions once each.
    seen, cursor, pages = [], None, 0
    while True:
        page = scrubstep.scrub_step(kv, cursor, 2, node=2, n=N)
        seen += page.damaged
        pages += 1
        if page.cursor is None:
            break
        cursor = page.cursor
    assert seen == whole.damaged and pages == 3
    # As node 3 every fragment here is another node's: all fail.
    assert len(scrubstep.scrub_step(kv, None, 100, node=3, n=N).damaged) == 6


def test_forget_needs_every_node() -> None:
    """A given-back block's empty version is forgotten only when all ``n`` nodes list it
    alone or nothing: a node that still holds older contents, a cut-off history, or a
    node that did not answer stops it."""
    from bftfs.rw.messages import ReadReply

    ts = Timestamp(10, 1, b"v" * 32)
    old = Timestamp(5, 1, b"o" * 32)
    only = ReadReply((ts,), False, ts)
    none = ReadReply((), False, ZERO)
    assert forget.forget_agreed(ts, dict.fromkeys(range(6), only), 6)
    assert forget.forget_agreed(ts, {**dict.fromkeys(range(4), only), 4: none, 5: none}, 6)
    assert not forget.forget_agreed(ts, dict.fromkeys(range(5), only), 6)  # one missing
    lagging = ReadReply((old,), False, ZERO)  # down during the removal: old contents
    assert not forget.forget_agreed(ts, {**dict.fromkeys(range(5), only), 5: lagging}, 6)
    both = ReadReply((ts, old), False, ZERO)
    assert not forget.forget_agreed(ts, {**dict.fromkeys(range(5), only), 5: both}, 6)
    cut = ReadReply((ts,), True, ZERO)
    assert not forget.forget_agreed(ts, {**dict.fromkeys(range(5), only), 5: cut}, 6)


def test_an_unverified_lone_empty_version_goes_once_every_other_node_holds_nothing() -> None:
    """A node that caught up a given-back block's empty version as the others forgot it
    holds it alone and unverified: :func:`forget.lone_empty` names it (the verified rule,
    :func:`forget.forget_target`, does not), and it may go once every other node lists
    nothing; one other node still listing it, or anything else, or silent, stops it."""
    from bftfs.rw.messages import ReadReply

    kv = MemoryKV()
    old = write(kv, 5, b"contents", 100)
    gone = write(kv, 5, b"", 200)
    assert forget.lone_empty(kv, 5) is None  # older contents below it
    fresh = MemoryKV()
    only = write(fresh, 5, b"", 200)
    assert forget.lone_empty(fresh, 5) == only and forget.forget_target(fresh, 5) is None
    assert forget.given_back_page(fresh, None, 10) == ([(5, only)], None)
    mine = ReadReply((only,), False, ZERO)
    none = ReadReply((), False, ZERO)
    me = 2
    everyone = {**dict.fromkeys(range(6), none), me: mine}
    assert forget.forgotten_elsewhere(only, everyone, 6, me)
    assert not forget.forgotten_elsewhere(only, {**everyone, 4: mine}, 6, me)
    assert not forget.forgotten_elsewhere(
        only, {**everyone, 4: ReadReply((old,), False, ZERO)}, 6, me
    )
    assert not forget.forgotten_elsewhere(only, {**everyone, 4: ReadReply((), True, ZERO)}, 6, me)
    del everyone[4]
    assert not forget.forgotten_elsewhere(only, everyone, 6, me)  # one did not answer
    mixed = {**everyone, 4: none, me: ReadReply((gone, old), False, ZERO)}
    assert not forget.forgotten_elsewhere(gone, mixed, 6, me)  # not alone here
    assert forget.forget_step(fresh, 5, only) == 1 and forget.lone_empty(fresh, 5) is None


def test_a_repair_needs_b_plus_1_other_hosts_of_that_very_version() -> None:
    """A write at another writer's timestamp is a repair; it is taken only when ``b + 1``
    peers list exactly that version as the greatest at or below it (a peer holding only
    an older or a different version of the block does not count)."""
    from bftfs.rw.messages import ReadReply

    stamp, enc = version(b"data", 100, writer=70000)
    req = WriteRequest(7, stamp, enc.cross_checksum, enc.fragments[2])
    assert repairs.is_repair(req, 70001) and not repairs.is_repair(req, 70000)
    ask = repairs.proof_request(7, stamp)
    assert ask.below == stamp and ask.inclusive and not ask.data
    hosts = ReadReply((stamp,), False, ZERO)
    older = ReadReply((Timestamp(99, 70000, b"o" * 32),), False, ZERO)
    other = ReadReply((Timestamp(100, 70000, b"x" * 32),), False, ZERO)  # same time, other data
    nothing = ReadReply((), False, ZERO)
    assert repairs.repair_proven({0: hosts, 1: hosts}, stamp, b=1)
    assert not repairs.repair_proven({0: hosts, 1: older, 3: other, 4: nothing}, stamp, b=1)
    assert not repairs.repair_proven({0: hosts, 1: hosts}, stamp, b=2)
    assert repairs.repair_proven({0: hosts, 1: hosts, 4: hosts, 5: older}, stamp, b=2)


def test_a_given_back_block_of_a_client_short_of_room_keeps_no_history() -> None:
    """A block whose verified version is empty keeps its older versions for
    ``keep_seconds``, unless one of them is charged to a client using ``owner_limit``
    bytes or more here: then they go at once (issue 31).  A live block keeps them."""
    from bftfs.policy import RetentionPolicy

    keep = RetentionPolicy(keep_hourly=0, keep_daily=0, keep_seconds=900.0, keep_versions=2)
    owner = 70000
    for limit, left in ((10**9, 2), (1, 1), (None, 2)):
        kv = MemoryKV()
        data, enc = version(b"contents", NOW - 10)
        replica.store_write(
            kv, WriteRequest(5, data, enc.cross_checksum, enc.fragments[2]), owner=owner
        )
        gone, enc = version(b"", NOW - 5)
        replica.store_write(kv, WriteRequest(5, gone, enc.cross_checksum, enc.fragments[2]))
        got = collect.verified_step(
            kv,
            5,
            mark=gone,
            flag=gone,
            poisonous=(),
            now_ns=NOW,
            retention=keep,
            owner_limit=limit,
        )
        assert got.kept == left, (limit, got)
    # A live block (its newest version not empty) keeps its history whatever the limit.
    kv = MemoryKV()
    stamps = []
    for k, content in enumerate((b"old", b"live")):
        stamp, enc = version(content, NOW - 10 + k)
        replica.store_write(
            kv, WriteRequest(6, stamp, enc.cross_checksum, enc.fragments[2]), owner=owner
        )
        stamps.append(stamp)
    got = collect.verified_step(
        kv,
        6,
        mark=stamps[1],
        flag=stamps[1],
        poisonous=(),
        now_ns=NOW,
        retention=keep,
        owner_limit=1,
    )
    assert got.kept == 2 and got.collected == 0, got
