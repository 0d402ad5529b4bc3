"""``bftfs group add|move|finish|show``: a cluster of groups grown online (docs/layout.md,
"Adding groups").

``bftfs group add [--groups K]`` makes ``K`` groups of ``n`` new nodes (``n`` the existing
groups' size; each a key and a data directory ``node<I>``, on free local ports unless
``--address`` is given, each its own trust domain unless ``--domain``), adds them to
``cluster.toml`` and issues the next layout (``layout/grow.py``): the partitions the new
groups' shares need move to them, mounts moving what they touch.  When the cluster runs
here (as after ``bftfs up``) the new nodes are started; the layout is then pushed to every
node (those that do not answer learn it from mounts, their peers or the cluster directory
when they start).  ``bftfs group move`` copies the rest in the background
(``cli/groupmove.py``); ``bftfs group finish`` issues the layout that ends the move once its
cursors say it is complete; ``bftfs group show`` prints the layout and how far the move is.

Crash safety: ``group add`` keeps an intent (``layout.growing``) from its commit point on;
every command reading the cluster completes the files from it, and ``bftfs group add`` run
again starts the new nodes and pushes (never a second set of nodes: keys left by a run cut
before its intent are taken again).  ``group finish`` writes one file atomically: run again,
it pushes the layout it issued.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import trio

from bftfs import local
from bftfs.cli.common import (
    EXIT_CLUSTER,
    EXIT_CONFIG,
    QuietError,
    add_actions,
    cluster_of,
    with_cluster,
    with_identity,
)
from bftfs.cli.groupmove import add_move_parser, run_move
from bftfs.cli.groups import layout_json
from bftfs.cli.reach import listening
from bftfs.cli.views import parse_address
from bftfs.config import ClusterConfig
from bftfs.fs.generations import partmover
from bftfs.layout import admin as layout_admin
from bftfs.layout import grow
from bftfs.layout.diff import Move, diff, in_move
from bftfs.layout.groups import layout_path
from bftfs.layout.model import Layout
from bftfs.membership.admin import pusher

#: What ``group finish --force`` risks, said when it is used.
FORCE_RISK = (
    "the source groups stop serving the partitions that moved away: what the mover had not "
    "copied yet (what no mount touched) stays on their nodes where no client reads it any "
    "more, and files of those partitions read as missing or fail"
)


def cmd_group_add(args: argparse.Namespace) -> int:
    cfg, path = cluster_of(args)
    done = grow.complete(cfg, path)  # cluster_of wrote its files; here the rest is done
    if done is not None:
        return _finish_interrupted(args, done)
    held = _growable(cfg)
    count = args.groups
    addresses = _addresses(args, cfg, count * grow.group_size(held))
    try:
        grown = grow.grow(cfg, path, count, addresses, args.domain or ())
    except grow.GrowRefused as e:
        raise QuietError(f"bftfs group add refused: {e}", 2) from None
    except OSError as e:
        raise _cut_short(cfg, e) from None
    layout = grown.layout
    added = [g.id for g in layout.groups[len(grown.before.groups) :]]
    print(f"{layout.describe()}: groups {added} added")
    kept = set(grown.reused)
    for n in grown.nodes:
        again = " (its key made by an interrupted run)" if n.id in kept else ""
        print(
            f"  node {n.id}: {n.host}:{n.port}, domain {n.layout_node().domain}, data "
            f"directory {n.data_dir}{again}"
        )
    print(f"  {diff(grown.before, layout).describe()}")
    return _settle(args, grown.config, layout, grown.blob, grown.nodes)


def _growable(cfg: ClusterConfig) -> Layout:
    """The held layout, if ``group add`` can add to it (refusals: exit 3 for a cluster of
    one group, a configuration matter; exit 2 for a move under way)."""
    try:
        return grow.growable(cfg)
    except grow.OneGroup as e:
        raise QuietError(f"bftfs group add: {e}", EXIT_CONFIG) from None
    except grow.GrowRefused as e:
        raise QuietError(f"bftfs group add refused: {e}", 2) from None


def _addresses(args: argparse.Namespace, cfg: ClusterConfig, want: int) -> list[tuple[str, int]]:
    """The new nodes' addresses: ``--address`` (once per new node), else free ports on the
    host of the existing nodes when that is this machine's loopback.

    Raises:
        QuietError: the count is wrong, or the nodes are elsewhere (exit 2).
    """
    given: list[str] = args.address or []
    if given:
        if len(given) != want:
            raise QuietError(f"--address given {len(given)} times for {want} new nodes", 2)
        return [parse_address(text) for text in given]
    hosts = {s.host for s in cfg.nodes}
    host = hosts.pop() if len(hosts) == 1 else ""
    if not _loopback(host):
        raise QuietError(
            f"the nodes are not all on this machine's loopback: give each of the {want} new "
            "nodes its address (--address HOST:PORT, in id order)",
            2,
        )
    used = {s.port for s in cfg.nodes}
    ports = [p for p in local.cluster_ports(cfg.home, want + len(used), host) if p not in used]
    return [(host, p) for p in ports[:want]]


def _loopback(host: str) -> bool:
    """Whether ``host`` is this machine's loopback (nodes there can be started here)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _finish_interrupted(args: argparse.Namespace, done: grow.Completed) -> int:
    """``group add`` run again after its commit point: the files are complete; start
    and push as the interrupted run would have (this run's options are not used)."""
    p, layout = done.intent, done.layout
    ids = [n.id for n in p.nodes]
    print(
        f"finishing the interrupted `bftfs group add` of layout {layout.version} (its new "
        f"nodes {ids[0]}..{ids[-1]} were made then; this run's options make no other)"
    )
    print(f"  {layout.describe()}")
    print(f"  {_moves_line(layout)}")
    return _settle(args, done.config, layout, p.blob, p.nodes)


def _forget_overtaken(done: grow.Completed) -> ClusterConfig:
    """An interrupted add whose layout a later one replaced (a ``node replace`` meanwhile):
    its nodes are in ``cluster.toml`` and the layout; forget the intent and say so."""
    grow.remove_intent(done.config)
    ids = [n.id for n in done.intent.nodes]
    print(
        f"bftfs: forgot an interrupted `bftfs group add` of layout {done.intent.version}, "
        f"behind layout {done.layout.version} (nodes {ids} are in both; `bftfs node start "
        "I` starts one here)",
        file=sys.stderr,
    )
    return done.config


def _settle(
    args: argparse.Namespace,
    cfg: ClusterConfig,
    layout: Layout,
    blob: bytes,
    nodes: tuple[grow.NewNode, ...],
) -> int:
    """Steps 5 and 6 of ``layout/grow.py``: the new nodes started here when the cluster
    runs here (before the push: once the sources take the layout, the targets serve the
    moved partitions), the layout pushed, the intent removed; then what comes next."""
    grouped = {m for g in layout.groups for m in g.members}
    new = [n for n in nodes if n.id in grouped]  # a spare (none, usually) does not run
    started = _start_here(cfg, layout, new)
    refused = _push(args, cfg, layout, blob, frozenset(n.id for n in nodes))
    try:
        grow.remove_intent(cfg)
    except OSError as e:
        raise _cut_short(cfg, e) from None
    if not started:
        ids = " ".join(str(n.id) for n in new)
        print(
            f"  start the new nodes: `bftfs node start I` here (I in {ids}), or `bftfs "
            "bundle --node I` for each one's machine (`bftfs up` starts every node here)"
        )
    print(
        "  mounts move what they touch; `bftfs group move` copies the rest in the background "
        "(resumable), then `bftfs group finish` ends the move (`bftfs group show`: how far)"
    )
    return _refused_exit(layout, refused)


def _start_here(cfg: ClusterConfig, layout: Layout, nodes: list[grow.NewNode]) -> bool:
    """Start ``nodes`` here when the cluster's other nodes run here and theirs are this
    machine's addresses; whether they were started.

    Raises:
        ClusterError: a node did not start (exit 4; ``group add`` again finishes).
    """
    ids = {n.id for n in nodes}
    running = any(local.running_pid(s) is not None for s in cfg.nodes if s.id not in ids)
    if not nodes or not running or not all(_loopback(n.host) for n in nodes):
        return False
    for n in nodes:
        local.start_node(cfg, n.id)
    try:
        local.wait_ready(cfg, nodes=sorted(ids))
    except local.ClusterError as e:
        raise local.ClusterError(
            f"{e}\nlayout {layout.version} and cluster.toml are written: once that is fixed, "
            "`bftfs group add` again starts the new nodes and pushes the layout"
        ) from None
    print(f"  started the new nodes here: {sorted(ids)}")
    return True


def _push(
    args: argparse.Namespace,
    cfg: ClusterConfig,
    layout: Layout,
    blob: bytes,
    skip: frozenset[int] = frozenset(),
) -> dict[int, str]:
    """Push ``blob`` to every node but ``skip`` whose port accepts a connection now (one
    try each: the others learn it later, from mounts, their peers, or the cluster
    directory when they start here), saying who took it and who did not; the nodes that
    refused it, with why."""
    version = layout.version
    if args.offline:
        print(f"  not pushed (--offline): the nodes learn layout {version} from mounts")
        return {}
    who = args.as_client or pusher(cfg)
    aimed = [s for s in cfg.nodes if s.id not in skip]
    up = trio.run(listening, aimed)
    down = frozenset(s.id for s in aimed if s.id not in up)
    pushed = trio.run(
        lambda: layout_admin.push(cfg, layout, blob, who, skip=skip | down, timeout=5.0)
    )
    for n, why in sorted(pushed.refused.items()):
        print(f"  node {n} refused layout {version}: {why}", file=sys.stderr)
    late: dict[int, str] = {n: "not listening" for n in down}
    late.update(pushed.unreachable)
    if late:
        print(
            f"  did not answer (they learn layout {version} later): "
            + ", ".join(f"node {n} ({why})" for n, why in sorted(late.items())),
            file=sys.stderr,
        )
    if pushed.acked:
        print(f"  layout {version} taken by nodes {pushed.acked}")
    if pushed.published is not None:
        print(f"  the layout service holds layout {pushed.published}")
    elif pushed.unpublished:
        print(f"  not published to the layout service: {pushed.unpublished}", file=sys.stderr)
    return pushed.refused


def _refused_exit(layout: Layout, refused: dict[int, str]) -> int:
    """0, or the refusal (exit 4) when a node refused the layout: it will not take it
    from anyone else either (an older bftfs, or a layout it cannot follow)."""
    if not refused:
        return 0
    raise QuietError(
        f"layout {layout.version} is issued and kept, but node(s) {sorted(refused)} refused "
        "it (above): they serve by their older layout until that is fixed",
        EXIT_CLUSTER,
    )


def _cut_short(cfg: ClusterConfig, e: OSError) -> QuietError:
    """A failed write (a full disk) during ``group add``: what it left, and what finishes."""
    where = f" ({e.filename})" if e.filename else ""
    if grow.growing_path(cfg).exists():
        left = (
            "the groups are added (the intent is kept): the next bftfs command writes the "
            "files, and `bftfs group add` again starts and pushes"
        )
    else:
        left = "nothing changed (keys made are kept and taken again): run `bftfs group add` again"
    return QuietError(
        f"group add cut short by a failed write{where}: {e.strerror or e}; {left}", EXIT_CONFIG
    )


def cmd_group_finish(args: argparse.Namespace) -> int:
    cfg, _ = cluster_of(args)
    if grow.read_intent(cfg) is not None:
        raise QuietError(
            "an interrupted `bftfs group add` is not finished (its nodes started, its layout "
            "pushed): run `bftfs group add` again first",
            2,
        )
    held = _held(cfg)
    if not held.moving:
        if held.version == 1:
            raise QuietError(
                "layout 1 moves no partitions: nothing to finish (`bftfs group add` starts a move)",
                2,
            )
        print(
            f"layout {held.version} moves no partitions: nothing to finish; pushing it to every "
            "node again (a finish cut short before its push ends here)"
        )
        return _refused_exit(held, _push(args, cfg, held, _held_blob(cfg)))
    if not partmover.move_complete(cfg.home, held):
        left = partmover.describe_move(cfg.home, held)
        if not args.force:
            raise QuietError(
                f"the move of layout {held.version} is not complete: {left}; run `bftfs group "
                "move` (it resumes), or finish with --force (what was not moved is then read "
                "from nowhere)",
                2,
            )
        print(f"finishing anyway (--force): {left}", file=sys.stderr)
        print(f"  {FORCE_RISK}", file=sys.stderr)
    layout, blob = grow.finish(cfg)
    print(
        f"layout {layout.version}: the move of layout {held.version} is done; every partition "
        "is served by its group alone"
    )
    return _refused_exit(layout, _push(args, cfg, layout, blob))


def _held(cfg: ClusterConfig) -> Layout:
    """The held layout of a cluster of groups (exit 3 for a cluster of one group)."""
    try:
        return grow.growable(cfg, moving_ok=True)
    except grow.OneGroup as e:
        raise QuietError(f"bftfs group: {e}", EXIT_CONFIG) from None


def _held_blob(cfg: ClusterConfig) -> bytes:
    """The held layout's signed bytes (to push again)."""
    return layout_path(cfg).read_bytes()


def _counts(moves: tuple[Move, ...]) -> dict[str, Any]:
    """How many partitions of one map move, to which groups and from which."""
    return {
        "count": len(moves),
        "to": {str(g): c for g, c in sorted(Counter(m.target for m in moves).items())},
        "from": {str(g): c for g, c in sorted(Counter(m.source for m in moves).items())},
    }


def _moves_line(layout: Layout) -> str:
    """One line: how many partitions of each map move, to which group."""
    if not layout.moving:
        return f"layout {layout.version} moves no partitions"
    parts = []
    for name, moves in zip(("object", "block"), in_move(layout), strict=True):
        c = _counts(moves)
        to = ", ".join(f"group {g}: {k}" for g, k in c["to"].items())
        parts.append(f"{c['count']} {name} partitions (to {to or 'none'})")
    return f"moving, of {layout.partitions} in each map: " + " and ".join(parts)


def show_json(cfg: ClusterConfig, layout: Layout) -> dict[str, Any]:
    """``bftfs group show --json``: the layout, what moves, and the mover's cursors."""
    move: dict[str, Any] | None = None
    if layout.moving:
        states = partmover.move_states(cfg.home, layout)
        move = {
            "complete": partmover.move_complete(cfg.home, layout),
            "describe": partmover.describe_move(cfg.home, layout),
            "groups": {
                str(g): None
                if s is None
                else {"complete": s.complete, "after": s.after, "summary": s.summary()}
                for g, s in states.items()
            },
        }
    objects, blocks = in_move(layout)
    interrupted = grow.read_intent(cfg)
    return {
        "layout": layout_json(layout),
        "moving": layout.moving,
        "moves": {"objects": _counts(objects), "blocks": _counts(blocks)},
        "move": move,
        "interrupted_add": None if interrupted is None else interrupted.version,
    }


def cmd_group_show(args: argparse.Namespace) -> int:
    cfg, _ = cluster_of(args)
    layout = _held(cfg)
    doc = show_json(cfg, layout)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(layout.describe())
    for g in doc["layout"]["groups"]:
        nodes = ",".join(map(str, g["nodes"]))
        print(
            f"  group {g['group']}: nodes {nodes}; {g['object_partitions']} object and "
            f"{g['block_partitions']} block partitions"
        )
    print(_moves_line(layout))
    if doc["move"] is not None:
        print(f"  mover: {doc['move']['describe']}")
        step = "`bftfs group finish`" if doc["move"]["complete"] else "`bftfs group move`"
        print(f"  next: {step}")
    if doc["interrupted_add"] is not None:
        print(
            f"an interrupted `bftfs group add` (layout {doc['interrupted_add']}): "
            "`bftfs group add` again starts its nodes and pushes"
        )
    return 0


def complete_interrupted(cfg: ClusterConfig, path: Path, command: str | None) -> ClusterConfig:
    """Complete a ``bftfs group add`` interrupted after its commit point (its intent kept
    beside ``cluster.toml``, ``layout/grow.py``): ``cluster.toml`` and the layout written.
    Every command reading the cluster starts here (``cli/common.cluster_of``), and says on
    stderr what is left for ``bftfs group add`` (the ``group`` commands say it
    themselves); ``cfg`` as it is when there is nothing to complete."""
    done = grow.complete(cfg, path)
    if done is None:
        return cfg
    if done.overtaken:
        return _forget_overtaken(done)
    if command == "group":
        return done.config
    ids = [n.id for n in done.intent.nodes]
    if done.wrote:
        print(
            f"bftfs: completed an interrupted `bftfs group add`: layout "
            f"{done.layout.version} and {path.name} name its new nodes {ids[0]}..{ids[-1]}",
            file=sys.stderr,
        )
    print(
        f"bftfs: `bftfs group add` again finishes it: starts the new nodes here (when the "
        f"cluster runs here) and pushes layout {done.layout.version} to every node",
        file=sys.stderr,
    )
    return done.config


def cmd_group(args: argparse.Namespace) -> int:
    if args.action == "move":
        return run_move(args)
    if args.action == "add":
        return cmd_group_add(args)
    if args.action == "finish":
        return cmd_group_finish(args)
    return cmd_group_show(args)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_group(sub: Any) -> None:
    """``bftfs group add|move|finish|show``, each action its own parser."""
    sp = sub.add_parser(
        "group",
        help="grow a cluster of groups online: add groups, move partitions to them",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = add_actions(sp)
    text = "add K groups of new nodes; their partitions start moving to them"
    ap = actions.add_parser("add", help=text, description=text)
    ap.add_argument(
        "--groups", type=_positive, default=1, metavar="K", help="groups to add (default 1)"
    )
    ap.add_argument(
        "--address", action="append", metavar="HOST:PORT", help="each new node's (in id order)"
    )
    ap.add_argument(
        "--domain",
        action="append",
        metavar="D",
        help="each new node's trust domain (in id order; default: each its own)",
    )
    ap.add_argument("--offline", action="store_true", help="issue the layout, push nothing")
    with_identity(ap, default=None, help="the client the push speaks as")
    with_cluster(ap)
    add_move_parser(actions)
    text = "end the move: the next layout, the partitions served by their new groups alone"
    ap = actions.add_parser("finish", help=text, description=text)
    ap.add_argument(
        "--force", action="store_true", help=f"even if the move did not complete ({FORCE_RISK})"
    )
    ap.add_argument("--offline", action="store_true", help="issue the layout, push nothing")
    with_identity(ap, default=None, help="the client the push speaks as")
    with_cluster(ap)
    text = "the layout, what moves to which group, and how far the move is"
    ap = actions.add_parser("show", help=text, description=text)
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    with_cluster(ap)
    sp.set_defaults(func=cmd_group)
