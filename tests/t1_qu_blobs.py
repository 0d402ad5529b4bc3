"""Tier 1: large object states stored once per distinct part (bftfs.qu.blobs and the
version store of bftfs.qu.schema), on the in-memory store."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bftfs import fsobjects as obj
from bftfs.fsobjects import dirents as E
from bftfs.kv import MemoryKV
from bftfs.qu import blobs, schema
from bftfs.qu.canon import canonical
from bftfs.qu.retention import history_space
from bftfs.qu.timestamp import Timestamp

NOW = 1_700_000_000_000_000_000


def _dir_state(rng: random.Random, names: int) -> dict:
    ents = E.Entries({})
    for i in range(names):
        ents[b"file-%08d-%d" % (rng.randrange(10**8), i)] = [rng.randrange(1, 1 << 62), 8]
    d = obj.new_dir(obj.ROOT, 0o755, 0, 0, NOW)
    d["e"] = ents.packed()
    return d


def _stored_bytes(kv: MemoryKV) -> int:
    low, high = b"", b"\xff" * 80
    return sum(
        len(k) + len(v)
        for db in (schema.DB_VER, schema.DB_BLOB, schema.DB_BREF)
        for k, v in kv.scan(db, low, high)
    )


def _lt(i: int) -> Timestamp:
    return Timestamp(i + 1, False, 1, bytes(32))


def test_split_and_join_give_back_the_exact_canonical_state() -> None:
    state = canonical(_dir_state(random.Random(1), 5000))
    parts = blobs.split(state)
    assert parts is not None
    skeleton, refs, data, kids = parts
    # The entries' map has a skeleton of its own (64 bucket references), the state's
    # skeleton one reference to it.
    assert len(skeleton) < 200 and len(refs) == 1 and blobs.is_nested(refs[0])
    buckets = kids[blobs.ref_hash(refs[0])]
    assert len(buckets) == E.BUCKETS and len(data) == E.BUCKETS + 1
    assert blobs.references(skeleton) == refs
    assert blobs.join(skeleton, data.get) == state
    with pytest.raises(blobs.BlobError):
        blobs.join(skeleton, lambda h: None)


def test_small_or_non_msgpack_states_are_stored_whole_any_value_splits_exactly() -> None:
    assert blobs.split(canonical(_dir_state(random.Random(2), 20))) is None
    assert blobs.split(b"\xc1" * 5000) is None  # not msgpack
    assert blobs.split(canonical(b"x" * 5000) + b"\x01") is None  # trailing bytes
    assert blobs.split(canonical([b"x" * 20000])[:-1]) is None  # cut short
    same = b"y" * 5000
    # Not canonical (keys unsorted), and two equal blobs: still joined back byte for byte.
    raw = msgpack.packb({"z": b"x" * 20000, "a": 1, "m": {"p": same, "q": same}})
    parts = blobs.split(raw)
    assert parts is not None
    skeleton, refs, data, _kids = parts
    assert len(refs) == 3 and len(data) == 2
    assert blobs.join(skeleton, data.get) == raw
    # A long byte string is one part whatever holds it: its hash is the string's.
    parts = blobs.split(canonical([b"x" * 20000]))
    assert parts is not None and parts[1] == [blobs.blob_hash(b"x" * 20000)]


#: msgpack values as object states hold them (no floats).
_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.binary(max_size=1500)
    | st.text(max_size=300),
    lambda inner: (
        st.lists(inner, max_size=40)
        | st.dictionaries(st.binary(max_size=12) | st.integers(0, 200), inner, max_size=40)
    ),
    max_leaves=150,
)


@settings(max_examples=40, deadline=None)
@given(_VALUES, st.binary(min_size=blobs.SPLIT_MIN, max_size=blobs.SPLIT_MIN + 10))
def test_every_value_joins_back_exactly(value: Any, pad: bytes) -> None:
    for state in (canonical(value), canonical([value, pad]), canonical({"x": value, "p": pad})):
        parts = blobs.split(state)
        if parts is None:
            continue
        skeleton, refs, data, kids = parts
        assert blobs.references(skeleton) == refs
        reached = set(refs) | {e for k in kids.values() for e in k}
        assert {blobs.ref_hash(e) for e in reached} == set(data)
        assert set(kids) == {blobs.ref_hash(e) for e in reached if blobs.is_nested(e)}
        assert blobs.join(skeleton, data.get) == state
        for h, d in data.items():
            assert h == (blobs.skeleton_hash(d) if h in kids else blobs.blob_hash(d))


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=blobs.SPLIT_MIN, max_size=3 * blobs.SPLIT_MIN), st.integers(0, 40))
def test_garbage_is_stored_whole_or_joins_back(noise: bytes, cut: int) -> None:
    """Bytes that are not a state (a Byzantine peer's sync answer) never raise: stored
    whole, or split into pieces that join back to them."""
    value = canonical({"h": [[k, noise[k:]] for k in range(3)], "n": noise})
    for state in (noise, value[: len(value) - cut], b"\xdc\xff\xff" + noise):
        parts = blobs.split(state)
        if parts is not None:
            assert blobs.join(parts[0], parts[2].get) == state


def _lock_state(entries: list[list[int]]) -> bytes:
    return canonical({"k": "l", "h": sorted(entries)})


def _stored(kv: MemoryKV, oid: int, i: int, state: bytes, owner: int) -> int:
    """What storing ``state`` as version ``i`` of ``oid`` charged ``owner``."""
    before = schema.usage_of(kv, owner)
    v = schema.Version(_lt(i), "method", state, b"\x80", _lt(i - 1), None, True, (oid,))
    schema.store_version(kv, oid, v, owner)
    return schema.usage_of(kv, owner) - before


A, B = 10, 11


def test_one_clients_locks_are_not_charged_again_to_another_clients_lock() -> None:
    """255 read locks of client A on a lock object (8.5 KB), then B's lock/unlock pairs:
    each of B's versions is charged its skeleton and the one run its entry lands in,
    not A's entries again (issue 60: 8.5 KB a version when stored whole)."""
    rng = random.Random(60)
    mount = rng.randrange(1 << 63)
    mine = [
        [A, mount, 0, 1000 + k, 2 * k + 2, 2 * k + 2, 1, rng.randrange(1 << 63)] for k in range(255)
    ]
    kv = MemoryKV()
    oid, i = 7, 0
    for k in range(1, len(mine) + 1):
        i += 1
        _stored(kv, oid, i, _lock_state(mine[:k]), A)
    whole = len(_lock_state(mine))
    assert whole > 7000
    costs = []
    for n in range(20):
        theirs = [B, 5, 0, 7, 0, 0, 1, NOW + n]
        i += 1
        costs.append(_stored(kv, oid, i, _lock_state([*mine, theirs]), B))
        i += 1
        costs.append(_stored(kv, oid, i, _lock_state(mine), B))
    # A version record (key, skeleton, fields), the lock list's own skeleton (9 parts)
    # and the run the entry lands in.
    assert max(costs) < 2 * blobs.PART_TARGET, costs
    assert sum(costs) / len(costs) < whole / 5, costs


def test_one_clients_xattrs_are_not_charged_again_to_another_clients_creates() -> None:
    """70 xattrs of 900 bytes (A) on a directory, then B's creates in it: each of B's
    versions costs about its skeleton and the bucket it changed (issue 60: 63 KB each)."""
    d = obj.new_dir(obj.ROOT, 0o755, 0, 0, NOW)
    d["x"] = {b"user.big%02d" % k: bytes([k]) * 900 for k in range(70)}
    kv = MemoryKV()
    oid = 1
    _stored(kv, oid, 0, canonical(d), A)
    whole = len(canonical(d))
    costs = []
    for n in range(30):
        ents = E.Entries(d["e"])
        ents[b"file-%d" % n] = [n + 2, 8]
        d = dict(d, e=ents.packed(), v=n + 1, ct=NOW + n, mt=NOW + n)
        costs.append(_stored(kv, oid, n + 1, canonical(d), B))
    assert whole > 60_000
    # The xattrs' own skeleton (66 parts) is shared: the state's skeleton, the entries'.
    assert max(costs) < 1500, costs


def test_a_create_in_a_huge_directory_costs_a_run_not_a_bucket() -> None:
    """Buckets of a 20 000-name directory are about 10 KB, each a packed map in a byte
    string: such a string is walked as the map it holds, so a create stores the run its
    name lands in and the bucket's own skeleton, not the bucket (10 KB, issue 34)."""
    rng = random.Random(62)
    d = _dir_state(rng, 20_000)
    assert min(len(b) for b in d["e"].values()) > blobs.PACKED_MIN
    kv = MemoryKV()
    _stored(kv, 2, 0, canonical(d), A)
    costs = []
    for n in range(20):
        ents = E.Entries(d["e"])
        ents[b"new-%d" % n] = [n + 2, 8]
        d = dict(d, e=ents.packed(), v=n + 1)
        state = canonical(d)
        costs.append(_stored(kv, 2, n + 1, state, B))
        got = schema.load_version(kv, 2, _lt(n + 1))
        assert got is not None and got.state == state
    # The entries' skeleton (64 references, 2.3 KB), the bucket's (about 10), the run the
    # name lands in (1 KiB on average, its length a sum of geometric steps), the record;
    # the bucket and the entries' skeleton when buckets were parts: 12.7 KB.
    assert max(costs) < 8000 and sum(costs) / len(costs) < 6000, costs


def test_a_part_with_a_skeletons_bytes_is_another_blob() -> None:
    """A client can store any bytes, those of a nested skeleton included (an xattr's
    value): a nested skeleton's key is in a hash domain of its own, so the two are two
    blobs and neither's count is taken for the other's."""
    mine = _lock_state([[A, 1, 0, k, k, k, 1, NOW] for k in range(300)])
    parts = blobs.split(mine)
    assert parts is not None
    nested = next(e for e in parts[1] if blobs.is_nested(e))
    skeleton = parts[2][blobs.ref_hash(nested)]
    theirs = canonical({"k": "f", "x": {b"user.a": skeleton, b"user.b": b"p" * 2000}})
    kv = MemoryKV()
    _stored(kv, 1, 0, mine, A)
    _stored(kv, 2, 0, theirs, B)
    assert blobs.blob_hash(skeleton) != blobs.ref_hash(nested)
    for oid in (1, 2):
        v = schema.load_version(kv, oid, _lt(0))
        assert v is not None
        schema.delete_version(kv, oid, v)
    assert schema.audit(kv) == ({}, 0, 0)
    assert list(kv.scan(schema.DB_BLOB, b"", b"\xff" * 33)) == []


def _blob_of(kv: MemoryKV, h: bytes) -> bytes:
    got = kv.get(schema.DB_BLOB, h)
    assert got is not None
    return bytes(got)


def test_history_space_counts_the_parts_only_older_versions_reach() -> None:
    """``bftfs status``'s history figure: an older version's record and the blobs it alone
    reaches, nested skeletons followed (the run its change was in lies under the lock
    list's own skeleton)."""
    kv = MemoryKV()
    entries = [[A, 1, 0, k, k, k, 1, NOW] for k in range(300)]
    schema.store_rh(kv, 6, (), ())
    _stored(kv, 6, 0, _lock_state(entries), A)
    entries[150][7] += 1
    _stored(kv, 6, 1, _lock_state(entries), A)
    old_raw = kv.get(schema.DB_VER, schema.ver_key(6, _lt(0)))
    new_raw = kv.get(schema.DB_VER, schema.ver_key(6, _lt(1)))
    assert old_raw is not None and new_raw is not None

    def reach(raw: bytes) -> set[bytes]:
        out, todo = set(), schema.record_references(raw)
        while todo:
            e = todo.pop()
            out.add(blobs.ref_hash(e))
            if blobs.is_nested(e):
                todo += blobs.references(_blob_of(kv, blobs.ref_hash(e)))
        return out

    only_old = reach(old_raw) - reach(new_raw)
    top = {blobs.ref_hash(e) for e in schema.record_references(old_raw)}
    assert only_old - top  # reached through a nested skeleton only
    space, more = history_space(kv, None, 10)
    assert more is None and space.older_versions == 1
    expected = len(schema.ver_key(6, _lt(0))) + len(old_raw)
    expected += sum(32 + len(_blob_of(kv, h)) for h in only_old)
    assert space.older_bytes == expected


def test_history_of_shared_parts_is_collected_in_any_order() -> None:
    """Versions of several writers sharing parts, deleted in a random order: every
    version reads back until deleted, and the last deletion leaves no part, no count and
    no charge (reference counts, not reachability from the newest)."""
    rng = random.Random(61)
    kv = MemoryKV()
    oid = 9
    entries = [[A, 1, 0, k, k, k, 1, NOW] for k in range(200)]
    states = []
    for i in range(40):
        entries[rng.randrange(len(entries))][7] += 1  # one entry renewed
        if i % 3 == 0:
            entries.append([B, 2, 0, 1000 + i, i, i, 2, NOW])
        state = _lock_state(entries)
        states.append(state)
        big = canonical({A: [1, [[k, b"z" * 20] for k in range(100)]], B: [i, None]})
        v = schema.Version(_lt(i), "method", state, big, None, None, True, (oid,))
        schema.store_version(kv, oid, v, (A, B)[i % 2])
    last = blobs.split(states[-1])
    assert last is not None and any(blobs.is_nested(e) for e in last[1])  # skeletons nest
    order = list(range(40))
    rng.shuffle(order)
    for n, i in enumerate(order):
        gone = schema.load_version(kv, oid, _lt(i))
        assert gone is not None and gone.state == states[i]
        schema.delete_version(kv, oid, gone)
        for j in order[n + 1 :]:
            got = schema.load_version(kv, oid, _lt(j))
            assert got is not None and got.state == states[j]
    assert list(kv.scan(schema.DB_BLOB, b"", b"\xff" * 33)) == []
    assert list(kv.scan(schema.DB_BREF, b"", b"\xff" * 33)) == []
    assert schema.audit(kv) == ({}, 0, 0)


def test_a_large_applied_table_is_stored_in_parts_too() -> None:
    """The applied table holds each client's last answer: one client's long answer is
    stored once, not again in every version another client makes."""
    kv = MemoryKV()
    table = {A: [5, [[k, b"answer"] for k in range(300)]], B: [1, None]}
    state = canonical({"k": "l", "h": []})
    for i in range(10):
        table[B] = [i + 1, None]
        v = schema.Version(_lt(i), "method", state, canonical(table), None, None, True, (3,))
        charged = _stored_version(kv, 3, v, B)
        if i:
            assert charged < 1200, charged
        got = schema.load_version(kv, 3, _lt(i))
        assert got is not None and got.applied == canonical(table)
    assert len(canonical(table)) > 3000


def _stored_version(kv: MemoryKV, oid: int, v: schema.Version, owner: int) -> int:
    before = schema.usage_of(kv, owner)
    schema.store_version(kv, oid, v, owner)
    return schema.usage_of(kv, owner) - before


def test_records_of_the_first_splitter_read_and_share_with_new_ones() -> None:
    """A store written before splitter version 2 (``"sk": true``, long byte strings cut
    at the top two levels of a map) needs no conversion: its records read as before, a
    new version shares its strings (same hashes), and deleting the old one keeps them."""
    kv = MemoryKV()
    long = b"q" * 5000
    state = canonical({"a": 1, "i": long})
    at = state.index(long)
    h = blobs.blob_hash(long)
    skeleton = msgpack.packb([state[:at], h, state[at + len(long) :]], use_bin_type=True)
    old = schema.Version(_lt(0), "method", state, b"\x80", None, None, True, (4,))
    record = msgpack.unpackb(old.encode(skeleton), raw=False)
    record["sk"] = True
    kv.put(schema.DB_VER, schema.ver_key(4, _lt(0)), canonical(record))
    kv.put(schema.DB_BLOB, h, long)
    kv.put(schema.DB_BREF, h, (1).to_bytes(4, "big"))
    got = schema.load_version(kv, 4, _lt(0))
    assert got is not None and got.state == state
    new = schema.Version(_lt(1), "method", state, b"\x80", _lt(0), None, True, (4,))
    schema.store_version(kv, 4, new)
    assert kv.get(schema.DB_BREF, h) == (2).to_bytes(4, "big")
    schema.delete_version(kv, 4, got)
    again = schema.load_version(kv, 4, _lt(1))
    assert again is not None and again.state == state
    schema.delete_version(kv, 4, again)
    assert kv.get(schema.DB_BLOB, h) is None and kv.get(schema.DB_BREF, h) is None


def test_versions_of_a_growing_directory_share_their_unchanged_buckets() -> None:
    """100 versions of a 3000-name directory, one create each: the store holds about one
    bucket per version instead of the whole directory, every version reads back exactly, and
    deleting every version (retention) leaves no blob behind."""
    rng = random.Random(3)
    d = _dir_state(rng, 3000)
    kv = MemoryKV()
    oid, states = 5, []
    for i in range(100):
        ents = E.Entries(d["e"])
        ents[b"new-%d" % i] = [i + 2, 8]
        d = dict(d, e=ents.packed(), v=i + 1)
        state = canonical(d)
        states.append(state)
        schema.store_version(
            kv, oid, schema.Version(_lt(i), "method", state, b"\x80", _lt(i - 1), None, True, ())
        )
    whole = sum(len(s) for s in states)
    assert _stored_bytes(kv) < whole // 10
    for i, state in enumerate(states):
        v = schema.load_version(kv, oid, _lt(i))
        assert v is not None and v.state == state
    assert [v.state for v in schema.iter_versions(kv, oid)] == states
    # Overwriting a version (a synced one replaced by an accepted one) keeps counts right.
    v0 = schema.load_version(kv, oid, _lt(0))
    assert v0 is not None
    schema.store_version(kv, oid, v0)
    for v in schema.iter_versions(kv, oid):
        schema.delete_version(kv, oid, v)
    assert list(kv.scan(schema.DB_BLOB, b"", b"\xff" * 33)) == []
    assert list(kv.scan(schema.DB_BREF, b"", b"\xff" * 33)) == []


def test_a_missing_blob_is_reported_as_local_corruption() -> None:
    kv = MemoryKV()
    state = canonical(_dir_state(random.Random(4), 3000))
    schema.store_version(
        kv, 5, schema.Version(_lt(0), "method", state, b"\x80", None, None, True, ())
    )
    h = next(k for k, _ in kv.scan(schema.DB_BLOB, b"", b"\xff" * 33))
    kv.delete(schema.DB_BLOB, h)
    with pytest.raises(schema.SchemaError):
        schema.load_version(kv, 5, _lt(0))
