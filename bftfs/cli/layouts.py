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
    """Put node ``args.index`` of the held layout on a new machine at ``address``, push
    the new layout, and stop the old machine's process when it runs here."""
    node = int(args.index)
    done = layout_admin.replace_node(cfg, path, node, address, args.data_dir)
    spec = done.config.node(node)
    version = done.layout.version
    print(
        f"layout {version}: node {node} (index {done.index} of group {done.group}) is a new "
        f"machine at {spec.address} with a new key; every node and client refuses the old "
        "key from now on"
    )
    print(f"  its data directory: {spec.data_dir} (empty; its key in private/key)")
    if args.offline:
        print(f"  not pushed (--offline): the nodes learn layout {version} from mounts")
    else:
        who = getattr(args, "as_client", None) or pusher(cfg)
        pushed = trio.run(
            lambda: layout_admin.push(
                done.config, done.layout, done.blob, who, skip=frozenset({node})
            )
        )
        for n, why in sorted(pushed.refused.items()):
            print(f"  node {n} refused layout {version}: {why}", file=sys.stderr)
        for n, why in sorted(pushed.unreachable.items()):
            print(f"  node {n} did not answer: {why}", file=sys.stderr)
        reached = {g.id for g in done.layout.groups if set(g.members) & set(pushed.acked)}
        if len(reached) < len(done.layout.groups):
            raise QuietError(
                f"layout {version} reached no node of groups "
                f"{sorted({g.id for g in done.layout.groups} - reached)} (it is stored: they "
                "learn it from mounts once they are up)",
                EXIT_CLUSTER,
            )
        print(f"  layout {version} taken by nodes {pushed.acked}")
    if local.stop_node(done.before, node):
        print(f"  stopped node {node}'s old process here")
    print(
        f"  start it: `bftfs node start {node}` here, or `bftfs bundle --node {node}` for "
        "its machine; it catches up from its group (`bftfs status` shows how far)"
    )
    return 0
