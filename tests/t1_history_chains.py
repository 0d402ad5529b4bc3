"""Tier 1: ``qu.chains``, many objects' pasts per request (issue 36, ``bftfs/qu/pastmany.py``):
the server step answers each object exactly as ``qu.versions`` does, cuts pages at a moment,
offers only the states it is asked to, and a malformed request or reply is refused."""

from __future__ import annotations

import hashlib

import pytest

from bftfs.kv import MemoryKV
from bftfs.qu import schema
from bftfs.qu.messages import MessageError
from bftfs.qu.past import THINNED, state_digest, versions_step
from bftfs.qu.pastmany import (
    MAX_OBJECTS,
    SLACK,
    ChainsAsk,
    chains_step,
    parse_chains_reply,
    parse_chains_request,
)
from bftfs.qu.timestamp import ZERO, Timestamp


def ts(t: int) -> Timestamp:
    return Timestamp(t, False, 7, hashlib.blake2b(str(t).encode(), digest_size=32).digest())


def _store(kv: MemoryKV, oid: int, chain: list[tuple[int, bytes]]) -> None:
    """Versions of ``oid`` at times 1, 2, ... (stored_ns 100 x the time), each on the one
    before; states as given."""
    co = ZERO
    for t, state in chain:
        v = schema.Version(ts(t), schema.METHOD, state, b"", co, None, True, (oid,), 100 * t)
        schema.store_version(kv, oid, v)
        co = ts(t)


@pytest.fixture
def kv() -> MemoryKV:
    kv = MemoryKV()
    _store(kv, 1, [(t, f"one-{t}".encode()) for t in range(1, 9)])
    _store(kv, 2, [(1, b"two-1"), (2, b"two-2")])
    return kv


def test_each_objects_page_is_what_qu_versions_answers(kv: MemoryKV) -> None:
    ask = ChainsAsk(((1, ts(8)), (2, ts(2)), (3, ts(5))))
    got = chains_step(kv, ask)
    assert [page for page, _ in got] == [
        versions_step(kv, 1, ts(8), ask.limit),
        versions_step(kv, 2, ts(2), ask.limit),
        [],  # an object this server does not hold
    ]
    assert all(states == [None] * len(page) for page, states in got)  # none asked for


def test_a_page_stops_a_little_past_the_moment_and_offers_the_version_current_then(
    kv: MemoryKV,
) -> None:
    # Object 1's version 5 was stored at 500: current at 550.  Object 2 is asked to the
    # other server (not in ``serve``): its page comes without states.
    ask = ChainsAsk(((1, ts(8)), (2, ts(2))), until_ns=550, moments=(550, 800), serve=(0,))
    (page, states), (page2, states2) = chains_step(kv, ask)
    assert [e[0] for e in page] == [ts(t).encode() for t in range(8, 5 - SLACK - 1, -1)]
    offered = {Timestamp.decode(e[0]): s for e, s in zip(page, states, strict=True) if s}
    assert offered == {ts(5): b"one-5", ts(8): b"one-8"}
    assert len(page2) == 2 and states2 == [None, None]


def test_a_whole_history_offers_every_state_but_a_thinned_versions(kv: MemoryKV) -> None:
    schema.store_thinned(kv, 2, ts(3), ts(2), 300)
    ask = ChainsAsk(((2, ts(3)),), all_states=True, serve=(0,))
    ((page, states),) = chains_step(kv, ask)
    assert [e[2] for e in page] == [THINNED, state_digest(b"two-2"), state_digest(b"two-1")]
    assert states == [None, b"two-2", b"two-1"]


def test_the_reply_is_checked_as_a_qu_versions_reply_is(kv: MemoryKV) -> None:
    ask = ChainsAsk(((1, ts(8)), (2, ts(2))), moments=(550,), serve=(0, 1))
    raw = chains_step(kv, ask)
    got = parse_chains_reply(raw, [ts(8), ts(2)])
    assert [e.lt for e in got.pages[1]] == [ts(2), ts(1)]
    assert got.offered[0] == {ts(5): b"one-5"} and got.offered[1] == {ts(2): b"two-2"}
    with pytest.raises(MessageError):
        parse_chains_reply(raw, [ts(8)])  # one answer per asked object
    with pytest.raises(MessageError):
        parse_chains_reply(raw, [ts(8), ts(1)])  # not a chain from the asked version
    with pytest.raises(MessageError):
        parse_chains_reply([[raw[0][0], [b"x"]], raw[1]], [ts(8), ts(2)])  # states misaligned
    bad_state = [[raw[1][0], [5, None]]]
    with pytest.raises(MessageError):
        parse_chains_reply(bad_state, [ts(2)])


@pytest.mark.parametrize(
    "body",
    [
        None,
        {},
        {"objs": []},
        {"objs": [[1, ts(1).encode()]] * (MAX_OBJECTS + 1)},
        {"objs": [[0, ts(1).encode()]]},
        {"objs": [[1, b"not a timestamp"]]},
        {"objs": [[1]]},
        {"objs": [[1, ts(1).encode()]], "n": 0},
        {"objs": [[1, ts(1).encode()]], "until": -1},
        {"objs": [[1, ts(1).encode()]], "at": [1] * 9},
        {"objs": [[1, ts(1).encode()]], "s": [1]},
        {"objs": [[1, ts(1).encode()]], "s": "all"},
    ],
)
def test_a_malformed_request_is_refused(body: object) -> None:
    with pytest.raises(MessageError):
        parse_chains_request(body)


def test_a_request_reads_back_as_sent() -> None:
    ask = ChainsAsk(((1, ts(3)), (9, ts(4))), 10, 77, (77, 99), False, (1,))
    assert parse_chains_request(ask.to_wire()) == ask
