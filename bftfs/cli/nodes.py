"""The nodes: ``bftfs node`` (run one in the foreground: :mod:`bftfs.node.main`; or stop,
start, restart one of the local cluster) and ``bftfs verify`` (scrub every block)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import trio

from bftfs import local as localmod
from bftfs.cli.common import (
    EXIT_CLUSTER,
    QuietError,
    add_actions,
    cluster_of,
    config_of,
    keep_parent_values,
    with_cluster,
    with_dir,
    with_identity,
)
from bftfs.cli.reach import require_reachable
from bftfs.cli.views import add_replace_options
from bftfs.config import ClusterConfig, ConfigError
from bftfs.layout.groups import place_node
from bftfs.logsetup import setup_logging

log = logging.getLogger(__name__)


def cmd_verify(args: argparse.Namespace) -> int:
    """Scrub every block of every file (bftfs/fs/scrub.py) with a progress line."""
    import time

    from bftfs.fs.scrub import scrub, summarize
    from bftfs.fs.session import open_protocol_clients

    cfg, _ = cluster_of(args)
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
        async with open_protocol_clients(cfg, args.as_client, trust_verified=False) as (qu, rw):
            return await scrub(qu, rw, cfg.block_size, progress)

    require_reachable(cfg)
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


def _check_byzantine_profile(name: str) -> None:
    """Refuse an unknown ``--byzantine`` profile (exit 2) before anything is stopped."""
    from bftfs.testing.byzantine.profiles import PROFILES

    if name not in PROFILES:
        raise QuietError(
            f"unknown Byzantine profile {name!r}; known: {', '.join(sorted(PROFILES))}", 2
        )


def cmd_node_control(args: argparse.Namespace) -> int:
    """``bftfs node stop|start|restart I``: one node of the local cluster (``--dir``)."""
    if args.action == "replace":
        from bftfs.cli.views import node_replace

        return node_replace(args)
    if args.action in ("add", "remove"):
        from bftfs.cli.generations import cmd_node_count

        return cmd_node_count(args)
    if args.index is None:
        raise QuietError(f"bftfs node {args.action}: which node? (e.g. bftfs node stop 2)", 2)
    cfg, _ = cluster_of(args)
    try:
        cfg.node(args.index)
    except (ConfigError, KeyError, IndexError):
        raise QuietError(f"no node {args.index} (nodes 0..{cfg.n - 1})", 2) from None
    if args.byzantine:
        _check_byzantine_profile(args.byzantine)  # a typo must not stop the node first
    extra = ["--byzantine", args.byzantine] if args.byzantine else []
    extra += metrics_args(args)
    if extra and args.action == "stop":
        raise QuietError(
            "bftfs node stop: --byzantine, --metrics-port, --metrics-addr and --no-metrics "
            "apply to start and restart",
            2,
        )
    if args.action in ("stop", "restart"):
        was = localmod.stop_node(cfg, args.index)
        print(f"node {args.index} {'stopped' if was else 'was not running'}")
    if args.action in ("start", "restart"):
        if args.action == "start" and localmod.running_pid(cfg.node(args.index)) is not None:
            print(f"node {args.index} is running already")
            if extra:  # they apply to a node started now: say so rather than drop them
                print(
                    f"bftfs node start: {' '.join(extra)} not applied "
                    f"(`bftfs node restart {args.index} ...` applies them)",
                    file=sys.stderr,
                )
                return 1
            return 0
        pid = localmod.start_node(cfg, args.index, extra)
        localmod.wait_ready(cfg, nodes=[args.index])
        how = f" as Byzantine profile {args.byzantine!r}" if args.byzantine else ""
        print(f"node {args.index} started{how} (pid {pid})")
        where = localmod.metrics_address(cfg.node(args.index))
        if where is not None:
            print(f"  metrics: http://{where}/metrics")
    return 0


def metrics_args(args: argparse.Namespace) -> list[str]:
    """The metrics options of ``bftfs node stop|start|restart``, passed on to the node
    process it starts (which otherwise takes them from ``[metrics]``)."""
    out = []
    if getattr(args, "no_metrics", False):
        out.append("--no-metrics")
    if getattr(args, "metrics_port", None) is not None:
        out += ["--metrics-port", str(args.metrics_port)]
    if getattr(args, "metrics_addr", None) is not None:
        out += ["--metrics-addr", args.metrics_addr]
    return out


def node_metrics_endpoint(cfg: ClusterConfig, node_id: int, args: Any) -> tuple[str, int] | None:
    """Where node ``node_id`` serves metrics: ``--metrics-port``/``--metrics-addr`` over the
    configuration's ``[metrics]`` (``node_port + id``); ``--no-metrics``: nowhere."""
    if getattr(args, "no_metrics", False):
        return None
    port = args.metrics_port
    if port is None:
        port = cfg.metrics.node_port_of(node_id)
    if port is None:
        return None
    return (args.metrics_addr or cfg.metrics.address), port


def cmd_node(args: argparse.Namespace) -> int:
    """``bftfs node run --config C --id I`` (or the old form, without ``run``): run a node
    (:func:`bftfs.node.main.run`) with the fault hooks of ``--byzantine`` and the object
    types of ``--test-objects``; any other action controls nodes (:func:`cmd_node_control`)."""
    from bftfs import config as cfgmod
    from bftfs.node import main as nodemain

    if args.action not in (None, "run"):
        return cmd_node_control(args)
    if args.id is None:
        raise QuietError(
            "bftfs node run: give --id (and --config, or let it be found) to run a node in "
            "the foreground; `bftfs node --help` lists the other actions",
            2,
        )
    cfg = cfgmod.load(config_of(args))
    spec = cfg.node(args.id)
    setup_logging(log_file=args.log, debug_modules=args.debug_modules, quiet=args.quiet)
    faults = None
    if args.byzantine:
        _check_byzantine_profile(args.byzantine)
        # With --test-objects below, the only uses of bftfs.testing in production code, and
        # only when asked for.
        from bftfs.testing.byzantine.profiles import profile

        placed = place_node(cfg, spec.id)  # in a group, it lies as the group's node
        faults = (
            profile(args.byzantine, cfg, int(spec.id))
            if placed is None
            else profile(args.byzantine, placed.config, placed.index)
        )
        log.warning("node %s runs the Byzantine profile %r", spec.id, args.byzantine)
    extra: tuple[Any, ...] = ()
    if args.test_objects:
        from bftfs.testing.testobjects import OBJECT_TYPES

        extra = tuple(OBJECT_TYPES)
    if args.no_metrics and args.metrics_port is not None:
        raise QuietError("bftfs node: --no-metrics and --metrics-port contradict each other", 2)
    endpoint = node_metrics_endpoint(cfg, spec.id, args)
    try:
        nodemain.run(
            cfg,
            spec.id,
            faults=faults,
            extra_object_types=extra,
            metrics_addr=endpoint[0] if endpoint else "127.0.0.1",
            metrics_port=endpoint[1] if endpoint else None,
            batch_sched=args.batch_sched,
            serve_registers=args.listeners,
        )
    except nodemain.StartError as e:
        raise QuietError(str(e), EXIT_CLUSTER) from None
    return 0


def port_number(text: str) -> int:
    """A port number for ``--metrics-port`` (0: any free one)."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-65535; 0: any free one)")
    return port


def add_verify(sub: Any) -> None:
    """``bftfs verify``."""
    sp = sub.add_parser(
        "verify", help="scrub: check every block on every node, rewrite missing or damaged ones"
    )
    with_cluster(sp)
    with_identity(sp)
    sp.add_argument("--json", action="store_true", help="totals as JSON")
    sp.add_argument("--progress", action="store_true", help="a progress bar even when piped")
    sp.add_argument("--verbose", action="store_true", help="name every block rewritten")
    sp.set_defaults(func=cmd_verify)


def _run_options(sp: argparse.ArgumentParser, *, shown: bool) -> None:
    """The options of running a node in the foreground: ``bftfs node run``'s, and hidden
    on ``bftfs node`` itself for the old form ``bftfs node --config C --id I`` (what
    ``bftfs up``, ``bftfs node start`` and the systemd unit run)."""

    def say(text: str) -> str:
        return text if shown else argparse.SUPPRESS

    with_dir(sp)
    sp.add_argument(
        "--config",
        type=Path,
        help=say("cluster.toml (default: found as for --dir)"),
    )
    sp.add_argument("--id", type=int, help=say("this node's id (required)"))
    sp.add_argument("--log", type=Path, help=say("log file (default: stderr)"))
    sp.add_argument("--debug-modules", nargs="*", default=[], help=say("e.g. bftfs.net"))
    sp.add_argument("--quiet", action="store_true", help=say("warnings and errors only"))
    sp.add_argument(
        "--test-objects",
        action="store_true",
        help=say(
            "also serve the Q/U test object types (counter, kv): for benchmarks/qu.py and tests"
        ),
    )
    sp.add_argument(
        "--listeners",
        action="store_true",
        help=say(
            "also serve Listeners registers (docs/listeners.md; experimental, no storage "
            "charge: for benchmarks/listeners.py and tests)"
        ),
    )
    _byzantine_option(sp, shown=shown)
    _metrics_options(sp, shown=shown)
    sp.add_argument(
        "--batch-sched",
        action="store_true",
        help=say("run under SCHED_BATCH (set by `bftfs up` for local clusters)"),
    )
    if not shown:
        for a in sp._actions:
            if a.dest == "dir":
                a.help = argparse.SUPPRESS


def _byzantine_option(sp: argparse.ArgumentParser, *, shown: bool = True) -> None:
    sp.add_argument(
        "--byzantine",
        metavar="PROFILE",
        help="misbehave on purpose, for fault tests (corrupt-fragments, reject-everything; "
        "see bftfs/testing/byzantine/profiles.py)"
        if shown
        else argparse.SUPPRESS,
    )


def _metrics_options(sp: argparse.ArgumentParser, *, shown: bool = True) -> None:
    sp.add_argument(
        "--metrics-port",
        type=port_number,
        help="serve Prometheus metrics on this port (0: any free one; written to "
        "node<I>/metrics.port), over [metrics] in cluster.toml (node_port + id; off without "
        "it)"
        if shown
        else argparse.SUPPRESS,
    )
    sp.add_argument(
        "--metrics-addr",
        default=None,
        help="address the metrics listen on (default: [metrics] address, else 127.0.0.1)"
        if shown
        else argparse.SUPPRESS,
    )
    sp.add_argument(
        "--no-metrics",
        action="store_true",
        help="serve no metrics, whatever [metrics] in cluster.toml says"
        if shown
        else argparse.SUPPRESS,
    )


def add_node(sub: Any) -> None:
    """``bftfs node run|stop|start|restart|replace|add|remove``, each action its own
    parser; ``bftfs node --config C --id I`` (no action) still runs a node, as ``run``."""
    sp = sub.add_parser(
        "node",
        help="run one storage node in the foreground, or stop/start/restart/replace/add/"
        "remove nodes of the cluster",
        description="Run a storage node (run), or control the cluster's nodes. "
        "`bftfs node --config C --id I`, without an action, is `bftfs node run` (the form "
        "`bftfs up` and the systemd unit use).",
    )
    _run_options(sp, shown=False)
    actions = add_actions(sp, required=False)
    text = "run node --id I in the foreground (what `bftfs up` and the systemd unit start)"
    ap = actions.add_parser("run", help=text, description=text)
    _run_options(ap, shown=True)
    for name, text in (
        ("stop", "stop node I of the local cluster"),
        ("start", "start node I of the local cluster (and wait until it answers)"),
        ("restart", "stop then start node I of the local cluster"),
    ):
        ap = actions.add_parser(
            name,
            help=text,
            description=text + " (--byzantine and the metrics options go to the node started)",
        )
        ap.add_argument("index", type=int, metavar="I", help="the node's id")
        with_cluster(ap)
        _byzantine_option(ap)
        _metrics_options(ap)
    text = "a new machine (new key, --address) for node I, online (a new view)"
    ap = actions.add_parser("replace", help=text, description=text)
    ap.add_argument("index", type=int, metavar="I", help="the node's id")
    with_cluster(ap)
    add_replace_options(ap)
    for name, text in (
        ("add", "a new generation of one node more (then `bftfs generation move`, `finish`)"),
        ("remove", "a new generation of one node fewer (then `bftfs generation move`, `finish`)"),
    ):
        ap = actions.add_parser(name, help=text, description=text)
        # Refused with a reason (every node of a generation is new), not argparse's.
        ap.add_argument("index", type=int, nargs="?", help=argparse.SUPPRESS)
        ap.add_argument("--address", help=argparse.SUPPRESS)
        ap.add_argument("--offline", action="store_true", help="issue the view without pushing it")
        with_identity(ap, default=None, help="the client to push the view as")
        with_cluster(ap)
    keep_parent_values(sp, actions)
    sp.set_defaults(func=cmd_node)
