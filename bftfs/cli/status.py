"""``bftfs status``: the cluster's health (the exit code) in one line when healthy, else
its problems; with ``-v`` each node and mount, the faults the mounts detected per node and
what scrub and verification found against each; once, or again and again with ``--watch``
(a catch-up's rate and time left, as it goes).  The tables themselves are
``cli/statustables.py``, capacity (nearfull, full) ``cli/capacity.py``."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from typing import Any

import trio

from bftfs import local as localmod
from bftfs.cli import capacity, contribs, groups
from bftfs.cli import statustables as tables
from bftfs.cli.common import EXIT_CLUSTER, QuietError, cluster_of, with_cluster
from bftfs.cli.sessions import client_sessions, print_sessions, version_label
from bftfs.cli.statustables import (  # noqa: F401  (re-exported: tests, cli/cluster.py)
    FAULT_COLUMNS,
    catch_up_summary,
)
from bftfs.cli.statustables import print_limits as _print_limits  # noqa: F401
from bftfs.cli.statustables import print_nodes as _print_status  # noqa: F401
from bftfs.config import ClusterConfig
from bftfs.layout.groups import load_layout
from bftfs.node.pace import catch_ups

#: ``bftfs status`` exit codes: every node up and no fault seen; degraded (a node down or
#: caught misbehaving, at most ``t`` down: the file system still serves); unavailable
#: (more than ``t`` nodes down: operations fail).
STATUS_HEALTHY, STATUS_DEGRADED, STATUS_UNAVAILABLE = 0, 1, 2


_NO_EVIDENCE = frozenset({"timeout", "unreachable", "culled"})


def cluster_health(
    cfg: ClusterConfig,
    statuses: list[localmod.NodeStatus],
    mounts: list[dict],
    findings: dict[int, Any] | None = None,
    sessions: list[dict[str, Any]] | None = None,
    grouped: list[dict[str, Any]] | None = None,
) -> tuple[int, str, list[str], dict[int, dict[str, int]]]:
    """(exit code, word, problems, faults per node summed over the mounts) of a cluster;
    ``findings``: what scrub and verification found standing against each node
    (``bftfs/health.py``), which keeps the cluster degraded until cleared; ``sessions``:
    the clients connected to the nodes (``cli/sessions.py``), for their versions;
    ``grouped``: each group's health on a cluster of groups (``cli/groups.health_of``),
    unavailable when one group is."""
    from bftfs import health

    faults: dict[int, dict[str, int]] = {}
    for m in mounts:
        revoked = m.get("revoked_in") is not None
        for node, kinds in (m.get("faults") or {}).items():
            per = faults.setdefault(int(node), {})
            for kind, count in kinds.items():
                if revoked and kind == "refused":
                    continue  # a node refusing a revoked client is correct (issue 60 item 17)
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
    broken_mounts = _broken_mounts(mounts)
    problems += broken_mounts
    filling = capacity.problems(fills(statuses))
    problems += filling
    problems += _revoked_mounts(mounts)
    mixed = mixed_versions(statuses, mounts, sessions)
    problems += mixed
    if any(g["state"] == "unavailable" for g in grouped or ()) or (
        not grouped and len(down) > cfg.t
    ):
        return STATUS_UNAVAILABLE, "unavailable", problems, faults
    node_problems = (
        bool(down)
        or bool(behind)
        or bool(findings)
        or any(v for kinds in faults.values() for k, v in kinds.items() if k not in _NO_EVIDENCE)
    )
    # A mount whose daemon died answers "Transport endpoint is not connected" to every
    # program using it: the file system is not served there (issue 36: it did not count).
    if node_problems or broken_mounts or filling or mixed:
        return STATUS_DEGRADED, "degraded", problems, faults
    return STATUS_HEALTHY, "healthy", problems, faults


def mixed_versions(
    statuses: list[localmod.NodeStatus],
    mounts: list[dict],
    sessions: list[dict[str, Any]] | None = None,
) -> list[str]:
    """A problem line when the nodes and mounts that answered do not all run one bftfs
    (as Ceph warns of mixed daemon versions): the middle of a rolling upgrade, or a
    machine left behind by one (docs/operations.md, "Upgrading").  ``sessions``: the
    clients the nodes hold sessions with (``cli/sessions.py``), wherever they run."""
    runs: dict[str, list[str]] = {}
    for s in statuses:
        if s.up and s.stats is not None and "version" in s.stats:
            key = f"{s.stats['version']} (wire {s.stats.get('wire')})"
            runs.setdefault(key, []).append(f"node {s.id}")
    for m in mounts:
        if m.get("version") is not None:
            key = f"{m['version']} (wire {m.get('wire')})"
            runs.setdefault(key, []).append(f"mount {m['mountpoint']}")
    for r in sessions or []:
        if r.get("wire") is not None:
            runs.setdefault(version_label(r), []).append(f"client {r['client']}@{r['host']}")
    if len(runs) < 2:
        return []
    parts = "; ".join(f"{key} on {', '.join(who)}" for key, who in sorted(runs.items()))
    return [f"mixed versions: {parts} (finish the upgrade: docs/operations.md)"]


def fills(statuses: list[localmod.NodeStatus]) -> list[capacity.Fill]:
    """How full each node that answered is, by what it reports (``cli/capacity.py``)."""
    out = []
    for s in statuses:
        fill = capacity.fill_of(s.id, s.stats if s.up else None)
        if fill is not None:
            out.append(fill)
    return out


def _revoked_mounts(mounts: list[dict]) -> list[str]:
    """A note for each mount whose client was revoked: it answers EACCES, the nodes
    refuse it as they must; the cluster's health is not its concern."""
    return [
        f"mount {m['mountpoint']}: client {m.get('client')} revoked in view "
        f"{m['revoked_in']} (it answers EACCES; bftfs umount it)"
        for m in mounts
        if m.get("revoked_in") is not None
    ]


def _broken_mounts(mounts: list[dict]) -> list[str]:
    """A problem line for each mount that no longer serves: its daemon is gone (``dead``)
    or stopped publishing its status (``unresponsive``: hung)."""
    out = []
    for m in mounts:
        if m["state"] == "dead":
            still = "still mounted: " if m.get("mounted") else ""
            out.append(f"mount {m['mountpoint']}: its daemon is gone ({still}bftfs umount it)")
        elif m["state"] == "unresponsive":
            out.append(f"mount {m['mountpoint']}: its daemon does not update its status")
    return out


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


def cmd_status(args: argparse.Namespace) -> int:
    """Print the cluster's health once, or with ``--watch`` again and again until
    interrupted (or ``--count`` times); the exit code is the last report's."""
    cfg, _ = cluster_of(args)
    if args.watch is None:
        return _report(cfg, args, clear=args.clear)
    if args.watch <= 0:
        raise QuietError("bftfs status --watch: the interval must be above 0 seconds", 2)
    screen = sys.stdout.isatty() and not args.json
    code, shown = 0, 0
    try:
        while True:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                code = _report(cfg, args, clear=args.clear and shown == 0)
            shown += 1
            if screen:  # redraw in place, like watch(1)
                sys.stdout.write("\x1b[H\x1b[2J")
                stamp = time.strftime("%H:%M:%S")
                sys.stdout.write(f"every {args.watch:g} s, {stamp} (Ctrl-C stops)\n")
            sys.stdout.write(out.getvalue())
            sys.stdout.flush()
            if args.count is not None and shown >= args.count:
                return code
            time.sleep(args.watch)  # the refresh interval itself, not a synchronisation
    except KeyboardInterrupt:
        return code


def _report(cfg: ClusterConfig, args: argparse.Namespace, *, clear: bool) -> int:
    """Ask the nodes, read the mounts' book-keeping, print; the health's exit code."""
    from bftfs.fuse import control
    from bftfs.membership.configview import starting_view

    view, _ = starting_view(cfg, None)
    statuses = trio.run(localmod.query_status, cfg)
    mounts = control.mount_statuses(cfg)
    record, findings = _findings(cfg, statuses, clear=clear)
    sessions = client_sessions(statuses, cfg.client_names())
    layout = load_layout(cfg)
    placed = None if layout is None else groups.layout_json(layout)
    grouped = groups.health_of(cfg, statuses)
    code, word, problems, faults = cluster_health(
        cfg, statuses, mounts, findings, sessions, grouped
    )
    capacities = {f.node: f for f in fills(statuses)}
    if args.json:
        doc = {
            "layout": placed,
            "groups": grouped,
            "cluster": {
                "home": str(cfg.home),
                **{k: getattr(cfg, k) for k in ("t", "b", "n", "qc", "m", "engine", "blocks")},
                "view": view.number,
                "generation": view.generation,
                "moving_from": None if view.previous is None else view.previous.number,
            },
            "time": round(time.time(), 3),
            "health": word,
            "exit_code": code,
            "problems": problems,
            "nodes": [
                {
                    **s.__dict__,
                    "faults": faults.get(s.id, {}),
                    "findings": findings[s.id].to_json() if s.id in findings else None,
                    "capacity": capacities[s.id].to_json() if s.id in capacities else None,
                    "catch_up": {
                        name: pace.to_json()
                        for name, pace in catch_ups(
                            ((s.stats or {}).get("progress") or {}) if s.up else {}
                        ).items()
                    },
                }
                for s in statuses
            ],
            "findings_cleared_at": record.cleared_at,
            "contributions": contribs.to_json(statuses),
            "mounts": mounts,
            "sessions": sessions,
        }
        print(json.dumps(doc, indent=None if args.watch else 2, default=str))
        return code
    if not args.verbose:
        print(summary(cfg, word, statuses, mounts, len(grouped)))
        for p in problems:
            print(tables._fit(f"  - {p}", 4))
        if problems:
            print("  (bftfs status -v: every node and mount)")
        return code
    print(f"cluster {cfg.home}: {_sizes(cfg)}")
    print(f"view {view.number}, generation {view.generation}{_moving(view)}")
    if view.previous is not None:
        from bftfs.cli.generations import move_progress

        print(f"  {move_progress(cfg, view)}")
    print(f"health: {word.upper()}")
    for p in problems:
        print(tables._fit(f"  - {p}", 4))
    if placed is not None:
        tables.print_groups(placed, grouped)
    tables.print_nodes(statuses)
    tables.print_capacity(list(capacities.values()))
    tables.print_limits(statuses, cfg.client_names())
    tables.print_mounts(mounts, faults, cfg)
    print_sessions(sessions)
    tables.print_findings(cfg, record, findings, statuses)
    contribs.print_contributions(statuses)
    return code


def _sizes(cfg: ClusterConfig) -> str:
    """The header's sizes, metadata engine and block store (docs/listeners.md)."""
    sizes = f"t={cfg.t} b={cfg.b} n={cfg.n} QC={cfg.qc} m={cfg.m}"
    return f"{sizes} engine={cfg.engine} blocks={cfg.blocks}"


def summary(
    cfg: ClusterConfig,
    word: str,
    statuses: list[localmod.NodeStatus],
    mounts: list[dict],
    groups_count: int = 0,
) -> str:
    """The one line ``bftfs status`` prints (``zpool status -x``'s "all pools are healthy"):
    ``cluster HOME: healthy (6/6 nodes up, 1 mount)`` (``18/18 nodes up in 3 groups`` for
    a cluster of groups); the word upper-cased when not healthy, so that it stands out
    above the problems."""
    up = sum(1 for s in statuses if s.up)
    serving = sum(1 for m in mounts if m.get("state") not in ("dead", "unresponsive"))
    shown = word if word == "healthy" else word.upper()
    noun = "mount" if serving == 1 else "mounts"
    where = f" in {groups_count} groups" if groups_count else ""
    return f"cluster {cfg.home}: {shown} ({up}/{len(statuses)} nodes up{where}, {serving} {noun})"


def _moving(view: Any) -> str:
    """What the status header says of a move between generations (docs/membership.md)."""
    if view.previous is None:
        return ""
    prev = view.previous
    return (
        f", moving from generation {prev.number} ({len(prev.nodes)} nodes, frozen: "
        "`bftfs generation show`)"
    )


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


def add_status(sub: Any) -> None:
    """``bftfs status``."""
    sp = sub.add_parser(
        "status",
        help="health (exit 0 healthy, 1 degraded, 2 unavailable), each node and mount, "
        "the faults the mounts detected per node",
    )
    with_cluster(sp)
    sp.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="every node, mount and finding in tables (default: one line when healthy, "
        "else the problems)",
    )
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.add_argument(
        "--clear",
        action="store_true",
        help="clear what scrub and verification found against the nodes (once dealt with)",
    )
    sp.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=2.0,
        metavar="SECONDS",
        help="report again every SECONDS (default 2) until Ctrl-C, redrawn in place on a "
        "terminal (with --json: one document per line)",
    )
    sp.add_argument("--count", type=int, metavar="N", help="with --watch: stop after N reports")
    sp.set_defaults(func=cmd_status)
