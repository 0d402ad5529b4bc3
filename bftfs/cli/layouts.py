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
from bftfs.cli.common import EXIT_CLUSTER, EXIT_CONFIG, QuietError
from bftfs.config import ClusterConfig
from bftfs.layout import admin as layout_admin
from bftfs.layout import pending
from bftfs.membership.admin import pusher


def replace_in_groups(
    args: argparse.Namespace, cfg: ClusterConfig, path: Path, address: tuple[str, int]
) -> int:
    """Put node ``args.index`` of the held layout on a new machine at ``address``, push
    the new layout, and stop the old machine's process when it runs here.  Run again
    with the same address after an interruption, it finishes the replacement (its files,
    the push, the old process) instead of refusing the address (``layout/pending.py``)."""
    node = int(args.index)
    try:
        done = layout_admin.replace_node(cfg, path, node, address, args.data_dir)
    except OSError as e:
        raise _cut_short(cfg, node, address, e) from None
    spec = done.config.node(node)
    version = done.layout.version
    if done.again:
        print(f"node {node} is at {spec.address} in layout {version} already: pushing it again")
    else:
        print(
            f"layout {version}: node {node} (index {done.index} of group {done.group}) is a "
            f"new machine at {spec.address} with a new key; every node and client refuses the "
            "old key from now on"
        )
        kept = " (the one an interrupted run made)" if done.reused_key else ""
        print(f"  its data directory: {spec.data_dir} (empty; its key{kept} in private/key)")
    # The old machine stops before any node takes the layout: once its peers take it they
    # re-authenticate their histories under the new machine's key, which the old one
    # cannot check, so its answers to clients not yet told would only mislead them.
    if not done.again and local.stop_node(done.before, node):
        print(f"  stopped node {node}'s old process here")
    unreached: list[int] = []
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
        unreached = sorted({g.id for g in done.layout.groups} - reached)
        if not unreached:
            print(f"  layout {version} taken by nodes {pushed.acked}")
    try:
        pending.remove(done.config)  # the replacement is complete
    except OSError as e:
        raise _cut_short(cfg, node, address, e) from None
    if unreached:
        raise QuietError(
            f"layout {version} reached no node of groups {unreached} (it is stored: they "
            "learn it from mounts once they are up)",
            EXIT_CLUSTER,
        )
    print(
        f"  start it: `bftfs node start {node}` here, or `bftfs bundle --node {node}` for "
        "its machine; it catches up from its group (`bftfs status` shows how far)"
    )
    return 0


def _cut_short(cfg: ClusterConfig, node: int, address: tuple[str, int], e: OSError) -> QuietError:
    """The refusal of a replacement a failed write cut short (a full disk): what it left
    and the command that finishes it (docs/layout.md, "A crash during the replacement")."""
    host, port = address
    again = f"`bftfs node replace {node} --address {host}:{port}`"
    if pending.pending_path(cfg).exists():
        left = (
            "the replacement is decided (its intent is kept): the next bftfs command "
            f"completes it (e.g. `bftfs status`), or {again} again"
        )
    else:
        left = f"nothing changed (a key made is kept and taken again): run {again} again"
    where = f" ({e.filename})" if e.filename else ""
    return QuietError(
        f"node replace cut short by a failed write{where}: {e.strerror or e}; {left}", EXIT_CONFIG
    )


def complete_interrupted(cfg: ClusterConfig, path: Path) -> ClusterConfig:
    """Complete a ``bftfs node replace`` that was interrupted after its commit point (its
    intent kept beside ``cluster.toml``, ``layout/pending.py``): the layout and
    ``cluster.toml`` written, the old machine's process stopped when it runs here, the
    intent removed, and said on stderr.  Every command reading the cluster starts here
    (``cli/common.cluster_of``); ``cfg`` as it is when there is nothing to complete.

    Raises:
        LayoutError: the intent cannot be completed (exit 3; the message says why and
            that the next command completes it once that is fixed).
    """
    done = pending.complete(cfg, path)
    if done is None:
        return cfg
    p = done.pending
    spec = done.config.node(p.node)
    print(
        f"bftfs: completed an interrupted `bftfs node replace {p.node}`: layout "
        f"{done.layout.version} and {path.name} name node {p.node} at {spec.address}, its "
        f"data directory {spec.data_dir}",
        file=sys.stderr,
    )
    if local.stop_node(done.before, p.node):
        print(f"bftfs: stopped node {p.node}'s old process here", file=sys.stderr)
    pending.remove(done.config)
    print(
        f"bftfs: running nodes learn layout {done.layout.version} from mounts and the new "
        f"machine (`bftfs node replace {p.node} --address {spec.address}` pushes it now; "
        f"`bftfs node start {p.node}` starts the new machine)",
        file=sys.stderr,
    )
    return done.config
