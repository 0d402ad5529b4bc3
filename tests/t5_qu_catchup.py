"""Tier 5: a restarted Q/U server catches up in the background (issue 22, item 4).

Real transport and LMDB (the in-process cluster): a server is down while objects change,
comes back, and its catch-up (``bftfs/node/qu_catchup.py``) brings exactly those objects up to
date, so the next failure costs readers no repair at all.
"""

from __future__ import annotations

import random
from pathlib import Path

import trio

from bftfs.ids import PrincipalId, client_id
from bftfs.net.errors import RemoteError
from bftfs.qu.classify import QUThresholds
from bftfs.qu.client import QUClient
from bftfs.qu.messages import KIND_LATEST, VERSION, parse_latest_reply
from bftfs.testing.cluster import open_cluster

#: Objects whose preferred quorum is servers 1..5 (object id mod 6 == 1).
OBJECTS = [6 * k + 1 for k in range(12)]


def qu_client(cluster, k: int = 0) -> QUClient:  # noqa: ANN001
    return QUClient(
        cluster.client(k),
        QUThresholds.from_config(cluster.config),
        client_id=int(client_id(k)),
        rng=random.Random(k),
        seq_start=1_000_000 * (k + 1),
    )


async def caught_up(cluster, i: int) -> dict:  # noqa: ANN001
    """Node ``i``'s catch-up progress once it has finished (within 30 s)."""
    with trio.fail_after(30):
        while "qu.catchup" not in cluster.nodes[i].finished:
            await trio.lowlevel.checkpoint()
        await cluster.nodes[i].finished["qu.catchup"].wait()
    return cluster.nodes[i].progress["qu.catchup"]


async def test_a_restarted_server_catches_up_and_the_next_failure_needs_no_repair(
    tmp_path: Path,
) -> None:
    async with open_cluster(tmp_path, clients=2, seed=3) as cl:
        c = qu_client(cl)
        # The start-up catch-up first: run during the updates below it may find node 2
        # a moment behind on an object (updates complete at q of n), a race, not a miss.
        first = await caught_up(cl, 2)
        assert first["state"] == "done" and first["behind"] == 0  # nothing was missed
        for o in OBJECTS:
            await c.update(o, "counter.increment", 1)
        cl.crash(2)
        await cl.wait_stopped(2)
        changed = OBJECTS[:8]
        for o in changed:
            await c.update(o, "counter.increment", 5)
        await cl.recover(2)
        p = await caught_up(cl, 2)
        # Catch-up brings what node 2 missed; the client's own requests that were still in
        # flight to it when it died may also arrive after it is back (the endpoint resends
        # them on reconnect, and under load they can win), so "behind" may be below 8.
        # Either way nothing fails, and the reads below need no repair.
        assert (p["state"], p["failed"]) == ("done", 0) and p["done"] == p["behind"] <= 8
        cl.crash(3)  # the next failure: node 2 must now stand for the quorum
        await cl.wait_stopped(3)
        reader = qu_client(cl, 1)  # no cached histories: it sees what the servers hold
        values = [await reader.query(o, "counter.fetch") for o in OBJECTS]
        assert values == [6] * 8 + [1] * 4
        st = reader.statistics()
        assert (st.barriers, st.copies, st.inline_repairs, st.backoffs) == (0, 0, 0, 0)


async def test_only_nodes_may_list_objects_and_listings_page(tmp_path: Path) -> None:
    async with open_cluster(tmp_path, clients=1, seed=4) as cl:
        c = qu_client(cl)
        for o in OBJECTS:
            await c.update(o, "counter.increment", 1)
        ep = cl.client(0)
        try:
            await ep.call(PrincipalId(1), KIND_LATEST, {"v": VERSION, "after": None})
            raise AssertionError("a client listed a node's objects")
        except RemoteError as e:
            assert e.code == "forbidden"
        node = cl.nodes[0]
        seen: list[int] = []
        after = None
        while True:
            raw = await node.endpoint.call(
                PrincipalId(1), KIND_LATEST, {"v": VERSION, "after": after, "limit": 5}
            )
            items, more = parse_latest_reply(raw)
            seen += [oid for oid, _ in items]
            if not more:
                break
            after = items[-1][0]
        assert seen == OBJECTS
