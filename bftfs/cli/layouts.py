"""``bftfs node replace I --address HOST:PORT`` on a cluster of groups (docs/layout.md,
"Replacing a node of a group"): the next layout version names a new machine in node
``I``'s place in its group, is written beside ``cluster.toml`` and pushed to the running
nodes of every group, which refuse the old machine from then on; mounts learn it from
the nodes.  The newcomer, once started (``bftfs node start NEW``), catches up from its
group.  ``cli/views.node_replace`` sends a cluster of groups here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio

from bftfs import local
from bftfs.cli.common import EXIT_CLUSTER, QuietError
from bftfs.config import ClusterConfig
from bftfs.layout import admin as layout_admin
from bftfs.membership.admin import pusher


def replace_in_groups(
    args: argparse.Namespace, cfg: ClusterConfig, path: Path, address: tuple[str, int]
) -> int:
    """Replace node ``args.index`` of the held layout by a new machine at ``address``,
    push the new layout, and stop the old machine's process when it runs here."""
    leaving = int(args.index)
    done = layout_admin.replace_node(cfg, path, leaving, address, args.data_dir)
    new = done.newcomer
    print(
        f"layout {done.layout.version}: node {new.id} at {new.address} takes node {leaving}'s "
        f"place (index {done.index} of group {done.group}); every node and client refuses "
        f"node {leaving}'s key from now on"
    )
    print(f"  its data directory: {new.data_dir} (empty; its key in private/key)")
    if args.offline:
        print(f"  not pushed (--offline): the nodes learn layout {done.layout.version} as pushed")
    else:
        who = getattr(args, "as_client", None) or pusher(cfg)
        pushed = trio.run(
            lambda: layout_admin.push(
                done.config, done.layout, done.blob, who, skip=frozenset({new.id})
            )
        )
        for node, why in sorted(pushed.refused.items()):
            print(f"  node {node} refused layout {done.layout.version}: {why}", file=sys.stderr)
        for node, why in sorted(pushed.unreachable.items()):
            print(f"  node {node} did not answer: {why}", file=sys.stderr)
        reached = {g.id for g in done.layout.groups if set(g.members) & set(pushed.acked)}
        if len(reached) < len(done.layout.groups):
            raise QuietError(
                f"layout {done.layout.version} reached no node of groups "
                f"{sorted({g.id for g in done.layout.groups} - reached)} (it is stored: they "
                "learn it from mounts once they are up)",
                EXIT_CLUSTER,
            )
        print(f"  layout {done.layout.version} taken by nodes {pushed.acked}")
    if local.stop_node(done.config, leaving):
        print(f"  stopped node {leaving}'s process here (the machine replaced)")
    print(
        f"  start it: `bftfs node start {new.id}` here, or `bftfs bundle --node {new.id}` for "
        "its machine; it catches up from its group (`bftfs status` shows how far)"
    )
    return 0
