"""``bftfs log``, ``cat --at``, ``restore``, ``diff``: the version history users see
(issue 17).

PATH is a path under a mount of the cluster (``mount/docs/a.txt``; it need not exist any
more) or a path inside the file system: ``fs:/docs/a.txt``, or ``/docs/a.txt`` where
``/docs`` is no directory of this machine (``/etc/passwd`` outside every mount is refused:
it names this machine's file, not the cluster's).

WHEN (``--at``, ``--since``, ``--until``) is one of:

- a time: ``2026-11-23 14:05``, ``2026-11-23T14:05:30`` (local time unless it carries an
  offset), ``@1763900000`` (seconds since the epoch), ``now``;
- an age: ``-10m``, ``-30s``, ``-2h``, ``-1d``, ``-1w``;
- a version id from ``bftfs log`` (hex, at least 4 digits): the moment that version was
  stored.

Times shown are the median of the storing nodes' clocks (not the writing client's), and a
version's client is the authenticated identity the nodes saw (``bftfs/fs/past.py``).  A
version fewer than ``2b + 1`` nodes still report has no time a lying node could not have
moved: it is shown as ``unknown`` (``null`` in ``--json``), and a moment it could decide
has no answer (exit 7) rather than a guess (issue 31).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import decimal
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import trio

from bftfs.config import ClusterConfig

_AGE = re.compile(r"^-(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_VERSION_ID = re.compile(r"^[0-9a-f]{4,12}$")


class WhenError(ValueError):
    """Text that is no WHEN."""


def parse_when(text: str, now_ns: int | None = None) -> int | str:
    """A moment in ns since the epoch, or a version id (str) to look up.

    Raises:
        WhenError: none of the forms in the module docstring.
    """
    now_ns = time.time_ns() if now_ns is None else now_ns
    t = text.strip()
    if t == "now":
        return now_ns
    m = _AGE.match(t)
    if m:
        return now_ns - int(float(m.group(1)) * _UNITS[m.group(2)] * 1e9)
    if t.startswith("@"):
        try:
            return int(decimal.Decimal(t[1:]) * 10**9)
        except (decimal.InvalidOperation, ValueError):
            raise WhenError(f"not a time: {text!r}") from None
    if _VERSION_ID.match(t.lower()) and not t.isdigit():
        return t.lower()
    try:
        dt = datetime.datetime.fromisoformat(t)
    except ValueError:
        if t and t.isprintable() and not any(c in t for c in "/ \t") and t[0] not in "-@":
            return t  # a snapshot name or a version id, looked up later (_moment)
        raise WhenError(
            f"not a time, an age, a version id or a snapshot: {text!r} "
            "(e.g. '2026-11-23 14:05', -10m, @1763900000, an id from bftfs log, or a "
            "snapshot name)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.astimezone()  # local time
    return int(dt.timestamp()) * 10**9 + dt.microsecond * 1000


#: ``fs:/docs/a.txt``: a path inside the file system, whatever this machine holds.
FS_PREFIX = "fs:"


def fs_path(arg: str, mountpoints: list[Path]) -> str:
    """The path inside the file system that ``arg`` names (see the module docstring).

    An absolute path outside every mount names a path inside the file system only where
    it cannot name this machine's own files: its first component must not exist here
    (``/docs/a.txt``), else it is refused (``/etc/passwd`` is this machine's, and reading
    the history of ``/etc/passwd`` inside the cluster instead would answer a question
    nobody asked).  ``fs:/etc/passwd`` always names the path inside the file system.

    Raises:
        ValueError: a relative path outside every mount of the cluster, or an absolute
            one naming this machine's files.
    """
    if arg.startswith(FS_PREFIX):
        inside = arg[len(FS_PREFIX) :]
        if not inside.startswith("/"):
            raise ValueError(f"{arg}: a path inside the file system starts with / (fs:/docs)")
        return inside
    absolute = Path(os.path.abspath(arg))
    for mp in mountpoints:
        mp = Path(os.path.abspath(mp))
        if absolute == mp or mp in absolute.parents:
            return "/" + str(absolute.relative_to(mp)).removeprefix(".")
    where = ", ".join(str(m) for m in mountpoints) or "none mounted here"
    if arg.startswith("/"):
        top = absolute.parts[1] if len(absolute.parts) > 1 else None
        if top is None or not os.path.lexists(f"/{top}"):
            return arg
        raise ValueError(
            f"{arg}: outside every mount of this cluster (mounts: {where}); it names this "
            f"machine's files. For the path inside the file system write {FS_PREFIX}{arg}"
        )
    raise ValueError(
        f"{arg}: not under a mount of this cluster (mounts: {where}); give the path inside "
        f"the file system as {FS_PREFIX}/PATH (e.g. {FS_PREFIX}/docs/a.txt)"
    )


def _mountpoints(cfg: ClusterConfig) -> list[Path]:
    from bftfs.fuse.control import known_mounts

    points = [p for _pid, p in known_mounts(cfg)]
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and parts[2] == "fuse.bftfs":
                    points.append(Path(parts[1].replace("\\040", " ")))
    except OSError:
        pass
    return points


def _iso(ns: int | None) -> str:
    if ns is None:
        return "unknown"
    dt = datetime.datetime.fromtimestamp(ns / 1e9).astimezone()
    return dt.isoformat(sep=" ", timespec="seconds")


def _client_names(cfg: ClusterConfig) -> dict[int, str]:
    """Every client id the cluster had, named (a removed client as ``NAME (removed)``)."""
    return cfg.client_names()


def _author(client: int, names: dict[int, str]) -> str:
    """A version's client by name; one the configuration no longer names (an entry removed
    by hand, not by ``bftfs client remove``) by its id, ``client#N``."""
    from bftfs.ids import CLIENT_ID_BASE

    return names.get(client) or f"client#{client - CLIENT_ID_BASE}"


def _client_ids(cfg: ClusterConfig) -> dict[str, int]:
    """``--client NAME``: a configured client's id, or a removed one's (a revoked key's
    changes are what ``revert --client`` is for); a current client wins a shared name."""
    ids = {r.name: int(r.id) for r in cfg.retired_clients}
    ids.update({c.name: int(c.id) for c in cfg.clients})
    return ids


async def _find(past: Any, path: str, now_ns: int) -> Any:
    """The history of the object ``path`` names now or, if it is gone, last named."""
    from bftfs.fs.past import NotThen

    try:
        v = await past.resolve(path, now_ns)
        return await past.history(v.oid)
    except NotThen:
        pass
    parent, _, name = path.rstrip("/").rpartition("/")
    if not name:
        raise NotThen(f"{path}: no such file or directory")
    dir_hist = await _find(past, parent or "/", now_ns)
    from bftfs.fsobjects.dirents import all_entries

    for dv in dir_hist.versions:
        if dv.state is not None and dv.state.get("k") == "d":
            entry = all_entries(dv.state["e"]).get(name.encode())
            if entry is not None:
                return await past.history(int(entry[0]))
    raise NotThen(f"{path}: never existed in the history kept")


async def _moment(past: Any, path: str, when: int | str, now_ns: int) -> int:
    """``when`` as a moment: a snapshot's, or a version id's looked up in ``path``'s
    history."""
    from bftfs.fs.past import PastError

    if isinstance(when, int):
        return when
    snaps = await past.snapshots()
    if when in snaps:
        return int(snaps[when])
    if not _VERSION_ID.match(when.lower()):
        raise WhenError(
            f"not a time, an age, a version id or a snapshot: {when!r} "
            f"(snapshots: {', '.join(sorted(snaps)) or 'none'})"
        )
    hist = await _find(past, path, now_ns)
    v = hist.by_id(when.lower())
    if v is None:
        raise PastError(f"{path}: no version {when} in its history (see bftfs log {path})")
    if v.time_ns is None:
        raise PastError(
            f"{path}: the time of version {when} is unknown (fewer than 2b+1 nodes still "
            "report it): give a time instead"
        )
    return int(v.time_ns)


def moment_of(cfg: ClusterConfig, client: str, when: int | str) -> int:
    """A WHEN without a path (``bftfs mount --at``): a time, an age or a snapshot name."""
    if isinstance(when, int):
        return when

    async def run(past: Any) -> int:
        snaps = await past.snapshots()
        if when not in snaps:
            raise WhenError(
                f"--at {when}: give a time, an age or a snapshot name (snapshots: "
                f"{', '.join(sorted(snaps)) or 'none'}); a version id names one file's "
                "version: `bftfs log PATH` shows its time"
            )
        return int(snaps[when])

    return int(_with_past(cfg, client, run))


def _with_past(cfg: ClusterConfig, client: str, fn: Any) -> Any:
    """Run ``await fn(past)`` against the cluster; its result.  An error ``fn`` raises comes
    out as itself (not wrapped in the exception group of the clients' nurseries)."""
    from bftfs.fs.session import open_past

    async def main() -> tuple[bool, Any]:
        async with open_past(cfg, client) as past:
            try:
                return True, await fn(past)
            except Exception as e:
                return False, e

    ok, got = trio.run(main)
    if not ok:
        raise got
    return got


def _row(v: Any, names: dict[int, str]) -> dict[str, Any]:
    s = v.state or {}
    return {
        "id": v.id,
        "time": _iso(v.time_ns),
        "time_ns": v.time_ns,
        "client": _author(v.client, names),
        "kind": "dir" if s.get("k") == "d" else "file",
        "size": s.get("size") if s.get("k") == "f" else None,
        "changes": list(v.changes),
    }


def cmd_log(args: argparse.Namespace, cfg: ClusterConfig) -> int:
    now_ns = time.time_ns()
    path = fs_path(args.path, _mountpoints(cfg))
    since = None if args.since is None else parse_when(args.since, now_ns)
    until = None if args.until is None else parse_when(args.until, now_ns)
    names = _client_names(cfg)
    wanted = _client_ids(cfg)

    async def run(past: Any) -> tuple[list[dict[str, Any]], bool]:
        hist = await _find(past, path, now_ns)
        lo = None if since is None else await _moment(past, path, since, now_ns)
        hi = None if until is None else await _moment(past, path, until, now_ns)
        rows = []
        for v in hist.versions:
            if (lo is not None or hi is not None) and v.time_ns is None:
                continue  # unknown: not known to be in the range
            if lo is not None and v.time_ns < lo or hi is not None and v.time_ns > hi:
                continue
            if args.client is not None and v.client != wanted.get(args.client, -1):
                continue
            rows.append(_row(v, names))
        return rows, hist.complete

    rows, complete = _with_past(cfg, args.as_client, run)
    if args.json:
        json.dump({"path": path, "versions": rows, "complete": complete}, sys.stdout, indent=1)
        print()
        return 0
    print(f"{'ID':12}  {'TIME':25}  {'CLIENT':10}  {'SIZE':>10}  CHANGES")
    for r in rows:
        size = "" if r["size"] is None else str(r["size"])
        print(
            f"{r['id']:12}  {r['time']:25}  {r['client']:10}  {size:>10}  {', '.join(r['changes'])}"
        )
    if not complete:
        print("(older versions were reclaimed by retention: see [retention] in cluster.toml)")
    return 0


def cmd_cat(args: argparse.Namespace, cfg: ClusterConfig) -> int:
    now_ns = time.time_ns()
    path = fs_path(args.path, _mountpoints(cfg))
    when = parse_when(args.at, now_ns)

    async def run(past: Any) -> bytes:
        moment = await _moment(past, path, when, now_ns)
        v = await past.resolve(path, moment)
        return bytes(await past.content(v))

    data = _with_past(cfg, args.as_client, run)
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return 0


def _local_target(arg: str, mountpoints: list[Path], to: str | None) -> Path:
    """Where ``restore`` writes: ``--to``, or PATH itself when it is under a mount."""
    if to is not None:
        return Path(to)
    absolute = Path(os.path.abspath(arg))
    if any(absolute == mp or Path(os.path.abspath(mp)) in absolute.parents for mp in mountpoints):
        return absolute
    raise ValueError(f"{arg} is not under a mount of this cluster: say where with --to DEST")


async def _restore(past: Any, tree: dict[str, Any], dest: Path, delete: bool) -> dict[str, int]:
    """Write ``tree`` (from :meth:`Past.tree`) at ``dest``: new versions, history untouched.

    Files get their content, mode and times (owner too when run as root); directories are
    created as needed and get their mode and times after their entries; symbolic links are
    made again.  Entries of ``dest`` that did not exist then stay, unless ``delete``.
    """
    import shutil
    import stat as st

    counts = {"files": 0, "dirs": 0, "links": 0, "bytes": 0, "deleted": 0, "skipped": 0}
    dirs: list[tuple[Path, dict[str, Any]]] = []
    for rel, v in tree.items():
        s = v.state
        target = dest / rel if rel else dest
        mode = int(s["mode"])
        if s.get("k") == "d":
            target.mkdir(parents=True, exist_ok=True)
            dirs.append((target, s))
            counts["dirs"] += 1
            if delete:
                wanted = {name.decode(errors="surrogateescape") for name in all_entries_of(s)}
                for extra in sorted(set(os.listdir(target)) - wanted):
                    p = target / extra
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p)
                    else:
                        p.unlink()
                    counts["deleted"] += 1
            continue
        replaced = target.is_symlink() or (target.exists() and not target.is_dir())
        if replaced and (st.S_ISLNK(mode) or not st.S_ISREG(mode)):
            target.unlink()
        if st.S_ISLNK(mode):
            os.symlink(bytes(s.get("t") or b""), target)
            counts["links"] += 1
            continue
        if not st.S_ISREG(mode):
            counts["skipped"] += 1  # devices, fifos, sockets: not brought back
            continue
        data = await past.content(v)
        target.parent.mkdir(parents=True, exist_ok=True)
        await trio.Path(target).write_bytes(data)
        _set_attrs(target, s)
        counts["files"] += 1
        counts["bytes"] += len(data)
    for target, s in reversed(dirs):
        _set_attrs(target, s)
    return counts


def all_entries_of(state: dict[str, Any]) -> dict[bytes, Any]:
    from bftfs.fsobjects.dirents import all_entries

    return all_entries(state["e"])


def _set_attrs(target: Path, s: dict[str, Any]) -> None:
    """Mode, times and (as root) owner of a restored file or directory."""
    os.chmod(target, int(s["mode"]) & 0o7777)
    if os.geteuid() == 0:
        with contextlib.suppress(OSError):
            os.chown(target, int(s["uid"]), int(s["gid"]))
    os.utime(target, ns=(int(s["at"]), int(s["mt"])))


def cmd_restore(args: argparse.Namespace, cfg: ClusterConfig) -> int:
    now_ns = time.time_ns()
    mounts = _mountpoints(cfg)
    path = fs_path(args.path, mounts)
    dest = _local_target(args.path, mounts, args.to)
    when = parse_when(args.at, now_ns)

    async def run(past: Any) -> tuple[int, dict[str, int]]:
        moment = await _moment(past, path, when, now_ns)
        tree = await past.tree(path, moment)
        return moment, await _restore(past, tree, dest, args.delete)

    moment, counts = _with_past(cfg, args.as_client, run)
    print(
        f"restored {path} as it was at {_iso(moment)} into {dest}: {counts['files']} files "
        f"({counts['bytes']} bytes), {counts['dirs']} directories, {counts['links']} links"
        + (f", {counts['deleted']} later entries deleted" if counts["deleted"] else "")
        + (f", {counts['skipped']} special files skipped" if counts["skipped"] else "")
    )
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
    import difflib

    now_ns = time.time_ns()
    path = fs_path(args.path, _mountpoints(cfg))
    start = parse_when(args.since, now_ns)
    end = parse_when(args.to, now_ns) if args.to is not None else now_ns

    async def run(past: Any) -> list[str]:
        lo = await _moment(past, path, start, now_ns)
        hi = await _moment(past, path, end, now_ns)
        old, new = await past.tree(path, lo), await past.tree(path, hi)
        lines = []
        for mark, rel, detail in diff_trees(old, new):
            shown = rel or "."
            if mark == "R":
                lines.append(f"R {shown} -> {detail}")
            elif mark == "M":
                lines.append(f"M {shown} ({detail})")
            else:
                lines.append(f"{mark} {shown}")
            if args.patch and mark in ("M", "R"):
                a = old[rel]
                b = new[detail if mark == "R" else rel]
                if a.state.get("k") == "d" or _content_key(a.state) == _content_key(b.state):
                    continue
                before, after = await past.content(a), await past.content(b)
                try:
                    ta, tb = before.decode(), after.decode()
                except UnicodeDecodeError:
                    lines.append(f"Binary files {shown} differ")
                    continue
                name = detail if mark == "R" else shown
                lines += [
                    line.rstrip("\n")
                    for line in difflib.unified_diff(
                        ta.splitlines(keepends=True),
                        tb.splitlines(keepends=True),
                        f"a/{shown}",
                        f"b/{name}",
                    )
                ]
        return lines

    for line in _with_past(cfg, args.as_client, run):
        print(line)
    return 0


async def _range_trees(
    past: Any, path: str, since: int | str, until: int | str | None, now_ns: int
) -> tuple[int, int, dict[str, Any], dict[str, Any], dict[int, Any]]:
    """The trees at both ends of a range and the histories of every object in them."""
    lo = await _moment(past, path, since, now_ns)
    hi = now_ns if until is None else await _moment(past, path, until, now_ns)
    before, after = await past.tree(path, lo), await past.tree(path, hi)
    histories = {}
    for v in [*before.values(), *after.values()]:
        if v.oid not in histories:
            histories[v.oid] = (await past.history(v.oid)).versions
    return lo, hi, before, after, histories


def cmd_changes(args: argparse.Namespace, cfg: ClusterConfig) -> int:
    from bftfs.fs.pastplan import changes_in

    now_ns = time.time_ns()
    path = fs_path(args.path, _mountpoints(cfg))
    since = parse_when(args.since, now_ns)
    until = None if args.until is None else parse_when(args.until, now_ns)
    names = _client_names(cfg)
    wanted = _client_ids(cfg)

    async def run(past: Any) -> list[Any]:
        lo, hi, before, after, histories = await _range_trees(past, path, since, until, now_ns)
        return changes_in(before, after, histories, since_ns=lo, until_ns=hi)

    rows = [
        {
            "time": _iso(c.time_ns),
            "time_ns": c.time_ns,
            "client": _author(c.client, names),
            "path": c.path or ".",
            "changes": list(c.changes),
        }
        for c in _with_past(cfg, args.as_client, run)
        if args.client is None or c.client == wanted.get(args.client, -1)
    ]
    if args.json:
        json.dump({"path": path, "changes": rows}, sys.stdout, indent=1)
        print()
        return 0
    for r in rows:
        print(f"{r['time']:25}  {r['client']:10}  {r['path']}  {', '.join(r['changes'])}")
    return 0


def cmd_revert(args: argparse.Namespace, cfg: ClusterConfig) -> int:
    import shutil

    from bftfs.fs.pastplan import plan_revert

    now_ns = time.time_ns()
    mounts = _mountpoints(cfg)
    path = fs_path(args.path, mounts)
    root = _local_target(args.path, mounts, None)
    since = parse_when(args.since, now_ns)
    client = _client_ids(cfg).get(args.client)
    if client is None:
        raise ValueError(f"no client {args.client!r} in the configuration")

    async def run(past: Any) -> tuple[Any, int]:
        lo, hi, before, after, histories = await _range_trees(past, path, since, None, now_ns)
        plan = plan_revert(client, before, after, histories, since_ns=lo, until_ns=hi)
        if args.dry_run:
            return plan, lo
        for a in plan.actions:
            target = root / a.path if a.path else root
            if a.kind == "remove":
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target, ignore_errors=True)
                elif target.exists() or target.is_symlink():
                    target.unlink()
            elif a.kind == "move":
                dest = root / a.to
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.rename(target, dest)
            elif a.kind == "mkdir":
                assert a.version is not None and a.version.state is not None
                target.mkdir(parents=True, exist_ok=True)
                _set_attrs(target, a.version.state)
            else:
                await _restore(past, {"": a.version}, target, False)
        return plan, lo

    plan, lo = _with_past(cfg, args.as_client, run)
    verb = "would" if args.dry_run else "did"
    for a in plan.actions:
        what = f"{a.path} -> {a.to}" if a.kind == "move" else a.path
        print(f"{verb} {a.kind} {what}")
    for rel, why in plan.conflicts:
        print(f"conflict: {rel or '.'}: {why} (left as it is)")
    print(
        f"{args.client}'s changes under {path} since {_iso(lo)}: {len(plan.actions)} steps, "
        f"{len(plan.conflicts)} conflicts"
    )
    return 0


def cmd_snapshot(args: argparse.Namespace, cfg: ClusterConfig) -> int:
    from bftfs.fsobjects import valid_snapshot_name

    now_ns = time.time_ns()
    if args.action in ("create", "delete") and not valid_snapshot_name(args.name):
        raise WhenError(
            f"{args.name!r}: snapshot names are 1-64 printable characters without "
            "spaces or /, not starting with - or @, not 'now'"
        )

    async def run(past: Any) -> Any:
        if args.action == "create":
            at = (
                now_ns if args.at is None else await _moment(past, "/", parse_when(args.at), now_ns)
            )
            await past.snapshot_create(args.name, at)
            return at
        if args.action == "delete":
            await past.snapshot_delete(args.name)
            return None
        return await past.snapshots()

    got = _with_past(cfg, args.as_client, run)
    if args.action == "create":
        print(f"snapshot {args.name} at {_iso(got)}: retention keeps what was current then")
    elif args.action == "delete":
        print(f"snapshot {args.name} deleted: retention may reclaim what only it kept")
    elif getattr(args, "json", False):
        json.dump({k: {"time_ns": v, "time": _iso(v)} for k, v in got.items()}, sys.stdout)
        print()
    else:
        for name, t in sorted(got.items(), key=lambda kv: kv[1]):
            print(f"{_iso(t):25}  {name}")
    return 0


def add_commands(sub: Any, with_cluster: Any) -> None:
    """Register ``log`` and ``cat`` (``with_cluster`` adds ``--dir``/``--config``)."""
    sp = sub.add_parser("log", help="the versions of a file or directory, newest first")
    sp.add_argument("path", help="a path under a mount, or fs:/path inside the file system")
    with_cluster(sp)
    sp.add_argument("--as", dest="as_client", default="client0", help="connect as (client0)")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.add_argument("--since", metavar="WHEN", help="only versions at or after WHEN")
    sp.add_argument("--until", metavar="WHEN", help="only versions at or before WHEN")
    sp.add_argument("--client", metavar="NAME", help="only versions this client wrote")
    sp.set_defaults(command="log")

    sp = sub.add_parser("cat", help="a file's content as it was at a moment")
    sp.add_argument("path", help="a path under a mount, or fs:/path inside the file system")
    sp.add_argument("--at", metavar="WHEN", required=True, help="a time, -10m, or a version id")
    with_cluster(sp)
    sp.add_argument("--as", dest="as_client", default="client0", help="connect as (client0)")
    sp.set_defaults(command="cat")

    sp = sub.add_parser("restore", help="bring a file or tree back as it was (new versions)")
    sp.add_argument("path", help="a path under a mount, or fs:/path inside the file system")
    sp.add_argument("--at", metavar="WHEN", required=True, help="a time, -10m, or a version id")
    sp.add_argument("--to", metavar="DEST", help="write here instead of PATH itself")
    sp.add_argument("--delete", action="store_true", help="remove entries that did not exist then")
    with_cluster(sp)
    sp.add_argument("--as", dest="as_client", default="client0", help="connect as (client0)")
    sp.set_defaults(command="restore")

    sp = sub.add_parser("diff", help="what changed under a path between two moments")
    sp.add_argument("path", help="a path under a mount, or fs:/path inside the file system")
    sp.add_argument("--from", dest="since", metavar="WHEN", required=True, help="the start")
    sp.add_argument("--to", metavar="WHEN", help="the end (default: now)")
    sp.add_argument("-p", "--patch", action="store_true", help="unified diffs of text files")
    with_cluster(sp)
    sp.add_argument("--as", dest="as_client", default="client0", help="connect as (client0)")
    sp.set_defaults(command="diff")

    sp = sub.add_parser("changes", help="every version under a path in a time range")
    sp.add_argument("path", help="a path under a mount, or fs:/path inside the file system")
    sp.add_argument("--since", metavar="WHEN", required=True, help="the start")
    sp.add_argument("--until", metavar="WHEN", help="the end (default: now)")
    sp.add_argument("--client", metavar="NAME", help="only what this client changed")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    with_cluster(sp)
    sp.add_argument("--as", dest="as_client", default="client0", help="connect as (client0)")
    sp.set_defaults(command="changes")

    sp = sub.add_parser("revert", help="undo one client's changes since a moment")
    sp.add_argument("path", help="a directory under a mount (what to look under)")
    sp.add_argument("--client", metavar="NAME", required=True, help="whose changes")
    sp.add_argument("--since", metavar="WHEN", required=True, help="since when")
    sp.add_argument("--dry-run", action="store_true", help="say what would be done")
    with_cluster(sp)
    sp.add_argument("--as", dest="as_client", default="client0", help="connect as (client0)")
    sp.set_defaults(command="revert")

    sp = sub.add_parser("snapshot", help="named moments that retention never reclaims")
    snap = sp.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (
        ("create", "pin the tree as it is now (or --at WHEN)"),
        ("delete", "let retention reclaim what only this snapshot kept"),
        ("list", "the snapshots, oldest first"),
    ):
        ap = snap.add_parser(action, help=text)
        if action != "list":
            ap.add_argument("name")
        else:
            ap.add_argument("--json", action="store_true", help="machine-readable output")
        if action == "create":
            ap.add_argument("--at", metavar="WHEN", help="a past moment (default: now)")
        with_cluster(ap)
        ap.add_argument("--as", dest="as_client", default="client0", help="connect as")
        ap.set_defaults(command="snapshot")
