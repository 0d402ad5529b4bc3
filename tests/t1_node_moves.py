"""What a node does for the partitions its layout moves (issue 66; docs/layout.md, "Moving
partitions"; ``node/moves.py``, ``node/placement.py``), on layouts alone: the
per-partition predicates agree with the layout's ``source_of_object``/``source_of_block``
for every group, a recall is due only when objects start moving out of the group, and the
placement guard takes an id mapped to the node's group or moving from it, refusing the
moved ids ``misplaced`` once the move is finished."""

from __future__ import annotations

import msgpack
import pytest

from bftfs.layout.builder import build, finish_move, grow
from bftfs.layout.model import Layout, LayoutNode
from bftfs.net.server import HandlerError
from bftfs.node.moves import PartitionMoves
from bftfs.node.placement import guard
from bftfs.rw.messages import encode_block_id

IDS = range(1, 3000)


def layouts() -> tuple[Layout, Layout, Layout]:
    """Two groups of four (``t = 1, b = 0``) and four spares; group 2 added, moving; finished."""
    nodes = [LayoutNode(i, "127.0.0.1", 7000 + i, bytes([i + 1]) * 32, f"d{i}") for i in range(12)]
    v1 = build(nodes, 2, t=1, b=0, partitions=64)
    v2 = grow(v1, 1)
    return v1, v2, finish_move(v2)


def test_the_predicates_are_the_layouts_per_group_and_fall_silent_when_finished() -> None:
    v1, v2, v3 = layouts()
    assert v2.moving and v2.moving_out(0) and v2.moving_out(1) and v2.moving_in(2)
    for g in range(3):
        moves = PartitionMoves()
        assert not moves.moving and not moves.objects_out(IDS)  # no layout: nothing moves
        assert not moves.hold(v1, g) and not moves.moving
        assert moves.hold(v2, g) == (g != 2)  # objects start moving out: recall their leases
        assert moves.moving and not moves.hold(v2, g)  # the same move again: nothing new
        assert (moves.moving_out, moves.moving_in) == (v2.moving_out(g), v2.moving_in(g))
        for i in IDS:
            assert moves.object_out(i) == (v2.source_of_object(i) == g)
            assert (moves.block_out(i) is not None) == (v2.source_of_block(i) == g)
            assert moves.block_in(i) == (
                v2.source_of_block(i) is not None and v2.group_of_block(i) == g
            )
        out = [i for i in IDS if moves.object_out(i)]
        kept = [i for i in IDS if not moves.object_out(i)]
        assert moves.objects_out([*kept[:3], *out[:1]]) == bool(out) == (g != 2)
        assert not moves.objects_out(kept)
        block = next(i for i in IDS if v2.source_of_block(i) == 0)
        if g == 0:
            assert moves.block_out(block) == (
                f"block {block:#x} moves from group 0 to group 2 (layout {v2.version})"
            )
        assert not moves.hold(v3, g)
        assert not (moves.moving or moves.moving_out or moves.moving_in)
        assert not any(moves.object_out(i) or moves.block_in(i) or moves.block_out(i) for i in IDS)


def test_the_guard_takes_what_moves_from_the_group_until_the_move_is_finished() -> None:
    _v1, v2, v3 = layouts()

    def request(oid: int) -> bytes:
        return bytes(msgpack.packb({"v": 1, "c": 1, "o": [oid], "h": [], "op": None}))

    def refused(check: object, kind: str, payload: object) -> str | None:
        try:
            check(kind, payload)  # type: ignore[operator]
        except HandlerError as e:
            return e.code
        return None

    moving = next(o for o in IDS if v2.source_of_object(o) == 0)  # from group 0 to group 2
    staying = next(o for o in IDS if v2.group_of_object(o) == 1 and v2.source_of_object(o) is None)
    block = next(b for b in IDS if v2.source_of_block(b) == 1)  # from group 1 to group 2
    read = {"v": 1, "b": encode_block_id(block), "d": True}
    during, after = [guard(v2, g) for g in range(3)], [guard(v3, g) for g in range(3)]
    assert [refused(c, "qu.request", request(moving)) for c in during] == [None, "misplaced", None]
    assert [refused(c, "qu.request", request(moving)) for c in after] == [
        "misplaced", "misplaced", None
    ]  # fmt: skip
    assert [refused(c, "qu.sync", {"oid": staying}) for c in during] == [
        "misplaced", None, "misplaced"
    ]  # fmt: skip
    assert [refused(c, "rw.read_latest", read) for c in during] == ["misplaced", None, None]
    assert [refused(c, "rw.write", read) for c in after] == ["misplaced", "misplaced", None]
    with pytest.raises(HandlerError, match="lives on group 2 of layout 3"):
        after[0]("qu.batch", [["qu.history", {"v": 1, "o": [moving]}]])
