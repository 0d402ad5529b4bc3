"""A node of one group replaced in the layout (issue 66, ``layout/builder.replace_node``,
docs/layout.md "Replacing a node of a group"): the next version names the newcomer at the
leaving node's place in its group, nothing moves, the leaving node's key is gone, and the
trust-domain rule still holds."""

from __future__ import annotations

import pytest
from t1_layout import admin, nodes

from bftfs.layout import codec
from bftfs.layout.builder import build, replace_node
from bftfs.layout.diff import diff
from bftfs.layout.model import LayoutError, LayoutNode


def test_the_newcomer_takes_the_leaving_nodes_place_and_nothing_moves() -> None:
    v1 = build(nodes(18, 6), 3, partitions=64)
    g1 = v1.groups[1]
    leaving = g1.members[2]
    newcomer = LayoutNode(40, "10.0.0.40", 7040, bytes([40]) * 32, v1.node(leaving).domain)
    v2 = replace_node(v1, leaving, newcomer)
    assert v2.version == 2 and v2.groups[1].members[2] == 40
    assert v2.groups[1].members[:2] == g1.members[:2] and v2.groups[0] == v1.groups[0]
    assert leaving not in {n.id for n in v2.nodes} and v2.node(40) == newcomer
    assert (v2.objects, v2.blocks) == (v1.objects, v1.blocks)
    d = diff(v1, v2)
    assert (d.objects, d.blocks, d.regrouped, d.added) == ((), (), (1,), ())
    key = admin(3)
    assert codec.accept(codec.decode(codec.sign(v1, key), key.public), codec.sign(v2, key),
                        key.public) == v2  # fmt: skip


def test_a_replacement_breaking_a_rule_is_refused() -> None:
    v1 = build(nodes(18, 6), 3, partitions=64)
    g1 = v1.groups[1]
    other = v1.node(g1.members[0]).domain  # a domain the group holds already
    twin = LayoutNode(41, "10.0.0.41", 7041, bytes([41]) * 32, other)
    with pytest.raises(LayoutError, match="one trust domain"):
        replace_node(v1, g1.members[2], twin)
    with pytest.raises(LayoutError, match="in no group"):
        replace_node(v1, 99, twin)
    with pytest.raises(LayoutError, match="in a group"):
        replace_node(v1, g1.members[2], v1.node(v1.groups[0].members[0]))
