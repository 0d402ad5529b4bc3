"""Tier 1: the request parsers agree, and the caches behind them never let a forgery pass.

``Request.from_bytes`` (the node's parser for the packed requests clients send) parses OHS
entries once per distinct byte string, and servers remember MAC checks by (history, MAC,
key).  These tests pin that the fast parser gives exactly what the reference parser
``Request.from_wire`` gives - the same request or the same error - on real requests and
on corrupted ones, and that a server still culls an entry whose MAC or history was changed
after the genuine entry was seen (and cached).  ``canonical_map`` (the applied table's
encoder) gives ``canonical``'s bytes.
"""

from __future__ import annotations

import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qu_helpers import MemCluster, send

from bftfs.ids import client_id
from bftfs.qu import schema
from bftfs.qu.canon import CanonicalError, canonical, canonical_map, normalise
from bftfs.qu.history import OHSEntry
from bftfs.qu.messages import MessageError, ReplyStatus
from bftfs.qu.replica import cull
from bftfs.qu.request import Operation, Request, _array_header, _ohs_item, _rh_parsed
from bftfs.qu.timestamp import Candidate, Timestamp

C0 = int(client_id(0))
PQ = [0, 1, 2, 3, 4]


def inc(seq: int) -> Operation:
    return Operation("counter.increment", False, 1, seq)


def _warm() -> tuple[MemCluster, Request]:
    """A cluster after a few updates of object 7, and a request carrying its fresh OHS."""
    cl = MemCluster()
    ohs: dict[int, OHSEntry] = {}
    for seq in range(1, 4):
        reps = send(cl, PQ, Request(C0, (7,), {7: ohs}, inc(seq)))
        assert all(r.status is ReplyStatus.OK for r in reps.values())
        ohs = {s: r.hist[0] for s, r in reps.items()}
    return cl, Request(C0, (7,), {7: ohs}, Operation("counter.fetch", True, None, 0))


def _parse(parser, data: bytes) -> object:
    try:
        return parser(data, 6)
    except MessageError as e:
        return ("error", str(e))


def test_from_bytes_equals_from_wire_on_real_requests() -> None:
    _, req = _warm()
    for r in (req, Request(C0, (3, 7), {3: {}, 7: req.mohs[7], 9: req.mohs[7]}, inc(9))):
        data = r.packed()
        assert Request.from_bytes(data, 6) == Request.from_wire(data, 6) == r
        assert Request.from_bytes(data, 6) == r  # and again, from the entry cache


def test_from_bytes_parses_a_history_the_servers_share_once() -> None:
    """The servers of a quiet object hold one history under different MACs: a node parses
    its bytes once, not once per server, and each entry keeps its own MACs."""
    _, req = _warm()
    ohs = req.mohs[7]
    assert len({e.rh for e in ohs.values()}) == 1 and len(ohs) == 5
    _ohs_item.cache_clear()
    _rh_parsed.cache_clear()
    got = Request.from_bytes(req.packed(), 6)
    assert got == req and _rh_parsed.cache_info().misses == 1
    assert {s: e.auth for s, e in got.mohs[7].items()} == {s: e.auth for s, e in ohs.items()}


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_from_bytes_equals_from_wire_on_corrupted_requests(data: st.DataObject) -> None:
    _, req = _warm()
    raw = bytearray(req.packed())
    Request.from_bytes(bytes(raw), 6)  # warm the entry cache with the genuine entries
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    if data.draw(st.booleans()):
        raw += b"\xc0"  # trailing bytes
    got = bytes(raw)
    assert _parse(Request.from_bytes, got) == _parse(Request.from_wire, got)


def test_from_bytes_keys_entries_by_exact_bytes() -> None:
    """``True == 1`` in Python, but a server id or object id sent as a bool is malformed:
    a cached entry must not make such a request parse."""
    _, req = _warm()
    Request.from_bytes(req.packed(), 6)
    body = req.wire()
    s = body["h"][0][0][0]
    assert s in (0, 1)
    body["h"][0][0][0] = bool(s)
    data = msgpack.packb(body, use_bin_type=True)
    with pytest.raises(MessageError):
        Request.from_wire(data, 6)
    with pytest.raises(MessageError):
        Request.from_bytes(data, 6)


def test_tampered_entries_are_culled_after_the_genuine_ones_were_cached() -> None:
    cl, req = _warm()
    cfg = cl.cfgs[0]
    kept, culled = cull(cfg, Request.from_bytes(req.packed(), 6).mohs)
    assert set(kept[7]) == set(PQ) and culled == ((),)
    rng = random.Random(1)
    ohs = dict(req.mohs[7])
    e = ohs[2]
    assert e.auth is not None
    # Wrong MACs, then a history with a forged newer candidate under the genuine MACs.
    bad_mac = [rng.randbytes(16) for _ in e.auth]
    top = e.rh[0]
    forged = Candidate(Timestamp(top.lt.time + 5, False, C0, bytes(32)), top.lt, top.objects)
    for tampered in (OHSEntry(e.rh, tuple(bad_mac)), OHSEntry((forged, *e.rh), e.auth)):
        ohs[2] = tampered
        bad = Request(C0, (7,), {7: ohs}, req.op)
        kept, culled = cull(cfg, Request.from_bytes(bad.packed(), 6).mohs)
        assert 2 not in kept[7] and culled == ((2,),)
        reps = send(cl, PQ, bad)
        assert all(r.culled == ((2,),) for r in reps.values())


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.text() | st.binary(),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=3) | st.integers(0, 1 << 40), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.integers(-(1 << 63), (1 << 64) - 1) | st.text(max_size=4) | st.booleans(),
        _values,
        max_size=6,
    )
)
def test_canonical_map_equals_canonical_for_normal_values(table: dict) -> None:
    """The applied table is encoded by ``canonical_map``: same bytes as ``canonical``."""
    normal = {k: normalise(v) for k, v in table.items()}
    assert canonical_map(normal) == canonical(table) == canonical(normal)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.integers(-300, 300) | st.integers(-(1 << 63), (1 << 64) - 1) | st.text(max_size=4),
        st.integers(0, 3),
        max_size=12,
    )
)
def test_canonical_map_keys_sort_by_their_own_encoding(table: dict) -> None:
    """Keys come in the order of their msgpack bytes, whatever the fast paths (cached
    string keys, one-byte small ints) take."""
    keys = list(msgpack.unpackb(canonical(table), strict_map_key=False))
    assert keys == sorted(table, key=lambda k: msgpack.packb(k, use_bin_type=True))


def test_canonical_map_refuses_what_canonical_refuses() -> None:
    for bad in ({1 << 64: 1}, {1.5: 1}, {-(1 << 63) - 1: 1}):
        with pytest.raises(CanonicalError):
            canonical(bad)
        with pytest.raises(CanonicalError):
            canonical_map(bad)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=20), st.booleans(), _values, st.integers(0, (1 << 64) - 1))
def test_parsed_operation_keeps_its_canonical_bytes(
    method: str, query: bool, arg: object, seq: int
) -> None:
    op = Operation.from_wire([method, query, arg, seq])
    assert op.canonical() == canonical([method, query, arg, seq])
    assert op.canonical() == Operation(method, query, arg, seq).canonical()


def test_packed_is_pack_of_wire() -> None:
    """``Request.packed`` puts the body together piece by piece (reusing parsed entries'
    bytes): the same bytes as packing ``wire()``, for every shape of request."""
    _, req = _warm()
    ohs = req.mohs[7]
    shapes = [
        req,
        Request(C0, (7,), {7: {}}, inc(1)),
        Request(C0, (3, 7), {3: {}, 7: ohs, 9: ohs}, inc(9)),
        Request(C0, (7,), {7: ohs}, None, {7: ohs}),
        Request(C0, tuple(range(20, 28)), {o: ohs for o in range(20, 28)}, None),
    ]
    for r in shapes:
        data = msgpack.packb(r.wire(), use_bin_type=True)
        assert r.packed() == data
        parsed = Request.from_bytes(data, 6)
        assert parsed.packed() == data and parsed == r
    for count in (0, 1, 15, 16, 65535, 65536):
        assert _array_header(count) == msgpack.packb([0] * count)[: len(_array_header(count))]


def test_stored_history_remembered_as_parsed_equals_parsing_it() -> None:
    """``store_rh`` remembers what it writes as parsed; parsing those bytes afresh gives
    the same history and authenticator."""
    cl, req = _warm()
    kv = cl.kvs[1]
    got = schema.load_rh(kv, 7)
    raw = kv.get(schema.DB_RH, schema.oid_key(7))
    schema._RH_PARSED.pop(raw, None)
    assert schema.load_rh(kv, 7) == got
    assert got[0] == req.mohs[7][1].rh and got[1] == req.mohs[7][1].auth
