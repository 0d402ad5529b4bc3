"""``bftfs mount`` and ``bftfs umount``, and the mount options ``bftfs up`` shares."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, Literal

from bftfs import local as localmod
from bftfs.cli.common import (
    EXIT_BUSY,
    EXIT_MOUNT,
    QuietError,
    cluster_of,
    waiting_for_daemon,
    with_cluster,
    with_identity,
)
from bftfs.cli.when import checked_when
from bftfs.config import ClusterConfig, ConfigError
from bftfs.fuse.options import DEFAULT_ENTRY_TIMEOUT, DEFAULT_TIMEOUT, MountOptions, OptionError
from bftfs.logsetup import setup_logging

log = logging.getLogger(__name__)


def _mount_options(args: argparse.Namespace, cfg: ClusterConfig | None = None) -> MountOptions:
    """The mount options of ``--as``, ``--attr-timeout``, ``--entry-timeout`` and
    ``--metrics-port`` (else the configuration's ``[metrics] mount_port``), with ``-o``
    applied over them."""
    port = getattr(args, "metrics_port", None)
    addr = getattr(args, "metrics_addr", None)
    if port is None and cfg is not None and cfg.metrics.mount_port is not None:
        port = cfg.metrics.mount_port
    base = MountOptions(
        client=args.as_client,
        attr_timeout=args.attr_timeout,
        entry_timeout=args.entry_timeout,
        metrics_port=port,
        metrics_addr=addr or (cfg.metrics.address if cfg is not None else "127.0.0.1"),
    )
    try:
        return base.with_options(getattr(args, "options", None))
    except OptionError as e:
        raise QuietError(str(e), 2) from None


def mount_daemon(
    cfg: ClusterConfig,
    config_path: Path,
    mnt: Path,
    args: argparse.Namespace,
    *,
    at_ns: int | None = None,
) -> int:
    """Start a background mount daemon (``args``: the client, cache timeouts, ``-o`` and,
    for ``bftfs mount``, logging options)."""
    mountmod = mount_module()
    options = _mount_options(args, cfg)
    _check_client_key(cfg, options.client)
    try:
        return mountmod.mount_background(
            cfg,
            mnt,
            options,
            config_path=config_path,
            log_path=getattr(args, "log", None),
            debug_modules=getattr(args, "debug_modules", None) or (),
            debug=bool(getattr(args, "debug", False)),
            at_ns=at_ns,
        )
    except mountmod.MountError as e:  # re-exported from bftfs.fuse.control
        raise QuietError(str(e), EXIT_MOUNT) from None


def _check_client_key(cfg: ClusterConfig, client: str) -> None:
    """Load the client's key (and a sealed cluster's volume key) here, before a daemon is
    forked: a missing, unreadable or wrong key is a key error (exit 5, KeyFileError), not
    a failed mount whose cause is in a log."""
    from bftfs.connect import client_identity
    from bftfs.crypto import VolumeKey

    client_identity(cfg, client)
    if cfg.volume_key_id is not None:
        VolumeKey.load(cfg.volume_key_path, cfg.volume_key_id)


def mount_module() -> Any:
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


def cmd_mount(args: argparse.Namespace) -> int:
    mountmod = mount_module()

    cfg, path = cluster_of(args)
    options = _mount_options(args, cfg)
    cfg.client(options.client)  # a clear error for an unknown client, before forking
    _check_client_key(cfg, options.client)
    at_ns = _mount_moment(args)
    if args.fg:
        setup_logging(log_file=args.log, debug_modules=args.debug_modules)
        try:
            mountmod.run_foreground(
                cfg, args.mountpoint, options, config_path=path, debug=args.debug, at_ns=at_ns
            )
        except (RuntimeError, OSError, mountmod.MountError) as e:  # refused (busy, not empty...)
            log.exception("mounting %s failed", args.mountpoint)
            raise QuietError(f"mounting {args.mountpoint} failed: {e}", EXIT_MOUNT) from None
        return 0
    mount_daemon(cfg, path, args.mountpoint, args, at_ns=at_ns)
    when = "" if at_ns is None else f", read-only, as it was at {args.at}"
    print(f"mounted {args.mountpoint.resolve()} as {options.client}{when}")
    return 0


def _mount_moment(args: argparse.Namespace) -> int | None:
    """``bftfs mount --at WHEN``: the moment in ns (a time or an age; a version id names
    one object's version, so it needs a path: ``bftfs log`` shows its time)."""
    if getattr(args, "at", None) is None:
        return None
    from bftfs.cli.when import WhenError, moment_of, parse_when

    try:
        when = parse_when(args.at)
        if isinstance(when, str):
            cfg, _ = cluster_of(args)
            return moment_of(cfg, _mount_options(args).client, when)
    except WhenError as e:
        raise QuietError(str(e), 2) from None
    return when


def cmd_umount(args: argparse.Namespace) -> int:
    from bftfs import proc
    from bftfs.fuse import control as mountmod

    target = Path(os.path.abspath(args.mountpoint))  # no resolve(): it stats a dead mount
    pid = None
    cfg = None
    with contextlib.suppress(localmod.ClusterError, ConfigError):
        cfg, _ = cluster_of(args)
        pid = next((p for p, m in mountmod.known_mounts(cfg) if m == target), None)
    if pid is None:  # mounted with another --config than this command's (or none found)
        pid = mountmod.daemon_serving(target)
    if not mountmod.is_mounted(target) and pid is None:
        raise QuietError(f"{target} is not mounted", EXIT_MOUNT)
    dead = proc.is_dead_mount(target) or (pid is not None and not proc.process_alive(pid))
    how: Literal["clean", "lazy", "force"] = (
        "force" if args.force else "lazy" if args.lazy else "clean"
    )
    try:
        killed = mountmod.unmount(
            target, pid=pid if not dead else None, notice=waiting_for_daemon, how=how
        )
    except mountmod.MountBusy:
        raise QuietError(busy_message(target), EXIT_BUSY) from None
    except mountmod.MountError as e:
        raise QuietError(str(e), EXIT_MOUNT) from None
    if killed:
        raise QuietError(
            f"unmounted {target}, but its mount daemon (pid {pid}) had to be killed: it did"
            f" nothing for {mountmod.DAEMON_IDLE_WAIT:g} s; what it had not sent to the nodes"
            " yet is lost (its log names it)",
            EXIT_MOUNT,
        )
    if how == "lazy" and pid is not None and not dead and proc.process_alive(pid):
        print(
            f"detached {target}: its mount daemon (pid {pid}) serves what is still open in"
            " it until the last of it closes, then sends what it holds back and exits"
        )
        return 0
    if cfg is not None:  # the book-keeping of a daemon that could not remove its own
        for stale in (mountmod.pid_file(cfg, target), mountmod.status_file(cfg, target)):
            with contextlib.suppress(OSError):
                stale.unlink()
        lost = lost_at_unmount(cfg, target)
        if lost is not None:
            raise QuietError(lost, EXIT_MOUNT)
    print(f"unmounted {target}" + (" (its mount daemon had died)" if dead else ""))
    return 0


def unmount_all(cfg: ClusterConfig, *, force: bool) -> tuple[list[Path], bool]:
    """``bftfs down``'s first step: unmount the cluster's mounts while the nodes are up
    (they send what they hold back); the busy ones (left mounted, unless ``force``), and
    whether a daemon gave up sending what it held back (said on stderr)."""
    from bftfs.fuse import control as mountmod

    busy, lost_any = [], False
    for pid, mnt in mountmod.known_mounts(cfg):
        try:
            killed = mountmod.unmount(
                mnt, pid=pid, notice=waiting_for_daemon, how="force" if force else "clean"
            )
        except mountmod.MountBusy:
            busy.append(mnt)
            continue
        except mountmod.MountError as e:
            print(f"bftfs down: {e}", file=sys.stderr)
            continue
        lost = lost_at_unmount(cfg, mnt)
        if lost is not None:
            print(f"bftfs down: {lost}", file=sys.stderr)
            lost_any = True
            continue
        gone = " (its daemon killed: what it held back is lost)" if killed else ""
        print(f"unmounted {mnt}{gone}")
    return busy, lost_any


def lost_at_unmount(cfg: ClusterConfig, target: Path) -> str | None:
    """What an unmount says when the daemon that served ``target`` gave up sending what it
    held back (``fuse/control.py`` ``take_lost``: said once), or None: nothing was lost."""
    from bftfs.fuse import control as mountmod

    lost = mountmod.take_lost(cfg, target)
    if not lost:
        return None
    return (
        f"unmounted {target}, but {lost} change(s) its mount daemon held back (answered"
        " creates, removals, renames, writes of closed files) could not be sent: no quorum"
        " of nodes took any of them for a minute, and they are lost;"
        f" {mountmod.log_file(cfg, target)} names them"
    )


def busy_message(target: Path) -> str:
    """What a refused unmount says (umount(8)'s "target is busy", and what to do)."""
    return (
        f"umount: {target}: target is busy: a process has a file or directory open in it,"
        f" or its working directory there (`fuser -vm {target}` lists them), or an"
        " operation in it waits for the nodes. Nothing was unmounted. Close them and try"
        " again; or `bftfs umount --lazy` (detached now, the open files served until they"
        " close) or `--force` (what they have not written yet is lost)"
    )


def with_client(sp: argparse.ArgumentParser) -> None:
    """The options of a mount: the client it acts as, the kernel's cache timeouts, ``-o``."""
    with_identity(sp, help="the client identity to mount as (default client0)")
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


def add_mount(sub: Any) -> None:
    """``bftfs mount MOUNTPOINT``."""
    sp = sub.add_parser("mount", help="mount the file system of a cluster on a directory")
    sp.add_argument("mountpoint", type=Path)
    with_cluster(sp)
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
        type=checked_when,
        help="mount the tree as it was then, read-only (a time or an age, as in bftfs log; "
        "not later than now)",
    )
    sp.set_defaults(func=cmd_mount)


def add_umount(sub: Any) -> None:
    """``bftfs umount MOUNTPOINT``."""
    sp = sub.add_parser(
        "umount",
        help="unmount (refused while busy, as umount(8); sends what the daemon holds back "
        "and waits for it to exit)",
    )
    sp.add_argument("mountpoint", type=Path)
    how = sp.add_mutually_exclusive_group()
    how.add_argument(
        "-l",
        "--lazy",
        action="store_true",
        help="detach now even if busy; the daemon serves the files still open until they "
        "close, then sends what it holds back and exits (not waited for)",
    )
    how.add_argument(
        "-f",
        "--force",
        action="store_true",
        help="detach even if busy and stop the daemon: what open files have not written "
        "yet is lost (for nodes that are gone)",
    )
    with_cluster(sp)
    sp.set_defaults(func=cmd_umount)
