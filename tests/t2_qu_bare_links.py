"""Tier 2: a node fetches the stored request that proves a link sent without its proof
(``node/qu_objsync.fetch_proofs``), over real sessions (in-process nodes, TCP, LMDB).

A walk's links past what a request carries go without proofs (``linkproofs.PROOF_BYTES``);
a node that did not take a linked version holds no stored request to check it by, and asks
the others.  A stored request proves itself, so the first answer that shows the link is
taken and a false link is shown by none.
"""

from __future__ import annotations

from pathlib import Path

from qu_helpers import counting_client

from bftfs.ids import NodeId
from bftfs.node.qu_objsync import MAX_PROOF_CALLS, fetch_proofs
from bftfs.qu import schema
from bftfs.qu.classify import QUThresholds
from bftfs.qu.links import MAX_FETCHED, shows
from bftfs.qu.request import Link
from bftfs.qu.timestamp import ZERO, Timestamp
from bftfs.testing.cluster import open_cluster

OID = 23


async def test_a_node_fetches_the_request_that_proves_a_bare_link(tmp_path: Path) -> None:
    async with open_cluster(tmp_path, clients=1, seed=5) as cl:
        c = await counting_client(cl, OID)
        await c.update(OID, "counter.increment", 1)
        node = cl.nodes[0]
        th = QUThresholds.from_config(cl.config)

        def newest(kv: object) -> tuple:
            lt, _ns, _first = next(schema.versions_newest_first(kv, OID))  # type: ignore[arg-type]
            v = schema.load_version(kv, OID, lt)  # type: ignore[arg-type]
            assert v is not None and v.lt_co is not None
            return lt, v.lt_co

        lt, lt_co = node.store.read(newest)
        assert node.store.write_now(lambda kv: schema.delete_request(kv, lt))
        true, false = Link(OID, lt, lt_co), Link(OID, lt, ZERO)
        got = await fetch_proofs(NodeId(0), th, node.endpoint, [true, false])
        assert list(got.found) == [lt] and shows(got.found[lt], th, true)
        assert not shows(got.found[lt], th, false)
        assert got.calls == 1  # the first other node holds it


async def test_links_no_node_stored_cost_at_most_the_budget_of_calls(tmp_path: Path) -> None:
    """A client naming versions no node stored (a Byzantine one: each would cost a call to
    every other node) costs the node at most ``MAX_PROOF_CALLS`` calls a request, and
    proves nothing."""
    async with open_cluster(tmp_path, clients=1, seed=6) as cl:
        c = await counting_client(cl, OID)
        await c.update(OID, "counter.increment", 1)
        node, th = cl.nodes[0], QUThresholds.from_config(cl.config)
        never = [
            Link(OID, Timestamp(10**9 + i, False, 1, bytes(32)), ZERO) for i in range(MAX_FETCHED)
        ]
        assert MAX_FETCHED * (cl.config.n - 1) > MAX_PROOF_CALLS  # the budget binds
        got = await fetch_proofs(NodeId(0), th, node.endpoint, never)
        assert got.found == {} and got.calls == MAX_PROOF_CALLS
        few = await fetch_proofs(NodeId(0), th, node.endpoint, never[:2], budget=3)
        assert few.found == {} and few.calls == 3


def _chain(kv: object) -> list[Link]:
    """Every version of ``OID`` stored at a node, newest first, as links."""
    out = []
    for lt, _ns, _first in schema.versions_newest_first(kv, OID):  # type: ignore[arg-type]
        v = schema.load_version(kv, OID, lt)  # type: ignore[arg-type]
        if v is not None and v.lt_co is not None and v.lt_co != ZERO:
            out.append(Link(OID, lt, v.lt_co))
    return out


async def test_a_stretch_a_node_missed_is_proven_in_one_call(tmp_path: Path) -> None:
    """A node that missed 40 versions (their stored requests gone here) proves the 40 links
    of a walk down them in one call: it names them all (``qu.fetch`` with ``more``)."""
    async with open_cluster(tmp_path, clients=1, seed=7) as cl:
        c = await counting_client(cl, OID)
        for _ in range(40):
            await c.update(OID, "counter.increment", 1)
        node, other = cl.nodes[0], cl.nodes[1]
        th = QUThresholds.from_config(cl.config)
        links = other.store.read(_chain)[:40]
        assert len(links) == 40
        for link in links:
            node.store.write_now(lambda kv, lt=link.lt: schema.delete_request(kv, lt))
        got = await fetch_proofs(NodeId(0), th, node.endpoint, links)
        assert sorted(got.found) == sorted(lk.lt for lk in links)
        assert all(shows(got.found[lk.lt], th, lk) for lk in links)
        assert got.calls == 1


async def test_versions_every_node_missed_some_of_are_proven_in_a_call_per_64(
    tmp_path: Path,
) -> None:
    """Every node lacks the stored requests of the updates whose quorum it was not in,
    scattered down a chain and different at each node (two mounts in one directory).  A
    node proving its missing links asks for them by name, so another node's gaps do not
    end an answer: 10 scattered links in one call (a walk down the other's chain stopped
    at its first gap: a call per one or two links, 8 minutes of an ``unlink``)."""
    async with open_cluster(tmp_path, clients=1, seed=8) as cl:
        c = await counting_client(cl, OID)
        for _ in range(60):
            await c.update(OID, "counter.increment", 1)
        th = QUThresholds.from_config(cl.config)
        links = cl.nodes[1].store.read(_chain)[:60]
        assert len(links) == 60
        for k, node in enumerate(cl.nodes):
            for link in links[k :: th.n]:
                node.store.write_now(lambda kv, lt=link.lt: schema.delete_request(kv, lt))
        lacking = links[0 :: th.n]
        got = await fetch_proofs(NodeId(0), th, cl.nodes[0].endpoint, lacking)
        assert sorted(got.found) == sorted(lk.lt for lk in lacking)
        assert all(shows(got.found[lk.lt], th, lk) for lk in lacking)
        assert got.calls == 1
