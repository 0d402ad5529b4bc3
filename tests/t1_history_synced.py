"""Tier 1: a history walk over versions some nodes hold only by object sync (the issue 36
follow-up, ``benchmarks/results/2026-11-27-revert-exit7.md``).

A node that lagged on an object (lost a race for its lease, answered after the quorum)
syncs the version the next update conditions on: it holds that version without its
``lt_co``, so its chain page stops there, although it made the older versions itself.
The walk must still ask those nodes about the older versions before it leaves one's time
unknown; it took a version as asked of every node when *one* node's page reached it, so
the older versions' times came from the two nodes whose pages went on, and ``bftfs
revert`` to a moment between them exited 7 ("cannot be told").
"""

from __future__ import annotations

import hashlib

import trio
from qu_helpers import MemCluster, MemEndpoint

from bftfs.ids import client_id
from bftfs.qu import schema
from bftfs.qu.past import current_at
from bftfs.qu.pastread import End, PastReader, Walk
from bftfs.qu.timestamp import ZERO, Timestamp

OID = 0x5BB72A082C251DA7


def ts(t: int) -> Timestamp:
    return Timestamp(t, False, 7, hashlib.blake2b(str(t).encode(), digest_size=32).digest())


def _chain(cl: MemCluster, synced_at: dict[int, int], *, lacking: bool = False) -> None:
    """Versions 1..4 of OID on every node, stored at 100 x their Time (ns); node ``s`` in
    ``synced_at`` holds version 3 only by object sync, got at ``synced_at[s]`` (and, if
    ``lacking``, not versions 1 and 2 at all)."""
    for s, kv in enumerate(cl.kvs):
        co = ZERO
        for t in range(1, 5):
            if t < 3 and lacking and s in synced_at:
                pass
            elif t == 3 and s in synced_at:
                v = schema.Version(ts(t), schema.SYNCED, b"v3", b"", None, None, False, (),
                                   synced_at[s])  # fmt: skip
            else:
                v = schema.Version(ts(t), schema.METHOD, f"v{t}".encode(), b"", co, None, True,
                                   (OID,), 100 * t)  # fmt: skip
            schema.store_version(kv, OID, v)
            co = ts(t)


def _walk(cl: MemCluster) -> tuple[Walk, PastReader]:
    reader = PastReader(MemEndpoint(cl, int(client_id(0))), cl.th)  # type: ignore[arg-type]
    return trio.run(reader.walk, OID, ts(4)), reader


def test_versions_before_one_synced_get_their_time_from_the_nodes_that_synced_it() -> None:
    # Nodes 2-5 synced version 3 (their pages from 4 stop there); node 0 answers last, so
    # a quorum round agrees on no lt_co for version 3 and every node is asked from it.
    cl = MemCluster()
    cl.slow.add(0)
    _chain(cl, {s: 350 for s in range(2, 6)})
    walk, reader = _walk(cl)
    assert walk.end is End.INITIAL
    assert [a.lt for a in walk.versions] == [ts(4), ts(3), ts(2), ts(1)]
    # Without the fix versions 2 and 1 were of unknown time (reported by nodes 0 and 1).
    assert [a.time_ns for a in walk.versions] == [400, 350, 200, 100]
    at = current_at([a.time_ns for a in walk.versions], 250)
    assert not at.undecided and at.index == 2
    assert reader.timed_on_second_ask == 1  # version 2 (its round brought version 1 too)


def test_a_version_only_b_plus_1_nodes_hold_stays_of_unknown_time() -> None:
    """The control: where the other nodes truly lack the older versions, their time stays
    unknown and a moment between them and a known version is still not decided."""
    cl = MemCluster()
    cl.slow.add(0)
    _chain(cl, {s: 350 for s in range(2, 6)}, lacking=True)
    walk, reader = _walk(cl)
    assert [a.time_ns for a in walk.versions] == [400, 350, None, None]
    assert reader.timed_on_second_ask == 0
    assert current_at([a.time_ns for a in walk.versions], 250).undecided
