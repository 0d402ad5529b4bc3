"""The layout a cluster holds, and one group of it as a configuration of its own
(docs/layout.md, "Placement").

- :func:`load_layout`, :func:`store_layout`: the signed layout kept beside
  ``cluster.toml`` (``layout.signed``), checked with :func:`~bftfs.layout.codec.accept`
  against the administrator key of the configuration, written atomically and fsync'd as a
  view file is (``membership/viewkeys.replace_durably``), so a restart never goes back
  to an older layout nor takes one the administrator did not sign.
- :func:`group_config`: the nodes of group ``g`` as a one-group
  :class:`~bftfs.config.ClusterConfig`, renumbered ``0..n-1`` in the group's order
  (Q/U's server index and PASIS's fragment index are the in-group index), each keeping its
  address, key and data directory.  It is how a generation's node set gets its own
  configuration (``membership/configview.config_of_generation``: the same ``replace`` of
  the nodes, data directories kept by node and key, then ``validate``), applied to a group:
  a node process, a mount's per-group clients and ``bftfs status`` all run on it, and
  nothing below them knows there are other groups.

The group's configuration has no administrator key: its membership is the layout's, not a
view's (views name every node of the cluster under global ids), so a group runs as a
cluster made before views does, and what changes membership is refused with groups
(:func:`refuse_with_groups`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

from bftfs.config import ClusterConfig, ConfigError
from bftfs.crypto import AdminKey
from bftfs.ids import NodeId
from bftfs.layout import builder, codec, live
from bftfs.layout.model import Layout, LayoutError
from bftfs.membership.viewkeys import replace_durably

#: The held layout, beside ``cluster.toml``.
LAYOUT_FILE = "layout.signed"
#: A ``bftfs node replace`` under way or interrupted, beside it (``layout/pending.py``).
PENDING_FILE = "layout.replacing"


def layout_path(cfg: ClusterConfig) -> Path:
    """Where the cluster of ``cfg`` keeps its signed layout."""
    return cfg.home / LAYOUT_FILE


def _admin(cfg: ClusterConfig) -> bytes:
    if cfg.admin_key is None:
        raise LayoutError(
            f"{layout_path(cfg)}: a layout needs the administrator key in cluster.toml "
            "([cluster] admin_key), which signs it"
        )
    return cfg.admin_key


def read_optional(path: Path) -> bytes | None:
    """The bytes of ``path``, or None when there is no such file.

    Raises:
        LayoutError: the file is there but unreadable (named).
    """
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise LayoutError(f"cannot read {path}: {e.strerror}") from None


def read_layout(cfg: ClusterConfig) -> tuple[Layout, bytes] | None:
    """The layout the cluster of ``cfg`` holds and its signed bytes, checked as the
    administrator's but not against ``cluster.toml``'s nodes (:func:`load_layout` does);
    None without one.  For what must read a layout ``cluster.toml`` does not match yet:
    counting the groups, completing an interrupted replacement (``layout/pending.py``).

    Raises:
        LayoutError: the file is there but unreadable, not signed by the administrator,
            or malformed.
    """
    path = layout_path(cfg)
    blob = read_optional(path)
    if blob is None:
        return None
    try:
        return codec.decode(blob, _admin(cfg)), blob
    except LayoutError as e:
        raise LayoutError(f"{path}: {e}") from None


def load_layout(cfg: ClusterConfig) -> Layout | None:
    """The layout the cluster of ``cfg`` holds, or None (a cluster of one group, as every
    cluster made before layouts).

    Raises:
        LayoutError: the file is there but unreadable, not signed by the administrator,
            malformed, or names nodes otherwise than ``cluster.toml`` (never ignored: a
            node must not run as one group of a cluster of several).
    """
    got = read_layout(cfg)
    if got is None:
        return None
    check_nodes(cfg, got[0])
    return got[0]


def store_layout(cfg: ClusterConfig, blob: bytes) -> Layout:
    """Take the signed layout ``blob`` if :func:`~bftfs.layout.codec.accept` does (signed
    by the administrator, newer than the one held, or a copy of it) and keep it durably;
    the layout now held.

    Raises:
        LayoutError: refused (the message says why); the file is left as it was.
    """
    held = load_layout(cfg)
    layout = codec.accept(held, blob, _admin(cfg))
    check_nodes(cfg, layout)
    if layout is not held:
        replace_durably(layout_path(cfg), blob, 0o644)
    return layout


def init_layout(cfg: ClusterConfig, groups: int, size: int) -> Layout:
    """Build the first layout of ``cfg``'s cluster (``groups`` groups of ``size`` nodes
    across the nodes' trust domains, ``builder.build``), sign it with the administrator
    key kept in the cluster directory and store it (``bftfs init --groups``).

    Raises:
        LayoutError: the groups cannot be made, or the cluster has no administrator key.
    """
    _admin(cfg)
    layout = builder.build(builder.nodes_of(cfg), groups, t=cfg.t, b=cfg.b, size=size)
    return store_layout(cfg, codec.sign(layout, AdminKey.load(cfg.admin_key_path)))


def check_nodes(cfg: ClusterConfig, layout: Layout) -> None:
    """Every node of ``layout`` is the configuration's node of that id, with its key.

    Raises:
        LayoutError: naming the first node that differs.
    """
    for n in layout.nodes:
        try:
            spec = cfg.node(n.id)
        except ConfigError:
            raise LayoutError(
                f"layout {layout.version} names node {n.id}, which cluster.toml lacks"
            ) from None
        if spec.public_key != n.public_key:
            raise LayoutError(
                f"layout {layout.version} gives node {n.id} another key than cluster.toml"
                + _interrupted(cfg, layout, n.id)
            )


def _interrupted(cfg: ClusterConfig, layout: Layout, node: int) -> str:
    """What completes the replacement a key mismatch most likely is: one interrupted
    between the layout and ``cluster.toml`` (docs/layout.md, "A crash during the
    replacement")."""
    if (cfg.home / PENDING_FILE).exists():
        return (
            f": an interrupted `bftfs node replace {node}` ({cfg.home / PENDING_FILE}); "
            "any bftfs command reading the cluster completes it, e.g. `bftfs status`"
        )
    n = layout.node(node)
    address = f"[{n.host}]:{n.port}" if ":" in n.host else f"{n.host}:{n.port}"
    return (
        f" (it names node {node} at {address}): if a `bftfs node replace {node}` was "
        f"interrupted, `bftfs node replace {node} --address {address}` completes it (with "
        "the `--data-dir` it was given, if any)"
    )


def group_config(cfg: ClusterConfig, layout: Layout, g: int) -> ClusterConfig:
    """Group ``g`` of ``layout`` as a one-group configuration (module docstring): its
    nodes renumbered ``0..n-1`` in the group's order with their ports, keys and data
    directories, the layout's ``t`` and ``b``, no administrator key; everything else is
    ``cfg``'s (``qc`` and ``m`` are per group: ``bftfs init --groups`` sets them so).

    Raises:
        LayoutError: no group ``g``, or the group breaks a configuration rule.
    """
    if not 0 <= g < len(layout.groups):
        raise LayoutError(f"layout {layout.version} has no group {g}")
    check_nodes(cfg, layout)
    nodes = tuple(
        replace(cfg.node(nid), id=NodeId(i)) for i, nid in enumerate(layout.groups[g].members)
    )
    try:
        return replace(cfg, t=layout.t, b=layout.b, nodes=nodes, admin_key=None).validate()
    except ConfigError as e:
        raise LayoutError(f"group {g} of layout {layout.version}: {e}") from None


@dataclass(frozen=True)
class PlacedConfig(ClusterConfig):
    """A mount's configuration over a cluster of groups: a group's (each has the same
    sizes: ``n``, thresholds, block sizes) and the layout its calls are routed by.  The
    file system reads ``layout`` to draw a new object's id in its parent's group
    (``fs/clients/calls.Meta.new_oid``) and to take per-object leases
    (``fs/filesystem._leases``)."""

    layout: Layout | None = None


def placed_config(cfg: ClusterConfig, layout: Layout) -> PlacedConfig:
    """Group 0's configuration with ``layout`` (:class:`PlacedConfig`)."""
    one = group_config(cfg, layout, 0)
    return PlacedConfig(**{f.name: getattr(one, f.name) for f in fields(one)}, layout=layout)


def parts(cfg: ClusterConfig) -> list[tuple[ClusterConfig, list[int]]]:
    """The configurations a client reaches the nodes of ``cfg``'s cluster by, each with
    its nodes' global ids: ``cfg`` itself, or one per group of the held layout (a node of a
    group answers as its index there)."""
    layout = load_layout(cfg)
    if layout is None:
        return [(cfg, [int(s.id) for s in cfg.nodes])]
    return [(group_config(cfg, layout, g.id), list(g.members)) for g in layout.groups]


@dataclass(frozen=True)
class Placed:
    """Where one node of the cluster runs: its group and its index there, and the
    signed bytes of the layout that says so."""

    layout: Layout
    group: int
    index: int
    config: ClusterConfig
    blob: bytes = b""


def place_node(cfg: ClusterConfig, node_id: int, data_dir: Path | None = None) -> Placed | None:
    """Where node ``node_id`` (global id) runs in the held layout; None when the cluster
    has no layout (it runs as node ``node_id`` of ``cfg``).  With ``data_dir``, the node's
    own copy there (a layout it took while running, ``layout/live.py``) is held instead
    when it is newer: a restarted node never goes back.

    Raises:
        LayoutError: the layout is bad (:func:`load_layout`), or puts the node in no
            group (a spare: nothing to serve yet).
    """
    layout = load_layout(cfg)
    if layout is None:
        return None
    blob = layout_path(cfg).read_bytes()
    own = None
    if data_dir is not None:
        layout, own = live.newest(layout, data_dir, _admin(cfg))
        assert layout is not None
    for group in layout.groups:
        if node_id in group.members:
            index = group.members.index(node_id)
            if own is not None:  # it may name nodes cluster.toml does not know yet
                part = live.live_group_config(cfg, layout, group.id)
                return Placed(layout, group.id, index, part, own)
            return Placed(layout, group.id, index, group_config(cfg, layout, group.id), blob)
    raise LayoutError(
        f"node {node_id} is in no group of layout {layout.version} (a spare): nothing to serve"
    )


def groups_of(cfg: ClusterConfig) -> int:
    """How many groups the held layout has (1 without a layout).  Not checked against
    ``cluster.toml``'s nodes: ``bftfs node replace`` must reach the layout's side to
    complete an interrupted replacement."""
    got = read_layout(cfg)
    return 1 if got is None else len(got[0].groups)


def refuse_with_groups(cfg: ClusterConfig, what: str) -> None:
    """Refuse ``what`` (a command) for a cluster of several groups: this step runs groups
    as fixed sets of nodes (docs/layout.md, "Not yet with groups").

    Raises:
        LayoutError: the cluster has more than one group (a configuration error, exit 3).
    """
    count = groups_of(cfg)
    if count > 1:
        raise LayoutError(
            f"{what} is not supported on a cluster of {count} groups yet (docs/layout.md, "
            "'Not yet with groups')"
        )
