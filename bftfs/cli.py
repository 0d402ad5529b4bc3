"""The ``bftfs`` command: one front door with subcommands (STYLE.md section 6).

Exit codes (shared by every subcommand):

====  =====================================================================
0     success
1     unexpected error (a bug: the traceback is printed)
2     usage error (argparse)
3     bad configuration (the message names the rule)
4     the cluster cannot be created, started or reached as asked
5     a key file is missing, unreadable or readable by others
6     mounting or unmounting failed
7     a history question has no answer (no such path then, or retention let it go)
====  =====================================================================
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import trio

from bftfs import __version__
from bftfs import local as localmod
from bftfs.config import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_INLINE_LIMIT,
    DEFAULT_MAP_SIZE,
    ClusterConfig,
    ConfigError,
)
from bftfs.crypto import Identity, KeyFileError
from bftfs.fuse.options import DEFAULT_ENTRY_TIMEOUT, DEFAULT_TIMEOUT, MountOptions, OptionError
from bftfs.ids import CLIENT_ID_BASE, is_node
from bftfs.logsetup import setup_logging

log = logging.getLogger(__name__)

EXIT_CONFIG = 3
EXIT_CLUSTER = 4
EXIT_KEY = 5
EXIT_MOUNT = 6
EXIT_HISTORY = 7


class QuietError(Exception):
    """A user error: print the message alone and exit with ``exitcode``."""

    def __init__(self, message: str, exitcode: int) -> None:
        super().__init__(message)
        self.exitcode = exitcode


def _size(text: str) -> int:
    """Parse ``4096``, ``64K``, ``16G`` (powers of 1024)."""
    units = {"k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


# Subcommands ------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    if args.force and localmod.config_path(args.dir).exists():
        # Replace means replace: the old cluster's mounts and nodes stop and its keys and
        # data go (new keys meeting old databases would be a cluster nobody can read).
        from bftfs.fuse import control

        with contextlib.suppress(localmod.ClusterError, ConfigError):
            old = localmod.load_cluster(args.dir)
            for pid, mnt in control.known_mounts(old):
                control.unmount(mnt, pid=pid)
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
        clients=args.clients,
        host=args.host,
        addresses=getattr(args, "nodes", None),
        force=args.force,
    )
    print(f"created a cluster of {cfg.n} nodes in {cfg.home}")
    print(
        f"  t={cfg.t} b={cfg.b}  Q/U: n={cfg.n} q={cfg.q} r={cfg.r}  "
        f"PASIS: N={cfg.n} QC={cfg.qc} m={cfg.m} block={_human(cfg.block_size)}"
        + (f" (sequential files {_human(cfg.big_blocks)})" if cfg.big_blocks else "")
    )
    print(f"  clients: {', '.join(c.name for c in cfg.clients)}")
    print(f"  configuration: {localmod.config_path(cfg.home)}")
    if getattr(args, "nodes", None):
        print(
            "  nodes on other machines: copy each its bundle "
            f"(bftfs bundle --dir {args.dir} --node I -o nodeI.tar.gz; README 'Several machines')"
        )
    return 0


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

    cfg, _ = _cluster_of(args)
    if args.node is not None:
        files = bundle.members(cfg, node=args.node)
        default = Path(f"node{args.node}.tar.gz")
    else:
        files = bundle.members(cfg, client=args.client)
        default = Path(f"{args.client}.tar.gz")
    out = args.output or default
    bundle.write(out, files)
    what = f"node {args.node}" if args.node is not None else f"client {args.client}"
    print(f"wrote {out}: the configuration and {what}'s private key (keep it secret)")
    print(f"  on its machine: mkdir -p /var/lib/bftfs && tar -xzf {out.name} -C /var/lib/bftfs")
    if args.node is not None:
        print(f"  then: bftfs node --config /var/lib/bftfs/cluster.toml --id {args.node}")
        print(f"  or:   systemctl enable --now bftfs-node@{args.node} (contrib/systemd)")
    else:
        print(
            "  then: bftfs mount --config /var/lib/bftfs/cluster.toml "
            f"--client {args.client} /mnt/bftfs"
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
}


def cmd_up(args: argparse.Namespace) -> int:
    home: Path = args.dir
    if not localmod.config_path(home).exists():
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
    localmod.start_nodes(cfg)
    statuses = localmod.wait_ready(
        cfg, timeout=args.timeout, progress=lambda m: print(m, file=sys.stderr, flush=True)
    )
    print(f"bftfs cluster up: {cfg.n} nodes (t={cfg.t}, b={cfg.b}) from {cfg.home}")
    _print_status(statuses)
    if not args.no_mount:
        mountmod = _mount_module()

        mnt: Path = args.mount
        mnt.mkdir(parents=True, exist_ok=True)
        if mountmod.is_mounted(mnt):
            print(f"{mnt} is already mounted")
        else:
            _mount(cfg, localmod.config_path(cfg.home), mnt, args)
            print(
                f"mounted {mnt.resolve()}: use it like any directory "
                f"(it survives {cfg.t} failed node(s), {cfg.b} of them Byzantine)"
            )
    if Path(home) == Path("nodes"):
        print("stop it with `make down` (or `bftfs down`); see `bftfs status`.")
    else:
        print(f"stop it with `bftfs down --dir {home}`; see `bftfs status --dir {home}`.")
    return 0


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


def _mount_options(args: argparse.Namespace) -> MountOptions:
    """The mount options of ``--client``, ``--attr-timeout``, ``--entry-timeout`` and
    ``--metrics-port``, with ``-o`` applied over them."""
    base = MountOptions(
        client=args.client,
        attr_timeout=args.attr_timeout,
        entry_timeout=args.entry_timeout,
        metrics_port=getattr(args, "metrics_port", None),
    )
    try:
        return base.with_options(getattr(args, "options", None))
    except OptionError as e:
        raise QuietError(str(e), 2) from None


def _mount(
    cfg: ClusterConfig,
    config_path: Path,
    mnt: Path,
    args: argparse.Namespace,
    *,
    at_ns: int | None = None,
) -> int:
    """Start a background mount daemon (``args``: the client, cache timeouts, ``-o`` and,
    for ``bftfs mount``, logging options)."""
    mountmod = _mount_module()
    _check_client_key(cfg, _mount_options(args).client)
    try:
        return mountmod.mount_background(
            cfg,
            mnt,
            _mount_options(args),
            config_path=config_path,
            log_path=getattr(args, "log", None),
            debug_modules=getattr(args, "debug_modules", None) or (),
            debug=bool(getattr(args, "debug", False)),
            at_ns=at_ns,
        )
    except mountmod.MountError as e:  # re-exported from bftfs.fuse.control
        raise QuietError(str(e), EXIT_MOUNT) from None


def _check_client_key(cfg: ClusterConfig, client: str) -> None:
    """Load the client's key here, before a daemon is forked: a missing or unreadable key
    is a key error (exit 5, KeyFileError), not a failed mount whose cause is in a log."""
    from bftfs.connect import client_identity

    client_identity(cfg, client)


def _mount_module() -> Any:
    """:mod:`bftfs.fuse.mount`, which needs pyfuse3 (the ``fuse`` extra): a node-only
    installation runs every command but mounting."""
    try:
        from bftfs.fuse import mount
    except ModuleNotFoundError as e:
        if e.name != "pyfuse3":
            raise
        raise QuietError(
            "mounting needs pyfuse3: install bftfs with the fuse extra "
            "(pip install 'bftfs[fuse]'; it builds against libfuse3-dev and pkg-config)",
            EXIT_MOUNT,
        ) from None
    return mount


def _cluster_of(args: argparse.Namespace) -> tuple[ClusterConfig, Path]:
    """The configuration named by ``--config``, or the one in ``--dir``."""
    from bftfs import config as cfgmod

    if args.config is not None:
        return cfgmod.load(args.config), args.config
    return localmod.load_cluster(args.dir), localmod.config_path(args.dir)


def cmd_mount(args: argparse.Namespace) -> int:
    mountmod = _mount_module()

    cfg, path = _cluster_of(args)
    options = _mount_options(args)
    cfg.client(options.client)  # a clear error for an unknown client, before forking
    _check_client_key(cfg, options.client)
    at_ns = _mount_moment(args)
    if args.fg:
        setup_logging(log_file=args.log, debug_modules=args.debug_modules)
        try:
            mountmod.run_foreground(
                cfg, args.mountpoint, options, config_path=path, debug=args.debug, at_ns=at_ns
            )
        except (RuntimeError, OSError) as e:  # libfuse refused (busy, no such directory...)
            log.exception("mounting %s failed", args.mountpoint)
            raise QuietError(f"mounting {args.mountpoint} failed: {e}", EXIT_MOUNT) from None
        return 0
    _mount(cfg, path, args.mountpoint, args, at_ns=at_ns)
    when = "" if at_ns is None else f", read-only, as it was at {args.at}"
    print(f"mounted {args.mountpoint.resolve()} as {options.client}{when}")
    return 0


def _mount_moment(args: argparse.Namespace) -> int | None:
    """``bftfs mount --at WHEN``: the moment in ns (a time or an age; a version id names
    one object's version, so it needs a path: ``bftfs log`` shows its time)."""
    if getattr(args, "at", None) is None:
        return None
    from bftfs.history_cli import WhenError, moment_of, parse_when

    try:
        when = parse_when(args.at)
        if isinstance(when, str):
            cfg, _ = _cluster_of(args)
            return moment_of(cfg, _mount_options(args).client, when)
    except WhenError as e:
        raise QuietError(str(e), 2) from None
    return when


def cmd_log(args: argparse.Namespace) -> int:
    from bftfs import history_cli

    return history_cli.cmd_log(args, _cluster_of(args)[0])


def cmd_cat(args: argparse.Namespace) -> int:
    from bftfs import history_cli

    return history_cli.cmd_cat(args, _cluster_of(args)[0])


def cmd_restore(args: argparse.Namespace) -> int:
    from bftfs import history_cli

    return history_cli.cmd_restore(args, _cluster_of(args)[0])


def cmd_diff(args: argparse.Namespace) -> int:
    from bftfs import history_cli

    return history_cli.cmd_diff(args, _cluster_of(args)[0])


def cmd_changes(args: argparse.Namespace) -> int:
    from bftfs import history_cli

    return history_cli.cmd_changes(args, _cluster_of(args)[0])


def cmd_revert(args: argparse.Namespace) -> int:
    from bftfs import history_cli

    return history_cli.cmd_revert(args, _cluster_of(args)[0])


def cmd_snapshot(args: argparse.Namespace) -> int:
    from bftfs import history_cli

    return history_cli.cmd_snapshot(args, _cluster_of(args)[0])


def cmd_verify(args: argparse.Namespace) -> int:
    """Scrub every block of every file (bftfs/fs/scrub.py) with a progress line."""
    import time

    from bftfs.fs.scrub import scrub, summarize
    from bftfs.fs.session import open_protocol_clients

    cfg, _ = _cluster_of(args)
    started = time.monotonic()
    show = not args.json and sys.stderr.isatty() or args.progress
    last = [0.0]

    def progress(done: int, known: int, report: Any) -> None:
        now = time.monotonic()
        if report.repaired and args.verbose:
            nodes = ", ".join(str(n) for n in report.repaired)
            print(f"\rblock {report.block:#x}: rewrote node(s) {nodes}", file=sys.stderr)
        if show and (now - last[0] > 0.2 or done == known):
            last[0] = now
            width = 30
            filled = width * done // max(known, 1)
            bar = "#" * filled + "." * (width - filled)
            print(f"\r[{bar}] {done}/{known} blocks", end="", file=sys.stderr, flush=True)

    async def run() -> list[Any]:
        async with open_protocol_clients(cfg, args.client, trust_verified=False) as (qu, rw):
            return await scrub(qu, rw, cfg.block_size, progress)

    reports = trio.run(run)
    if show:
        print(file=sys.stderr)
    totals = summarize(reports)
    totals["seconds"] = round(time.monotonic() - started, 2)
    _record_verify(cfg, totals["repaired_by_node"])
    if args.json:
        print(json.dumps(totals))
    else:
        print(
            f"scrubbed {totals['checked']} blocks in {totals['seconds']} s: "
            f"{totals['fragments_intact']} fragments intact, "
            f"{totals['fragments_repaired']} rewritten ({totals['blocks_repaired']} blocks), "
            f"{totals['fragments_unreachable']} on nodes that did not answer"
        )
        for node, count in totals["repaired_by_node"].items():
            print(f"  node {node}: {count} fragment(s) missing or damaged, rewritten")
        if totals["repaired_by_node"]:
            print(
                "  (a node that was down catches up; one whose fragments go bad again is "
                "failing or Byzantine: see `bftfs status`, replace it)"
            )
    # As fsck: 0 nothing wrong, 1 damage found and repaired, 4 some node did not answer
    # (the scrub could not finish everywhere).
    if totals["fragments_unreachable"]:
        return EXIT_CLUSTER
    return 1 if totals["fragments_repaired"] else 0


def cmd_client(args: argparse.Namespace) -> int:
    """``bftfs client add|remove|list``: client identities, each id given once for the life
    of the cluster (a removed client's id is retired, never handed to the next one)."""
    cfg, path = _cluster_of(args)
    if args.action == "list":
        print(f"{'ID':>4}  NAME")
        for c in cfg.clients:
            print(f"{c.id - CLIENT_ID_BASE:>4}  {c.name}")
        for r in cfg.retired_clients:
            print(f"{r.id - CLIENT_ID_BASE:>4}  {r.name} (removed: its id is never reused)")
        return 0
    if not args.name:
        raise QuietError(f"bftfs client {args.action}: which client? (a NAME)", 2)
    if args.action == "add":
        spec = localmod.add_client(cfg, path, args.name)
        print(
            f"added client {spec.name} (id {spec.id - CLIENT_ID_BASE}); its key: "
            f"{cfg.client_key_path(spec.name)}"
        )
    else:
        gone = localmod.remove_client(cfg, path, args.name)
        print(
            f"removed client {gone.name} (id {gone.id - CLIENT_ID_BASE}, never reused) and "
            "deleted its key here"
        )
    print("restart the nodes for them to see it (they read the configuration when they start)")
    return 0


def _record_verify(cfg: ClusterConfig, repaired_by_node: dict[str, int]) -> None:
    """Keep what ``bftfs verify`` rewrote per node in the cluster directory, where
    ``bftfs status`` shows it until ``bftfs status --clear`` (bftfs/health.py)."""
    from bftfs import health

    try:
        health.add_verify(cfg.home, repaired_by_node)
    except OSError as e:
        print(
            f"bftfs verify: cannot record the findings in {health.path_of(cfg.home)}: "
            f"{e.strerror} (`bftfs status` will not show them)",
            file=sys.stderr,
        )


def cmd_umount(args: argparse.Namespace) -> int:
    from bftfs import proc
    from bftfs.fuse import control as mountmod

    target = Path(os.path.abspath(args.mountpoint))  # no resolve(): it stats a dead mount
    pid = None
    cfg = None
    with contextlib.suppress(localmod.ClusterError, ConfigError):
        cfg, _ = _cluster_of(args)
        pid = next((p for p, m in mountmod.known_mounts(cfg) if m == target), None)
    if not mountmod.is_mounted(target) and pid is None:
        raise QuietError(f"{target} is not mounted", EXIT_MOUNT)
    dead = proc.is_dead_mount(target) or (pid is not None and not proc.process_alive(pid))
    mountmod.unmount(target, pid=pid if not dead else None)
    if cfg is not None:  # the book-keeping of a daemon that could not remove its own
        for stale in (mountmod.pid_file(cfg, target), mountmod.status_file(cfg, target)):
            with contextlib.suppress(OSError):
                stale.unlink()
    print(f"unmounted {target}" + (" (its mount daemon had died)" if dead else ""))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from bftfs.fuse import control as mountmod

    cfg = localmod.load_cluster(args.dir)
    for pid, mnt in mountmod.known_mounts(cfg):  # unmount first: flush while nodes are up
        mountmod.unmount(mnt, pid=pid)
        print(f"unmounted {mnt}")
    stopped = localmod.stop_nodes(cfg)
    print(f"stopped {len(stopped)} node(s)" + (f": {stopped}" if stopped else ""))
    return 0


#: ``bftfs status`` exit codes: every node up and no fault seen; degraded (a node down or
#: caught misbehaving, at most ``t`` down: the file system still serves); unavailable
#: (more than ``t`` nodes down: operations fail).
STATUS_HEALTHY, STATUS_DEGRADED, STATUS_UNAVAILABLE = 0, 1, 2

#: Fault kinds (``Session.faults``) that are evidence against a node, as ``bftfs status``
#: shows them: (column, kinds).  Timeouts and unreachable nodes are shown but are no
#: evidence (a crashed or restarted node causes them), nor are Q/U servers reported as
#: culled by others (a Byzantine server could report a correct one: more than ``b`` reports
#: prove it, ``malevolent``); everything else is.
FAULT_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("corrupt", ("corrupt", "refuted")),
    ("culled", ("culled",)),
    ("malevolent", ("malevolent",)),
    ("malformed", ("malformed", "time_ahead")),
    ("bad frames", ("frame_*",)),
    ("timeouts", ("timeout", "unreachable")),
)
_NO_EVIDENCE = frozenset({"timeout", "unreachable", "culled"})


def cluster_health(
    cfg: ClusterConfig,
    statuses: list[localmod.NodeStatus],
    mounts: list[dict],
    findings: dict[int, Any] | None = None,
) -> tuple[int, str, list[str], dict[int, dict[str, int]]]:
    """(exit code, word, problems, faults per node summed over the mounts) of a cluster;
    ``findings``: what scrub and verification found standing against each node
    (``bftfs/health.py``), which keeps the cluster degraded until cleared."""
    from bftfs import health

    faults: dict[int, dict[str, int]] = {}
    for m in mounts:
        for node, kinds in (m.get("faults") or {}).items():
            per = faults.setdefault(int(node), {})
            for kind, count in kinds.items():
                per[kind] = per.get(kind, 0) + int(count)
    down = [s.id for s in statuses if not s.up]
    problems = []
    if down:
        problems.append(f"node(s) {', '.join(map(str, down))} not answering")
    behind = _not_caught_up(statuses)
    problems += behind
    for node, kinds in sorted(faults.items()):
        evidence = {k: v for k, v in kinds.items() if k not in _NO_EVIDENCE and v}
        if evidence:
            what = ", ".join(f"{k} {v}" for k, v in sorted(evidence.items()))
            problems.append(f"node {node} caught misbehaving by the mounts ({what})")
    for node, standing in (findings or {}).items():
        problems.append(health.describe(node, standing))
    for m in mounts:
        if m["state"] == "dead":
            still = " (still mounted: bftfs umount it)" if m.get("mounted") else ""
            problems.append(f"mount {m['mountpoint']}: its daemon is gone{still}")
        elif m["state"] == "unresponsive":
            problems.append(f"mount {m['mountpoint']}: its daemon does not update its status")
    if len(down) > cfg.t:
        return STATUS_UNAVAILABLE, "unavailable", problems, faults
    node_problems = (
        bool(down)
        or bool(behind)
        or bool(findings)
        or any(v for kinds in faults.values() for k, v in kinds.items() if k not in _NO_EVIDENCE)
    )
    if node_problems:
        return STATUS_DEGRADED, "degraded", problems, faults
    return STATUS_HEALTHY, "healthy", problems, faults


def _not_caught_up(statuses: list[localmod.NodeStatus]) -> list[str]:
    """A problem line for each node whose catch-up ended without bringing everything up
    to date (issue 31 item 12): it is still behind on those objects or blocks, so one more
    failure elsewhere costs readers repairs, or EIO.  A catch-up still running is not one
    (a restart's normal course)."""
    out = []
    for s in statuses:
        progress = (s.stats or {}).get("progress", {}) if s.up else {}
        left = [
            f"{name.split('.')[0]} {p.get('failed', 0) + p.get('abandoned', 0)}"
            for name, p in sorted(progress.items())
            if name.endswith(".catchup")
            and p.get("state") not in ("scanning", "running")
            and (
                p.get("state") in ("failed", "incomplete") or p.get("failed") or p.get("abandoned")
            )
        ]
        if left:
            out.append(f"node {s.id} has not caught up (left behind: {', '.join(left)})")
    return out


def _fault_sum(kinds: dict[str, int], wanted: tuple[str, ...]) -> int:
    """The counts of ``kinds`` named in ``wanted`` (``prefix*`` matches a prefix)."""
    return sum(
        v
        for k, v in kinds.items()
        if any(k == w or (w.endswith("*") and k.startswith(w[:-1])) for w in wanted)
    )


def cmd_status(args: argparse.Namespace) -> int:
    from bftfs.fuse import control

    cfg, _ = _cluster_of(args)
    statuses = trio.run(localmod.query_status, cfg)
    mounts = control.mount_statuses(cfg)
    record, findings = _findings(cfg, statuses, clear=args.clear)
    code, word, problems, faults = cluster_health(cfg, statuses, mounts, findings)
    if args.json:
        doc = {
            "cluster": {
                "home": str(cfg.home),
                **{k: getattr(cfg, k) for k in ("t", "b", "n", "qc", "m")},
            },
            "health": word,
            "exit_code": code,
            "problems": problems,
            "nodes": [
                {
                    **s.__dict__,
                    "faults": faults.get(s.id, {}),
                    "findings": findings[s.id].to_json() if s.id in findings else None,
                }
                for s in statuses
            ],
            "findings_cleared_at": record.cleared_at,
            "mounts": mounts,
        }
        print(json.dumps(doc, indent=2, default=str))
        return code
    print(f"cluster {cfg.home}: t={cfg.t} b={cfg.b} n={cfg.n} QC={cfg.qc} m={cfg.m}")
    print(f"health: {word.upper()}")
    for p in problems:
        print(f"  - {p}")
    _print_status(statuses)
    _print_limits(statuses, cfg.client_names())
    _print_mounts(mounts, faults, cfg)
    _print_findings(cfg, record, findings)
    return code


def _findings(
    cfg: ClusterConfig, statuses: list[localmod.NodeStatus], *, clear: bool
) -> tuple[Any, dict[int, Any]]:
    """The record in the cluster directory and what stands against each node; with
    ``clear``, everything is cleared first (``bftfs status --clear``)."""
    from bftfs import health

    totals = {s.id: health.node_totals(s.stats) for s in statuses if s.up}
    if clear:
        try:
            record = health.clear(cfg.home, totals)
        except OSError as e:
            raise QuietError(
                f"cannot clear the findings in {health.path_of(cfg.home)}: {e.strerror}",
                EXIT_CLUSTER,
            ) from None
        down = [s.id for s in statuses if not s.up]
        note = f" (node(s) {', '.join(map(str, down))} did not answer: theirs stay)" if down else ""
        print(f"cleared the findings of scrub and verification{note}", file=sys.stderr)
    else:
        record = health.load(cfg.home)
    return record, health.standing(record, totals)


def _print_findings(cfg: ClusterConfig, record: Any, findings: dict[int, Any]) -> None:
    """Per node, like zpool's CKSUM column: what ``bftfs verify`` rewrote on it, the bad
    replies other nodes' verification met from it, what its own scrub found damaged."""
    since = (
        f"since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(record.cleared_at))}"
        if record.cleared_at
        else "since the cluster began"
    )
    print(f"findings of scrub and verification, per node ({since}; `bftfs status --clear`):")
    print(f"  {'node':>4}  {'verify':>8}  {'reported':>8}  {'scrub':>8}  reported by")
    for spec in cfg.nodes:
        st = findings.get(spec.id)
        if st is None:
            print(f"  {spec.id:>4}  {0:>8}  {0:>8}  {0:>8}  -")
            continue
        by = ", ".join(f"node {r}" for r in sorted(st.reporters)) or "-"
        print(
            f"  {spec.id:>4}  {st.verify:>8}  {sum(st.reported.values()):>8}  "
            f"{st.scrub.get('damaged', 0):>8}  {by}"
        )
    if record.verify_runs:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.last_verify or 0))
        total = sum(record.verify.values())
        print(
            f"  bftfs verify: {record.verify_runs} run(s), last {stamp}; rewrote {total} "
            "fragment(s) since cleared"
        )


def _print_mounts(
    mounts: list[dict], faults: dict[int, dict[str, int]], cfg: ClusterConfig
) -> None:
    if not mounts:
        print("mounts: none known (mounts started from this cluster directory are listed)")
    else:
        wide = max(len("mount point"), *(len(m["mountpoint"]) for m in mounts))
        print(
            f"  {'mount point':{wide}}  {'client':8}  {'state':12}  {'pid':>7}  "
            f"{'requests':>8}  {'EIO':>5}  metrics              options"
        )
        for m in mounts:
            eio = sum((m.get("eio") or {}).values())
            print(
                f"  {m['mountpoint']:{wide}}  {m.get('client', '?'):8}  {m['state']:12}  "
                f"{m['pid']:>7}  {m.get('requests', '-')!s:>8}  {eio:>5}  "
                f"{m.get('metrics') or '-':20} {m.get('options', '-')}"
            )
            if m.get("last_eio"):
                when, op, cause = m["last_eio"]
                stamp = time.strftime("%H:%M:%S", time.localtime(when))
                print(f"  {'':{wide}}  last EIO {stamp} {op}: {cause[:100]}")
    print("faults the mounts detected, per node (since each mount started):")
    head = "  ".join(f"{name:>10}" for name, _ in FAULT_COLUMNS)
    print(f"  {'node':>4}  {head}")
    for spec in cfg.nodes:
        kinds = faults.get(spec.id, {})
        cells = "  ".join(f"{_fault_sum(kinds, ks):>10}" for _, ks in FAULT_COLUMNS)
        print(f"  {spec.id:>4}  {cells}")


def _print_status(statuses: list[localmod.NodeStatus]) -> None:
    progress = {
        s.id: _progress((s.stats or {}).get("progress", {})) if s.up else "-" for s in statuses
    }
    wide = max([len("catch-up"), *(len(p) for p in progress.values())])
    print(
        f"  {'node':>4}  {'state':5}  {'address':21}  {'pid':>7}  {'lmdb':>10}  "
        f"{'requests':>9}  {'catch-up':{wide}}  rejected frames"
    )
    _print_rows(statuses, progress, wide)
    print(
        f"  {'node':>4}  {'in use':>10}  {'unverified':>10}  {'verified':>8}  "
        f"{'repaired':>8}  {'collected':>9}  {'forgotten':>9}  {'poisonous':>9}  "
        f"{'NOTIFY in/out':>13}  faults"
    )
    for s in statuses:
        v = ((s.stats or {}).get("progress") or {}).get("rw.verify") if s.up else None
        if not v:
            print(f"  {s.id:>4}  {'-':>10}  verification {'off' if s.up else '-'}")
            continue
        notify = f"{v['notify_received']}/{v['notify_sent']}"
        faults = "; ".join(v["faults"][-2:]) or "none"
        counters = (s.stats or {}).get("requests") or {}
        # Removed files' last records dropped: given-back blocks and Q/U objects.
        forgotten = counters.get("rw.forgotten", 0) + counters.get("qu.forgotten", 0)
        used = (s.stats or {}).get("used_bytes", v["used_bytes"])
        print(
            f"  {s.id:>4}  {_human(used):>10}  {v['backlog_versions']:>10}  "
            f"{v['verified']:>8}  {v['repaired']:>8}  {v['collected']:>9}  {forgotten:>9}  "
            f"{v['poisonous'] + v['discarded']:>9}  {notify:>13}  "
            f"{'(history pool short) ' if v['pressure'] else ''}{faults}"
        )


#: Principals ``bftfs status`` names per node, the largest first.
TOP_PRINCIPALS = 3


def _principal(pid: int, names: dict[int, str] | None = None) -> str:
    """``node2``, a client's configured name, ``client#N`` for an id the configuration no
    longer has (``clientN`` when no names are known)."""
    if is_node(pid):
        return f"node{pid}"
    if names is None:
        return f"client{pid - CLIENT_ID_BASE}"
    return names.get(pid) or f"client#{pid - CLIENT_ID_BASE}"


def _print_limits(statuses: list[localmod.NodeStatus], names: dict[int, str] | None = None) -> None:
    """``[limits]`` per node in one line: throttling, quota refusals and the principals
    storing most there, as ``blocks+metadata`` (one quota counts both)."""
    print("limits per client (the quota counts blocks+metadata):")
    print(
        f"  {'node':>4}  {'quota':>10}  {'throttled':>9}  {'waits':>7}  {'refused':>7}  stored most"
    )
    for s in statuses:
        lim = (s.stats or {}).get("limits") if s.up else None
        if not lim:
            print(f"  {s.id:>4}  {'-':>10}  {'-':>9}  {'-':>7}  {'-':>7}  -")
            continue
        print(
            f"  {s.id:>4}  {_human(lim['quota_bytes']):>10}  {lim['throttled']:>9}  "
            f"{lim['inflight_waits']:>7}  {lim['quota_refused']:>7}  "
            f"{_top_stored(lim['principals'], names) or 'nothing'}"
        )


def _top_stored(principals: dict[str, dict[str, int]], names: dict[int, str] | None = None) -> str:
    """``client0 1.2 MiB+40.0 KiB (3 refused), ...`` for the largest few."""
    rows = sorted(
        principals.items(),
        key=lambda kv: -(kv[1].get("stored_bytes", 0) + kv[1].get("meta_bytes", 0)),
    )
    parts = []
    for pid, p in rows[:TOP_PRINCIPALS]:
        blocks, meta = p.get("stored_bytes", 0), p.get("meta_bytes", 0)
        if not blocks + meta:
            break
        refused = p.get("quota_refused", 0)
        note = f" ({refused} refused)" if refused else ""
        parts.append(f"{_principal(int(pid), names)} {_human(blocks)}+{_human(meta)}{note}")
    more = sum(1 for _, p in rows[TOP_PRINCIPALS:] if p.get("stored_bytes") or p.get("meta_bytes"))
    return ", ".join(parts) + (f", +{more} more" if more else "")


def _print_rows(statuses: list[localmod.NodeStatus], progress: dict[int, str], wide: int) -> None:
    for s in statuses:
        st = s.stats or {}
        reqs = sum(v for k, v in st.get("requests", {}).items() if k.startswith("req."))
        rejected = ", ".join(f"{k}={v}" for k, v in sorted(st.get("rejected", {}).items()))
        print(
            f"  {s.id:>4}  {'up' if s.up else 'down':5}  {s.address:21}  "
            f"{s.pid if s.pid else '-':>7}  "
            f"{_human(st['lmdb_bytes']) if s.up else '-':>10}  "
            f"{reqs if s.up else '-':>9}  {progress[s.id]:{wide}}  "
            f"{rejected or ('none' if s.up else '-')}"
        )


def _progress(progress: dict[str, dict]) -> str:
    """Background catch-up of a node, short: ``qu done 12/12, rw 3/40`` (objects or blocks
    it found behind and brought up to date), with what it could not bring up to date
    (``qu incomplete 8/197 (189 failed)``: the node is still behind on those, and one more
    failure elsewhere costs readers repairs), ``-`` when none runs."""
    parts = []
    for name, p in sorted(progress.items()):
        if not name.endswith(".catchup"):
            continue
        state = p.get("state", "?")
        word = "" if state == "running" else f" {state}"
        left = [f"{p[k]} {k}" for k in ("failed", "skipped", "abandoned") if p.get(k)]
        note = f" ({', '.join(left)})" if left else ""
        parts.append(f"{name.split('.')[0]}{word} {p.get('done', 0)}/{p.get('behind', 0)}{note}")
    rejoin = progress.get("rejoin") or {}  # node/rejoin.py: cut off from its peers, or back
    if rejoin.get("state") == "cut off":
        parts.insert(0, f"cut off (reaches {rejoin.get('reachable', 0)} peers)")
    elif rejoin.get("rejoins"):
        parts.insert(0, f"rejoined {rejoin['rejoins']}x")
    return ", ".join(parts) or "-"


def _check_byzantine_profile(name: str) -> None:
    """Refuse an unknown ``--byzantine`` profile (exit 2) before anything is stopped."""
    from bftfs.testing.byzantine.profiles import PROFILES

    if name not in PROFILES:
        raise QuietError(
            f"unknown Byzantine profile {name!r}; known: {', '.join(sorted(PROFILES))}", 2
        )


def cmd_node_control(args: argparse.Namespace) -> int:
    """``bftfs node stop|start|restart I``: one node of the local cluster (``--dir``)."""
    if args.index is None:
        raise QuietError(f"bftfs node {args.action}: which node? (e.g. bftfs node stop 2)", 2)
    cfg, _ = _cluster_of(args)
    try:
        cfg.node(args.index)
    except (ConfigError, KeyError, IndexError):
        raise QuietError(f"no node {args.index} (nodes 0..{cfg.n - 1})", 2) from None
    if args.byzantine:
        _check_byzantine_profile(args.byzantine)  # a typo must not stop the node first
    extra = ["--byzantine", args.byzantine] if args.byzantine else []
    if args.action in ("stop", "restart"):
        was = localmod.stop_node(cfg, args.index)
        print(f"node {args.index} {'stopped' if was else 'was not running'}")
    if args.action in ("start", "restart"):
        if args.action == "start" and localmod.running_pid(cfg.node(args.index)) is not None:
            print(f"node {args.index} is running already")
            return 0
        pid = localmod.start_node(cfg, args.index, extra)
        localmod.wait_ready(cfg, nodes=[args.index])
        how = f" as Byzantine profile {args.byzantine!r}" if args.byzantine else ""
        print(f"node {args.index} started{how} (pid {pid})")
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    from bftfs import config as cfgmod
    from bftfs.node.service import Node

    if args.action is not None:
        return cmd_node_control(args)
    if args.config is None or args.id is None:
        raise QuietError(
            "bftfs node: give --config and --id to run a node in the foreground, or "
            "stop|start|restart I for the local cluster",
            2,
        )
    cfg = cfgmod.load(args.config)
    spec = cfg.node(args.id)
    setup_logging(log_file=args.log, debug_modules=args.debug_modules, quiet=args.quiet)
    ident = Identity.load(spec.id, spec.key_path)
    if ident.public != spec.public_key:
        raise KeyFileError(f"{spec.key_path} does not match node {spec.id}'s public key")

    if args.batch_sched:
        # A local cluster shares its cores with the client: SCHED_BATCH stops a node that
        # a request wakes from preempting the client mid-fan-out (measured: fan-out to 6
        # local nodes 1.08 ms -> 0.83 ms median). Harmless on a dedicated machine.
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))

    faults = None
    if args.byzantine:
        _check_byzantine_profile(args.byzantine)
        # The only use of bftfs.testing in production code, and only when asked for.
        from bftfs.testing.byzantine.profiles import profile

        faults = profile(args.byzantine, cfg, int(spec.id))
        log.warning("node %s runs the Byzantine profile %r", spec.id, args.byzantine)

    async def main() -> None:
        types = None
        if args.test_objects:
            from bftfs.node.protocols import WITH_TEST_TYPES

            types = WITH_TEST_TYPES
        node = Node(cfg, ident, faults=faults, object_types=types)
        metrics = None
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                await nursery.start(node.run)
                if args.metrics_port is not None:
                    metrics = _node_metrics_server(node, args)
                async for sig in signals:
                    log.info(
                        "node %s: %s received, shutting down", spec.id, signal.Signals(sig).name
                    )
                    nursery.cancel_scope.cancel()
                    break
        if metrics is not None:
            metrics.close()

    try:
        trio.run(main)
    except (OSError, BaseExceptionGroup) as e:
        raise _listen_error(e, spec) from None
    log.info("node %s stopped", spec.id)
    return 0


def _listen_error(e: BaseException, spec: Any) -> BaseException:
    """A node that could not bind its port: a message naming the port and, for a port in
    use, the process holding it (``proc.describe_port_holder``); anything else unchanged."""
    from bftfs import proc

    os_error = _first_os_error(e)
    if os_error is None:
        return e
    why = os_error.strerror or str(os_error)
    if os_error.errno == errno.EADDRINUSE:
        why += f": {proc.describe_port_holder(spec.port)} (stop it, or give node {spec.id} "
        why += "another port in cluster.toml)"
    return QuietError(f"node {spec.id}: cannot listen on {spec.address}: {why}", EXIT_CLUSTER)


def _first_os_error(e: BaseException) -> OSError | None:
    """``e`` itself or the first OSError inside it (trio's nurseries group exceptions)."""
    if isinstance(e, OSError):
        return e
    if isinstance(e, BaseExceptionGroup):
        for inner in e.exceptions:
            if (found := _first_os_error(inner)) is not None:
                return found
    return None


def _node_metrics_server(node: Any, args: argparse.Namespace) -> Any:
    """Serve the node's Prometheus metrics (``--metrics-port``); the port chosen is logged
    and written to ``node<I>/metrics.port`` (``0`` asks the OS for a free one)."""
    from bftfs import metrics as metricsmod
    from bftfs.node.service import node_metrics

    try:
        server = metricsmod.serve(
            args.metrics_addr, args.metrics_port, functools.partial(node_metrics, node)
        )
    except OSError as e:
        raise QuietError(
            f"node {node.id}: cannot serve metrics on {args.metrics_addr}:{args.metrics_port}: "
            f"{e.strerror}",
            EXIT_CLUSTER,
        ) from None
    (node.spec.data_dir / "metrics.port").write_text(f"{server.address}:{server.port}\n")
    return server


# Argument parsing -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bftfs",
        description="bftfs: a Byzantine fault-tolerant file system (PASIS blocks, Q/U metadata).",
        epilog="Exit codes: 0 ok, 1 bug, 2 usage, 3 configuration, 4 cluster, 5 key, 6 mount.",
    )
    p.add_argument("--version", action="version", version=f"bftfs {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_dir(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--dir", type=Path, default=Path("nodes"), help="cluster directory (default: nodes)"
        )

    def with_client(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--client", default="client0", help="client identity to mount as (default client0)"
        )
        sp.add_argument(
            "--attr-timeout",
            type=float,
            default=DEFAULT_TIMEOUT,
            help="seconds the kernel caches attributes and missing names (default 1)",
        )
        sp.add_argument(
            "--entry-timeout",
            type=float,
            default=DEFAULT_ENTRY_TIMEOUT,
            help="seconds the kernel caches names it found (default 30, as NFS's acdirmin; "
            "a stale one is noticed when it leads to a removed object)",
        )
        sp.add_argument(
            "-o",
            dest="options",
            metavar="OPTIONS",
            help="mount options, comma-separated, as mount(8) takes them: client=NAME, ro, "
            "allow_other, attr_timeout=S, entry_timeout=S, timeo=S (default 10) or hard, "
            "metrics_port=P, metrics_addr=A (README, 'Mounting')",
        )

    def with_init(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--t", type=int, default=1, help="faulty nodes tolerated (default 1)")
        sp.add_argument("--b", type=int, default=1, help="Byzantine nodes among them (default 1)")
        sp.add_argument("--n", type=int, help="nodes (default 3t+2b+1)")
        sp.add_argument("--qc", type=int, help="PASIS QC (default n-t-b)")
        sp.add_argument("--m", type=int, help="PASIS fragments to decode (default QC-t)")
        sp.add_argument(
            "--block-size",
            type=_size,
            default=DEFAULT_BLOCK_SIZE,
            help="file block size (default 64K)",
        )
        sp.add_argument(
            "--big-block-size",
            type=_size,
            default=None,
            help="block size of files written sequentially, a multiple of --block-size "
            "(default 256K; 0 = every file has --block-size; docs/fs.md)",
        )
        sp.add_argument(
            "--inline-limit",
            type=_size,
            default=DEFAULT_INLINE_LIMIT,
            help="files up to this size live in their metadata object, replicated "
            "(default 8K; 0 = always erasure-coded blocks)",
        )
        sp.add_argument(
            "--map-size",
            type=_size,
            default=DEFAULT_MAP_SIZE,
            help="LMDB map size per node (default 16G; sparse)",
        )
        sp.add_argument(
            "--clients", type=int, default=2, help="client identities to create (default 2)"
        )
        sp.add_argument("--host", default="127.0.0.1", help="address the nodes listen on")
        sp.add_argument(
            "--no-durable",
            action="store_true",
            help="do not fsync before acknowledging (faster; a power failure "
            "may lose acknowledged writes)",
        )

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

    sp = sub.add_parser(
        "bundle",
        help="the configuration and one node's or client's private key, to copy to its machine",
    )
    with_dir(sp)
    sp.add_argument("--config", type=Path, help="cluster.toml (instead of --dir)")
    who = sp.add_mutually_exclusive_group(required=True)
    who.add_argument("--node", type=int, help="the node the bundle is for")
    who.add_argument("--client", help="the client the bundle is for (e.g. client0)")
    sp.add_argument("-o", "--output", type=Path, help="file to write (default NAME.tar.gz)")
    sp.set_defaults(func=cmd_bundle)

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

    sp = sub.add_parser("down", help="unmount and stop the local cluster")
    with_dir(sp)
    sp.set_defaults(func=cmd_down)

    sp = sub.add_parser(
        "status",
        help="health (exit 0 healthy, 1 degraded, 2 unavailable), each node and mount, "
        "the faults the mounts detected per node",
    )
    with_dir(sp)
    sp.add_argument("--config", type=Path, help="cluster.toml (instead of --dir)")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.add_argument(
        "--clear",
        action="store_true",
        help="clear what scrub and verification found against the nodes (once dealt with)",
    )
    sp.set_defaults(func=cmd_status)

    sp = sub.add_parser("mount", help="mount the file system of a cluster on a directory")
    sp.add_argument("mountpoint", type=Path)
    with_dir(sp)
    sp.add_argument("--config", type=Path, help="cluster.toml (instead of --dir)")
    with_client(sp)
    sp.add_argument("--fg", action="store_true", help="stay in the foreground, log to stderr")
    sp.add_argument(
        "--log", type=Path, help="log file (default: stderr with --fg, else under mounts/)"
    )
    sp.add_argument("--debug", action="store_true", help="libfuse debug output")
    sp.add_argument("--debug-modules", nargs="*", default=[], help="e.g. bftfs.fs")
    sp.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics on this port (0: any free one; the port is in "
        "`bftfs status`); off by default",
    )
    sp.add_argument(
        "--at",
        metavar="WHEN",
        help="mount the tree as it was then, read-only (a time or an age, as in bftfs log)",
    )
    sp.set_defaults(func=cmd_mount)

    def with_cluster(sp: argparse.ArgumentParser) -> None:
        with_dir(sp)
        sp.add_argument("--config", type=Path, help="cluster.toml (instead of --dir)")

    from bftfs import history_cli

    history_cli.add_commands(sub, with_cluster)
    sub.choices["log"].set_defaults(func=cmd_log)
    sub.choices["cat"].set_defaults(func=cmd_cat)
    sub.choices["restore"].set_defaults(func=cmd_restore)
    sub.choices["diff"].set_defaults(func=cmd_diff)
    sub.choices["changes"].set_defaults(func=cmd_changes)
    sub.choices["revert"].set_defaults(func=cmd_revert)
    snapshot_actions = next(
        a for a in sub.choices["snapshot"]._actions if isinstance(a, argparse._SubParsersAction)
    )
    for action in ("create", "delete", "list"):
        snapshot_actions.choices[action].set_defaults(func=cmd_snapshot)

    sp = sub.add_parser(
        "verify", help="scrub: check every block on every node, rewrite missing or damaged ones"
    )
    with_cluster(sp)
    sp.add_argument("--client", default="client0", help="client identity to use (client0)")
    sp.add_argument("--json", action="store_true", help="totals as JSON")
    sp.add_argument("--progress", action="store_true", help="a progress bar even when piped")
    sp.add_argument("--verbose", action="store_true", help="name every block rewritten")
    sp.set_defaults(func=cmd_verify)

    sp = sub.add_parser(
        "client",
        help="add, remove (revoke) or list client identities; ids are never reused",
    )
    sp.add_argument("action", choices=("add", "remove", "list"))
    sp.add_argument("name", nargs="?", help="the client's name (add, remove)")
    with_cluster(sp)
    sp.set_defaults(func=cmd_client)

    sp = sub.add_parser("umount", help="unmount (flushes, waits for the daemon to exit)")
    sp.add_argument("mountpoint", type=Path)
    with_dir(sp)
    sp.add_argument("--config", type=Path, help="cluster.toml (instead of --dir)")
    sp.set_defaults(func=cmd_umount)

    sp = sub.add_parser(
        "node",
        help="run one storage node in the foreground, or stop/start/restart one of the "
        "local cluster",
    )
    sp.add_argument(
        "action",
        nargs="?",
        choices=("stop", "start", "restart"),
        help="control node INDEX of the local cluster (--dir) instead of running one",
    )
    sp.add_argument("index", nargs="?", type=int, metavar="INDEX", help="the node's id")
    with_dir(sp)
    sp.add_argument("--config", type=Path, help="cluster.toml (required to run a node)")
    sp.add_argument("--id", type=int, help="this node's id (required to run a node)")
    sp.add_argument("--log", type=Path, help="log file (default: stderr)")
    sp.add_argument("--debug-modules", nargs="*", default=[], help="e.g. bftfs.net")
    sp.add_argument("--quiet", action="store_true", help="warnings and errors only")
    sp.add_argument(
        "--test-objects",
        action="store_true",
        help="also serve the Q/U test object types (counter, kv): for benchmarks/qu.py and tests",
    )
    sp.add_argument(
        "--byzantine",
        metavar="PROFILE",
        help="misbehave on purpose, for fault tests (corrupt-fragments, reject-everything; "
        "see bftfs/testing/byzantine/profiles.py)",
    )
    sp.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics on this port (0: any free one, written to "
        "node<I>/metrics.port); off by default",
    )
    sp.add_argument(
        "--metrics-addr",
        default="127.0.0.1",
        help="address the metrics listen on (default 127.0.0.1)",
    )
    sp.add_argument(
        "--batch-sched",
        action="store_true",
        help="run under SCHED_BATCH (set by `bftfs up` for local clusters)",
    )
    sp.set_defaults(func=cmd_node)
    return p


#: Options whose value may be an age like ``-10m`` (argparse would take it for an option).
_WHEN_OPTIONS = ("--at", "--since", "--until", "--from", "--to")


def _join_ages(argv: list[str]) -> list[str]:
    """``--at -10m`` -> ``--at=-10m`` (``--at=-10m`` works as it is)."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in _WHEN_OPTIONS and len(arg) > 1 and arg[0] == "-" and arg[1].isdigit():
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def _quiet_broken_pipe() -> int:
    """Output piped into a reader that stopped (``bftfs log ... | head``): end quietly,
    as Unix tools do, instead of a traceback when Python flushes stdout at exit."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_join_ages(sys.argv[1:] if argv is None else argv))
    if args.command != "node":
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except QuietError as e:
        print(f"bftfs: {e}", file=sys.stderr)
        return e.exitcode
    except ConfigError as e:
        print(f"bftfs: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyFileError as e:
        print(f"bftfs: {e}", file=sys.stderr)
        return EXIT_KEY
    except localmod.ClusterError as e:
        print(f"bftfs: {e}", file=sys.stderr)
        return EXIT_CLUSTER
    except Exception as e:
        # History commands: answers the past cannot give, bad WHENs, an unreachable cluster.
        from bftfs.fs.past import PastError
        from bftfs.history_cli import WhenError
        from bftfs.outcome import ClusterUnavailable

        if isinstance(e, PastError):
            print(f"bftfs: {e}", file=sys.stderr)
            return EXIT_HISTORY
        if isinstance(e, WhenError | ValueError) and args.command in (
            "log",
            "cat",
            "restore",
            "diff",
            "changes",
            "revert",
        ):
            print(f"bftfs: {e}", file=sys.stderr)
            return 2
        if isinstance(e, ClusterUnavailable):
            print(f"bftfs: the cluster does not answer: {e}", file=sys.stderr)
            return EXIT_CLUSTER
        raise
    except KeyboardInterrupt:
        return 130
