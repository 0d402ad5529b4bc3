"""Tier 1: applied tables rewritten as bytes, and versions stored and read without
decoding their answers, long answers stored as parts (``qu/applied.py``, ``qu/schema.py``):
every shortcut gives exactly the bytes, or the values, of the general path it stands in
for, and an answer's parts are stored once and freed with the last version holding them."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest

from bftfs.kv import MemoryKV
from bftfs.qu import schema
from bftfs.qu.applied import entry, seq_of, set_entry, with_entry
from bftfs.qu.canon import canonical, canonical_map, map_values, normalise, pack, unpack
from bftfs.qu.timestamp import DIGEST_SIZE, Timestamp

#: Client ids of every msgpack width a table may key by.
WIDTHS = (1 << 7, 1 << 8, 1 << 16, 1 << 32, 1 << 63)


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(6)
    if kind == 0 or depth > 2:
        return rng.randrange(-(1 << 40), 1 << 40)
    if kind == 1:
        return rng.randbytes(rng.randrange(40))
    if kind == 2:
        return "x" * rng.randrange(40)
    if kind == 3:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    if kind == 4:
        return {f"k{i}": _value(rng, depth + 1) for i in range(rng.randrange(20))}
    return None


def _table(rng: random.Random) -> dict[int, Any]:
    clients = {rng.randrange(rng.choice(WIDTHS)) for _ in range(rng.randrange(25))}
    return {c: [rng.randrange(1 << 33), normalise(_value(rng))] for c in clients}


def test_an_entry_spliced_in_gives_the_canonical_table_byte_for_byte() -> None:
    rng = random.Random(64)
    for _ in range(2000):
        table = _table(rng)
        raw = canonical_map(table)
        client = rng.choice([*table, rng.randrange(1 << 32)])
        assert entry(raw, client) == table.get(client)
        assert seq_of(raw, client) == (table[client][0] if client in table else None)
        value = [rng.randrange(1 << 20), normalise(_value(rng))]
        want = canonical_map({**table, client: value})
        assert with_entry(raw, client, pack(value)) == want
        assert set_entry(raw, client, value, pack(value)) == want


@pytest.mark.parametrize(
    "raw",
    [
        msgpack.packb({2: [1, 2], 1: [1, 2]}),  # keys out of canonical order
        msgpack.packb({"a": [1, 2]}),  # a key that is no client id
        msgpack.packb({1: [1, 2]}) + b"\x00",  # bytes after the map
        msgpack.packb([1, 2]),  # not a map
    ],
    ids=["unordered", "string-key", "trailing", "array"],
)
def test_a_table_not_in_canonical_form_is_left_to_the_general_path(raw: bytes) -> None:
    assert with_entry(raw, 3, pack([1, None])) is None
    try:  # the general path: decoded, set, encoded canonically (or failing as it did)
        want = canonical_map({**unpack(raw), 3: [1, None]})
    except (ValueError, TypeError) as e:
        with pytest.raises(type(e)):
            set_entry(raw, 3, [1, None], pack([1, None]))
    else:
        assert set_entry(raw, 3, [1, None], pack([1, None])) == want


def test_a_stored_version_reads_back_its_contents_without_its_answer() -> None:
    rng = random.Random(7)
    kv = MemoryKV()
    for k in range(200):
        answer = normalise(_value(rng))
        state = canonical({"big": rng.randbytes(rng.choice([10, 3000, 9000]))})
        applied = canonical_map(_table(rng))
        lt = Timestamp(k + 1, False, 1, bytes([k % 256]) * DIGEST_SIZE)
        v = schema.Version(lt, schema.METHOD, state, applied, lt, answer, True, (5, 6), 9)
        assert v.encode(packed_answer=pack(answer)) == v.encode()
        assert schema.Version.decode(lt, v.encode()) == v  # a record of format 1
        schema.store_version(kv, 5, v, owner=1, packed_answer=pack(answer))
        assert schema.load_contents(kv, 5, lt) == (schema.METHOD, state, applied)
        assert schema.load_version(kv, 5, lt) == v
    assert schema.load_contents(kv, 5, Timestamp(999, False, 1, bytes(DIGEST_SIZE))) is None


def test_map_values_reads_only_the_keys_asked_for() -> None:
    raw = pack({"a": 1, "b": [2, 3], "c": {"d": 4}})
    assert map_values(raw, ("c", "a")) == {"a": 1, "c": {"d": 4}}
    assert map_values(raw, ("z",)) == {}
    with pytest.raises(ValueError):
        map_values(raw[:5], ("c",))


def test_a_batch_answer_is_stored_once_and_freed_with_its_last_version() -> None:
    rng = random.Random(11)
    kv = MemoryKV()
    stats = [
        {f: rng.randrange(1 << 60) for f in ("ino", "size", "mtime", "ctime", "atime", "mode")}
        for _ in range(30)
    ]  # a write-back batch's answer: each new file's attributes (~5 KB in all)
    answer = normalise([stats, {}])
    lt = Timestamp(5, False, 1, bytes(DIGEST_SIZE))
    objects = tuple(range(100, 131))
    for oid in objects:
        v = schema.Version(lt, schema.METHOD, None, schema.EMPTY_APPLIED, lt, answer, True, objects)
        schema.store_version(kv, oid, v, owner=1, packed_answer=pack(answer))
        assert schema.load_version(kv, oid, lt) == v
        assert schema.version_accepted(kv, oid, lt) == (schema.METHOD, answer)
    records = list(kv.scan(schema.DB_VER, b"", b"\xff" * 9))
    assert all(len(raw) < len(pack(answer)) for _, raw in records)  # each holds a skeleton
    assert list(kv.scan(schema.DB_BLOB, b"", b"\xff" * 33))  # the parts, once
    for oid in objects:
        schema.delete_version(kv, oid, schema.load_version(kv, oid, lt))
    assert not list(kv.scan(schema.DB_BLOB, b"", b"\xff" * 33))
    assert not list(kv.scan(schema.DB_BREF, b"", b"\xff" * 33))
