"""The layout service (issue 66, docs/layout.md, "The layout service"): one Q/U object
whose update takes only a layout the administrator signed, newer than the one held; its
id lies in partition 0 of every partition count, which no grown layout moves, and
outside the ids clients draw for files."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bftfs.crypto import AdminKey
from bftfs.fsobjects.limits import MAX_OID
from bftfs.layout import codec
from bftfs.layout.builder import build, finish_move, grow
from bftfs.layout.model import MAX_PARTITIONS, LayoutNode, object_partition
from bftfs.layout.service import GET, LAYOUT_OID, PUT, find_layout_oid, layout_type
from bftfs.qu.canon import canonical
from bftfs.qu.objects import MethodRefused, Registry


def _nodes(count: int) -> list[LayoutNode]:
    return [
        LayoutNode(i, "127.0.0.1", 7000 + i, bytes([i + 1]) * 32, f"d{i % 6}") for i in range(count)
    ]


def test_the_object_lies_in_partition_0_of_every_count_which_never_moves() -> None:
    assert find_layout_oid() == LAYOUT_OID and LAYOUT_OID > MAX_OID
    p = 1
    while p <= MAX_PARTITIONS:
        assert object_partition(LAYOUT_OID, p) == 0
        p *= 2
    v1 = build(_nodes(24), 2, partitions=256)
    v2 = grow(v1, 1)
    v3 = grow(finish_move(v2), 1)
    assert (
        v1.objects[0] == v2.objects[0] == v3.objects[0] and v3.source_of_object(LAYOUT_OID) is None
    )


def test_put_takes_only_a_signed_newer_layout_and_get_answers_it() -> None:
    key, other = AdminKey(bytes([7]) * 32), AdminKey(bytes([8]) * 32)
    reg = Registry([layout_type(key.public)])
    v1 = build(_nodes(18), 2, partitions=64)
    v2 = grow(v1, 1)
    b1, b2 = codec.sign(v1, key), codec.sign(v2, key)
    states: dict[int, object] = {LAYOUT_OID: None}
    assert reg.query(GET, states, None) is None
    new, answer = reg.update(PUT, states, b1)
    assert answer == 1 and new == {LAYOUT_OID: canonical(b1)}
    states = {LAYOUT_OID: b1}
    assert reg.update(PUT, states, b1) == ({LAYOUT_OID: canonical(b1)}, 1)  # the same again
    new, answer = reg.update(PUT, states, b2)
    assert answer == 2 and new == {LAYOUT_OID: canonical(b2)}
    states = {LAYOUT_OID: b2}
    assert reg.query(GET, states, None) == b2
    refusals = {
        "stale_layout": b1,
        "conflicting_layout": codec.sign(replace(v2, objects=v2.objects[::-1]), key),
        "bad_layout": codec.sign(v2, other),
    }
    for code, blob in refusals.items():
        with pytest.raises(MethodRefused) as e:
            reg.update(PUT, states, blob)
        assert e.value.code == code
    with pytest.raises(MethodRefused) as e:
        reg.update(PUT, {LAYOUT_OID + 1: None}, b2)
    assert e.value.code == "invalid"
    # A state that is no signed layout (another type's, squatting the id) is replaced.
    assert reg.update(PUT, {LAYOUT_OID: {"k": "f"}}, b1)[1] == 1
