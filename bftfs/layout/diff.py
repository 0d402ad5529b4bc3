"""What changes from one layout to the next (docs/layout.md, "Moving partitions"): the
partitions whose group changes, in both maps, and the groups whose nodes change.  The
mover of a later step copies exactly these, and ``bftfs status`` shows their count.
Pure."""

from __future__ import annotations

from dataclasses import dataclass

from bftfs.layout.model import Layout, LayoutError


@dataclass(frozen=True)
class Move:
    """Partition ``partition`` of one map goes from group ``source`` to ``target``."""

    partition: int
    source: int
    target: int


@dataclass(frozen=True)
class LayoutDiff:
    """The difference from layout ``old`` to layout ``new`` (by version)."""

    old: int
    new: int
    #: Object partitions that move, by partition.
    objects: tuple[Move, ...]
    #: Block partitions that move, by partition.
    blocks: tuple[Move, ...]
    #: Groups present in both whose nodes differ (a node replaced: it catches up).
    regrouped: tuple[int, ...]
    #: Groups only ``new`` has.
    added: tuple[int, ...]
    #: Partitions in each map (the same in both layouts).
    partitions: int = 0

    @property
    def moved_fraction(self) -> float:
        """The share of all partitions (both maps) that move."""
        total = 2 * max(self.partitions, 1)
        return (len(self.objects) + len(self.blocks)) / total

    def describe(self) -> str:
        """One line for logs and ``bftfs status``."""
        return (
            f"layout {self.old} -> {self.new}: {len(self.objects)} object and "
            f"{len(self.blocks)} block partitions of {self.partitions} move; groups added "
            f"{list(self.added)}, groups with other nodes {list(self.regrouped)}"
        )


def _moves(old: tuple[int, ...], new: tuple[int, ...]) -> tuple[Move, ...]:
    return tuple(Move(p, a, b) for p, (a, b) in enumerate(zip(old, new, strict=True)) if a != b)


def diff(old: Layout, new: Layout) -> LayoutDiff:
    """What moves from ``old`` to ``new``.

    Raises:
        LayoutError: the two have different partition counts (a layout never changes its
            count: every id would move) or ``new`` is not newer, or removes a group.
    """
    if old.partitions != new.partitions:
        raise LayoutError(
            f"layouts {old.version} and {new.version} have {old.partitions} and "
            f"{new.partitions} partitions: the count never changes"
        )
    if new.version <= old.version:
        raise LayoutError(f"layout {new.version} is not newer than {old.version}")
    if len(new.groups) < len(old.groups):
        raise LayoutError(
            f"layout {new.version} has fewer groups than {old.version}: groups are emptied "
            "(every partition moved off) before a later step may retire them"
        )
    regrouped = tuple(g.id for g in old.groups if set(g.members) != set(new.groups[g.id].members))
    return LayoutDiff(
        old=old.version,
        new=new.version,
        objects=_moves(old.objects, new.objects),
        blocks=_moves(old.blocks, new.blocks),
        regrouped=regrouped,
        added=tuple(range(len(old.groups), len(new.groups))),
        partitions=old.partitions,
    )


def in_move(layout: Layout) -> tuple[tuple[Move, ...], tuple[Move, ...]]:
    """The object and block partitions a moving ``layout`` is moving: those whose group in
    the maps it moves from is not the one of its own maps (``bftfs group show``, and a
    rerun of ``bftfs group add``, which has no older layout at hand); nothing when it
    moves nothing."""
    if not layout.moving:
        return (), ()
    return _moves(layout.from_objects, layout.objects), _moves(layout.from_blocks, layout.blocks)
