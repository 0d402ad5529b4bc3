"""The cluster as a whole: ``bftfs init``, ``up``, ``down``, ``bundle`` and ``client``."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from bftfs import clusterkeys
from bftfs import local as localmod
from bftfs.cli import capacity, discover, groups
from bftfs.cli.common import (
    EXIT_BUSY,
    EXIT_MOUNT,
    QuietError,
    add_actions,
    cluster_of,
    human,
    parse_size,
    with_cluster,
    with_dir,
    with_identity,
)
from bftfs.cli.mounts import busy_message, mount_daemon, mount_module, unmount_all, with_client
from bftfs.cli.nodes import port_number
from bftfs.cli.statustables import print_nodes as _print_status
from bftfs.config import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_INLINE_LIMIT,
    DEFAULT_MAP_SIZE,
    ClusterConfig,
    ConfigError,
    MetricsConfig,
    default_sizes,
)
from bftfs.ids import CLIENT_ID_BASE


def cmd_init(args: argparse.Namespace) -> int:
    args.dir = discover.home_to_create(args.dir)
    if args.force and localmod.config_path(args.dir).exists():
        # Replace means replace: the old cluster's mounts and nodes stop and its keys and
        # data go (new keys meeting old databases would be a cluster nobody can read).
        from bftfs.fuse import control

        with contextlib.suppress(localmod.ClusterError, ConfigError):
            old = localmod.load_cluster(args.dir)
            for pid, mnt in control.known_mounts(old):
                control.unmount(mnt, pid=pid, how="force")  # its data goes anyway
                print(f"unmounted {mnt}")
        stopped = localmod.remove_cluster(args.dir)
        print(
            f"removed the old cluster in {args.dir}"
            + (f" (stopped node(s) {stopped})" if stopped else "")
        )
    cfg = localmod.init_cluster(
        args.dir,
        t=args.t,
        b=args.b,
        n=args.n,
        qc=args.qc,
        m=args.m,
        block_size=args.block_size,
        big_block_size=args.big_block_size,
        inline_limit=args.inline_limit,
        map_size=args.map_size,
        durable=not args.no_durable,
        engine=args.engine,
        clients=args.clients,
        host=args.host,
        addresses=getattr(args, "nodes", None),
        force=args.force,
        seal=not args.no_seal,
        metrics=_metrics_config(args),
        groups=getattr(args, "groups", 1),
    )
    print(f"created a cluster of {cfg.n} nodes in {cfg.home}", *groups.describe(cfg), sep="\n")
    for warning in capacity.maps_beyond_disk(cfg):
        print(f"warning: {warning}", file=sys.stderr)
    pasis = f"Q/U: n={cfg.n} q={cfg.q} r={cfg.r}  PASIS: N={cfg.n} QC={cfg.qc} m={cfg.m}"
    stores = "FaB, blocks in registers" if cfg.blocks == "registers" else pasis  # listeners.md
    big = f" (sequential files {human(cfg.big_blocks)})" if cfg.big_blocks else ""
    print(f"  t={cfg.t} b={cfg.b}  {stores} block={human(cfg.block_size)}{big}")
    print(f"  clients: {', '.join(c.name for c in cfg.clients)}")
    if cfg.sealed:
        print(f"  contents encrypted under the volume key {cfg.volume_key_path} (clients only)")
    else:
        print("  contents NOT encrypted (--no-seal): every node can read them")
    print(f"  configuration: {localmod.config_path(cfg.home)}")
    if cfg.metrics.node_port is not None:
        print(f"  metrics: {_describe_metrics(cfg.metrics, cfg.n)} ([metrics] in cluster.toml)")
    from bftfs.cli.keys import backup_notes

    for line in backup_notes(cfg):
        print(line)
    if getattr(args, "nodes", None):
        print(
            "  nodes on other machines: copy each its bundle "
            f"(bftfs bundle --dir {args.dir} --node I -o nodeI.tar.gz; README 'Several machines')"
        )
    return 0


def _metrics_config(args: argparse.Namespace) -> MetricsConfig | None:
    """``[metrics]`` for a new cluster from ``--metrics-port P`` (and ``--metrics-addr``):
    node ``I`` on ``P + I``, mounts on ``P + n`` (``0``: every one a free port)."""
    port = getattr(args, "metrics_port", None)
    if port is None:
        return None
    n = args.n if args.n is not None else len(getattr(args, "nodes", None) or []) or None
    if n is None:
        n = default_sizes(args.t, args.b)[0]
    return MetricsConfig(
        address=getattr(args, "metrics_addr", None) or "127.0.0.1",
        node_port=port,
        mount_port=port + n if port else 0,
    )


def _describe_metrics(m: MetricsConfig, n: int) -> str:
    """``nodes on 127.0.0.1:9250-9255, mounts on :9256`` for messages."""
    if m.node_port is None:
        nodes = "nodes serve none"
    elif m.node_port == 0:
        nodes = f"nodes on {m.address}, free ports (node<I>/metrics.port)"
    else:
        nodes = f"nodes on {m.address}:{m.node_port}-{m.node_port + n - 1}"
    mounts = {None: "mounts serve none", 0: "mounts on free ports (bftfs status)"}.get(
        m.mount_port, f"mounts on {m.address}:{m.mount_port}"
    )
    return f"{nodes}, {mounts}"


def parse_addresses(text: str) -> list[tuple[str, int]]:
    """``HOST:PORT,HOST:PORT,...`` (an IPv6 host in brackets: ``[::1]:7000``), one per node
    in id order.

    Raises:
        argparse.ArgumentTypeError: an address without a port, or a port out of range.
    """
    out = []
    for item in (x.strip() for x in text.split(",")):
        host, sep, port = item.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise argparse.ArgumentTypeError(
                f"{item!r} is not HOST:PORT (a port 1-65535; IPv6 as [ADDR]:PORT)"
            )
        out.append((host, int(port)))
    return out


def cmd_bundle(args: argparse.Namespace) -> int:
    from bftfs import bundle

    cfg, _ = cluster_of(args)
    if args.node is not None:
        files = bundle.members(cfg, node=args.node)
        default = Path(f"node{args.node}.tar.gz")
    else:
        files = bundle.members(cfg, client=args.client)
        default = Path(f"{args.client}.tar.gz")
    out = args.output or default
    bundle.write(out, files)
    what = f"node {args.node}" if args.node is not None else f"client {args.client}"
    keys = "private key" + (" and the volume key" if args.client and cfg.sealed else "")
    print(f"wrote {out}: the configuration and {what}'s {keys} (keep it secret)")
    print(f"  on its machine: mkdir -p /var/lib/bftfs && tar -xzf {out.name} -C /var/lib/bftfs")
    if args.node is not None:
        print(f"  then: bftfs node run --config /var/lib/bftfs/cluster.toml --id {args.node}")
        print(f"  or:   systemctl enable --now bftfs-node@{args.node} (bftfs unit node)")
    else:
        print(
            "  then: bftfs mount --config /var/lib/bftfs/cluster.toml "
            f"--as {args.client} /mnt/bftfs"
        )
    return 0


#: ``bftfs init`` options and their defaults: ``up`` says which it ignores for an existing
#: cluster.
INIT_DEFAULTS: dict[str, object] = {
    "t": 1,
    "b": 1,
    "n": None,
    "qc": None,
    "m": None,
    "block_size": DEFAULT_BLOCK_SIZE,
    "big_block_size": None,
    "inline_limit": DEFAULT_INLINE_LIMIT,
    "map_size": DEFAULT_MAP_SIZE,
    "clients": 2,
    "host": "127.0.0.1",
    "no_durable": False,
    "engine": "qu",
    "no_seal": False,
    "groups": 1,
    # not --metrics-port / --metrics-addr: `up` applies them to this start (_up_metrics)
}


def cmd_up(args: argparse.Namespace) -> int:
    home = args.dir = discover.home_to_create(args.dir)
    existed = localmod.config_path(home).exists()
    if not existed:
        cmd_init(argparse.Namespace(**{**vars(args), "force": False}))
    else:
        ignored = [
            f"--{k.replace('_', '-')}" for k, v in INIT_DEFAULTS.items() if getattr(args, k) != v
        ]
        if ignored:
            print(
                f"bftfs up: a cluster exists in {home}; ignoring {', '.join(ignored)} "
                f"(`bftfs init --force --dir {home}` replaces it, data and keys included)",
                file=sys.stderr,
            )
    cfg = localmod.load_cluster(home)
    _warn_ephemeral_ports(cfg)
    metrics = _up_metrics(cfg, args)
    running = [s.id for s in cfg.nodes if localmod.running_pid(s) is not None]
    localmod.start_nodes(cfg, _node_metrics_args(cfg, metrics))
    if running and args.metrics_port is not None:
        print(
            f"bftfs up: node(s) {', '.join(map(str, running))} were running already and keep "
            "their metrics (`bftfs node restart I --metrics-port P` changes them)",
            file=sys.stderr,
        )
    if existed:  # (a new one's init said it)
        for warning in capacity.maps_beyond_disk(cfg):
            print(f"warning: {warning}", file=sys.stderr)
    # A quorum serves: a node still recovering at the deadline (its process runs) passes.
    statuses = localmod.wait_ready(
        cfg,
        timeout=args.timeout,
        progress=lambda m: print(m, file=sys.stderr, flush=True),
        enough=cfg.n - cfg.t,
    )
    print(f"bftfs cluster up: {cfg.n} nodes (t={cfg.t}, b={cfg.b}) from {cfg.home}")
    _print_status(statuses)
    if metrics.node_port is not None or metrics.mount_port is not None:
        print(f"metrics: {_describe_metrics(metrics, cfg.n)}")
    if not args.no_mount:
        args = argparse.Namespace(
            **{**vars(args), "metrics_port": metrics.mount_port, "metrics_addr": metrics.address}
        )
        mountmod = mount_module()

        mnt: Path = args.mount
        mnt.mkdir(parents=True, exist_ok=True)
        if mountmod.is_mounted(mnt):
            print(f"{mnt} is already mounted")
        else:
            mount_daemon(cfg, localmod.config_path(cfg.home), mnt, args)
            print(
                f"mounted {mnt.resolve()}: use it like any directory "
                f"(it survives {cfg.t} failed node(s), {cfg.b} of them Byzantine)"
            )
    if Path(home) == Path("nodes"):
        print("stop it with `make down` (or `bftfs down`); see `bftfs status`.")
    else:
        print(f"stop it with `bftfs down --dir {home}`; see `bftfs status --dir {home}`.")
    return 0


def _up_metrics(cfg: ClusterConfig, args: argparse.Namespace) -> MetricsConfig:
    """Where ``bftfs up`` has the nodes and its mount serve metrics: ``--metrics-port P``
    (node ``I`` on ``P + I``, the mount on ``P + n``; ``0``: free ports) for this start,
    else the configuration's ``[metrics]``."""
    if args.metrics_port is None:
        if args.metrics_addr is None:
            return cfg.metrics
        return replace(cfg.metrics, address=args.metrics_addr)
    port = args.metrics_port
    return MetricsConfig(
        address=args.metrics_addr or cfg.metrics.address,
        node_port=port,
        mount_port=port + cfg.n if port else 0,
    ).validate(cfg.n)


def _node_metrics_args(cfg: ClusterConfig, metrics: MetricsConfig) -> dict[int, list[str]]:
    """``bftfs node`` options giving each node the metrics of ``metrics`` (none when they
    are the configuration's: the node reads ``[metrics]`` itself)."""
    if metrics == cfg.metrics:
        return {}
    out: dict[int, list[str]] = {}
    for spec in cfg.nodes:
        port = metrics.node_port_of(spec.id)
        out[spec.id] = (
            ["--no-metrics"]
            if port is None
            else ["--metrics-port", str(port), "--metrics-addr", metrics.address]
        )
    return out


def _warn_ephemeral_ports(cfg: ClusterConfig) -> None:
    """A cluster made before ports were chosen outside the ephemeral range: any outgoing
    connection may hold one of its ports when a node starts; say so, and how to move."""
    lo, hi = localmod.ephemeral_range()
    inside = [s.id for s in cfg.nodes if lo <= s.port <= hi]
    if inside:
        print(
            f"bftfs up: node(s) {', '.join(map(str, inside))} listen on ports in the "
            f"ephemeral range {lo}-{hi}, which outgoing connections may take; give them "
            "ports below it in cluster.toml (or `bftfs init --force`, which loses the data)",
            file=sys.stderr,
        )


def cmd_down(args: argparse.Namespace) -> int:
    """Unmount this cluster's mounts (first: they flush while the nodes are up), then stop
    the nodes.  A busy mount is refused as ``bftfs umount`` refuses it, and then the
    nodes keep running (its daemon needs them to send what it holds), unless ``--force``."""
    cfg, _ = cluster_of(args)
    busy, lost_any = unmount_all(cfg, force=args.force)
    if busy:
        for mnt in busy:
            print(busy_message(mnt), file=sys.stderr)
        raise QuietError(
            "bftfs down: the nodes were left running for the busy mount(s) above"
            " (`bftfs down --force` detaches them and stops everything)",
            EXIT_BUSY,
        )
    stopped = localmod.stop_nodes(cfg)
    print(f"stopped {len(stopped)} node(s)" + (f": {stopped}" if stopped else ""))
    return EXIT_MOUNT if lost_any else 0


def cmd_client(args: argparse.Namespace) -> int:
    """``bftfs client add|revoke|rotate|remove|list``: client identities, each id given once
    (a removed client's id is retired).  A cluster with views changes them online
    (``cli/views.py``); one from before views edits ``cluster.toml`` for the next start."""
    cfg, path = cluster_of(args)
    if args.action == "list":
        if args.json:
            print(json.dumps(_clients_json(cfg), indent=2))
            return 0
        print(f"{'ID':>4}  NAME")
        for c in cfg.clients:
            print(f"{c.id - CLIENT_ID_BASE:>4}  {c.name}")
        for r in cfg.retired_clients:
            print(f"{r.id - CLIENT_ID_BASE:>4}  {r.name} (removed: its id is never reused)")
        return 0
    if cfg.admin_key is not None:
        from bftfs.cli.views import client_online

        return client_online(args, cfg, path)
    if args.action == "rotate":
        raise QuietError(
            "bftfs client rotate needs views: `bftfs view adopt` first (docs/membership.md)", 2
        )
    if args.action == "add":
        spec = clusterkeys.add_client(cfg, path, args.name)
        print(
            f"added client {spec.name} (id {spec.id - CLIENT_ID_BASE}); its key: "
            f"{cfg.client_key_path(spec.name)}"
        )
    else:  # remove, revoke
        gone = clusterkeys.remove_client(cfg, path, args.name)
        print(
            f"removed client {gone.name} (id {gone.id - CLIENT_ID_BASE}, never reused) and "
            "deleted its key here"
        )
        if cfg.sealed:
            print(
                "it still holds the volume key: `bftfs rotate-key` so that it can read "
                "nothing written from now on (docs/confidentiality.md)"
            )
    print("restart the nodes for them to see it (they read the configuration when they start)")
    return 0


def _clients_json(cfg: ClusterConfig) -> dict[str, Any]:
    """``bftfs client list --json``: the clients and the removed ones, by id and name."""
    return {
        "clients": [{"id": c.id - CLIENT_ID_BASE, "name": c.name} for c in cfg.clients],
        "removed": [{"id": r.id - CLIENT_ID_BASE, "name": r.name} for r in cfg.retired_clients],
    }


def cmd_rotate_key(args: argparse.Namespace) -> int:
    """``bftfs rotate-key``: a new volume key for new writes, the old one kept for reading
    (docs/confidentiality.md)."""
    cfg, path = cluster_of(args)
    new = clusterkeys.rotate_volume_key(cfg, path)
    print(f"new volume key {new.key_id.hex()}: mounts started from now on seal under it")
    print(
        f"  the {len(cfg.previous_volume_key_ids) + 1} previous key(s) stay for reading "
        "what was written under them"
    )
    print(
        "  give each client a new bundle (bftfs bundle --client NAME) and remount; a client "
        "removed before now can read nothing written from now on"
    )
    return 0


def with_init(sp: argparse.ArgumentParser) -> None:
    """The options of a new cluster (``init``, and ``up`` when there is none yet)."""
    sp.add_argument("--t", type=int, default=1, help="faulty nodes tolerated (default 1)")
    sp.add_argument("--b", type=int, default=1, help="Byzantine nodes among them (default 1)")
    sp.add_argument("--n", type=int, help="nodes (default 3t+2b+1)")
    sp.add_argument("--qc", type=int, help="PASIS QC (default n-t-b)")
    sp.add_argument("--m", type=int, help="PASIS fragments to decode (default QC-t)")
    sp.add_argument(
        "--block-size",
        type=parse_size,
        default=DEFAULT_BLOCK_SIZE,
        help="file block size (default 64K)",
    )
    sp.add_argument(
        "--big-block-size",
        type=parse_size,
        default=None,
        help="block size of files written sequentially, a multiple of --block-size "
        "(default 1M; 0 = every file has --block-size; docs/fs.md)",
    )
    sp.add_argument(
        "--inline-limit",
        type=parse_size,
        default=DEFAULT_INLINE_LIMIT,
        help="files up to this size live in their metadata object, replicated "
        "(default 32K; 0 = always erasure-coded blocks)",
    )
    sp.add_argument(
        "--map-size",
        type=parse_size,
        default=DEFAULT_MAP_SIZE,
        help="LMDB map size per node (default 16G; sparse)",
    )
    sp.add_argument(
        "--clients", type=int, default=2, help="client identities to create (default 2)"
    )
    sp.add_argument("--host", default="127.0.0.1", help="address the nodes listen on")
    sp.add_argument(
        "--engine",
        default="qu",
        help='"qu" (Q/U, the default), "fab" (FaB Paxos, docs/fab.md) or "listeners" (3b+1 '
        "nodes: FaB metadata, blocks in Listeners registers, docs/listeners.md)",
    )
    sp.add_argument(
        "--no-durable",
        action="store_true",
        help="do not fsync before acknowledging (faster; a power failure "
        "may lose acknowledged writes)",
    )
    sp.add_argument(
        "--no-seal",
        action="store_true",
        help="no volume key: file contents are stored unencrypted, readable by any node "
        "(default: mounts encrypt them; docs/confidentiality.md)",
    )
    sp.add_argument(
        "--metrics-port",
        type=port_number,
        help="Prometheus metrics: node I on this port + I, mounts on this port + n (0: free "
        "ports); init writes it as [metrics] in cluster.toml, up also applies it to this start",
    )
    sp.add_argument(
        "--metrics-addr",
        help="the address metrics listen on (default 127.0.0.1; 0.0.0.0: every interface)",
    )
    groups.add_option(sp)


def add_init(sub: Any) -> None:
    """``bftfs init``."""
    sp = sub.add_parser("init", help="create a cluster directory (keys, configuration)")
    with_dir(sp)
    with_init(sp)
    sp.add_argument("--force", action="store_true", help="replace an existing cluster")
    sp.add_argument(
        "--nodes",
        type=parse_addresses,
        metavar="HOST:PORT,...",
        help="each node's address, in id order, for nodes on several machines "
        "(instead of --host; --n defaults to their number)",
    )
    sp.set_defaults(func=cmd_init)


def add_bundle(sub: Any) -> None:
    """``bftfs bundle --node I | --client NAME``."""
    sp = sub.add_parser(
        "bundle",
        help="the configuration and one node's or client's private key, to copy to its machine",
    )
    with_cluster(sp)
    who = sp.add_mutually_exclusive_group(required=True)
    who.add_argument("--node", type=int, help="the node the bundle is for")
    who.add_argument("--client", help="the client the bundle is for (e.g. client0)")
    sp.add_argument("-o", "--output", type=Path, help="file to write (default NAME.tar.gz)")
    sp.set_defaults(func=cmd_bundle)


def add_rotate_key(sub: Any) -> None:
    """``bftfs rotate-key``."""
    sp = sub.add_parser(
        "rotate-key",
        help="a new volume key for new writes (old ones kept for reading; after a client "
        "remove, so that it reads nothing new)",
    )
    with_cluster(sp)
    sp.set_defaults(func=cmd_rotate_key)


def add_up(sub: Any) -> None:
    """``bftfs up``."""
    sp = sub.add_parser("up", help="create the local cluster if needed, start its nodes, mount it")
    with_dir(sp)
    with_init(sp)
    sp.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for nodes")
    sp.add_argument(
        "--mount",
        type=Path,
        default=Path("mount"),
        help="where to mount the file system (default: mount)",
    )
    sp.add_argument("--no-mount", action="store_true", help="start the nodes only")
    with_client(sp)
    sp.set_defaults(func=cmd_up)


def add_down(sub: Any) -> None:
    """``bftfs down``."""
    sp = sub.add_parser("down", help="unmount and stop the local cluster")
    sp.add_argument(
        "--force",
        action="store_true",
        help="detach busy mounts too and stop their daemons (what open files have not "
        "written yet is lost); without it a busy mount stops the command (exit 32)",
    )
    with_dir(sp)
    sp.set_defaults(func=cmd_down)


def add_client(sub: Any) -> None:
    """``bftfs client add|revoke|remove|rotate NAME`` and ``bftfs client list``: each
    action its own parser (``bftfs client add --help`` shows add's options only)."""
    sp = sub.add_parser(
        "client",
        help="add, revoke, rotate the key of, or list clients, online (a new view); "
        "ids are never reused",
        description="Client identities, changed online by a new signed view (ids are never "
        "reused; docs/guide.md, 'Membership').",
    )
    actions = add_actions(sp)
    for name, text, aliases in (
        ("add", "a new client identity, its bundle written", ()),
        ("revoke", "revoke a client (remove: the same); its id is never reused", ("remove",)),
        ("rotate", "a new key for a client; sessions under the old one end", ()),
    ):
        ap = actions.add_parser(name, help=text, description=text, aliases=list(aliases))
        ap.add_argument("name", metavar="NAME", help="the client's name")
        if name != "revoke":
            ap.add_argument(
                "-o",
                "--output",
                type=Path,
                help="the client's bundle (default DIR/bundles/NAME.tar.gz)",
            )
        ap.add_argument(
            "--offline",
            action="store_true",
            help="issue the view without pushing it (nodes started from this directory take it)",
        )
        with_identity(ap, default=None, help="the client to push the view as")
        with_cluster(ap)
        ap.set_defaults(func=cmd_client)
    ap = actions.add_parser(
        "list",
        help="the clients and the removed ones",
        description="The clients, and the removed ones (their ids are never reused).",
    )
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    with_cluster(ap)
    ap.set_defaults(func=cmd_client)
