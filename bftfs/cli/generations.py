"""``bftfs generation``: change the number of nodes or the thresholds while the file system
runs (docs/membership.md, "Generations").

``bftfs generation new --nodes N --t T --b B`` makes generation ``g + 1``: ``N`` new nodes
(each a new key and chain in an empty data directory, ``<dir>/generation<G>/node<I>``, on
the addresses given or on free local ports), issues the view that starts the move and
pushes it to generation ``g``'s nodes, which freeze: they serve reads and repairs and
take no new update.  The new nodes are then started (``bftfs node start I`` for a local
cluster, a node bundle for another machine) and every client moves what it touches.
``bftfs generation show`` prints both generations and what each node says of itself.

``bftfs generation move [--bytes-per-second N]`` moves everything the clients did not touch
(``fs/generations/mover.py``): every object of generation ``g``, and the blocks of its files that
``g + 1`` lacks, paced, with a progress bar; killed, it resumes from its cursor
(``<dir>/generation<G>/move.json``).  ``bftfs generation finish`` then issues the view
that ends the move (refused until the cursor says the move completed, unless ``--force``)
and pushes it to the new nodes and the old ones, which retire: they may be powered off.

Run again after being killed: keys already made are kept, a view already issued is pushed
again.  The configuration of generation ``g`` is kept as
``<dir>/cluster.generation<g>.toml``, from which its nodes are restarted while they serve
reads (``bftfs node --config <dir>/cluster.generation<g>.toml --id I``).
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
from typing import Any

import trio

from bftfs import config as cfgmod
from bftfs import local
from bftfs.cli.common import QuietError, add_actions, cluster_of, with_cluster, with_identity
from bftfs.cli.views import parse_address
from bftfs.config import ClusterConfig, ConfigError, default_sizes
from bftfs.crypto import Identity, KeyFileError
from bftfs.ids import NodeId
from bftfs.membership import admin
from bftfs.membership.configview import config_of_generation
from bftfs.membership.view import View, ViewNode


def generation_config_path(home: Path, generation: int) -> Path:
    """Where the configuration of an earlier generation is kept (its nodes restart from
    it while they serve reads)."""
    return home / f"cluster.generation{generation}.toml"


def _addresses(args: argparse.Namespace, home: Path, n: int) -> list[tuple[str, int]]:
    given: list[str] = args.address or []
    if given and len(given) != n:
        raise QuietError(f"--address given {len(given)} times for {n} nodes", 2)
    if given:
        return [parse_address(text) for text in given]
    ports = local.cluster_ports(home, n)
    return [("127.0.0.1", p) for p in ports]


def _node_key(data_dir: Path, node: int) -> Identity:
    """The new node's key pair in its data directory: made once, kept on a rerun."""
    path = data_dir / "private" / "key"
    if path.exists():
        try:
            return Identity.load(NodeId(node), path)
        except KeyFileError as e:
            raise QuietError(f"{path}: {e}", 2) from None
    if (data_dir / "lmdb").exists():
        raise QuietError(f"{data_dir} holds a node's store: a new node starts empty", 2)
    ident = Identity.generate(NodeId(node))
    ident.save(path)
    return ident


def cmd_generation_new(args: argparse.Namespace) -> int:
    cfg, path = cluster_of(args)
    key = admin.admin_key(cfg)
    view, blob = admin.current(cfg)
    if view.previous is not None:
        old_cfg = cfgmod.load(generation_config_path(cfg.home, view.previous.number))
        print(
            f"view {view.number} starts generation {view.generation} already: pushing it to "
            f"generation {view.previous.number}'s nodes again"
        )
        return _push_to_old(old_cfg, blob, view, args.as_client)
    n, qc, m = default_sizes(args.t, args.b, args.nodes, args.qc, args.m)
    generation = view.generation + 1
    home = cfg.home
    rows: list[ViewNode] = []
    for i, (host, port) in enumerate(_addresses(args, home / f"generation{generation}", n)):
        data_dir = home / f"generation{generation}" / f"node{i}"
        ident = _node_key(data_dir, i)
        if not (data_dir / "private" / "view-chain").exists():
            admin.new_chain(cfg, data_dir, ident.public, view.number + 1)
        rows.append(ViewNode(NodeId(i), host, port, ident.public))
    try:
        new_view = admin.with_generation(view, rows, args.t, args.b, qc, m, engine=cfg.engine)
    except ConfigError as e:
        raise QuietError(f"refused: {e}", 2) from None
    # The old generation's configuration first (its nodes restart from it), then the view
    # (the commit point), then cluster.toml for the new generation (admin.issue).
    kept = generation_config_path(home, view.generation)
    cfgmod.save(cfg, kept)
    new_cfg = config_of_generation(cfg, new_view)
    new_cfg, blob = admin.issue(new_cfg, path, new_view, key)
    print(
        f"view {new_view.number}: generation {generation} of {n} nodes (t={args.t} b={args.b} "
        f"qc={qc} m={m}); generation {view.generation}'s {len(view.nodes)} nodes freeze"
    )
    for s in new_cfg.nodes:
        print(f"  node {s.id}: {s.host}:{s.port}, data directory {s.data_dir}")
    print(f"  generation {view.generation}'s configuration is kept in {kept}")
    if args.offline:
        print(
            f"  not pushed (--offline): `bftfs generation new` again pushes view {new_view.number}"
        )
        return 0
    return _push_to_old(cfgmod.load(kept), blob, new_view, args.as_client)


def cmd_node_count(args: argparse.Namespace) -> int:
    """``bftfs node add`` / ``bftfs node remove``: a new generation of one node more or
    one fewer, at the cluster's ``t`` and ``b`` (PASIS ``qc`` and ``m`` the largest the new
    size allows), on free local ports.  Every node of a generation is a new process (its
    own key, port and data directory: a node's id and the thresholds' arithmetic change
    together), so a node is added or removed by moving to the new generation: start its
    nodes, ``bftfs generation move``, ``bftfs generation finish``, as for any generation.
    On several machines, ``bftfs generation new --nodes N --address ...`` places them."""
    cfg, _ = cluster_of(args)
    view, _ = admin.current(cfg)
    if view.previous is not None:
        raise QuietError(
            f"generation {view.generation} is being moved to: finish that move first "
            "(`bftfs generation move`, `bftfs generation finish`)",
            2,
        )
    if args.index is not None:
        raise QuietError(
            f"bftfs node {args.action} takes no node id: every node of the new generation is "
            "a new process (see `bftfs generation --help`)",
            2,
        )
    if args.address:
        raise QuietError(
            f"bftfs node {args.action} places the new generation on free local ports; on "
            "other machines: bftfs generation new --nodes N --address HOST:PORT (N times)",
            2,
        )
    n = cfg.n + 1 if args.action == "add" else cfg.n - 1
    print(f"node {args.action}: generation {view.generation + 1} of {n} nodes, t={cfg.t} b={cfg.b}")
    new = argparse.Namespace(**vars(args))
    new.nodes, new.t, new.b, new.qc, new.m, new.address = n, cfg.t, cfg.b, None, None, None
    return cmd_generation_new(new)


def _push_to_old(old_cfg: ClusterConfig, blob: bytes, view: View, as_client: str | None) -> int:
    """Push the view to the previous generation's nodes: once a quorum of them took it, no
    update of that generation can complete any more."""
    from bftfs.cli.common import EXIT_CLUSTER

    who = as_client or admin.pusher(old_cfg)
    result = trio.run(lambda: admin.push(old_cfg, blob, view.number, as_client=who))
    for node, why in sorted(result.refused.items()):
        print(f"  node {node} of the old generation refused: {why}")
    for node, why in sorted(result.unreachable.items()):
        print(f"  node {node} of the old generation did not answer: {why}")
    if not result.ok:
        raise QuietError(
            f"view {view.number} acknowledged by {len(result.acked)} of the old generation's "
            f"nodes, fewer than its quorum of {result.quorum}: run `bftfs generation new` "
            "again once they are up",
            EXIT_CLUSTER,
        )
    print(
        f"  view {view.number} acknowledged by {len(result.acked)} of {old_cfg.n} nodes of the "
        "old generation: frozen.  Start the new nodes (`bftfs node start I`, or a bundle per "
        "machine); clients move what they touch"
    )
    return 0


async def _status(cfg: ClusterConfig, who: str) -> dict[int, Any]:
    """Each node's ``gen.status`` answer (a node that did not answer is left out)."""
    from bftfs.connect import open_nodes
    from bftfs.membership.client import generation_status

    spec = cfg.client(who)
    me = Identity.load(spec.id, cfg.client_key_path(who))
    async with open_nodes(me, cfg, timeout=3.0, resend_after=0.5) as ep:
        return await generation_status(ep, [int(n) for n in cfg.node_ids])


def cmd_generation_show(args: argparse.Namespace) -> int:
    cfg, _ = cluster_of(args)
    view, _ = admin.current(cfg)
    who = args.as_client or admin.pusher(cfg)
    shown = [(view.generation, False, cfg)]
    if view.previous is not None:
        kept = generation_config_path(cfg.home, view.previous.number)
        shown.append((view.previous.number, True, cfgmod.load(kept)))
    answers = [trio.run(_status, gcfg, who) for _, _, gcfg in shown]
    if args.json:
        print(json.dumps(_show_json(cfg, view, shown, answers), indent=2))
        return 0
    print(view.describe())
    for (number, frozen, gcfg), got in zip(shown, answers, strict=True):
        title = f"generation {number}" + (" (frozen)" if frozen else "")
        print(f"{title}: {gcfg.n} nodes, t={gcfg.t} b={gcfg.b} qc={gcfg.qc} m={gcfg.m}")
        for spec in gcfg.nodes:
            answer = got.get(int(spec.id))
            state = "no answer" if answer is None else _state_of(answer)
            print(f"  node {spec.id} {spec.host}:{spec.port}: {state}")
    if view.previous is not None:
        print(move_progress(cfg, view))
    return 0


def _show_json(
    cfg: ClusterConfig,
    view: View,
    shown: list[tuple[int, bool, ClusterConfig]],
    answers: list[dict[int, Any]],
) -> dict[str, Any]:
    """``bftfs generation show --json``: the view, each generation with what each of its
    nodes says of itself (``state`` null: no answer), and the move's progress."""
    from bftfs.fs.generations import MoveState, cursor_path

    generations = []
    for (number, frozen, gcfg), got in zip(shown, answers, strict=True):
        nodes = []
        for spec in gcfg.nodes:
            answer = got.get(int(spec.id))
            nodes.append(
                {
                    "id": int(spec.id),
                    "address": f"{spec.host}:{spec.port}",
                    "state": None if answer is None else _state_word(answer),
                    "view": None if answer is None else answer.get("view"),
                }
            )
        generations.append(
            {
                "generation": number,
                "frozen": frozen,
                "n": gcfg.n,
                "t": gcfg.t,
                "b": gcfg.b,
                "qc": gcfg.qc,
                "m": gcfg.m,
                "nodes": nodes,
            }
        )
    move: dict[str, Any] | None = None
    if view.previous is not None:
        state = MoveState.load(cursor_path(cfg.home, view.generation))
        ran = state is not None and state.source == view.previous.number
        move = {
            "from": view.previous.number,
            "run": ran,
            "complete": bool(ran and state is not None and state.complete),
            "summary": state.summary() if ran and state is not None else None,
        }
    return {
        "view": view.number,
        "generation": view.generation,
        "describe": view.describe(),
        "generations": generations,
        "move": move,
    }


def _state_word(answer: dict[str, Any]) -> str:
    """A node's state in one word: retired, frozen or active."""
    if answer.get("retired"):
        return "retired"
    return "frozen" if answer.get("frozen") else "active"


def move_progress(cfg: ClusterConfig, view: View) -> str:
    """Where the background mover stands, from its cursor (``bftfs generation show`` and
    ``bftfs status``)."""
    from bftfs.fs.generations import MoveState, cursor_path

    assert view.previous is not None
    state = MoveState.load(cursor_path(cfg.home, view.generation))
    if state is None or state.source != view.previous.number:
        return "move: not run yet (`bftfs generation move`)"
    where = "complete" if state.complete else f"stopped after object {state.after}"
    return f"move: {where}; {state.summary()}"


def _state_of(answer: dict[str, Any]) -> str:
    if answer.get("retired"):
        return f"retired (generation {answer['g']}, view {answer['view']}): may be powered off"
    if answer.get("frozen"):
        return f"frozen (generation {answer['g']}, view {answer['view']}): serves reads"
    return f"active (generation {answer['g']}, view {answer['view']})"


def _moving(cfg: ClusterConfig) -> tuple[View, ClusterConfig]:
    """The held view and the previous generation's configuration.

    Raises:
        QuietError: no move runs.
    """
    view, _ = admin.current(cfg)
    if view.previous is None:
        raise QuietError(
            f"view {view.number} (generation {view.generation}) moves from no previous "
            "generation: nothing to move (`bftfs generation new` starts a move)",
            2,
        )
    return view, cfgmod.load(generation_config_path(cfg.home, view.previous.number))


def cmd_generation_move(args: argparse.Namespace) -> int:
    from bftfs.cli.common import EXIT_CLUSTER
    from bftfs.cli.progress import progress
    from bftfs.fs.generations import MoveError, cursor_path, start_state

    cfg, _ = cluster_of(args)
    view, old_cfg = _moving(cfg)
    assert view.previous is not None
    path = cursor_path(cfg.home, view.generation)
    state = start_state(path, view.number, view.previous.number)
    if state.complete:
        print(f"the move to generation {view.generation} is complete: {state.summary()}")
        return 0
    who = args.as_client or admin.pusher(cfg)
    resumed = " (resumed)" if state.after is not None else ""
    print(f"moving generation {view.previous.number} to {view.generation}{resumed}")
    with progress(f"moving to generation {view.generation}") as update:
        try:
            trio.run(lambda: _move(cfg, old_cfg, who, state, path, args.bytes_per_second, update))
        except MoveError as e:
            raise QuietError(f"{e}: run `bftfs generation move` again", EXIT_CLUSTER) from None
        except Exception as e:  # a quorum lost, a read or write failed: resumable
            raise QuietError(
                f"the move stopped ({_first(e)}): run `bftfs generation move` again, it "
                "resumes from its last page",
                EXIT_CLUSTER,
            ) from None
    print(f"  {state.summary()}")
    print(f"  complete: `bftfs generation finish` retires generation {view.previous.number}")
    return 0


def _first(e: BaseException) -> str:
    """What went wrong, from the first leaf of a group (the mover's nurseries)."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return f"{type(e).__name__}: {e}"


async def _move(
    cfg: ClusterConfig,
    old_cfg: ClusterConfig,
    who: str,
    state: Any,
    path: Path,
    rate: int,
    update: Any,
) -> None:
    """Open both generations' clients as client ``who`` and run the mover."""
    from bftfs.connect import open_nodes
    from bftfs.fs.generations import (
        GenerationalQU,
        frozen_needed,
        list_page,
        move_generation,
        wait_frozen,
    )
    from bftfs.qu.classify import QUThresholds
    from bftfs.qu.client import QUClient
    from bftfs.rw.client import open_rw_client

    spec = cfg.client(who)
    me = Identity.load(spec.id, cfg.client_key_path(who))
    old_nodes = [int(n) for n in old_cfg.node_ids]
    async with (
        open_nodes(me, cfg) as ep_new,
        open_nodes(me, old_cfg) as ep_old,
        open_rw_client(ep_new, cfg) as rw_new,
        open_rw_client(ep_old, old_cfg) as rw_old,
    ):
        th_old = QUThresholds.from_config(old_cfg)

        async def status(node: int) -> Any:
            return await ep_old.call(NodeId(node), "gen.status", None)

        ready = functools.partial(
            wait_frozen,
            status,
            old_nodes,
            frozen_needed(th_old.n, th_old.q, th_old.b),
            generation=state.source,
        )
        router = GenerationalQU(
            QUClient(ep_new, QUThresholds.from_config(cfg), client_id=ep_new.pid),
            QUClient(ep_old, th_old, client_id=ep_old.pid),
        )
        # The old generation's states are final, and its nodes list their objects to
        # clients, once enough of them are frozen.
        await ready()
        listing = functools.partial(list_page, ep_old, old_nodes, old_cfg.n - old_cfg.t)
        await move_generation(
            router,
            rw_new,
            rw_old,
            listing,
            state,
            path=path,
            default_bs=cfg.block_size,
            bytes_per_second=rate,
            on_progress=lambda _state, walked, listed: update(walked, listed),
        )


def cmd_generation_finish(args: argparse.Namespace) -> int:
    from bftfs.fs.generations import MoveState, cursor_path

    cfg, path = cluster_of(args)
    who = args.as_client or admin.pusher(cfg)
    held, blob = admin.current(cfg)
    kept = generation_config_path(cfg.home, held.generation - 1)
    if held.previous is None and held.generation > 1 and kept.exists():
        print(f"view {held.number} finished the move already: pushing it again")
        return _push_finished(held.number, blob, [("new", cfg), ("old", cfgmod.load(kept))], who)
    view, old_cfg = _moving(cfg)
    assert view.previous is not None
    state = MoveState.load(cursor_path(cfg.home, view.generation))
    if state is None or state.source != view.previous.number or not state.complete:
        left = (
            "no move was run"
            if state is None or state.source != view.previous.number
            else f"the walk stopped after object {state.after} ({state.summary()})"
        )
        if not args.force:
            raise QuietError(
                f"the move from generation {view.previous.number} is not complete: {left}; "
                "run `bftfs generation move` (or finish with --force: what was not moved "
                "is lost with the old nodes)",
                2,
            )
        print(f"finishing anyway (--force): {left}")
    done = admin.finished_generation(view)
    new_cfg, blob = admin.issue(cfg, path, done, admin.admin_key(cfg))
    print(
        f"view {done.number}: generation {done.generation} alone; generation "
        f"{view.previous.number}'s {len(view.previous.nodes)} nodes retire"
    )
    return _push_finished(done.number, blob, [("new", new_cfg), ("old", old_cfg)], who)


def _push_finished(
    number: int, blob: bytes, gens: list[tuple[str, ClusterConfig]], who: str
) -> int:
    """Push the view ending a move to the new generation's nodes, then to the old one's
    (which take it and retire; one retired already answers ``retired``: done too)."""
    for title, gcfg in gens:
        push = functools.partial(admin.push, gcfg, blob, number, as_client=who)
        result = trio.run(push)
        retired = {n for n, why in result.refused.items() if why.startswith("retired")}
        for node, why in sorted(result.refused.items()):
            if node not in retired:
                print(f"  node {node} of the {title} generation refused: {why}")
        for node, why in sorted(result.unreachable.items()):
            print(f"  node {node} of the {title} generation did not answer: {why}")
        took = len(result.acked) + len(retired)
        print(f"  view {number} taken by {took} of {gcfg.n} nodes of the {title} generation")
    print(
        "  the old generation's nodes may be powered off (`bftfs generation show` lists them "
        "retired); a node that did not answer learns the view from its peers"
    )
    return 0


def cmd_generation(args: argparse.Namespace) -> int:
    if args.action == "new":
        return cmd_generation_new(args)
    if args.action == "move":
        return cmd_generation_move(args)
    if args.action == "finish":
        return cmd_generation_finish(args)
    return cmd_generation_show(args)


def add_generation(sub: Any) -> None:
    """``bftfs generation new|show|move|finish``, each action its own parser."""
    sp = sub.add_parser(
        "generation",
        help="change the number of nodes or the thresholds online (a new generation)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = add_actions(sp)
    text = "make generation g + 1 (new nodes, new keys) and freeze generation g"
    ap = actions.add_parser("new", help=text, description=text)
    ap.add_argument("--nodes", type=int, help="the new generation's node count")
    ap.add_argument("--t", type=int, default=1, help="faults tolerated (default 1)")
    ap.add_argument("--b", type=int, default=1, help="Byzantine faults tolerated (default 1)")
    ap.add_argument("--qc", type=int, help="PASIS write quorum (default: the largest allowed)")
    ap.add_argument("--m", type=int, help="PASIS fragments to decode (default: the largest)")
    ap.add_argument(
        "--address", action="append", metavar="HOST:PORT", help="each new node's (in id order)"
    )
    ap.add_argument("--offline", action="store_true", help="issue the view, push nothing")
    with_identity(ap, default=None, help="the client the push speaks as")
    with_cluster(ap)
    text = "the generations and what each node says of itself; the move's progress"
    ap = actions.add_parser("show", help=text, description=text)
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    with_identity(ap, default=None, help="the client to ask the nodes as")
    with_cluster(ap)
    text = "move what the clients did not touch to the new generation (resumable)"
    ap = actions.add_parser("move", help=text, description=text)
    ap.add_argument(
        "--bytes-per-second",
        type=int,
        default=0,
        metavar="N",
        help="pace of the block data copied (default 0: no limit)",
    )
    with_identity(ap, default=None, help="the client the move speaks as")
    with_cluster(ap)
    text = "end the move: the old generation's nodes retire"
    ap = actions.add_parser("finish", help=text, description=text)
    ap.add_argument("--force", action="store_true", help="even if the move did not complete")
    with_identity(ap, default=None, help="the client the push speaks as")
    with_cluster(ap)
    sp.set_defaults(func=cmd_generation)
