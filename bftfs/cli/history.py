"""Reading the past: ``bftfs log``, ``cat --at``, ``diff``, ``changes`` and ``snapshot``,
and the parsers of every history command (``restore`` and ``revert`` are in
:mod:`bftfs.cli.restore`; PATH and WHEN in :mod:`bftfs.cli.when`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bftfs.cli.common import cluster_of, human, with_cluster
from bftfs.cli.progress import progress
from bftfs.cli.restore import cmd_restore, cmd_revert, patient
from bftfs.cli.when import (
    WhenError,
    author_of,
    checked_when,
    client_ids,
    client_names,
    exact_time,
    find_history,
    fs_path,
    iso_time,
    mountpoints_of,
    parse_when,
    range_trees,
    resolve_moment,
    with_past,
)
from bftfs.config import ClusterConfig

if TYPE_CHECKING:  # (the fs layer is imported only by the commands that use it)
    from bftfs.fs.history import TreeSize


def _row(v: Any, names: dict[int, str]) -> dict[str, Any]:
    s = v.state or {}
    return {
        "id": v.id,
        "time": iso_time(v.time_ns),
        "time_ns": v.time_ns,
        "client": author_of(v.client, names),
        "kind": "dir" if s.get("k") == "d" else "file",
        "size": s.get("size") if s.get("k") == "f" else None,
        "changes": list(v.changes),
    }


def cmd_log(args: argparse.Namespace, cfg: ClusterConfig) -> int:
    now_ns = time.time_ns()
    path = fs_path(args.path, mountpoints_of(cfg))
    since = None if args.since is None else parse_when(args.since, now_ns)
    until = None if args.until is None else parse_when(args.until, now_ns)
    names = client_names(cfg)
    wanted = client_ids(cfg)

    async def run(past: Any) -> tuple[list[dict[str, Any]], bool, int]:
        hist = await find_history(past, path, now_ns)
        lo = None if since is None else await resolve_moment(past, path, since, now_ns)
        hi = None if until is None else await resolve_moment(past, path, until, now_ns)
        rows = []
        for v in hist.versions:
            if (lo is not None or hi is not None) and v.time_ns is None:
                continue  # unknown: not known to be in the range
            if lo is not None and v.time_ns < lo or hi is not None and v.time_ns > hi:
                continue
            if args.client is not None and v.client != wanted.get(args.client, -1):
                continue
            rows.append(_row(v, names))
        return rows, hist.complete, hist.thinned

    rows, complete, thinned = with_past(cfg, args.as_client, run)
    if args.json:
        out = {"path": path, "versions": rows, "complete": complete, "thinned": thinned}
        json.dump(out, sys.stdout, indent=1)
        print()
        return 0
    print(f"{'ID':12}  {'TIME':25}  {'CLIENT':10}  {'SIZE':>10}  CHANGES")
    for r in rows:
        size = "" if r["size"] is None else str(r["size"])
        print(
            f"{r['id']:12}  {r['time']:25}  {r['client']:10}  {size:>10}  {', '.join(r['changes'])}"
        )
    if thinned:
        print(f"({thinned} versions between these were thinned by retention's schedule)")
    if not complete:
        print("(older versions were reclaimed by retention: see [retention] in cluster.toml)")
    return 0


def cmd_cat(args: argparse.Namespace, cfg: ClusterConfig) -> int:
    now_ns = time.time_ns()
    path = fs_path(args.path, mountpoints_of(cfg))
    when = parse_when(args.at, now_ns)

    async def run(past: Any) -> bytes:
        moment = await resolve_moment(past, path, when, now_ns)
        v = await past.resolve(path, moment)
        return bytes(await past.content(v))

    data = with_past(cfg, args.as_client, run)
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return 0


def _content_key(s: dict[str, Any]) -> tuple[Any, ...]:
    """What a file's bytes depend on (two states with equal keys hold equal bytes)."""
    return (s.get("size"), s.get("i"), s.get("d"), s.get("bt"), s.get("t"))


def _meta_key(s: dict[str, Any]) -> tuple[Any, ...]:
    return (int(s.get("mode", 0)) & 0o7777, s.get("uid"), s.get("gid"), s.get("x"))


def diff_trees(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(mark, path, detail)`` for what changed from tree ``old`` to tree ``new``
    (:meth:`Past.tree` results): ``+`` added, ``-`` removed, ``M`` modified (content or
    attributes; detail says which), ``R`` renamed (detail: the new path), in path order."""
    old_by_oid = {v.oid: rel for rel, v in old.items()}
    new_by_oid = {v.oid: rel for rel, v in new.items()}
    out: list[tuple[str, str, str]] = []
    for rel in sorted(set(old) | set(new)):
        a, b = old.get(rel), new.get(rel)
        if a is not None and b is not None and a.oid == b.oid:
            what = []
            if a.state.get("k") != "d" and _content_key(a.state) != _content_key(b.state):
                what.append("content")
            if _meta_key(a.state) != _meta_key(b.state):
                what.append("attributes")
            if what:
                out.append(("M", rel, "+".join(what)))
            continue
        if a is not None:
            moved = new_by_oid.get(a.oid)
            if moved is not None and moved not in old:
                out.append(("R", rel, moved))
            elif b is None or a.oid != (b.oid if b else None):
                out.append(("-", rel, ""))
        if b is not None:
            was = old_by_oid.get(b.oid)
            if was is None or was in new:
                out.append(("+", rel, ""))
    return out


def cmd_diff(args: argparse.Namespace, cfg: ClusterConfig) -> int:
    now_ns = time.time_ns()
    path = fs_path(args.path, mountpoints_of(cfg))
    start = parse_when(args.since, now_ns)
    end = parse_when(args.to, now_ns) if args.to is not None else now_ns

    async def run(past: Any) -> tuple[int, int, list[dict[str, Any]]]:
        lo = await resolve_moment(patient(past), path, start, now_ns)
        hi = await resolve_moment(past, path, end, now_ns)
        with progress(f"reading {path} at both moments") as update:
            old, new = await past.trees(path, [lo, hi], progress=update)
        entries = []
        for mark, rel, detail in diff_trees(old, new):
            entry: dict[str, Any] = {"change": mark, "path": rel or "."}
            if mark == "R":
                entry["to"] = detail
            elif mark == "M":
                entry["what"] = detail.split("+")
            if args.patch and mark in ("M", "R"):
                a, b = old[rel], new[detail if mark == "R" else rel]
                shown, name = rel or ".", detail if mark == "R" else rel or "."
                entry["patch"] = await _patch(past, a, b, shown, name)
            entries.append(entry)
        return lo, hi, entries

    lo, hi, entries = with_past(cfg, args.as_client, run)
    if args.json:
        out = {"path": path, "from": _moment_json(lo), "to": _moment_json(hi), "changes": entries}
        print(json.dumps(out, indent=1))
        return 0
    for e in entries:
        if e["change"] == "R":
            print(f"R {e['path']} -> {e['to']}")
        elif e["change"] == "M":
            print(f"M {e['path']} ({'+'.join(e['what'])})")
        else:
            print(f"{e['change']} {e['path']}")
        for line in e.get("patch") or ():
            print(line)
    return 0


def _moment_json(ns: int) -> dict[str, Any]:
    """A moment in ``--json``: its time and ``@SECONDS.NS`` (the exact moment again)."""
    return {"time": iso_time(ns), "exact": exact_time(ns), "ns": ns}


async def _patch(past: Any, a: Any, b: Any, shown: str, name: str) -> list[str] | None:
    """``diff -p``'s lines for a file modified or renamed (``shown`` before, ``name``
    after): a unified diff, or ``Binary files ... differ``; None where no content changed
    (a directory, or attributes alone)."""
    import difflib

    if a.state.get("k") == "d" or _content_key(a.state) == _content_key(b.state):
        return None
    before, after = await past.content(a), await past.content(b)
    try:
        ta, tb = bytes(before).decode(), bytes(after).decode()
    except UnicodeDecodeError:
        return [f"Binary files {shown} differ"]
    return [
        line.rstrip("\n")
        for line in difflib.unified_diff(
            ta.splitlines(keepends=True), tb.splitlines(keepends=True), f"a/{shown}", f"b/{name}"
        )
    ]


def cmd_changes(args: argparse.Namespace, cfg: ClusterConfig) -> int:
    from bftfs.fs.history import changes_in

    now_ns = time.time_ns()
    path = fs_path(args.path, mountpoints_of(cfg))
    since = parse_when(args.since, now_ns)
    until = None if args.until is None else parse_when(args.until, now_ns)
    names = client_names(cfg)
    wanted = client_ids(cfg)

    async def run(past: Any) -> list[Any]:
        with progress(f"reading the history of {path}") as update:
            got = await range_trees(patient(past), path, since, until, now_ns, update)
        lo, hi, before, after, histories = got
        return changes_in(before, after, histories, since_ns=lo, until_ns=hi)

    rows = [
        {
            "time": iso_time(c.time_ns),
            "time_ns": c.time_ns,
            "client": author_of(c.client, names),
            "path": c.path or ".",
            "changes": list(c.changes),
        }
        for c in with_past(cfg, args.as_client, run)
        if args.client is None or c.client == wanted.get(args.client, -1)
    ]
    if args.json:
        json.dump({"path": path, "changes": rows}, sys.stdout, indent=1)
        print()
        return 0
    for r in rows:
        print(f"{r['time']:25}  {r['client']:10}  {r['path']}  {', '.join(r['changes'])}")
    return 0


def cmd_snapshot(args: argparse.Namespace, cfg: ClusterConfig) -> int:
    from bftfs.fsobjects import valid_snapshot_name

    now_ns = time.time_ns()
    if args.action == "auto":
        if args.now is not None:  # (tests: the schedule at an injected time)
            injected = parse_when(args.now, now_ns)
            if not isinstance(injected, int):
                raise WhenError(f"--now {args.now!r}: a time, not a version or snapshot")
            now_ns = injected
        return _snapshot_auto(args, cfg, now_ns)
    if args.action in ("create", "delete") and not valid_snapshot_name(args.name):
        raise WhenError(
            f"{args.name!r}: snapshot names are 1-64 printable characters without "
            "spaces or /, not starting with - or @, not 'now'"
        )
    if args.action == "create" and isinstance(parse_when(args.name, now_ns, future_ok=True), int):
        raise WhenError(
            f"{args.name!r} reads as a time: --at {args.name} would name that time, never "
            "this snapshot; choose another name"
        )

    async def run(past: Any) -> Any:
        if args.action == "create":
            at = (
                now_ns
                if args.at is None
                else await resolve_moment(past, "/", parse_when(args.at), now_ns)
            )
            await past.snapshot_create(args.name, at)
            return at
        if args.action == "delete":
            await past.snapshot_delete(args.name)
            return None
        snaps = await past.snapshots()
        return snaps, (await _sizes(past, snaps) if args.sizes else {})

    got = with_past(cfg, args.as_client, run)
    if args.action == "create":
        print(f"snapshot {args.name} at {iso_time(got)}: retention keeps what was current then")
    elif args.action == "delete":
        print(f"snapshot {args.name} deleted: retention may reclaim what only it kept")
    else:
        _print_snapshots(*got, as_json=args.json, sizes_asked=args.sizes)
    return 0


def _snapshot_auto(args: argparse.Namespace, cfg: ClusterConfig, now_ns: int) -> int:
    """``snapshot auto``: a scheduled snapshot now, then the earlier scheduled ones the
    schedule no longer keeps deleted (``bftfs/autosnap.py``); ``--dry-run`` says which."""
    from bftfs.autosnap import auto_name, to_delete

    name = auto_name(now_ns)

    async def run(past: Any) -> tuple[dict[str, int], list[str]]:
        snaps = dict(await past.snapshots())
        if not args.dry_run and name not in snaps:  # (a second run within the second)
            await past.snapshot_create(name, now_ns)
        snaps[name] = snaps.get(name, now_ns)
        gone = to_delete(
            snaps, now_ns, hourly=args.keep_hourly, daily=args.keep_daily, weekly=args.keep_weekly
        )
        if not args.dry_run:
            for old in gone:
                await past.snapshot_delete(old)
        return snaps, gone

    snaps, gone = with_past(cfg, args.as_client, run)
    verb = "would take" if args.dry_run else "took"
    print(f"{verb} snapshot {name} at {iso_time(now_ns)}")
    for old in gone:
        print(f"{'would delete' if args.dry_run else 'deleted'} {old} ({iso_time(snaps[old])})")
    left = sum(1 for n in snaps if n.startswith("auto-")) - len(gone)
    print(f"{left} scheduled snapshot(s) kept")
    return 0


async def _sizes(past: Any, snaps: dict[str, int]) -> dict[str, TreeSize | None]:
    """Each snapshot's files and their bytes (:func:`~bftfs.fs.history.plan.tree_size`): every
    object read once for all the moments (``Past.trees``); a moment whose tree cannot be
    read (reclaimed, or a version of unknown time) is None, the others are still counted."""
    from bftfs.fs.history import PastError, tree_size

    names = sorted(snaps, key=lambda n: snaps[n])
    moments = [snaps[n] for n in names]
    with progress("reading the snapshots' trees") as update:
        try:
            trees = await past.trees("/", moments, progress=update)
            return {n: tree_size(t) for n, t in zip(names, trees, strict=True)}
        except PastError:
            pass
        out: dict[str, TreeSize | None] = {}
        for n, t in zip(names, moments, strict=True):
            try:
                out[n] = tree_size(await past.tree("/", t))
            except PastError:
                out[n] = None
        return out


def _print_snapshots(
    snaps: dict[str, int], sizes: dict[str, TreeSize | None], *, as_json: bool, sizes_asked: bool
) -> None:
    """``snapshot list``: oldest first; files and bytes when asked (unknown: ``?``, null)."""
    if as_json:
        out: dict[str, dict[str, Any]] = {}
        for name, t in snaps.items():
            out[name] = {"time_ns": t, "time": iso_time(t)}
            if sizes_asked:
                size = sizes.get(name)
                out[name]["files"] = None if size is None else size.files
                out[name]["bytes"] = None if size is None else size.bytes
        json.dump(out, sys.stdout)
        print()
        return
    for name, t in sorted(snaps.items(), key=lambda kv: kv[1]):
        if not sizes_asked:
            print(f"{iso_time(t):25}  {name}")
            continue
        size = sizes.get(name)
        files = "?" if size is None else str(size.files)
        amount = "?" if size is None else human(size.bytes)
        print(f"{iso_time(t):25}  {files:>7} files  {amount:>10}  {name}")


_PATH_HELP = "a path under a mount, or fs:/path inside the file system"


def _on_cluster(cmd: Callable[[argparse.Namespace, ClusterConfig], int]) -> Any:
    """``cmd(args, cfg)`` as a command taking ``args``: ``cfg`` from ``--dir``/``--config``,
    else the cluster of the mount its PATH lies under, else found as every command finds
    one (``cli/discover.py``); run after this machine's mounts of the cluster sent what
    they hold back (their changes of the last ``commit`` seconds are then in the history
    the command reads or changes)."""

    def run(args: argparse.Namespace) -> int:
        from bftfs import config as cfgmod
        from bftfs.fuse.control import mount_config, write_back_mounts

        given = getattr(args, "dir", None) or getattr(args, "config", None)
        path = getattr(args, "path", None)
        of_mount = None if given or not path else mount_config(path)
        cfg = cfgmod.load(of_mount) if of_mount is not None else cluster_of(args)[0]
        for problem in write_back_mounts(cfg):
            print(f"warning: mount not written back: {problem}", file=sys.stderr)
        return cmd(args, cfg)

    return run


def _at_option(sp: argparse.ArgumentParser) -> None:
    """The required ``--at WHEN`` of ``cat`` and ``restore``."""
    sp.add_argument(
        "--at",
        metavar="WHEN",
        type=checked_when,
        required=True,
        help="a time, -10m, '2 hours ago', a version id or a snapshot",
    )


def _finish(
    sp: argparse.ArgumentParser,
    command: str,
    cmd: Callable[[argparse.Namespace, ClusterConfig], int],
    as_help: str = "connect as (client0)",
) -> None:
    """The options every history command ends with, and what runs it."""
    with_cluster(sp)
    sp.add_argument("--as", dest="as_client", metavar="CLIENT", default="client0", help=as_help)
    sp.set_defaults(command=command, func=_on_cluster(cmd))


def add_commands(sub: Any) -> None:
    """Register ``log``, ``cat``, ``restore``, ``diff``, ``changes``, ``revert`` and
    ``snapshot``."""
    sp = sub.add_parser("log", help="the versions of a file or directory, newest first")
    sp.add_argument("path", help=_PATH_HELP)
    with_cluster(sp)
    sp.add_argument(
        "--as", dest="as_client", metavar="CLIENT", default="client0", help="connect as (client0)"
    )
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.add_argument(
        "--since", metavar="WHEN", type=checked_when, help="only versions at or after WHEN"
    )
    sp.add_argument(
        "--until", metavar="WHEN", type=checked_when, help="only versions at or before WHEN"
    )
    sp.add_argument("--client", metavar="NAME", help="only versions this client wrote")
    sp.set_defaults(command="log", func=_on_cluster(cmd_log))

    sp = sub.add_parser("cat", help="a file's content as it was at a moment")
    sp.add_argument("path", help=_PATH_HELP)
    _at_option(sp)
    _finish(sp, "cat", cmd_cat)

    sp = sub.add_parser("restore", help="bring a file or tree back as it was (new versions)")
    sp.add_argument("path", help=_PATH_HELP)
    _at_option(sp)
    sp.add_argument("--to", metavar="DEST", help="write here instead of PATH itself")
    sp.add_argument("--delete", action="store_true", help="remove entries that did not exist then")
    _finish(sp, "restore", cmd_restore)

    sp = sub.add_parser("diff", help="what changed under a path between two moments")
    sp.add_argument("path", help=_PATH_HELP)
    sp.add_argument(
        "--from", dest="since", metavar="WHEN", type=checked_when, required=True, help="the start"
    )
    sp.add_argument("--to", metavar="WHEN", type=checked_when, help="the end (default: now)")
    sp.add_argument("-p", "--patch", action="store_true", help="unified diffs of text files")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    _finish(sp, "diff", cmd_diff)

    sp = sub.add_parser("changes", help="every version under a path in a time range")
    sp.add_argument("path", help=_PATH_HELP)
    sp.add_argument("--since", metavar="WHEN", type=checked_when, required=True, help="the start")
    sp.add_argument("--until", metavar="WHEN", type=checked_when, help="the end (default: now)")
    sp.add_argument("--client", metavar="NAME", help="only what this client changed")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    _finish(sp, "changes", cmd_changes)

    sp = sub.add_parser("revert", help="undo one client's changes since a moment")
    sp.add_argument("path", help="a directory under a mount (what to look under)")
    sp.add_argument("--client", metavar="NAME", required=True, help="whose changes")
    sp.add_argument("--since", metavar="WHEN", type=checked_when, required=True, help="since when")
    sp.add_argument("--dry-run", action="store_true", help="say what would be done")
    _finish(sp, "revert", cmd_revert)
    _add_snapshot(sub)


def _add_snapshot(sub: Any) -> None:
    """``bftfs snapshot create|delete|list``."""
    sp = sub.add_parser("snapshot", help="named moments that retention never reclaims")
    snap = sp.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (
        ("create", "pin the tree as it is now (or --at WHEN)"),
        ("delete", "let retention reclaim what only this snapshot kept"),
        ("list", "the snapshots, oldest first, with their files and bytes"),
        ("auto", "a scheduled snapshot (auto-TIME), the older scheduled ones thinned"),
    ):
        ap = snap.add_parser(action, help=text)
        if action == "auto":
            from bftfs.autosnap import DEFAULT_DAILY, DEFAULT_HOURLY, DEFAULT_WEEKLY

            for tier, default in (
                ("hourly", DEFAULT_HOURLY),
                ("daily", DEFAULT_DAILY),
                ("weekly", DEFAULT_WEEKLY),
            ):
                ap.add_argument(
                    f"--keep-{tier}",
                    type=int,
                    default=default,
                    metavar="N",
                    help=f"keep the newest scheduled snapshot of each of the last N "
                    f"{tier.removesuffix('ly').replace('dai', 'day')}s (default {default})",
                )
            ap.add_argument("--dry-run", action="store_true", help="say what would be done")
            ap.add_argument("--now", metavar="WHEN", type=checked_when, help=argparse.SUPPRESS)
        elif action != "list":
            ap.add_argument("name")
        else:
            ap.add_argument("--json", action="store_true", help="machine-readable output")
            ap.add_argument(
                "--no-sizes",
                dest="sizes",
                action="store_false",
                help="leave out each snapshot's files and bytes (no walk of its tree)",
            )
        if action == "create":
            ap.add_argument(
                "--at", metavar="WHEN", type=checked_when, help="a past moment (default: now)"
            )
        _finish(ap, "snapshot", cmd_snapshot, as_help="connect as")
