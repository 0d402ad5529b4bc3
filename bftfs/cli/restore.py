"""Restoring the past as new versions: ``bftfs restore`` (a file or tree as it was) and
``bftfs revert`` (undo one client's changes since a moment).  The history stays as it
is; what they write are new versions."""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from pathlib import Path
from typing import Any

import trio

from bftfs.cli.when import (
    client_ids,
    fs_path,
    iso_time,
    mountpoints_of,
    parse_when,
    range_trees,
    resolve_moment,
    with_past,
)
from bftfs.config import ClusterConfig


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
    mounts = mountpoints_of(cfg)
    path = fs_path(args.path, mounts)
    dest = _local_target(args.path, mounts, args.to)
    when = parse_when(args.at, now_ns)

    async def run(past: Any) -> tuple[int, dict[str, int]]:
        moment = await resolve_moment(past, path, when, now_ns)
        tree = await past.tree(path, moment)
        return moment, await _restore(past, tree, dest, args.delete)

    moment, counts = with_past(cfg, args.as_client, run)
    print(
        f"restored {path} as it was at {iso_time(moment)} into {dest}: {counts['files']} files "
        f"({counts['bytes']} bytes), {counts['dirs']} directories, {counts['links']} links"
        + (f", {counts['deleted']} later entries deleted" if counts["deleted"] else "")
        + (f", {counts['skipped']} special files skipped" if counts["skipped"] else "")
    )
    return 0


def cmd_revert(args: argparse.Namespace, cfg: ClusterConfig) -> int:
    import shutil

    from bftfs.fs.pastplan import plan_revert

    now_ns = time.time_ns()
    mounts = mountpoints_of(cfg)
    path = fs_path(args.path, mounts)
    root = _local_target(args.path, mounts, None)
    since = parse_when(args.since, now_ns)
    client = client_ids(cfg).get(args.client)
    if client is None:
        raise ValueError(f"no client {args.client!r} in the configuration")

    async def run(past: Any) -> tuple[Any, int]:
        lo, hi, before, after, histories = await range_trees(past, path, since, None, now_ns)
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

    plan, lo = with_past(cfg, args.as_client, run)
    verb = "would" if args.dry_run else "did"
    for a in plan.actions:
        what = f"{a.path} -> {a.to}" if a.kind == "move" else a.path
        print(f"{verb} {a.kind} {what}")
    for rel, why in plan.conflicts:
        print(f"conflict: {rel or '.'}: {why} (left as it is)")
    print(
        f"{args.client}'s changes under {path} since {iso_time(lo)}: {len(plan.actions)} steps, "
        f"{len(plan.conflicts)} conflicts"
    )
    return 0
