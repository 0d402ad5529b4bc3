"""Tier 3: a Q/U repair whose deduction names more objects than one request may (the
cluster's ``max_objects``: 8 here, a cluster file from before nodes took 32) is made a
candidate at a time, not answered with EIO (``TooManyObjects``), on the in-process
cluster (real node services, TCP, LMDB); at 32 the same deduction is one request.

Found by ``t4_held_listings``' ``rm -rf`` of 3 000 files under load: 12 lookups answered
EIO, the mount's log naming a repair whose deduction spanned 15 objects.  A batched update
that looks incomplete to the servers that answer pulls every object it names into the
deduction (``classify.missing_objects``), and one of those objects' own latest update, a
newer batch, pulls in its objects too: a chain.  Here, with ``n = 6, q = 5, r = 3``: a
writer's three 4-object updates, each conditioned on the one before, reach nodes 0-4 only
(node 5 drops the writer's requests), and node 4 stops.  Every live quorum shows each of
them at order 4: repairable, not complete, and no server's histories show more (so reading
every server's, ``Presenter.widen``, does not help).  From the first object the deduction
names 10 objects.  Before the fix the operation gave up (``MAX_SPLITS`` backoffs, then
``TooManyObjects``); now the repair takes the newest of the chain on its own first
(``core.split_target``), and the operation completes with all-or-nothing intact.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.lowlevel

from bftfs.ids import client_id
from bftfs.qu import schema
from bftfs.qu.timestamp import MAX_OBJECTS, NARROW_OBJECTS
from bftfs.testing.cluster import Cluster, open_cluster, qu_client

#: The chain's first object (a directory) and the three objects each update adds.
D = 6
A = (12, 18, 24)
B = (30, 36, 42)
C = (48, 54, 60)
#: The updates, oldest first: each names the last update's newest object and three more.
CHAIN = ((D, *A), (A[0], *B), (B[0], *C))
#: The node that misses every update of the chain, and the one that stops after it.
MISSED, STOPPED = 5, 4
WRITER, READER = 1, 0


def versions(cl: Cluster, node: int, oid: int) -> int:
    """How many versions of ``oid`` node ``node`` stores."""
    return cl.nodes[node].store.read(lambda kv: len(list(schema.iter_versions(kv, oid))))


async def write_chain(cl: Cluster) -> None:
    """The chain of updates, each complete for its writer (at nodes 0-4, ``q``), none at
    node :data:`MISSED` (which drops the writer's requests); then node :data:`STOPPED`
    stops: each update is at 4 of the 5 live nodes."""
    for node in cl.nodes:  # the start's catch-up is over: it would take the chain at 5
        while "qu.catchup" not in node.finished:
            await trio.lowlevel.checkpoint()
        await node.finished["qu.catchup"].wait()
    writer = qu_client(cl, WRITER)
    cl.faults[MISSED].link(int(client_id(WRITER))).drop(1.0)
    for objs in CHAIN:
        await writer.update(objs, "counter.add_all", 1)
    for oid in (D, *A, *B, *C):  # the situation is the one meant: node 5 has none
        assert versions(cl, MISSED, oid) == 0 < versions(cl, 0, oid)
    cl.crash(STOPPED)
    await cl.wait_stopped(STOPPED)
    # Node 5 keeps dropping the writer's requests: its endpoint resends those still in
    # flight in the background (stragglers complete at slow nodes, ``Endpoint``), and
    # node 5 would then take the chain after all.


@pytest.mark.parametrize("width", [NARROW_OBJECTS, MAX_OBJECTS])
@pytest.mark.parametrize("operation", ["query", "update"])
async def test_an_operation_whose_repair_deduces_ten_objects_completes(
    tmp_path: Path, operation: str, width: int
) -> None:
    """A query (a lookup's) or an update of the chain's first object, with five nodes up:
    answered, each update of the chain having taken effect at all of its objects; split
    into repairs of one candidate each where 10 objects are more than a request names."""
    async with open_cluster(tmp_path, clients=2, seed=67, max_objects=width) as cl:
        await write_chain(cl)
        reader = qu_client(cl, READER)
        if operation == "query":
            assert await reader.query(D, "counter.fetch") == 1
        else:
            assert await reader.update(D, "counter.increment", 1) == 2
        stats = reader.statistics()
        if width < 10:
            assert stats.split_repairs >= 1, stats  # too wide for one request
        else:
            assert stats.split_repairs == 0, stats
        # All-or-nothing: each update of the chain counts once at each of its objects.
        got = await reader.query([D, A[0], A[1], B[0], B[1], C[0], C[2]], "counter.fetch_all")
        assert dict(got) == {
            D: 1 + (operation == "update"),
            A[0]: 2,
            A[1]: 1,
            B[0]: 2,
            B[1]: 1,
            C[0]: 1,
            C[2]: 1,
        }
