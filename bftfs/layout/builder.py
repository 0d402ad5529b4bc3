"""Making layouts: groups across trust domains and partitions spread over the groups
(docs/layout.md, "Building").

- :func:`make_groups`: ``count`` groups of ``size`` nodes, no two of one trust domain in a
  group.  Each group takes one node from each of the ``size`` domains with the most nodes
  left (ties by name, then the lowest node id): this greedy makes ``count`` groups
  whenever any assignment can (a domain gives at most one node per group, so
  ``sum(min(nodes in d, count)) >= count * size`` is needed, and taking from the fullest
  domains first keeps that true for the groups left).  When it cannot, a
  :class:`~bftfs.layout.model.LayoutError` says so with the domains' sizes.
- :func:`assign`: partitions over groups as evenly as possible (each group ``P // G`` or
  one more), keeping each partition where a previous map had it while its group is
  within its share: adding a group moves about ``P / G`` partitions, not all of them
  (Garage's layout does the same).
- :func:`build` and :func:`grow`: a first layout, and the next one with groups added;
  :func:`replace_node`: the next one with a node of a group replaced.

Pure and deterministic: the same nodes give the same layout.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from bftfs.config.model import ClusterConfig
from bftfs.layout.model import (
    DEFAULT_PARTITIONS,
    Group,
    Layout,
    LayoutError,
    LayoutNode,
    check,
)
from bftfs.thresholds import qu_min_servers


def nodes_of(cfg: ClusterConfig) -> tuple[LayoutNode, ...]:
    """A configuration's nodes as a layout names them (domain: ``[[nodes]] domain``, or
    each node its own)."""
    return tuple(
        LayoutNode(int(s.id), s.host, s.port, s.public_key, s.trust_domain) for s in cfg.nodes
    )


def make_groups(
    nodes: Iterable[LayoutNode], count: int, size: int, first_id: int = 0
) -> tuple[Group, ...]:
    """``count`` groups of ``size`` of ``nodes``, no two of one trust domain in a group,
    numbered from ``first_id`` (see the module docstring).

    Raises:
        LayoutError: ``nodes`` cannot make them (the message gives the domains' sizes).
    """
    by_domain: dict[str, list[int]] = {}
    for n in sorted(nodes, key=lambda n: n.id):
        by_domain.setdefault(n.domain, []).append(n.id)
    possible = sum(min(len(ids), count) for ids in by_domain.values())
    if count < 0 or size < 1 or possible < count * size:
        sizes = ", ".join(f"{d}: {len(ids)}" for d, ids in sorted(by_domain.items()))
        raise LayoutError(
            f"cannot make {count} groups of {size} nodes with no two nodes of one trust domain "
            f"in a group: {len(by_domain)} domains ({sizes}) give at most "
            f"{possible // max(size, 1)} such groups"
        )
    groups = []
    for k in range(count):
        fullest = sorted(by_domain, key=lambda d: (-len(by_domain[d]), d))[:size]
        members = tuple(by_domain[d].pop(0) for d in fullest)
        groups.append(Group(first_id + k, members))
    return tuple(groups)


def assign(partitions: int, groups: int, previous: Sequence[int] = ()) -> tuple[int, ...]:
    """A map of ``partitions`` partitions to ``groups`` groups, even, keeping each
    partition of ``previous`` (an older map) on its group while that group is within its
    share (see the module docstring)."""
    if groups < 1:
        raise LayoutError("a layout needs at least one group")
    share = [partitions // groups + (1 if g < partitions % groups else 0) for g in range(groups)]
    count = [0] * groups
    out: list[int | None] = [None] * partitions
    for p, g in enumerate(previous[:partitions]):
        if 0 <= g < groups and count[g] < share[g]:
            out[p] = g
            count[g] += 1
    for p in range(partitions):
        if out[p] is None:
            g = max(range(groups), key=lambda g: (share[g] - count[g], -g))
            out[p] = g
            count[g] += 1
    return tuple(g for g in out if g is not None)


def build(
    nodes: Sequence[LayoutNode],
    groups: int,
    *,
    t: int = 1,
    b: int = 1,
    size: int | None = None,
    partitions: int = DEFAULT_PARTITIONS,
    version: int = 1,
) -> Layout:
    """A first layout: ``groups`` groups of ``size`` (Q/U's least, ``3t + 2b + 1``, unless
    told) of ``nodes``, partitions spread evenly.  Nodes left over stay in the layout,
    in no group (spares for a later group or a replacement).

    Raises:
        LayoutError: the groups cannot be made across domains, or a rule is broken.
    """
    size = qu_min_servers(t, b) if size is None else size
    made = make_groups(nodes, groups, size)
    table = assign(partitions, groups)
    return check(Layout(version, partitions, t, b, tuple(nodes), made, table, table))


def grow(
    old: Layout, new_groups: int, nodes: Sequence[LayoutNode] = (), size: int | None = None
) -> Layout:
    """The next version of ``old`` with ``new_groups`` groups added, made of ``nodes``
    (added to the layout) and ``old``'s nodes in no group; existing groups stay as they
    are and each map moves only what the new groups' shares need.

    Raises:
        LayoutError: the new groups cannot be made across domains, or a rule is broken.
    """
    size = qu_min_servers(old.t, old.b) if size is None else size
    every = {n.id: n for n in old.nodes}
    for n in nodes:
        if n.id in every and every[n.id] != n:
            raise LayoutError(f"node {n.id} is already in layout {old.version}, differently")
        every[n.id] = n
    grouped = {m for g in old.groups for m in g.members}
    free = [n for n in every.values() if n.id not in grouped]
    if old.moving:
        raise LayoutError(
            f"layout {old.version} is still moving partitions: finish that move first "
            "(bftfs group move, then bftfs group finish)"
        )
    made = make_groups(free, new_groups, size, first_id=len(old.groups))
    total = len(old.groups) + new_groups
    return check(
        replace(
            old,
            version=old.version + 1,
            nodes=tuple(sorted(every.values(), key=lambda n: n.id)),
            groups=old.groups + made,
            objects=assign(old.partitions, total, old.objects),
            blocks=assign(old.partitions, total, old.blocks),
            from_objects=old.objects,
            from_blocks=old.blocks,
        )
    )


def finish_move(layout: Layout) -> Layout:
    """The next version of a moving ``layout`` with the move done: the same maps, no maps
    moved from (source groups then hold nothing of the moved partitions for anyone).

    Raises:
        LayoutError: ``layout`` moves nothing.
    """
    if not layout.moving:
        raise LayoutError(f"layout {layout.version} moves no partitions")
    return check(replace(layout, version=layout.version + 1, from_objects=(), from_blocks=()))


def replace_node(old: Layout, leaving: int, newcomer: LayoutNode) -> Layout:
    """The next version of ``old`` with node ``leaving`` replaced by ``newcomer`` in its
    group, at the same place (the same in-group index: the same server index for Q/U and
    fragment index for PASIS, so nothing moves and the newcomer catches up as a replaced
    node does, docs/membership.md); ``leaving`` is gone from the layout (its key trusted
    no more: certificates are checked under the layout's keys).  ``newcomer`` is a new
    node, or one of ``old``'s spares (in no group).

    Raises:
        LayoutError: ``leaving`` is in no group, ``newcomer`` is in a group or named
            otherwise in ``old``, or the group would break a rule (two nodes of one trust
            domain).
    """
    group = next((g for g in old.groups if leaving in g.members), None)
    if group is None:
        raise LayoutError(f"node {leaving} is in no group of layout {old.version}")
    known = {n.id: n for n in old.nodes}
    if newcomer.id in known and known[newcomer.id] != newcomer:
        raise LayoutError(f"node {newcomer.id} is already in layout {old.version}, differently")
    if any(newcomer.id in g.members for g in old.groups):
        raise LayoutError(f"node {newcomer.id} is in a group of layout {old.version} already")
    members = tuple(newcomer.id if m == leaving else m for m in group.members)
    known.pop(leaving)
    known[newcomer.id] = newcomer
    groups = tuple(Group(g.id, members) if g.id == group.id else g for g in old.groups)
    nodes = tuple(sorted(known.values(), key=lambda n: n.id))
    return check(replace(old, version=old.version + 1, nodes=nodes, groups=groups))


def new_machine(old: Layout, node: int, host: str, port: int, public_key: bytes) -> Layout:
    """The next version of ``old`` with node ``node`` on a new machine: its new address
    and key, the same id, group, place and trust domain (what ``bftfs node replace`` makes
    on a cluster of groups, as a view names a replaced node's new machine under its id:
    nothing moves, and the new machine catches up as a replaced node does; the old key is
    trusted no more).

    Raises:
        LayoutError: ``node`` is in no group, or the key is the one it has.
    """
    if not any(node in g.members for g in old.groups):
        raise LayoutError(f"node {node} is in no group of layout {old.version}")
    held = old.node(node)
    if held.public_key == public_key:
        raise LayoutError(f"node {node} has that key in layout {old.version} already")
    machine = LayoutNode(node, host, port, public_key, held.domain)
    nodes = tuple(machine if n.id == node else n for n in old.nodes)
    return check(replace(old, version=old.version + 1, nodes=nodes))
