"""The layout of many BFT groups (issue 66, docs/layout.md): groups built across trust
domains and refused when two nodes of one domain share a group, signed versions checked
like views (the administrator's key, a newer version), the diff of two layouts, and the
partition maps' balance."""

from __future__ import annotations

import random
from dataclasses import replace

import msgpack
import pytest

from bftfs.crypto import AdminKey
from bftfs.layout import codec
from bftfs.layout.builder import assign, build, finish_move, grow, make_groups
from bftfs.layout.diff import diff
from bftfs.layout.model import (
    Group,
    Layout,
    LayoutError,
    LayoutNode,
    block_partition,
    check,
    object_partition,
)
from bftfs.membership import view as viewmod


def nodes(count: int, domains: int, first: int = 0) -> list[LayoutNode]:
    """``count`` nodes spread round-robin over ``domains`` trust domains."""
    return [
        LayoutNode(i, "10.0.0.1", 7000 + i, bytes([i % 256, i // 256]) * 16, f"d{i % domains:02d}")
        for i in range(first, first + count)
    ]


def admin(seed: int) -> AdminKey:
    return AdminKey(random.Random(seed).randbytes(32))


def test_groups_never_hold_two_nodes_of_one_domain() -> None:
    layout = build(nodes(300, 60), 50, partitions=4096)
    assert len(layout.groups) == 50
    for g in layout.groups:
        assert len(g.members) == 6
        assert len({layout.node(m).domain for m in g.members}) == 6
    every = [m for g in layout.groups for m in g.members]
    assert len(every) == len(set(every)) == 300


def test_a_layout_with_two_nodes_of_one_domain_in_a_group_is_refused() -> None:
    # 13 nodes over 6 domains: two groups of 6, node 12 (domain d00) a spare.
    good = build(nodes(13, 6), 2, partitions=16)
    g0, g1 = good.groups
    assert good.node(12).domain == "d00" and 12 not in g0.members + g1.members
    other = next(m for m in g0.members if good.node(m).domain != "d00")
    bad = replace(good, groups=(Group(0, tuple(12 if m == other else m for m in g0.members)), g1))
    with pytest.raises(LayoutError, match="group 0 holds nodes .* of one trust domain 'd00'"):
        check(bad)
    with pytest.raises(LayoutError, match="of one trust domain"):
        codec.sign(bad, admin(1))


def test_the_builder_refuses_too_few_domains_and_says_why() -> None:
    # 5 domains cannot make a group of 6 with no domain twice.
    with pytest.raises(LayoutError, match=r"5 domains .* at most 0 such groups"):
        build(nodes(30, 5), 1)
    # 7 domains of 2 nodes (14 nodes): two groups of 6 fit, three do not.
    assert len(make_groups(nodes(14, 7), 2, 6)) == 2
    with pytest.raises(LayoutError, match="cannot make 3 groups"):
        make_groups(nodes(14, 7), 3, 6)


def test_the_greedy_makes_groups_whenever_the_domains_allow() -> None:
    """Uneven domains: the fullest domains give first, so every feasible count is made."""
    rng = random.Random(7)
    for _ in range(40):
        sizes = [rng.randint(1, 9) for _ in range(rng.randint(6, 12))]
        pool = []
        for d, k in enumerate(sizes):
            pool += [LayoutNode(len(pool) + j, "h", 1, bytes(32), f"x{d}") for j in range(k)]
        best = max(c for c in range(0, 40) if sum(min(k, c) for k in sizes) >= 6 * c)
        groups = make_groups(pool, best, 6)
        dom = {n.id: n.domain for n in pool}
        assert all(len({dom[m] for m in g.members}) == 6 for g in groups)
        with pytest.raises(LayoutError):
            make_groups(pool, best + 1, 6)


def test_signed_by_the_administrator_and_checked() -> None:
    key = admin(1)
    layout = build(nodes(18, 6), 3, partitions=256)
    blob = codec.sign(layout, key)
    assert codec.decode(blob, key.public) == layout
    assert codec.accept(None, blob, key.public) == layout
    # Signed by anyone else: refused.
    intruder = admin(2)
    with pytest.raises(LayoutError, match="not signed by this cluster's administrator"):
        codec.accept(None, codec.sign(layout, intruder), key.public)
    # A flipped byte in the body: refused.
    tampered = bytearray(blob)
    tampered[len(tampered) // 2] ^= 1
    with pytest.raises(LayoutError):
        codec.decode(bytes(tampered), key.public)


def test_a_view_signature_is_not_a_layout_signature() -> None:
    """Same admin key, two document types: each signs under its own domain and magic."""
    from bftfs.config import ClusterConfig
    from bftfs.membership.configview import view_of

    key = admin(1)
    cfg = replace(ClusterConfig.for_test(), admin_key=key.public)
    view_blob = viewmod.sign(view_of(cfg), key)
    with pytest.raises(LayoutError, match="not a signed layout"):
        codec.decode(view_blob, key.public)
    layout_blob = codec.sign(build(nodes(6, 6), 1, partitions=16), key)
    with pytest.raises(viewmod.ViewError, match="not a signed view"):
        viewmod.decode(layout_blob, key.public)


def test_only_newer_versions_are_taken() -> None:
    key = admin(1)
    v1 = build(nodes(12, 6), 1, partitions=64)
    v2 = grow(v1, 1)
    assert v2.version == 2
    held = codec.accept(None, codec.sign(v1, key), key.public)
    held = codec.accept(held, codec.sign(v2, key), key.public)
    assert held == v2
    # A copy of the held one changes nothing; an older one is refused.
    assert codec.accept(held, codec.sign(v2, key), key.public) is held
    with pytest.raises(LayoutError, match="older than the version 2 held"):
        codec.accept(held, codec.sign(v1, key), key.public)
    # Another layout with the held version: the key signed two; refused.
    other = replace(v2, objects=tuple(reversed(v2.objects)))
    with pytest.raises(LayoutError, match="signed two"):
        codec.accept(held, codec.sign(other, key), key.public)


def test_the_encoding_is_canonical() -> None:
    key = admin(3)
    layout = build(nodes(12, 6), 2, partitions=16)
    shuffled = replace(layout, nodes=tuple(reversed(layout.nodes)))
    assert codec.encode_body(shuffled) == codec.encode_body(layout)
    assert codec.decode(codec.sign(shuffled, key), key.public) == layout


def test_partitions_are_balanced_and_kept_when_groups_are_added() -> None:
    table = assign(4096, 50)
    counts = [table.count(g) for g in range(50)]
    assert max(counts) - min(counts) <= 1
    grown = assign(4096, 51, table)
    moved = sum(a != b for a, b in zip(table, grown, strict=True))
    # About a 51st of the partitions move, all of them to the new group.
    assert moved == grown.count(50) == 4096 // 51 + (1 if 50 < 4096 % 51 else 0)
    assert all(b == 50 for a, b in zip(table, grown, strict=True) if a != b)


def test_the_diff_names_the_partitions_that_move() -> None:
    v1 = build(nodes(18, 6), 2, partitions=256)
    v2 = grow(v1, 1)
    d = diff(v1, v2)
    assert (d.old, d.new, d.added, d.regrouped) == (1, 2, (2,), ())
    assert {m.target for m in d.objects} == {2} and {m.target for m in d.blocks} == {2}
    assert len(d.objects) == v2.objects.count(2) == 85
    assert all(v1.objects[m.partition] == m.source for m in d.objects)
    assert 0.3 < d.moved_fraction < 0.35
    # A node replaced in group 0: that group is regrouped, nothing moves.
    spare = LayoutNode(99, "10.0.0.9", 7099, bytes([99]) * 32, "d-new")
    g0 = v2.groups[0]
    v3 = replace(
        v2,
        version=3,
        nodes=(*v2.nodes, spare),
        groups=(Group(0, (*g0.members[:5], 99)), *v2.groups[1:]),
    )
    d3 = diff(v2, check(v3))
    assert (d3.objects, d3.blocks, d3.regrouped, d3.added) == ((), (), (0,), ())
    with pytest.raises(LayoutError, match="not newer"):
        diff(v2, v1)


def test_ids_spread_over_partitions_and_route_to_their_group() -> None:
    layout = build(nodes(300, 60), 50, partitions=4096)
    rng = random.Random(5)
    oids = [rng.getrandbits(64) for _ in range(20000)]
    per_group = [0] * 50
    for oid in oids:
        per_group[layout.group_of_object(oid)] += 1
    assert min(per_group) > 250 and max(per_group) < 560  # 400 expected each
    assert object_partition(12345, 4096) == object_partition(12345, 4096)
    # Objects and blocks hash apart: a block is not placed with its file's object.
    same = sum(object_partition(o, 4096) == block_partition(o, 4096) for o in oids[:2000])
    assert same < 10


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 0}, "version must be at least 1"),
        ({"partitions": 100}, "power of two"),
        ({"t": 1, "b": 2}, "b <= t"),
        ({"objects": (0,) * 15}, "objects map has 15 entries"),
        ({"blocks": (5,) * 16}, "names a group the layout lacks"),
    ],
)
def test_each_broken_rule_is_named(change: dict[str, object], message: str) -> None:
    layout = build(nodes(6, 6), 1, partitions=16)
    with pytest.raises(LayoutError, match=message):
        check(replace(layout, **change))  # type: ignore[arg-type]


def test_small_groups_and_a_node_in_two_groups_are_refused() -> None:
    layout: Layout = build(nodes(12, 6), 2, partitions=16)
    g0, g1 = layout.groups
    with pytest.raises(LayoutError, match="Q/U needs n >= 3t \\+ 2b \\+ 1 = 6"):
        check(replace(layout, groups=(Group(0, g0.members[:5]), g1)))
    twin = g0.members[0]  # put it in group 1 in place of the node of its domain there
    dom = layout.node(twin).domain
    g1b = Group(1, tuple(twin if layout.node(m).domain == dom else m for m in g1.members))
    with pytest.raises(LayoutError, match=f"node {twin} is in groups 0 and 1"):
        check(replace(layout, groups=(g0, g1b)))


def test_a_grown_layout_moves_from_the_held_maps_and_finishing_drops_them() -> None:
    key = admin(4)
    v1 = build(nodes(18, 6), 2, partitions=64)
    v2 = grow(v1, 1)
    assert v2.moving and (v2.from_objects, v2.from_blocks) == (v1.objects, v1.blocks)
    # Every id whose partition changed group names its source; the others none.
    for oid in range(200):
        src = v2.source_of_object(oid)
        assert src == (v1.group_of_object(oid) if v2.group_of_object(oid) == 2 else None)
        blk = v2.source_of_block(oid)
        assert blk == (v1.group_of_block(oid) if v2.group_of_block(oid) == 2 else None)
    assert v2.moving_out(0) and v2.moving_out(1) and not v2.moving_out(2)
    assert v2.moving_in(2) and not v2.moving_in(0)
    # Signed and read back with the maps it moves from; a layout moving nothing keeps
    # its eight fields (every layout signed before stays byte for byte the same).
    assert codec.decode(codec.sign(v2, key), key.public) == v2
    assert len(msgpack.unpackb(codec.encode_body(v1))) == 8
    assert len(msgpack.unpackb(codec.encode_body(v2))) == 10
    with pytest.raises(LayoutError, match="still moving"):
        grow(v2, 1)
    v3 = finish_move(v2)
    assert (v3.version, v3.objects, v3.moving) == (3, v2.objects, False)
    assert v3.source_of_object(1) is None
    with pytest.raises(LayoutError, match="moves no partitions"):
        finish_move(v3)
    with pytest.raises(LayoutError, match="both objects and blocks"):
        check(replace(v2, from_blocks=()))
    with pytest.raises(LayoutError, match="from_objects map has 3 entries"):
        check(replace(v2, from_objects=(0, 1, 0)))
