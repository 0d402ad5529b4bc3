"""Membership while the cluster runs (docs/membership.md): ``bftfs view``, the online
``bftfs client add|revoke|rotate`` of a cluster with views, and ``bftfs node replace``.

Each change issues the next view (signed with the administrator key, which only the
operator's directory holds), writes it and ``cluster.toml``, then pushes it to the nodes and
succeeds once a quorum acknowledged.  Every command can be run again after being killed:
a change already in the view is pushed again, not made twice (``rotate`` makes a new key
each time it runs; ``bftfs view push`` finishes one that was cut short).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from bftfs import bundle
from bftfs.cli.common import (
    EXIT_CLUSTER,
    QuietError,
    add_actions,
    cluster_of,
    keep_parent_values,
    with_cluster,
    with_identity,
)
from bftfs.cli.layouts import replace_in_groups
from bftfs.config import ClusterConfig, ConfigError
from bftfs.crypto import Identity, KeyFileError
from bftfs.ids import CLIENT_ID_BASE, NodeId
from bftfs.layout.groups import groups_of
from bftfs.membership import admin
from bftfs.membership.view import View


def client_online(args: argparse.Namespace, cfg: ClusterConfig, path: Path) -> int:
    """``bftfs client add|revoke|remove|rotate NAME`` on a cluster with views."""
    key = admin.admin_key(cfg)
    view, blob = admin.current(cfg)
    name: str = args.name
    action = "revoke" if args.action == "remove" else args.action
    avoid = None
    if action == "add":
        if view.client(name) is not None:
            print(f"client {name} is in view {view.number} already: pushing that view again")
        else:
            number = cfg.next_client_number
            ident = admin.new_client_key(cfg, name, number)
            view = admin.with_client(view, name, ident.public, number)
            cfg, blob = admin.issue(cfg, path, view, key)
            print(f"view {view.number}: added client {name} (id {number})")
        _write_bundle(cfg, name, args.output)
    elif action == "revoke":
        if view.client(name) is None and any(r.name == name for r in view.retired):
            print(f"client {name} is revoked in view {view.number} already: pushing it again")
        else:
            view = admin.without_client(view, name)
            cfg, blob = admin.issue(cfg, path, view, key)
            cfg.client_key_path(name).unlink(missing_ok=True)
            print(
                f"view {view.number}: revoked client {name}; its sessions end and its requests "
                "are refused; what it wrote stays attributed to it"
            )
            if cfg.sealed:
                print(
                    "  it still holds the volume key: `bftfs rotate-key` so that it can read "
                    "nothing written from now on (docs/confidentiality.md)"
                )
    else:  # rotate
        spec = view.client(name)
        if spec is None:
            raise QuietError(f"no client {name!r} in view {view.number}", 2)
        ident = admin.new_client_key(cfg, name, int(spec.id) - CLIENT_ID_BASE)
        view = admin.rekeyed(view, name, ident.public)
        cfg, blob = admin.issue(cfg, path, view, key)
        avoid = name
        print(f"view {view.number}: client {name} has a new key; sessions under the old one end")
        _write_bundle(cfg, name, args.output)
    if getattr(args, "offline", False):
        print(
            f"  not pushed (--offline): nodes started from {cfg.home} take view {view.number} "
            "when they start; `bftfs view push` sends it to running ones"
        )
        return 0
    return _push(cfg, blob, view, getattr(args, "as_client", None), avoid)


def node_replace(args: argparse.Namespace) -> int:
    """``bftfs node replace I --address HOST:PORT [--data-dir NEWDIR]``: a new machine for
    node ``I`` (docs/membership.md, "Replacing a node").

    Makes a new key in the newcomer's (empty) data directory, issues view ``n + 1`` with node
    ``I`` at its new address under that key, writes ``cluster.toml`` to match (node ``I``'s
    ``data_dir`` is the new one) and pushes the view; from then on every node and client
    refuses the old key.  The newcomer, once started, catches up from the others.  Run again
    after being killed: a replacement already in the view is pushed again.
    """
    if args.index is None or not args.address:
        raise QuietError(
            "bftfs node replace: which node, and where? (bftfs node replace I --address HOST:PORT)",
            2,
        )
    cfg, path = cluster_of(args)
    host, port = parse_address(args.address)
    if groups_of(cfg) > 1:  # the layout names the newcomer (docs/layout.md)
        return replace_in_groups(args, cfg, path, (host, port))
    key = admin.admin_key(cfg)
    view, blob = admin.current(cfg)
    node = int(args.index)
    if not 0 <= node < len(view.nodes):
        last = len(view.nodes) - 1
        raise QuietError(f"no node {node} in view {view.number} (nodes 0..{last})", 2)
    held = view.nodes[node]
    if (held.host, held.port) == (host, port) and _key_of(cfg, node) == held.public_key:
        print(f"node {node} is at {host}:{port} in view {view.number} already: pushing it again")
    else:
        new_dir = (args.data_dir or cfg.home / f"node{node}.v{view.number + 1}").resolve()
        if (new_dir / "lmdb").exists():
            raise QuietError(
                f"{new_dir} holds a node's store: the newcomer starts from an empty data "
                "directory (give another --data-dir)",
                2,
            )
        ident = Identity.generate(NodeId(node))
        ident.save(new_dir / "private" / "key")
        admin.new_chain(cfg, new_dir, ident.public, view.number + 1)
        view = admin.with_node(view, node, host, port, ident.public)
        moved = replace(
            cfg,
            nodes=tuple(replace(s, data_dir=new_dir) if s.id == node else s for s in cfg.nodes),
        )
        cfg, blob = admin.issue(moved, path, view, key)
        print(
            f"view {view.number}: node {node} is a new machine at {host}:{port} with a new key; "
            f"every node and client refuses the old key ({held.host}:{held.port})"
        )
        print(f"  its data directory: {new_dir} (empty; its key in private/key)")
    if args.offline:
        print(f"  not pushed (--offline): `bftfs view push` sends view {view.number} to the nodes")
    else:
        _push(cfg, blob, view, getattr(args, "as_client", None), None)
    print(
        f"  start it: `bftfs node start {node}` here, or `bftfs bundle --node {node}` for its "
        "machine; it catches up from the others (`bftfs status` shows how far); stop the old "
        "machine's process"
    )
    return 0


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` of an ``--address`` (exit 2 with the reason otherwise)."""
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not host or not 0 < number <= 65535:
        raise QuietError(f"--address {text!r}: expected HOST:PORT", 2)
    return host, number


def _key_of(cfg: ClusterConfig, node: int) -> bytes | None:
    """The public half of the key in node ``node``'s data directory here, if one is."""
    try:
        return Identity.load(NodeId(node), cfg.node(node).key_path).public
    except (ConfigError, KeyFileError):
        return None


def _write_bundle(cfg: ClusterConfig, name: str, output: Path | None) -> None:
    out = output or cfg.home / "bundles" / f"{name}.tar.gz"
    out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    bundle.write(out, bundle.members(cfg, client=name))
    print(f"  wrote {out}: the configuration, the view and {name}'s private key (keep it secret)")


def _push(
    cfg: ClusterConfig, blob: bytes, view: View, as_client: str | None, avoid: str | None
) -> int:
    """Push ``blob`` to the nodes; 0 once a quorum acknowledged, else ``EXIT_CLUSTER``."""
    who = as_client or admin.pusher(cfg, avoid=avoid)
    result = trio.run(lambda: admin.push(cfg, blob, view.number, as_client=who))
    for node, why in sorted(result.refused.items()):
        print(f"  node {node} refused view {view.number}: {why}", file=sys.stderr)
    for node, why in sorted(result.unreachable.items()):
        print(f"  node {node} did not answer: {why}", file=sys.stderr)
    if not result.ok:
        raise QuietError(
            f"view {view.number} acknowledged by {len(result.acked)} node(s) "
            f"{result.acked}, fewer than the quorum of {result.quorum}: run `bftfs view push` "
            "again once the nodes are up",
            EXIT_CLUSTER,
        )
    print(
        f"  view {view.number} acknowledged by {len(result.acked)} of {cfg.n} nodes "
        f"(quorum {result.quorum}); the others learn it from their peers"
    )
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    """``bftfs view [show|push|adopt|keys]``."""
    cfg, path = cluster_of(args)
    if args.action == "adopt":
        cfg, _ = admin.adopt(cfg, path)
        print(
            f"view 1 signed with a new administrator key ({cfg.admin_key_path}; keep it off "
            "the nodes). Restart each node once, with this cluster.toml, for it to take views."
        )
        return 0
    if args.action == "keys":
        cfg, blob, view, issued = admin.give_view_keys(cfg, path)
        if not issued:
            print(f"view {view.number} has per-view node keys already: pushing it again")
        else:
            print(
                f"view {view.number}: every node has a key for this view only; each node's "
                "chain is in its data directory (private/view-chain: copy it to a node on "
                "another machine before it takes the view)"
            )
        if args.offline:
            print(f"  not pushed (--offline): `bftfs view push` sends view {view.number}")
            return 0
        return _push(cfg, blob, view, getattr(args, "as_client", None), None)
    view, blob = admin.current(cfg)
    if args.action == "push":
        return _push(cfg, blob, view, getattr(args, "as_client", None), None)
    if args.json:
        print(json.dumps(_as_json(view), indent=2))
        return 0
    print(
        f"view {view.number}  t={view.t} b={view.b}  n={len(view.nodes)}  "
        f"PASIS QC={view.qc} m={view.m}"
    )
    print("  nodes:")
    for n in view.nodes:
        print(f"    {n.id:>3}  {n.host}:{n.port}  {n.public_key.hex()[:16]}")
    print("  clients:")
    for c in view.clients:
        print(f"    {c.id - CLIENT_ID_BASE:>3}  {c.name}  {c.public_key.hex()[:16]}")
    for r in view.retired:
        print(f"    {r.id - CLIENT_ID_BASE:>3}  {r.name} (revoked)")
    return 0


def _as_json(view: View) -> dict[str, Any]:
    return {
        "view": view.number,
        "t": view.t,
        "b": view.b,
        "qc": view.qc,
        "m": view.m,
        "nodes": [
            {"id": n.id, "address": f"{n.host}:{n.port}", "public_key": n.public_key.hex()}
            for n in view.nodes
        ],
        "clients": [
            {"id": c.id - CLIENT_ID_BASE, "name": c.name, "public_key": c.public_key.hex()}
            for c in view.clients
        ],
        "revoked": [{"id": r.id - CLIENT_ID_BASE, "name": r.name} for r in view.retired],
    }


def add_view(sub: Any) -> None:
    """``bftfs view [show|push|adopt|keys]``, each action its own parser; no action is
    ``show`` (so ``bftfs view --json`` still works)."""
    sp = sub.add_parser(
        "view",
        help="the cluster's current view (nodes, thresholds, clients); push it again; "
        "adopt views in a cluster made before them; give per-view node keys to one made "
        "before those (keys)",
        description="The cluster's current view (`bftfs view` alone: show).",
    )
    # No action: show, with show's options.
    sp.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    with_cluster(sp)
    for a in sp._actions:
        if a.dest in ("dir", "config"):
            a.help = argparse.SUPPRESS
    actions = add_actions(sp, required=False)
    text = "the current view: nodes, thresholds, clients (the default)"
    ap = actions.add_parser("show", help=text, description=text)
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    with_cluster(ap)
    text = "push the current view to the nodes again (finish a change cut short)"
    ap = actions.add_parser("push", help=text, description=text)
    with_identity(ap, default=None, help="the client to speak to nodes as")
    with_cluster(ap)
    text = "give a cluster made before views its administrator key and view 1"
    ap = actions.add_parser("adopt", help=text, description=text)
    with_cluster(ap)
    text = "give every node a key for this view only (a cluster made before those)"
    ap = actions.add_parser("keys", help=text, description=text)
    ap.add_argument("--offline", action="store_true", help="issue the view, do not push it")
    with_identity(ap, default=None, help="the client to speak to nodes as")
    with_cluster(ap)
    keep_parent_values(sp, actions)
    sp.set_defaults(func=cmd_view, action="show")


def add_replace_options(sp: Any) -> None:
    """The options of ``bftfs node replace``."""
    sp.add_argument("--address", metavar="HOST:PORT", help="the new machine's address")
    sp.add_argument(
        "--data-dir",
        type=Path,
        help="the new machine's data directory (default DIR/node<I>.v<VIEW>)",
    )
    sp.add_argument("--offline", action="store_true", help="issue the view without pushing it")
    with_identity(sp, default=None, help="the client to push the view as")
