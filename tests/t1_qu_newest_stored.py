"""The newest timestamp of a stored replica history read without parsing its candidates
(``schema.newest_stored``, what ``qu.latest`` answers for every object a server holds):
equal to the parsed history's newest for every stored history, cached or not; a history
not newest first, or not one at all, refused as the parsing refuses it."""

from __future__ import annotations

import random

import pytest

from bftfs.kv import MemoryKV
from bftfs.qu import schema
from bftfs.qu.canon import pack
from bftfs.qu.history import INITIAL_RH, make_rh, newest, rh_wire
from bftfs.qu.reads import handle_latest
from bftfs.qu.timestamp import ZERO, Candidate, Timestamp


def _history(rnd: random.Random, oid: int) -> tuple:
    times = sorted(rnd.sample(range(1, 10_000), rnd.randint(1, 12)))
    cands, before = [], ZERO
    for t in times:
        lt = Timestamp(t, rnd.random() < 0.2, rnd.randrange(1 << 20), rnd.randbytes(32))
        cands.append(Candidate(lt, before, (oid,)))
        before = lt
    return make_rh(cands)


def test_the_newest_read_from_the_bytes_is_the_parsed_historys_newest() -> None:
    rnd = random.Random(6201)
    kv = MemoryKV()
    expected = {}
    for oid in range(1, 301):
        rh = INITIAL_RH if oid % 50 == 0 else _history(rnd, oid)
        schema.store_rh(kv, oid, rh, tuple(rnd.randbytes(16) for _ in range(6)))
        expected[oid] = newest(rh).encode()
    schema._RH_PARSED.clear()  # as after a restart: nothing parsed yet
    listed = handle_latest(kv, None, 1024)
    assert dict(listed["o"]) == expected and listed["more"] is False
    assert not schema._RH_PARSED  # the scan parsed no history
    first = handle_latest(kv, 100, 50)
    assert [oid for oid, _ in first["o"]] == list(range(101, 151)) and first["more"] is True
    for oid in (1, 77, 300):  # parsed ones (in the cache) answer the same
        schema.load_rh(kv, oid)
    assert dict(handle_latest(kv, None, 1024)["o"]) == expected


def test_a_history_out_of_order_or_malformed_is_refused() -> None:
    rnd = random.Random(6202)
    rh = _history(rnd, 9)
    while len(rh) < 2:
        rh = _history(rnd, 9)
    wire = rh_wire(rh)
    with pytest.raises(schema.SchemaError):
        schema.newest_stored(pack([list(reversed(wire)), None]))
    for junk in (b"\xc1", pack([[], None]), pack([[[5, b"", []]], None]), pack(7)):
        with pytest.raises(schema.SchemaError):
            schema.newest_stored(junk)
    assert schema.newest_stored(pack([wire, None])) == newest(rh).encode()
