"""Per-client limits, the pure parts (issue 18): the token bucket with time as an argument,
admission of requests under trio's ``MockClock``, the quota arithmetic of rw/quota.py and
rw/replica.py over ``MemoryKV``, and the ``[limits]`` table.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from bftfs import erasure
from bftfs.config import ConfigError, from_dict, to_dict
from bftfs.ids import PrincipalId, client_id, is_node
from bftfs.kv import MemoryKV
from bftfs.net.admission import Admission, Limits, TokenBucket
from bftfs.policy import LimitsPolicy, PolicyError, RetentionPolicy, limits_from
from bftfs.rw import collect, quota, replica
from bftfs.rw.messages import WriteRequest
from bftfs.rw.timestamp import make_timestamp

N, M = 6, 3
NODE = 2
ALICE, BOB = int(client_id(0)), int(client_id(1))

# --- token bucket ------------------------------------------------------------------------


def test_bucket_gives_its_burst_then_one_token_per_interval() -> None:
    # Rates and times are binary fractions, so the arithmetic is exact.
    bucket = TokenBucket(rate=8.0, capacity=4.0, now=100.0)
    assert [bucket.take(100.0, 1) for _ in range(4)] == [0.0] * 4
    assert bucket.take(100.0, 1) == 0.125  # in debt by one token
    assert bucket.take(100.0, 1) == 0.25  # the next waits behind it
    # 0.375 s later the debt (2) is paid and one token is back.
    assert bucket.take(100.375, 1) == 0.0
    assert bucket.take(100.375, 1) == 0.125


def test_bucket_refills_to_its_capacity_only() -> None:
    bucket = TokenBucket(rate=10.0, capacity=5.0, now=0.0)
    assert bucket.take(1000.0, 5) == 0.0  # a long idle time gives 5 tokens, not 10 000
    assert bucket.take(1000.0, 1) == pytest.approx(0.1)


def test_bucket_delays_a_request_larger_than_its_burst_instead_of_refusing_it() -> None:
    bucket = TokenBucket(rate=1000.0, capacity=100.0, now=0.0)
    assert bucket.take(0.0, 600) == pytest.approx(0.5)


def test_bucket_clock_stepping_back_mints_nothing() -> None:
    bucket = TokenBucket(rate=10.0, capacity=1.0, now=50.0)
    assert bucket.take(50.0, 1) == 0.0
    assert bucket.take(40.0, 1) == pytest.approx(0.1)


def test_bucket_rate_zero_is_no_limit() -> None:
    bucket = TokenBucket(rate=0.0, capacity=0.0, now=0.0)
    assert all(bucket.take(0.0, 10**9) == 0.0 for _ in range(100))


# --- admission (virtual time) --------------------------------------------------------------


def _run(fn: object) -> None:
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))  # type: ignore[arg-type]


def test_admission_delays_a_client_past_its_rate_and_never_a_node() -> None:
    async def main() -> None:
        adm = Admission(
            Limits(max_inflight=100, requests_per_second=10, bytes_per_second=0, burst_seconds=1),
            exempt=is_node,
        )
        alice = PrincipalId(ALICE)
        start = trio.current_time()
        for _ in range(10):  # the burst: no wait
            await adm.admit(alice, 1, 100)
            adm.release(alice)
        assert trio.current_time() == start
        await adm.admit(alice, 1, 100)
        adm.release(alice)
        assert trio.current_time() - start == pytest.approx(0.1)
        await adm.admit(alice, 5, 100)  # a batch of 5 items costs 5 tokens
        adm.release(alice)
        assert trio.current_time() - start == pytest.approx(0.6)
        assert not adm.limited(PrincipalId(3)) and adm.limited(alice)
        st = adm.statistics()[ALICE]
        assert st["requests"] == 16 and st["throttled"] == 2 and st["bytes_in"] == 1200
        assert adm.stats["limits.throttled"] == 2

    _run(main)


def test_admission_byte_rate_delays_large_frames() -> None:
    async def main() -> None:
        adm = Admission(
            Limits(max_inflight=100, requests_per_second=0, bytes_per_second=1000, burst_seconds=1),
            exempt=is_node,
        )
        alice = PrincipalId(ALICE)
        start = trio.current_time()
        await adm.admit(alice, 1, 1000)
        await adm.admit(alice, 1, 3000)
        assert trio.current_time() - start == pytest.approx(3.0)

    _run(main)


def test_admission_bounds_requests_in_flight_per_client_not_across_clients() -> None:
    async def main() -> None:
        adm = Admission(
            Limits(max_inflight=2, requests_per_second=0, bytes_per_second=0, burst_seconds=1),
            exempt=is_node,
        )
        alice, bob = PrincipalId(ALICE), PrincipalId(BOB)
        admitted: list[str] = []

        async def one(who: PrincipalId, name: str) -> None:
            await adm.admit(who, 1, 10)
            admitted.append(name)

        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(one, alice, f"a{i}")
            await trio.testing.wait_all_tasks_blocked()
            assert len(admitted) == 2  # the third (whichever) waits for a slot
            nursery.start_soon(one, bob, "b0")
            await trio.testing.wait_all_tasks_blocked()
            assert "b0" in admitted and len(admitted) == 3  # bob is not behind alice
            adm.release(alice)
            await trio.testing.wait_all_tasks_blocked()
            assert len(admitted) == 4
        assert adm.inflight(alice) == 2 and adm.inflight(bob) == 1
        assert adm.statistics()[ALICE]["inflight_waits"] == 1

    _run(main)


# --- quota arithmetic ----------------------------------------------------------------------


def _write(block: int, data: bytes, time: int, writer: int = ALICE) -> WriteRequest:
    enc = erasure.encode(data, M, N)
    return WriteRequest(
        block, make_timestamp(time, writer, enc.verifier), enc.cross_checksum, enc.fragments[NODE]
    )


def _consistent(kv: MemoryKV) -> dict[int, int]:
    totals, orphans = quota.audit(kv)
    assert orphans == 0
    assert totals == quota.usages(kv)
    return totals


def test_new_versions_are_charged_to_their_sender_once() -> None:
    kv = MemoryKV()
    a = _write(1, b"a" * 4096, 10)
    # Bob stores Alice's version (a reader's repair): charged to Bob, who sent it.
    reply = replica.store_charged(kv, a, owner=BOB, quota_bytes=None)
    assert reply is not None and reply.new
    assert quota.usage_of(kv, BOB) == replica.version_size(a) and quota.usage_of(kv, ALICE) == 0
    again = replica.store_charged(kv, a, owner=ALICE, quota_bytes=None)
    assert again is not None and not again.new  # a duplicate: no second charge
    assert _consistent(kv) == {BOB: replica.version_size(a)}


def test_a_non_empty_version_beyond_the_quota_is_refused_and_nothing_changes() -> None:
    kv = MemoryKV()
    first, second = _write(1, b"x" * 4096, 10), _write(2, b"y" * 4096, 11)
    limit = replica.version_size(first) + replica.version_size(second) - 1
    assert replica.store_charged(kv, first, owner=ALICE, quota_bytes=limit) is not None
    assert replica.store_charged(kv, second, owner=ALICE, quota_bytes=limit) is None
    assert not replica.has_version(kv, 2, second.ts)
    assert _consistent(kv) == {ALICE: replica.version_size(first)}
    # Another client is not held back by Alice's use.
    assert replica.store_charged(kv, _write(2, b"z" * 4096, 12, BOB), owner=BOB, quota_bytes=limit)
    # An empty version (a removed file's block) is always stored, and charged.
    empty = _write(1, b"", 13)
    got = replica.store_charged(kv, empty, owner=ALICE, quota_bytes=limit)
    assert got is not None and got.new
    assert quota.usage_of(kv, ALICE) == replica.version_size(first) + replica.version_size(empty)
    _consistent(kv)


def test_collection_and_discards_give_charges_back() -> None:
    kv = MemoryKV()
    reqs = [_write(5, bytes([i]) * 4096, 100 + i) for i in range(4)]
    for r in reqs:
        replica.store_write(kv, r, owner=ALICE)
    sizes = [replica.version_size(r) for r in reqs]
    assert quota.usage_of(kv, ALICE) == sum(sizes)
    collect.collect_step(kv, 5, reqs[2].ts)  # the two oldest go
    assert quota.usage_of(kv, ALICE) == sizes[2] + sizes[3]
    _consistent(kv)
    done = collect.verified_step(
        kv,
        5,
        mark=reqs[2].ts,
        flag=reqs[2].ts,
        poisonous=[reqs[3].ts],
        now_ns=10**18,
        retention=RetentionPolicy(keep_hourly=0, keep_daily=0, keep_seconds=0, keep_versions=1),
    )
    assert done.discarded == 1
    assert _consistent(kv) == {ALICE: sizes[2]}
    collect.collect_step(kv, 5, _write(5, b"", 10**6).ts)  # everything goes
    assert quota.usages(kv) == {} and quota.usage_of(kv, ALICE) == 0
    _consistent(kv)


def test_a_healed_version_keeps_its_single_charge() -> None:
    kv = MemoryKV()
    good = _write(9, b"h" * 4096, 50)
    replica.store_write(kv, good, owner=ALICE)
    kv.put("rw.versions", list(kv.scan("rw.versions", b"", b"\xff" * 64))[0][0], b"\x00rot")
    reply = replica.store_write(kv, good, owner=BOB)  # the scrub's rewrite
    assert not reply.new
    assert _consistent(kv) == {ALICE: replica.version_size(good)}


def test_quota_rule() -> None:
    assert not quota.over(90, 10, 100, empty=False)
    assert quota.over(91, 10, 100, empty=False)
    assert not quota.over(10**9, 10, 100, empty=True)
    assert not quota.over(10**9, 10, None, empty=False)


# --- [limits] ----------------------------------------------------------------------------


def test_limits_table_defaults_and_errors() -> None:
    assert limits_from(None) == LimitsPolicy()
    got = limits_from({"max_inflight": 8, "requests_per_second": 50, "quota_fraction": 0.25})
    assert got.requests_per_second == 50.0 and got.quota_bytes(1 << 20) == 1 << 18
    with pytest.raises(PolicyError, match="unknown key"):
        limits_from({"rate": 1})
    with pytest.raises(PolicyError, match="max_inflight"):
        limits_from({"max_inflight": 0})
    with pytest.raises(PolicyError, match="quota_fraction"):
        limits_from({"quota_fraction": 0.0})
    with pytest.raises(PolicyError, match="requests_per_second"):
        limits_from({"requests_per_second": -1})
    with pytest.raises(PolicyError, match="must be a int"):
        limits_from({"bytes_per_second": 1.5})


def test_limits_round_trip_through_the_configuration(tmp_path: object) -> None:
    from pathlib import Path

    from bftfs import local

    home = Path(str(tmp_path)) / "c"
    cfg = local.init_cluster(home, limits=LimitsPolicy(max_inflight=7, quota_fraction=0.3))
    doc = to_dict(cfg)
    assert doc["limits"]["max_inflight"] == 7
    again = from_dict(doc, home)
    assert again.limits == cfg.limits
    doc["limits"]["burst_seconds"] = 0
    with pytest.raises(ConfigError, match=r"\[limits\] burst_seconds"):
        from_dict(doc, home)


def test_status_text_shows_each_nodes_limits_and_its_largest_principals(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bftfs.cli.status import _print_limits
    from bftfs.local import NodeStatus

    def principal(blocks: int, meta: int, refused: int = 0) -> dict[str, int]:
        return {"stored_bytes": blocks, "meta_bytes": meta, "quota_refused": refused}

    limits = {
        "quota_bytes": 32 << 20,
        "throttled": 7,
        "inflight_waits": 2,
        "quota_refused": 5,
        "principals": {
            str(ALICE): principal(3 << 20, 40 << 10, refused=5),
            str(BOB): principal(0, 2048),
            "1": principal(1 << 20, 0),
            str(int(client_id(2))): principal(100, 0),
            str(int(client_id(3))): principal(0, 0),
        },
    }
    _print_limits(
        [
            NodeStatus(0, "127.0.0.1:1", 10, True, {"limits": limits}, None),
            NodeStatus(1, "127.0.0.1:2", None, False, None, "down"),
        ]
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "limits per client (the quota counts blocks+metadata):"
    assert lines[2].split()[:6] == ["0", "32.0", "MiB", "7", "2", "5"]
    # Broken between principals to fit a terminal (issue 36), under their column.
    assert lines[2].endswith("  5  client0 3.0 MiB+40.0 KiB (5 refused),")
    assert lines[3] == " " * 49 + "node1 1.0 MiB+0 B, client1 0 B+2.0 KiB, +1 more"
    assert lines[4].split() == ["1", "-", "-", "-", "-", "-"]
