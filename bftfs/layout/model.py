"""The layout (issue 66, docs/layout.md): which group of nodes holds which object and block.

A layout is numbered (``version``) and signed by the administrator like a membership view
(``layout/codec.py``).  It names:

- the **nodes**: global id, address, long-term public key and trust-domain label;
- the **groups**: each an ordered list of node ids (a node's index in the list is its id
  inside the group, as Q/U and PASIS number the nodes they run on), all with the layout's
  thresholds ``t`` and ``b``;
- two maps of ``partitions`` partitions each to a group: one for Q/U object ids, one for
  PASIS block ids; an id's partition is a hash of the id (:func:`object_partition`,
  :func:`block_partition`), so where an id lives depends only on the map.

The rules (:func:`check`) are what make many small groups safe against Byzantine nodes: a
group never holds two nodes of one trust domain (so ``b`` liars in a group need ``b``
compromised domains), every group has enough nodes for its thresholds, no node is in two
groups.  Every problem is one :class:`LayoutError` naming the rule.  Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from bftfs.config.model import ConfigError, domain_rule
from bftfs.thresholds import fault_rule, qu_min_servers

#: Largest number of partitions a layout may have (each is an entry of two maps).
MAX_PARTITIONS = 1 << 16
#: Partitions a layout has unless told (Garage's 256; docs/layout.md, "Partitions").
DEFAULT_PARTITIONS = 256


class LayoutError(ConfigError):
    """A layout is malformed, not signed by the administrator, not newer than the one
    held, or breaks a rule; the message says which (a configuration error: exit 3)."""


@dataclass(frozen=True)
class LayoutNode:
    """A node as a layout names it."""

    id: int
    host: str
    port: int
    public_key: bytes
    #: Its trust domain (``[[nodes]] domain``; a node without one is its own).
    domain: str


@dataclass(frozen=True)
class Group:
    """One group: the nodes running Q/U and PASIS together for the partitions mapped to it.
    ``members[i]`` is the global id of the group's node ``i``."""

    id: int
    members: tuple[int, ...]


@dataclass(frozen=True)
class Layout:
    """One numbered layout (see the module docstring)."""

    version: int
    partitions: int
    t: int
    b: int
    nodes: tuple[LayoutNode, ...]
    groups: tuple[Group, ...]
    #: ``objects[p]``: the group holding Q/U objects of partition ``p``.
    objects: tuple[int, ...]
    #: ``blocks[p]``: the group holding PASIS blocks of partition ``p``.
    blocks: tuple[int, ...]
    #: While partitions move (docs/layout.md, "Moving partitions"): the maps they move
    #: from, each as long as ``objects``; empty when nothing moves.  A partition whose
    #: entry differs here from ``objects``/``blocks`` is *moving*: its source group's
    #: nodes keep what they hold of it but take no client's new operation on it (they are
    #: frozen for it), its target group serves it, and what the target lacks is moved
    #: there on first touch and by the mover.
    from_objects: tuple[int, ...] = ()
    from_blocks: tuple[int, ...] = ()

    def node(self, node_id: int) -> LayoutNode:
        """The node with global id ``node_id``.

        Raises:
            LayoutError: the layout has none.
        """
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise LayoutError(f"layout {self.version} has no node {node_id}")

    def group_nodes(self, group: int) -> tuple[LayoutNode, ...]:
        """The nodes of group ``group`` in their in-group order."""
        return tuple(self.node(i) for i in self.groups[group].members)

    def group_of_object(self, oid: int) -> int:
        """The group a Q/U object lives on."""
        return self.objects[object_partition(oid, self.partitions)]

    def group_of_block(self, block: int) -> int:
        """The group a PASIS block lives on."""
        return self.blocks[block_partition(block, self.partitions)]

    @property
    def moving(self) -> bool:
        """Whether partitions are moving (the layout names the maps they move from)."""
        return bool(self.from_objects)

    def source_of_object(self, oid: int) -> int | None:
        """The group object ``oid`` moves from, or None when its partition does not move."""
        if not self.from_objects:
            return None
        p = object_partition(oid, self.partitions)
        return self.from_objects[p] if self.from_objects[p] != self.objects[p] else None

    def source_of_block(self, block: int) -> int | None:
        """The group block ``block`` moves from, or None when its partition does not move."""
        if not self.from_blocks:
            return None
        p = block_partition(block, self.partitions)
        return self.from_blocks[p] if self.from_blocks[p] != self.blocks[p] else None

    def moving_partitions(self, group: int, *, out: bool) -> tuple[frozenset[int], frozenset[int]]:
        """The object and block partitions moving away from ``group`` (``out``) or to it
        (none while nothing moves)."""

        def of(old: tuple[int, ...], new: tuple[int, ...]) -> frozenset[int]:
            return frozenset(
                p
                for p, (a, b) in enumerate(zip(old, new, strict=False))
                if a != b and (a if out else b) == group
            )

        return of(self.from_objects, self.objects), of(self.from_blocks, self.blocks)

    def moving_out(self, group: int) -> bool:
        """Whether some partition of either map moves away from ``group``."""
        return any(self.moving_partitions(group, out=True))

    def moving_in(self, group: int) -> bool:
        """Whether some partition of either map moves to ``group``."""
        return any(self.moving_partitions(group, out=False))

    def describe(self) -> str:
        """One line for logs and messages."""
        sizes = sorted({len(g.members) for g in self.groups})
        return (
            f"layout {self.version}: {len(self.groups)} groups of {'/'.join(map(str, sizes))} "
            f"nodes over {len(self.nodes)} nodes, {self.partitions} partitions, "
            f"t={self.t} b={self.b}" + (", partitions moving" if self.moving else "")
        )


def _partition(tag: bytes, ident: int, partitions: int) -> int:
    """The partition of ``ident`` in the space ``tag``: a keyless hash (not secret: an id's
    place must be computable by everyone, and ids are chosen by clients anyway)."""
    if not 0 <= ident < 1 << 128:
        raise LayoutError(f"id {ident} is not an unsigned 128-bit integer")
    digest = hashlib.blake2b(ident.to_bytes(16, "big"), digest_size=8, person=tag).digest()
    return int.from_bytes(digest, "big") % partitions


def object_partition(oid: int, partitions: int) -> int:
    """The partition of Q/U object ``oid`` (of ``partitions``)."""
    return _partition(b"bftfs-obj-part", oid, partitions)


def block_partition(block: int, partitions: int) -> int:
    """The partition of PASIS block ``block`` (128-bit ``rw.messages.block_id``).  A
    different hash than objects', so a file's blocks spread apart from its attributes."""
    return _partition(b"bftfs-blk-part", block, partitions)


def _check_nodes(layout: Layout) -> None:
    ids = [n.id for n in layout.nodes]
    if len(set(ids)) != len(ids):
        raise LayoutError("layout: a node id appears twice")
    keys = [n.public_key for n in layout.nodes]
    if len(set(keys)) != len(keys):
        raise LayoutError("layout: two nodes have the same public key")
    for n in layout.nodes:
        if n.id < 0 or len(n.public_key) != 32:
            raise LayoutError(f"layout: node {n.id} needs an id >= 0 and a 32-byte key")
        if not 0 <= n.port <= 65535 or not n.host:
            raise LayoutError(f"layout: node {n.id} has a bad address {n.host}:{n.port}")
        if not n.domain or (why := domain_rule(n.domain)) is not None:
            raise LayoutError(f"layout: node {n.id}'s domain {n.domain!r} {why or 'is empty'}")


def check_group(layout: Layout, group: Group, domains: dict[int, str]) -> None:
    """The rules of one group: enough nodes for ``t`` and ``b``, each named by the layout,
    and no two of one trust domain.

    Raises:
        LayoutError: naming the group and the rule.
    """
    need = qu_min_servers(layout.t, layout.b)
    if len(group.members) < need:
        raise LayoutError(
            f"layout: group {group.id} has {len(group.members)} nodes; Q/U needs n >= "
            f"3t + 2b + 1 = {need}"
        )
    seen: dict[str, int] = {}
    for nid in group.members:
        if nid not in domains:
            raise LayoutError(f"layout: group {group.id} names node {nid}, which it lacks")
        dom = domains[nid]
        if dom in seen:
            raise LayoutError(
                f"layout: group {group.id} holds nodes {seen[dom]} and {nid} of one trust "
                f"domain {dom!r} (a group never holds two nodes of one domain: b liars in "
                "a group must take b domains)"
            )
        seen[dom] = nid


def check(layout: Layout) -> Layout:
    """``layout`` if it obeys every rule.

    Raises:
        LayoutError: naming the rule broken.
    """
    if layout.version < 1:
        raise LayoutError(f"layout version must be at least 1, got {layout.version}")
    p = layout.partitions
    if not 1 <= p <= MAX_PARTITIONS or p & (p - 1):
        raise LayoutError(f"layout: partitions must be a power of two up to {MAX_PARTITIONS}")
    if (why := fault_rule(layout.t, layout.b)) is not None:
        raise LayoutError(f"layout: {why}")
    _check_nodes(layout)
    if not layout.groups or [g.id for g in layout.groups] != list(range(len(layout.groups))):
        raise LayoutError("layout: group ids must be 0..G-1 in order, at least one group")
    domains = {n.id: n.domain for n in layout.nodes}
    placed: dict[int, int] = {}
    for g in layout.groups:
        check_group(layout, g, domains)
        for nid in g.members:
            if nid in placed:
                raise LayoutError(
                    f"layout: node {nid} is in groups {placed[nid]} and {g.id} (one group each)"
                )
            placed[nid] = g.id
    if bool(layout.from_objects) != bool(layout.from_blocks):
        raise LayoutError("layout: a move names the maps of both objects and blocks or none")
    for name, table in (
        ("objects", layout.objects),
        ("blocks", layout.blocks),
        *(
            (("from_objects", layout.from_objects), ("from_blocks", layout.from_blocks))
            if layout.moving
            else ()
        ),
    ):
        if len(table) != p:
            raise LayoutError(f"layout: the {name} map has {len(table)} entries, not {p}")
        if any(not 0 <= gid < len(layout.groups) for gid in table):
            raise LayoutError(f"layout: the {name} map names a group the layout lacks")
    return layout
