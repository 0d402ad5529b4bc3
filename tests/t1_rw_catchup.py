"""Tier 1: the pure parts of a restarted node's catch-up (``bftfs/rw/behind.py``), the
``rw.list`` wire format and the node-side listing step."""

from __future__ import annotations

import random

import pytest
from rw_helpers import ts

from bftfs import erasure
from bftfs.kv import MemoryKV
from bftfs.rw import replica
from bftfs.rw.behind import (
    Listed,
    ListingMerge,
    NeedPages,
    NotValidated,
    Verdict,
    is_candidate,
    judge,
    own_fragment,
)
from bftfs.rw.classify import Kind
from bftfs.rw.messages import (
    BLOCK_ID_LIMIT,
    MAX_LIST,
    BlockId,
    ListReply,
    ListRequest,
    MessageError,
    WriteRequest,
    encode_block_id,
)
from bftfs.rw.timestamp import ZERO, Timestamp, make_timestamp
from bftfs.rw.verify import ReadOutcome

N, M = 6, 3


def run_merge(
    listings: dict[int, list[tuple[int, Timestamp]]], need: int, page: int = 3
) -> tuple[list[Listed], int]:
    """Drive a merge over honest paged listings; (what it yields, pages fetched)."""
    merge = ListingMerge(listings, need)
    out: list[Listed] = []
    pages = 0
    while (step := merge.step()) is not None:
        if isinstance(step, NeedPages):
            for peer, after in step.after.items():
                pages += 1
                rest = [e for e in listings[peer] if after is None or e[0] > after]
                req = ListRequest(after, page)
                reply = ListReply(tuple((BlockId(b), t) for b, t in rest[:page]), len(rest) > page)
                merge.feed(peer, ListReply.from_wire(reply.to_wire(), req))
        else:
            out.append(step)
    return out, pages


# --- which listed blocks to consider ------------------------------------------------------


def test_merge_yields_exactly_the_blocks_listed_by_need_peers_in_order() -> None:
    rng = random.Random(7)
    for _ in range(200):
        peers = rng.randint(1, 6)
        need = rng.randint(1, 3)
        listings = {
            p: sorted((b, ts(b, writer=p)) for b in rng.sample(range(40), rng.randint(0, 25)))
            for p in range(peers)
        }
        got, _pages = run_merge(listings, need, page=rng.randint(1, 5))
        expect = sorted(
            b
            for b in range(40)
            if sum(any(e[0] == b for e in lst) for lst in listings.values()) >= need
        )
        assert [g.block for g in got] == expect
        for g in got:
            assert g.latest == {
                p: ts(g.block, writer=p)
                for p in listings
                if any(e[0] == g.block for e in listings[p])
            }


def test_one_peer_listing_endless_invented_blocks_costs_pages_not_reads() -> None:
    """b = 1: the liar lists every block id (dense), the honest peers a few far apart."""
    honest = [(10**6 * k, ts(k)) for k in range(1, 4)]
    listings = {0: honest, 1: honest, 2: honest}

    merge = ListingMerge([0, 1, 2, 9], need=2)
    got: list[int] = []
    liar_pages = 0
    while (step := merge.step()) is not None:
        if isinstance(step, NeedPages):
            for peer, after in step.after.items():
                start = 0 if after is None else after + 1
                req = ListRequest(after, 8)
                if peer == 9:
                    liar_pages += 1
                    entries = tuple((BlockId(start + i), ts(start + i, 9)) for i in range(8))
                    merge.feed(peer, ListReply.from_wire(ListReply(entries, True).to_wire(), req))
                else:
                    rest = [(BlockId(b), t) for b, t in listings[peer] if b >= start]
                    merge.feed(peer, ListReply(tuple(rest[:8]), len(rest) > 8))
        else:
            got.append(step.block)
    assert got == [b for b, _ in honest]
    # One liar page per block the honest peers list (each jump), plus the first and last.
    assert liar_pages <= len(honest) + 2


def test_merge_with_too_few_peers_yields_nothing() -> None:
    got, _ = run_merge({0: [(1, ts(1))]}, need=2)
    assert got == []


def test_dropped_peer_no_longer_counts() -> None:
    merge = ListingMerge([0, 1], need=2)
    step = merge.step()
    assert isinstance(step, NeedPages) and set(step.after) == {0, 1}
    merge.feed(0, ListReply(((BlockId(5), ts(5)),), False))
    merge.drop(1)
    assert merge.step() is None
    assert merge.peers == [0]


def test_candidate_needs_need_peers_reporting_a_version_this_node_lacks() -> None:
    held = {ts(1)}
    hosts = held.__contains__
    assert not is_candidate({0: ts(1), 1: ts(1), 2: ts(2)}, hosts, need=2)
    assert is_candidate({0: ts(2), 1: ts(3), 2: ts(1)}, hosts, need=2)
    assert not is_candidate({0: ts(2)}, hosts, need=2)  # one peer (perhaps lying) is not enough


# --- what a read proves -------------------------------------------------------------------


def outcome_of(data: bytes, time: int = 5, kind: Kind = Kind.COMPLETE) -> ReadOutcome:
    enc = erasure.encode(data, M, N)
    stamp = make_timestamp(time, 1 << 16, enc.verifier)
    return ReadOutcome(stamp, kind, data, enc.cross_checksum, enc.fragments)


def test_judge() -> None:
    out = outcome_of(b"x" * 100)
    assert judge(out, lambda _t: False, ZERO) is Verdict.BEHIND
    assert judge(out, lambda t: t == out.ts, ZERO) is Verdict.CURRENT
    above = Timestamp(out.ts.time + 1, 0, bytes(32))
    assert judge(out, lambda _t: False, above) is Verdict.CURRENT  # collected here already
    rep = outcome_of(b"y", kind=Kind.REPAIR)
    assert judge(rep, lambda _t: False, ZERO) is Verdict.INCOMPLETE
    zero = ReadOutcome(ZERO, Kind.COMPLETE, b"", None, ())
    assert judge(zero, lambda _t: False, ZERO) is Verdict.CURRENT


@pytest.mark.parametrize("node", range(N))
def test_own_fragment_is_the_re_encoded_one_and_passes_a_write_check(node: int) -> None:
    data = bytes(random.Random(node).randbytes(1000))
    out = outcome_of(data)
    cc, frag = own_fragment(out, node, N)
    # Encoding is deterministic: the fragment any writer of `data` sent to this node.
    assert frag == erasure.encode(data, M, N).fragments[node]
    replica.check_write(
        WriteRequest(BlockId(1), out.ts, cc, frag),
        node=node,
        n=N,
        now_ns=out.ts.time,
        max_ahead_ns=1,
    )


def test_own_fragment_refuses_what_does_not_validate() -> None:
    out = outcome_of(b"abc" * 50)
    bad = list(out.fragments)
    bad[2] = bytes(len(bad[2]))
    with pytest.raises(NotValidated):
        own_fragment(ReadOutcome(out.ts, out.kind, out.data, out.cross_checksum, tuple(bad)), 2, N)
    other = outcome_of(b"other")
    with pytest.raises(NotValidated):  # cross checksum of another version
        own_fragment(
            ReadOutcome(out.ts, out.kind, out.data, other.cross_checksum, out.fragments), 0, N
        )
    with pytest.raises(NotValidated):
        own_fragment(ReadOutcome(ZERO, Kind.COMPLETE, b"", None, ()), 0, N)


# --- rw.list wire format and node step ---------------------------------------------------


def test_list_request_round_trip_and_limits() -> None:
    for req in (ListRequest(None, 1), ListRequest(BlockId(BLOCK_ID_LIMIT - 1), MAX_LIST)):
        assert ListRequest.from_wire(req.to_wire()) == req
    good = ListRequest(BlockId(3), 5).to_wire()
    for bad in (
        None,
        [],
        {**good, "v": 99},
        {**good, "n": 0},
        {**good, "n": MAX_LIST + 1},
        {**good, "n": True},
        {**good, "n": "5"},
        {**good, "a": b"short"},
        {k: v for k, v in good.items() if k != "n"},
    ):
        with pytest.raises(MessageError):
            ListRequest.from_wire(bad)


def test_list_reply_garbage_is_refused() -> None:
    req = ListRequest(BlockId(10), 3)
    e = [encode_block_id(11), ts(1).encode()]
    ok = {"e": [e], "more": False}
    assert ListReply.from_wire(ok, req).entries == ((11, ts(1)),)
    garbage = [
        None,
        "x",
        {"e": "nope", "more": False},
        {"e": [e], "more": 1},
        {"e": [], "more": True},  # more without entries: paging could never advance
        {"e": [e, e], "more": False},  # not strictly ascending
        {"e": [[encode_block_id(10), ts(1).encode()]], "more": False},  # not above the cursor
        {"e": [[encode_block_id(11), ZERO.encode()]], "more": False},
        {"e": [[encode_block_id(11), b"ts"]], "more": False},
        {"e": [[11, ts(1).encode()]], "more": False},
        {"e": [e[:1]], "more": False},
        {"e": [[encode_block_id(11 + i), ts(1).encode()] for i in range(4)], "more": False},
        {"e": [e]},
    ]
    for g in garbage:
        with pytest.raises(MessageError):
            ListReply.from_wire(g, req)


def _store(kv: MemoryKV, block: int, time: int) -> Timestamp:
    enc = erasure.encode(b"%d@%d" % (block, time), M, N)
    stamp = make_timestamp(time, 1 << 16, enc.verifier)
    replica.store_write(
        kv, WriteRequest(BlockId(block), stamp, enc.cross_checksum, enc.fragments[0])
    )
    return stamp


def test_list_step_pages_blocks_with_their_latest_versions() -> None:
    kv = MemoryKV()
    latest = {}
    for block in (0, 3, 4, 1 << 70, BLOCK_ID_LIMIT - 1):
        for time in (1, 5, 2):
            stamp = _store(kv, block, time)
            if time == 5:
                latest[block] = stamp
    assert replica.list_step(kv, None, 100) == ListReply(tuple(sorted(latest.items())), False)
    first = replica.list_step(kv, None, 2)
    assert first.entries == tuple(sorted(latest.items())[:2]) and first.more
    rest = replica.list_step(kv, first.entries[-1][0], 2)
    assert [b for b, _ in rest.entries] == [4, 1 << 70] and rest.more
    assert replica.list_step(kv, BlockId(1 << 70), 2).entries == (
        (BLOCK_ID_LIMIT - 1, latest[BLOCK_ID_LIMIT - 1]),
    )
    assert replica.list_step(kv, BlockId(BLOCK_ID_LIMIT - 1), 2) == ListReply((), False)
    assert replica.list_step(MemoryKV(), None, 5) == ListReply((), False)
