"""Tier 1: large object states stored once per distinct part (bftfs.qu.blobs and the
version store of bftfs.qu.schema), on the in-memory store."""

from __future__ import annotations

import random

import msgpack
import pytest

from bftfs import fsobjects as obj
from bftfs.fsobjects import dirents as E
from bftfs.kv import MemoryKV
from bftfs.qu import blobs, schema
from bftfs.qu.canon import canonical
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
    skeleton, refs, data = parts
    assert len(skeleton) < len(state) // 50 and len(refs) == E.BUCKETS == len(data)
    assert blobs.references(skeleton) == refs
    assert blobs.join(skeleton, data.get) == state
    with pytest.raises(blobs.BlobError):
        blobs.join(skeleton, lambda h: None)


def test_small_or_non_map_states_are_stored_whole_any_map_splits_exactly() -> None:
    assert blobs.split(canonical(_dir_state(random.Random(2), 20))) is None
    assert blobs.split(canonical([b"x" * 20000])) is None
    same = b"y" * 5000
    # Not canonical (keys unsorted), and two equal blobs: still joined back byte for byte.
    raw = msgpack.packb({"z": b"x" * 20000, "a": 1, "m": {"p": same, "q": same}})
    parts = blobs.split(raw)
    assert parts is not None
    skeleton, refs, data = parts
    assert len(refs) == 3 and len(data) == 2
    assert blobs.join(skeleton, data.get) == raw


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
