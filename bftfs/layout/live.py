"""A newer layout taken by a running node or mount (docs/layout.md, "Installing a layout
on running processes"): which changes a running process can follow, a group's
configuration under a layout that names nodes its ``cluster.toml`` does not know yet, and
the node's own durable copy.

A running process was started from a ``cluster.toml`` that names the nodes of its day.  A
later layout, signed by the administrator, may name a newcomer that file lacks (a node
replaced: ``builder.replace_node``); the signature makes it believable whoever delivers
it, so the newcomer's address and key come from the layout (:func:`live_group_config`),
as a view's newcomer comes from the view.

What a running process follows (:func:`unsupported_change`): nodes replaced inside their
groups, nodes given another address, groups added, and partition maps that change by a
move (docs/layout.md, "Moving partitions": a moving layout names the held maps as the
ones it moves from; a finished or later one may name any maps, the move being done).
What it does not (refused, so that a node never runs on a layout it cannot serve): other
thresholds or partition counts, groups removed, a held node moved to another group or
index.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from bftfs.config import ClusterConfig, ConfigError, NodeSpec
from bftfs.ids import NodeId
from bftfs.layout import codec
from bftfs.layout.model import Layout, LayoutError, LayoutNode
from bftfs.membership.viewkeys import replace_durably

#: A node's own copy of the newest layout it took, in its data directory (the
#: cluster's ``layout.signed`` is the operator's file, as ``view.signed`` is).
NODE_LAYOUT_FILE = "layout.signed"


def unsupported_change(old: Layout, new: Layout) -> str | None:
    """Why a process running on ``old`` cannot follow ``new`` (None: it can; module
    docstring)."""
    if (new.t, new.b) != (old.t, old.b):
        return f"thresholds t = {new.t}, b = {new.b} differ from t = {old.t}, b = {old.b}"
    if new.partitions != old.partitions:
        return f"{new.partitions} partitions, not {old.partitions} (the count never changes)"
    if [g.id for g in new.groups[: len(old.groups)]] != [g.id for g in old.groups]:
        return "it removes groups (groups are only added)"
    if new.moving and (new.from_objects, new.from_blocks) not in (
        (old.objects, old.blocks),
        (old.from_objects, old.from_blocks),
    ):
        return "it moves partitions from maps other than the held layout's"
    staying = {n.id for n in new.nodes}
    for g_old, g_new in zip(old.groups, new.groups[: len(old.groups)], strict=True):
        if len(g_old.members) != len(g_new.members):
            return f"group {g_old.id} has {len(g_new.members)} nodes, not {len(g_old.members)}"
        for i, (a, b) in enumerate(zip(g_old.members, g_new.members, strict=True)):
            if a != b and a in staying:
                return f"node {a} moves from index {i} of group {g_old.id} (only replacements)"
    return None


def spec_of(cfg: ClusterConfig, node: LayoutNode) -> NodeSpec:
    """The node ``node`` as a configuration names it: ``cfg``'s spec of that id with the
    layout's address, key and domain, or, for a node ``cfg`` lacks (a newcomer), one made
    from the layout (its data directory where a local cluster keeps it: a process only
    uses another node's address and key)."""
    try:
        spec = cfg.node(NodeId(node.id))
    except ConfigError:
        spec = NodeSpec(
            NodeId(node.id), node.host, node.port, node.public_key, cfg.home / f"node{node.id}"
        )
    return replace(spec, host=node.host, port=node.port, public_key=node.public_key)


def live_group_config(cfg: ClusterConfig, layout: Layout, g: int) -> ClusterConfig:
    """Group ``g`` of a layout taken while running, as ``layout/groups.group_config``
    makes it, but its nodes as the (signed) layout names them (:func:`spec_of`).

    Raises:
        LayoutError: no group ``g``, or the group breaks a configuration rule.
    """
    if not 0 <= g < len(layout.groups):
        raise LayoutError(f"layout {layout.version} has no group {g}")
    nodes = tuple(
        replace(spec_of(cfg, n), id=NodeId(i)) for i, n in enumerate(layout.group_nodes(g))
    )
    try:
        return replace(cfg, t=layout.t, b=layout.b, nodes=nodes, admin_key=None).validate()
    except ConfigError as e:
        raise LayoutError(f"group {g} of layout {layout.version}: {e}") from None


def place(layout: Layout, node_id: int) -> tuple[int, int] | None:
    """Node ``node_id``'s group and index in ``layout``; None when it is in none (it was
    replaced, or is a spare)."""
    for group in layout.groups:
        if node_id in group.members:
            return group.id, group.members.index(node_id)
    return None


def node_layout_path(data_dir: Path) -> Path:
    """Where a node keeps the newest layout it took."""
    return data_dir / NODE_LAYOUT_FILE


def store_node_layout(data_dir: Path, blob: bytes) -> None:
    """Keep ``blob`` (a layout already accepted) as the node's own copy, atomically and
    fsync'd: a restarted node never goes back to an older layout."""
    replace_durably(node_layout_path(data_dir), blob, 0o644)


def newest(held: Layout | None, data_dir: Path, admin: bytes) -> tuple[Layout | None, bytes | None]:
    """The newer of ``held`` (the cluster's ``layout.signed``) and the node's own copy in
    ``data_dir`` (a layout it took while running), with the copy's bytes when it is the
    one; ``(held, None)`` when the node has no copy or its copy is not newer.

    Raises:
        LayoutError: the node's copy is unreadable, not signed by the administrator, or
            another layout with the held version.
    """
    path = node_layout_path(data_dir)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return held, None
    except OSError as e:
        raise LayoutError(f"cannot read {path}: {e.strerror}") from None
    try:
        offered = codec.decode(blob, admin)
    except LayoutError as e:
        raise LayoutError(f"{path}: {e}") from None
    if held is not None and offered.version <= held.version:
        if offered.version == held.version:
            codec.accept(held, blob, admin)  # the same one, or a conflict (raises)
        return held, None
    return offered, blob
