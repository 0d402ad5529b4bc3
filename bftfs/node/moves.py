"""What a node of group ``g`` does while the layout it holds moves partitions (issue 66;
docs/layout.md, "Moving partitions"): the partition move's counterpart of a generation's
freeze (``node/generation.py``), per partition instead of per node.

A moving layout names the maps its partitions move from (``Layout.from_objects``,
``from_blocks``).  For one node of group ``g``:

- a partition moving **out** of ``g`` (its source is ``g``) is frozen here: a client's own
  new Q/U operations naming one of its objects are refused ``moved`` exactly as a frozen
  generation's node refuses them (``qu/replica.py``: ``fs.release`` and the move's reads
  ``fs.state`` and ``fs.export`` still served), and so is a client's PASIS write of its
  own version of one of its blocks (``node/rw_server.py``); reads, repairs, catch-up and
  listings go on, so the mover and the mounts can read what ``g`` holds;
- a partition moving **in** to ``g`` (its target is ``g``) is served as any of ``g``'s,
  and its blocks also take the mover's *moved* versions (``rw.write`` with ``mv``), which
  no peer can prove yet; while anything moves in, no given-back block is forgotten
  (``node/rw_forgetter.py``): a reader finding nothing here would read the source's
  older contents;
- while anything moves, ``qu.latest`` lists this node's objects to clients too: the
  partition mover walks every group of the maps moved from (``partmover.walked_groups``),
  those giving no partition away included, since any file's blocks may move.

When the node takes a layout moving partitions out of ``g`` (or starts holding one) it
pushes a recall of the leases stored here on objects moving out
(``node/recalls.recall_stored``),
so their holders write back and release before the objects move.  A finished layout
(``builder.finish_move``) moves nothing: the predicates fall silent, and the placement
guard (``node/placement.py``) refuses the moved partitions ``misplaced``.
"""

from __future__ import annotations

from collections.abc import Iterable

from bftfs.layout.model import Layout, block_partition, object_partition


class PartitionMoves:
    """The partitions the held layout moves out of and into this node's group (module
    docstring); a node without a layout (one group) moves nothing.  ``node/layouts.py``
    calls :meth:`hold` with every layout it takes."""

    def __init__(self) -> None:
        self.layout: Layout | None = None
        self.group = 0
        #: Object and block partitions moving out of the group, and those moving in.
        self._out: tuple[frozenset[int], frozenset[int]] = (frozenset(), frozenset())
        self._in: tuple[frozenset[int], frozenset[int]] = (frozenset(), frozenset())

    def hold(self, layout: Layout, group: int) -> bool:
        """Run on ``layout`` as a node of ``group``; whether objects now move out of the
        group that did not before (their leases are to be recalled)."""
        before = self._out[0]
        self.layout, self.group = layout, group
        self._out = layout.moving_partitions(group, out=True)
        self._in = layout.moving_partitions(group, out=False)
        return not self._out[0] <= before

    @property
    def moving(self) -> bool:
        """Whether the held layout moves partitions (``qu.latest`` answers clients)."""
        return self.layout is not None and self.layout.moving

    @property
    def moving_out(self) -> bool:
        """Whether partitions of either map move out of this group."""
        return bool(self._out[0] or self._out[1])

    @property
    def moving_in(self) -> bool:
        """Whether partitions of either map move to this group (no given-back block is
        forgotten meanwhile)."""
        return bool(self._in[0] or self._in[1])

    def object_out(self, oid: int) -> bool:
        """Whether object ``oid``'s partition moves out of this group."""
        return bool(self._out[0]) and self._object_partition(oid) in self._out[0]

    def objects_out(self, oids: Iterable[int]) -> bool:
        """Whether any of ``oids`` moves out of this group (a client's own operation on
        them is refused ``moved``)."""
        return bool(self._out[0]) and any(self.object_out(o) for o in oids)

    def block_out(self, block: int) -> str | None:
        """Why a client's own new version of ``block`` is refused ``moved`` (its partition
        moves out of this group), or None."""
        if not self._out[1] or self._block_partition(block) not in self._out[1]:
            return None
        assert self.layout is not None
        return (
            f"block {block:#x} moves from group {self.group} to group "
            f"{self.layout.group_of_block(block)} (layout {self.layout.version})"
        )

    def block_in(self, block: int) -> bool:
        """Whether ``block``'s partition moves to this group (the mover's *moved* versions
        of it are taken here)."""
        return bool(self._in[1]) and self._block_partition(block) in self._in[1]

    def _object_partition(self, oid: int) -> int | None:
        assert self.layout is not None
        return object_partition(oid, self.layout.partitions) if 0 <= oid < 1 << 128 else None

    def _block_partition(self, block: int) -> int | None:
        assert self.layout is not None
        return block_partition(block, self.layout.partitions) if 0 <= block < 1 << 128 else None
