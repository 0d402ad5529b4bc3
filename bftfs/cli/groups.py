"""``bftfs init --groups G`` and the refusals of what a cluster of several groups does not
do yet (docs/layout.md, "Placement").

``init --groups G`` makes ``G`` groups of ``n`` nodes (``local.init_cluster``) and the
first signed layout; ``up``, ``down`` and ``node start|stop`` work on every node by its
global id, each node process running as a member of its group (``node/main.py``).  What
changes membership or moves data between node sets the view's way (views, generations,
client changes online) is refused with exit 3 on such a cluster: a group's membership is
the layout's, changed by ``bftfs node replace`` (``cli/layouts.py``) and grown by ``bftfs
group add`` (``cli/growing.py``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from bftfs.config import ClusterConfig
from bftfs.layout.groups import group_config, load_layout, refuse_with_groups
from bftfs.layout.model import Layout
from bftfs.local import NodeStatus

#: Commands refused on a cluster of several groups: ``view``, ``generation`` and
#: ``client`` changes change the membership a view names, which a group does not follow;
#: the history commands and ``verify`` open one cluster's clients, not per-group ones yet.
REFUSED = (
    "view", "generation", "client", "log", "cat", "restore", "diff", "changes", "revert",
    "snapshot", "verify",
)  # fmt: skip
#: Actions of ``node`` and ``client`` refused likewise (``node start|stop|restart``,
#: ``client list`` work).
REFUSED_ACTIONS = {
    "node": ("add", "remove"),
    "client": ("add", "revoke", "remove", "rotate"),
}


def add_option(sp: argparse.ArgumentParser) -> None:
    """``--groups G`` of ``init`` and ``up``."""
    sp.add_argument(
        "--groups",
        type=int,
        default=1,
        help="G groups of n nodes each (G*n nodes), data placed by a signed layout "
        "(default 1; docs/layout.md)",
    )


def describe(cfg: ClusterConfig) -> list[str]:
    """Lines for ``bftfs init``: the layout made, if any."""
    layout = load_layout(cfg)
    if layout is None:
        return []
    groups = ", ".join(f"{g.id}: nodes {','.join(map(str, g.members))}" for g in layout.groups)
    one = group_config(cfg, layout, 0)
    return [
        f"  {layout.describe()}; each group Q/U n={one.n} q={one.q} r={one.r}, "
        f"PASIS N={one.n} QC={one.qc} m={one.m} (the line below counts every node)",
        f"  groups {groups}",
    ]


def refuse(args: argparse.Namespace, cfg: ClusterConfig) -> None:
    """Refuse (exit 3) a command this step does not run on several groups.

    Raises:
        LayoutError: the command is one of them and the cluster has several groups.
    """
    command: Any = getattr(args, "command", None)
    action: Any = getattr(args, "action", None)
    if command == "mount" and getattr(args, "at", None) is not None:
        action = "--at"  # the past of a cluster of groups is not read yet
    elif command in REFUSED_ACTIONS:
        if action not in REFUSED_ACTIONS[command]:
            return
    elif command not in REFUSED:
        return
    refuse_with_groups(cfg, f"bftfs {command}" + (f" {action}" if action else ""))


def layout_json(layout: Layout) -> dict[str, Any]:
    """The layout as ``bftfs status --json`` shows it: version, whether partitions move
    (``bftfs group show`` says what), thresholds, and each group's nodes, their trust
    domains and the partitions of each map it holds."""
    domains = {n.id: n.domain for n in layout.nodes}
    return {
        "version": layout.version,
        "moving": layout.moving,
        "partitions": layout.partitions,
        "t": layout.t,
        "b": layout.b,
        "groups": [
            {
                "group": g.id,
                "nodes": list(g.members),
                "domains": [domains[m] for m in g.members],
                "object_partitions": layout.objects.count(g.id),
                "block_partitions": layout.blocks.count(g.id),
            }
            for g in layout.groups
        ],
    }


def groups_health(
    cfg: ClusterConfig, layout: Layout, statuses: Sequence[NodeStatus]
) -> list[dict[str, Any]]:
    """Each group's health from the nodes' statuses: ``healthy`` with every node up,
    ``degraded`` with fewer but at least a quorum ``q`` (it serves; a node is missing),
    ``unavailable`` below ``q`` (a Q/U round cannot complete there)."""
    up = {s.id for s in statuses if s.up}
    rows = []
    for g in layout.groups:
        one = group_config(cfg, layout, g.id)
        count = sum(1 for m in g.members if m in up)
        state = "healthy" if count == one.n else "degraded" if count >= one.q else "unavailable"
        rows.append(
            {"group": g.id, "up": count, "n": one.n, "q": one.q, "state": state,
             "down": [m for m in g.members if m not in up]}
        )  # fmt: skip
    return rows


def health_of(cfg: ClusterConfig, statuses: Sequence[NodeStatus]) -> list[dict[str, Any]]:
    """:func:`groups_health` of the held layout; ``[]`` without one."""
    layout = load_layout(cfg)
    return [] if layout is None else groups_health(cfg, layout, statuses)
