"""Restoring the past as new versions: ``bftfs restore`` (a file or tree as it was) and
``bftfs revert`` (undo one client's changes since a moment).  The history stays as it
is; what they write are new versions."""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import stat as st
import sys
import time
from pathlib import Path
from typing import Any

import trio

from bftfs.cli.common import EXIT_WRITE, QuietError
from bftfs.cli.progress import Update, no_progress, progress
from bftfs.cli.when import (
    FS_PREFIX,
    client_ids,
    exact_time,
    first_error,
    fs_path,
    iso_time,
    mountpoints_of,
    parse_when,
    range_trees,
    resolve_moment,
    run_within,
    with_past,
)
from bftfs.config import ClusterConfig


def patient(past: Any) -> Any:
    """``past`` with each longer wait of its history reads for slow nodes told on
    standard error (a loaded cluster: the command is waiting, not stuck); returned."""

    def tell(msg: str) -> None:
        print(f"bftfs: {msg}", file=sys.stderr, flush=True)

    past.reader.on_wait = tell
    return past


def _local_target(arg: str, mountpoints: list[Path], to: str | None) -> Path:
    """Where ``restore`` writes: ``--to``, or PATH itself when it is under a mount."""
    if to is not None:
        return Path(to)
    absolute = Path(os.path.abspath(arg))
    if any(absolute == mp or Path(os.path.abspath(mp)) in absolute.parents for mp in mountpoints):
        return absolute
    raise ValueError(f"{arg} is not under a mount of this cluster: say where with --to DEST")


#: Files :func:`_restore` reads and writes at once: each write is a few FUSE requests the
#: mount turns into Q/U updates, so one at a time leaves the cluster waiting on round trips.
PARALLEL = 16


async def _restore(
    past: Any, tree: dict[str, Any], dest: Path, delete: bool, update: Update = no_progress
) -> dict[str, int]:
    """Write ``tree`` (from :meth:`Past.tree`) at ``dest``: new versions, history untouched.

    Files get their content, mode and times (owner too when run as root); directories are
    created first (parents first), then :data:`PARALLEL` files are read from the past and
    written at a time, then directories get their mode and times (after their entries);
    symbolic links are made again.  Entries of ``dest`` that did not exist then stay,
    unless ``delete``.  ``update(done, total)`` follows the files.
    """
    counts = {"files": 0, "dirs": 0, "links": 0, "bytes": 0, "deleted": 0, "skipped": 0}
    dirs: list[tuple[Path, dict[str, Any]]] = []
    leaves: list[tuple[Path, Any]] = []
    for rel, v in tree.items():
        target = dest / rel if rel else dest
        if v.state.get("k") == "d":
            try:
                _make_dir(target, v.state, delete, counts)
            except OSError as e:
                raise WriteFailed([f"directory {target}: {_why(e)}"], 0, len(tree)) from None
            dirs.append((target, v.state))
        else:
            leaves.append((target, v))
    limiter = trio.CapacityLimiter(PARALLEL)
    done = [0]
    failed: list[str] = []

    async def one(target: Path, v: Any) -> None:
        async with limiter:
            mode = int(v.state["mode"])
            data = await past.content(v) if st.S_ISREG(mode) else None
            try:
                kind = await trio.to_thread.run_sync(_put, target, v.state, data)
            except OSError as e:
                failed.append(f"{target}: {_why(e)}")
                return
        counts[kind] += 1
        counts["bytes"] += len(data or b"") if kind == "files" else 0
        done[0] += 1
        update(done[0], len(leaves))

    async with trio.open_nursery() as nursery:
        for target, v in leaves:
            nursery.start_soon(one, target, v)
    if failed:
        raise WriteFailed(failed, done[0], len(leaves))
    for target, s in reversed(dirs):
        _set_attrs(target, s)
    return counts


class WriteFailed(QuietError):
    """Some writes of a ``restore`` or ``revert`` failed (an ``OSError`` through the mount:
    EIO from a soft mount under load, a full disk, a quota): each named, with how far the
    command got, so that the user sees what is missing rather than a traceback."""

    def __init__(self, failures: list[str], done: int, total: int, what: str = "writes") -> None:
        more = len(failures) - 3
        shown = "; ".join(failures[:3]) + (f"; and {more} more" if more > 0 else "")
        left = total - done - len(failures)
        super().__init__(
            f"{len(failures)} of {total} {what} failed ({shown}); {done} done"
            + (f", {left} not tried" if left > 0 else "")
            + "; what was written stays",
            EXIT_WRITE,
        )
        self.failures = failures


def _why(e: OSError) -> str:
    """An ``OSError`` as a user reads it: the system's words, not the exception's repr."""
    return e.strerror or str(e)


def _make_dir(target: Path, s: dict[str, Any], delete: bool, counts: dict[str, int]) -> None:
    """A directory of the tree at ``target`` (and, if ``delete``, without what it did not
    hold then); its attributes come after its entries."""
    import shutil

    target.mkdir(parents=True, exist_ok=True)
    counts["dirs"] += 1
    if not delete:
        return
    wanted = {name.decode(errors="surrogateescape") for name in all_entries_of(s)}
    for extra in sorted(set(os.listdir(target)) - wanted):
        p = target / extra
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
        counts["deleted"] += 1


def _put(target: Path, s: dict[str, Any], data: bytes | None) -> str:
    """Write one file (``data``) or symbolic link of the tree at ``target``, with its mode,
    times and (as root) owner; which count it adds to (``files``, ``links``, ``skipped``).

    Every FUSE request here is a round trip through the cluster, so it asks only what it
    must: the file is created with its mode (a chmod only where the umask took bits
    away), chown only as root and only if the owner differs, one utime after the close
    (the close flushes the written bytes, which would set the times again).  An entry in
    the way that is a link, or anything but a directory where a link or a special file
    was, is replaced; a file is never written through a link.
    """
    mode = int(s["mode"])
    try:
        old = os.lstat(target)
    except FileNotFoundError:
        old = None
    if old is not None and (
        st.S_ISLNK(old.st_mode)
        or (not st.S_ISDIR(old.st_mode) and (st.S_ISLNK(mode) or not st.S_ISREG(mode)))
    ):
        target.unlink()
    if st.S_ISLNK(mode):
        os.symlink(bytes(s.get("t") or b""), target)
        return "links"
    if not st.S_ISREG(mode) or data is None:
        return "skipped"  # devices, fifos, sockets: not brought back
    perm = mode & 0o7777
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    try:
        fd = os.open(target, flags, perm)
    except FileNotFoundError:  # one file of a revert, whose directory is gone too
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, flags, perm)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        # A link the lstat above did not see (another client made it; this mount's
        # cache still said file): replace it too.
        target.unlink()
        fd = os.open(target, flags, perm)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        now = os.fstat(fd)
        chowned = False
        if os.geteuid() == 0 and (now.st_uid, now.st_gid) != (int(s["uid"]), int(s["gid"])):
            with contextlib.suppress(OSError):
                os.fchown(fd, int(s["uid"]), int(s["gid"]))
                chowned = True  # and the kernel may have cleared set-id bits
        if chowned or st.S_IMODE(now.st_mode) != perm:
            os.fchmod(fd, perm)
    finally:
        os.close(fd)
    os.utime(target, ns=(int(s["at"]), int(s["mt"])))
    return "files"


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


def _cluster_target(cfg: ClusterConfig, path: str, arg: str, to: str | None) -> str | None:
    """The path inside the file system ``restore`` writes to, or None where it writes to
    this machine's files: ``--to fs:/DEST``, ``--to`` a path under a mount of this
    cluster, or (no ``--to``) PATH itself (its path in the file system, ``path``).
    Another cluster's mount is written through the mount, as any directory."""
    if to is None and arg.startswith(FS_PREFIX):
        return path
    if to is None:
        _local_target(arg, mountpoints_of(cfg), None)  # PATH under a mount, or refused
        to = arg
    if to.startswith(FS_PREFIX):
        return fs_path(to, [])
    absolute = Path(os.path.abspath(to))
    for mp in mountpoints_of(cfg):
        mp = Path(os.path.abspath(mp))
        if absolute == mp or mp in absolute.parents:
            return "/" + str(absolute.relative_to(mp)).removeprefix(".")
    return None


def with_session(cfg: ClusterConfig, client: str, fn: Any) -> Any:
    """Run ``await fn(session, past)`` on a file system of the cluster opened as a mount
    opens it (create write-behind, leases, directory write-back: ``fs/pastrestore.py``
    writes through them); its result.  Everything held is sent and every lease given
    back before this returns."""
    from bftfs.cli.reach import require_reachable
    from bftfs.fs.session import open_session
    from bftfs.fuse.options import DEFAULT_COMMIT, DEFAULT_LEASE

    require_reachable(cfg)
    return run_within(
        lambda: open_session(
            cfg,
            client,
            uid=os.getuid(),
            gid=os.getgid(),
            write_behind=True,
            lease_term=DEFAULT_LEASE,
            commit=DEFAULT_COMMIT,
        ),
        lambda session: _logged(session, session.past(cfg), fn),
    )


async def _logged(session: Any, past: Any, fn: Any) -> Any:
    """``await fn(session, past)``, what its history reads and its writes cost logged
    (INFO: the Q/U calls by method)."""
    try:
        return await fn(session, past)
    finally:
        log = logging.getLogger("bftfs.cli.when")
        log.info("%s", past.statistics())
        methods = getattr(getattr(session.fs, "meta", None), "methods", None)
        if methods:
            log.info("writes: %s", ", ".join(f"{k} {v}" for k, v in sorted(methods.items())))


def cmd_restore(args: argparse.Namespace, cfg: ClusterConfig) -> int:
    now_ns = time.time_ns()
    mounts = mountpoints_of(cfg)
    path = fs_path(args.path, mounts)
    when = parse_when(args.at, now_ns)
    into = _cluster_target(cfg, path, args.path, args.to)
    if into is None:
        dest = _local_target(args.path, mounts, args.to)
        moment, counts = with_past(cfg, args.as_client, _to_local(path, when, now_ns, dest, args))
        shown = str(dest)
    else:
        got = with_session(cfg, args.as_client, _into_cluster(path, when, now_ns, into, args))
        moment, counts = got
        shown = args.to or args.path
    print(
        f"restored {path} as it was at {iso_time(moment)} ({exact_time(moment)}) into {shown}: "
        f"{counts['files']} files "
        f"({counts['bytes']} bytes), {counts['dirs']} directories, {counts['links']} links"
        + (f", {counts['unchanged']} files unchanged" if counts.get("unchanged") else "")
        + (f", {counts['deleted']} later entries deleted" if counts["deleted"] else "")
        + (f", {counts['skipped']} special files skipped" if counts["skipped"] else "")
    )
    return 0


def _to_local(path: str, when: Any, now_ns: int, dest: Path, args: argparse.Namespace) -> Any:
    """``restore``'s work where it writes to this machine's files (``--to`` outside the
    cluster's mounts)."""

    async def run(past: Any) -> tuple[int, dict[str, int]]:
        moment = await resolve_moment(patient(past), path, when, now_ns)
        with progress(f"reading {path} as of {iso_time(moment)}") as update:
            (tree,) = await past.trees(path, [moment], progress=update)
        with progress(f"writing {dest}") as update:
            return moment, await _restore(past, tree, dest, args.delete, update)

    return run


def _into_cluster(path: str, when: Any, now_ns: int, into: str, args: argparse.Namespace) -> Any:
    """``restore``'s work where it writes into the file system (``fs/pastrestore.py``):
    over PATH itself, the tree as it is now comes with the same walk, and what is
    unchanged is left."""
    from bftfs.fs.errors import FsError
    from bftfs.fs.past import NotThen
    from bftfs.fs.pastrestore import TreeWriter

    async def run(session: Any, past: Any) -> tuple[int, dict[str, int]]:
        moment = await resolve_moment(patient(past), path, when, now_ns)
        moments = [moment]
        if into == path:
            try:
                await past.resolve(path, now_ns)
                moments.append(now_ns)
            except NotThen:
                pass  # nothing there now: all of it is written
        with progress(f"reading {path} as of {iso_time(moment)}") as update:
            trees = await past.trees(path, moments, progress=update)
        writer = TreeWriter(
            session.fs, past.content, uid=os.getuid(), gid=os.getgid(), as_root=os.geteuid() == 0
        )
        with progress(f"writing {into}") as update:
            try:
                counts = await writer.write(
                    trees[0],
                    into,
                    delete=args.delete,
                    current=trees[1] if len(trees) > 1 else None,
                    update=update,
                )
            except* FsError as group:
                why = first_error(group)
                raise QuietError(
                    f"restore of {path} into {into} stopped: {why}; what was written stays "
                    f"(new versions), the rest is not: the same command with --at "
                    f"{exact_time(moment)} writes it",
                    EXIT_WRITE,
                ) from None
        return moment, counts.as_dict()

    return run


def cmd_revert(args: argparse.Namespace, cfg: ClusterConfig) -> int:
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
        with progress(f"reading the history of {path}") as update:
            got = await range_trees(patient(past), path, since, None, now_ns, update)
        lo, hi, before, after, histories = got
        plan = plan_revert(client, before, after, histories, since_ns=lo, until_ns=hi)
        if args.dry_run:
            return plan, lo
        with progress(f"reverting {args.client}'s changes") as update:
            await _carry_out(past, root, plan.actions, update)
        return plan, lo

    plan, lo = with_past(cfg, args.as_client, run)
    verb = "would" if args.dry_run else "did"
    for a in plan.actions:
        what = _step_paths(a)
        print(f"{verb} {a.kind} {what}")
    for rel, why in plan.conflicts:
        print(f"conflict: {rel or '.'}: {why} (left as it is)")
    print(
        f"{args.client}'s changes under {path} since {iso_time(lo)} ({exact_time(lo)}): "
        f"{len(plan.actions)} steps, {len(plan.conflicts)} conflicts"
    )
    if args.dry_run and plan.actions:
        # An age or a word is counted from each run's own now: the real run should cover
        # the window this one showed.
        print(f"to revert this very window: the same command with --since {exact_time(lo)}")
    return 0


def _step_paths(a: Any) -> str:
    """The path a revert step acts on, as printed (a move: ``from -> to``)."""
    return f"{a.path} -> {a.to}" if a.kind == "move" else a.path


async def _carry_out(past: Any, root: Path, actions: list[Any], update: Update) -> None:
    """The steps of a revert plan in order, except that a run of ``restore`` steps (the
    plan puts them last, after the removals, directories and moves they may need) goes
    :data:`PARALLEL` at a time: each writes a different path (an object's path at the
    start), and one after the other each waited on its own round trips.

    A step that fails stops the revert after the steps running beside it (later steps
    may need it: a move before the restores into its place), with :class:`WriteFailed`
    naming every failed step."""
    done = [0]
    failed: list[str] = []

    async def one(a: Any, limiter: trio.CapacityLimiter | None = None) -> None:
        async with limiter or contextlib.nullcontext():
            try:
                await _act(past, root, a)
            except (OSError, WriteFailed) as e:
                why = _why(e) if isinstance(e, OSError) else e
                failed.append(f"{a.kind} {_step_paths(a) or '.'}: {why}")
                return
        done[0] += 1
        update(done[0], len(actions))

    i = 0
    while i < len(actions) and not failed:
        j = i
        while j < len(actions) and actions[j].kind == "restore":
            j += 1
        if j - i < 2:
            await one(actions[i])
            i += 1
            continue
        limiter = trio.CapacityLimiter(PARALLEL)
        async with trio.open_nursery() as nursery:
            for a in actions[i:j]:
                nursery.start_soon(one, a, limiter)
        i = j
    if failed:
        raise WriteFailed(failed, done[0], len(actions), "steps")


async def _act(past: Any, root: Path, a: Any) -> None:
    """Carry out one step of a revert plan (:class:`bftfs.fs.pastplan.Action`) under
    ``root``."""
    import shutil

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
