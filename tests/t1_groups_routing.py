"""A mount's router over many groups (issue 66, ``fs/clients/groups.py``): each call goes
to the real Q/U client of the group its objects live on, over in-memory groups
(``tests/qu_helpers.MemCluster``, the node's own request handling); a multi-object update
within one group is atomic there; one whose objects span groups is refused with EXDEV
before any group sees it; a new object drawn near a parent lands in the parent's group."""

from __future__ import annotations

import errno
import random
from typing import Any

import pytest
from qu_helpers import MemCluster

from bftfs.config import ClusterConfig
from bftfs.fs.clients.calls import Meta
from bftfs.fs.clients.groups import CrossGroup, GroupedQU
from bftfs.ids import client_id
from bftfs.layout.builder import build
from bftfs.layout.groups import PlacedConfig
from bftfs.layout.model import Layout, LayoutNode
from bftfs.qu.client import QUClient


def _layout(groups: int = 3) -> Layout:
    nodes = [
        LayoutNode(i, "127.0.0.1", 7000 + i, bytes([i + 1]) * 32, f"d{i}")
        for i in range(6 * groups)
    ]
    return build(nodes, groups, partitions=64)


def _grouped(layout: Layout) -> tuple[GroupedQU, list[MemCluster]]:
    clusters = [MemCluster(seed=g) for g in range(len(layout.groups))]
    clients = [
        QUClient(c.endpoint(0), c.th, client_id=int(client_id(0)), rng=random.Random(g))
        for g, c in enumerate(clusters)
    ]
    return GroupedQU(layout, clients), clusters


def _oids_of(layout: Layout, group: int, count: int) -> list[int]:
    return [o for o in range(2, 100_000) if layout.group_of_object(o) == group][:count]


async def test_each_call_goes_to_its_objects_group_only() -> None:
    layout = _layout()
    qu, clusters = _grouped(layout)
    for g in range(3):
        (oid,) = _oids_of(layout, g, 1)
        before = [c.requests for c in clusters]
        assert await qu.update(oid, "counter.increment", 5) is not None
        assert await qu.query(oid, "counter.fetch") == 5
        grew = [c.requests - b for c, b in zip(clusters, before, strict=True)]
        assert grew[g] > 0 and all(n == 0 for i, n in enumerate(grew) if i != g)


async def test_a_multi_object_update_within_a_group_is_atomic_there() -> None:
    layout = _layout()
    qu, _ = _grouped(layout)
    a, b = _oids_of(layout, 1, 2)
    await qu.update(a, "counter.increment", 10)
    await qu.update([a, b], "counter.transfer", [a, b, 4])
    answer, _at = await qu.query_many_at([a, b], "counter.fetch_all")
    assert answer == [6, 4] or dict(answer) == {a: 6, b: 4}


async def test_an_update_spanning_groups_is_exdev_and_reaches_no_group() -> None:
    layout = _layout()
    qu, clusters = _grouped(layout)
    (a,) = _oids_of(layout, 0, 1)
    (b,) = _oids_of(layout, 2, 1)
    await qu.update(a, "counter.increment", 10)
    before = [c.requests for c in clusters]
    with pytest.raises(CrossGroup, match="objects on 2 groups") as e:
        await qu.update([a, b], "counter.transfer", [a, b, 4])
    assert e.value.errno == errno.EXDEV and qu.crossed == 1
    assert [c.requests for c in clusters] == before
    assert await qu.query(a, "counter.fetch") == 10


def test_a_new_object_near_a_parent_lands_in_the_parents_group() -> None:
    layout = _layout()
    base = ClusterConfig.for_test()
    config: Any = PlacedConfig(
        **{k: getattr(base, k) for k in base.__dataclass_fields__}, layout=layout
    )
    meta = Meta(None, None, config, rng=random.Random(3), clock_ns=lambda: 0)  # type: ignore[arg-type]
    plain = Meta(None, None, base, rng=random.Random(3), clock_ns=lambda: 0)  # type: ignore[arg-type]
    for parent in _oids_of(layout, 0, 5) + _oids_of(layout, 2, 5):
        oid = meta.new_oid(near=parent)
        assert layout.group_of_object(oid) == layout.group_of_object(parent)
        assert (oid - parent) % config.n == 0  # still the parent's preferred quorum
    drawn = {layout.group_of_object(plain.new_oid(near=2)) for _ in range(40)}
    assert len(drawn) > 1  # without a layout the draw ignores groups (the test can fail)
