"""The mount daemon: protocol clients, the file-system model and pyfuse3 in one trio loop.

``bftfs mount DIR`` starts this daemon in the background (``--fg`` keeps it in the
foreground) and returns once ``DIR`` is a mount point.  The daemon is one trio program:
pyfuse3's request loop plus the Q/U and PASIS clients whose network waits overlap while
the kernel's requests are served (``spec/pyfuse3-notes.md`` 3.3).

Mount book-keeping (pid files, unmounting) is in :mod:`bftfs.fuse.control`; the daemon
also rewrites a status file there (``_Book``: options, faults per node, EIO answers) for
``bftfs status``, and serves Prometheus metrics when asked (``-o metrics_port=``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from bftfs import WIRE_VERSION, __version__, proc
from bftfs.config import ClusterConfig
from bftfs.fs.files import DEFAULT_READAHEAD_MAX
from bftfs.fs.history import PastView, SnapshotBrowser
from bftfs.fs.locks import LockManager
from bftfs.fs.session import Session, open_past, open_session
from bftfs.fuse.callrecord import CallRecord
from bftfs.fuse.control import (
    PUBLISH_INTERVAL,
    MountError,
    daemon_command,
    is_mounted,
    log_file,
    log_tail,
    lost_file,
    pid_file,
    status_file,
)
from bftfs.fuse.mountmetrics import held_back, mount_metrics
from bftfs.fuse.operations import Operations
from bftfs.fuse.options import MountOptions
from bftfs.fuse.passthrough import Passthrough
from bftfs.gcpace import QUIET, FullCollections, take_over
from bftfs.metrics import MetricsServer
from bftfs.metrics import serve as serve_metrics

log = logging.getLogger(__name__)

#: The kernel's read-ahead for this mount, in KiB (its backing device's ``read_ahead_kb``).
#: The kernel's default, 128 KiB, makes each FUSE read of a sequential reader 128 KiB,
#: 1 600 requests for 200 MiB; with more the kernel asks up to ``max_pages`` (1 MiB, which
#: libfuse 3 negotiates) at once, an eighth of the requests (issue 34).  The daemon's own
#: read-ahead (8 MiB of blocks, fs/files/fetch.py) stays ahead of it.
READ_AHEAD_KB = 2048
#: Seconds a pyfuse3 worker that answered a request and finds none queued polls for the
#: next one before it waits on the event loop (our pyfuse3 patch 6, ``request_spin``): a
#: program's next system call usually comes within 10-20 us (``ls -l``, a build, PostMark),
#: and a wait cost a turn of the trio loop and a wake-up, about 40 us of the daemon's CPU
#: and 35 us of latency a request.  pyfuse3 stops polling for a while when polls keep
#: finding nothing, so an idle or sparse mount spends at most this a few times a second.
REQUEST_SPIN = 25e-6
#: The end of a mount goes on sending what it holds back until this many ``timeo`` pass
#: without progress (60 s at the default ``timeo=10``; ``fs/session.py``).
END_WAIT_TIMEOS = 6


def device_of(target: str) -> str | None:
    """``major:minor`` of the file system mounted at ``target`` (a resolved path), from
    ``/proc/self/mountinfo``: a ``stat`` of our own mount point, or resolving it, would
    wait for this daemon to answer it."""
    found = None
    with contextlib.suppress(OSError), open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and fields[4].replace("\\040", " ") == target:
                found = fields[2]  # the last mount on the point is the one on top
    return found


def set_read_ahead(target: str, kib: int = READ_AHEAD_KB) -> bool:
    """Raise the kernel's read-ahead of the mount at ``target`` (resolved before mounting)
    to ``kib``; whether it was set (it needs root: otherwise the kernel's default stays,
    and reads are smaller)."""
    dev = device_of(target)
    if dev is None:
        return False
    try:
        with open(f"/sys/class/bdi/{dev}/read_ahead_kb", "w", encoding="ascii") as f:
            f.write(f"{kib}\n")
    except OSError as e:
        log.debug("read-ahead of %s left at the kernel's default: %s", target, e)
        return False
    return True


def fuse_source(config_path: Path | None) -> str:
    """The ``fsname`` option: the source mount(8), df and ``/proc/self/mountinfo`` show is
    the configuration's path (resolved by the caller), which tells one cluster's mounts
    from another's (``fuse/control.py`` ``cluster_mountpoints``: the history commands);
    libfuse splits options at unescaped commas."""
    source = str(config_path) if config_path else "bftfs"
    return "fsname=" + source.replace("\\", "\\\\").replace(",", "\\,")


async def serve(
    config: ClusterConfig,
    mountpoint: Path,
    options: MountOptions,
    *,
    config_path: Path | None = None,
    debug: bool = False,
    at_ns: int | None = None,
) -> None:
    """Mount ``mountpoint`` and serve it until unmounted or terminated; with ``at_ns``, the
    tree as it was then, read-only (:func:`serve_past`)."""
    if at_ns is not None:
        await serve_past(config, mountpoint, options, at_ns, config_path=config_path, debug=debug)
        return
    # The file system answers attributes its own updates produced for as long as the
    # kernel caches attributes (``attr_timeout``), no longer.
    async with open_session(
        config,
        options.client,
        uid=os.getuid(),
        gid=os.getgid(),
        attr_ttl=options.attr_timeout,
        write_behind=options.write_behind and not options.read_only,
        lease_term=options.lease,
        commit=options.commit,
        publish=options.publish,
        readahead_max=min(DEFAULT_READAHEAD_MAX, options.readahead_max << 20),
        readahead_ceiling=options.readahead_max << 20,
        hard=options.hard,  # (a hard mount keeps what a call could not send: docs/fs.md)
        end_wait=END_WAIT_TIMEOS * options.timeo,
    ) as session:
        ops, locks = _live_operations(config, options, session)
        if options.passthrough:  # verified copies beside the status file (fuse/passthrough.py)
            copies = status_file(config, mountpoint).with_suffix(".passthrough")
            ops.use_passthrough(Passthrough(copies, options.passthrough_cache << 20))
        fuse_options = _fuse_options(config_path, options, debug, read_only=options.read_only)
        metrics = None
        if options.metrics_port is not None:
            metrics = serve_metrics(
                options.metrics_addr,
                options.metrics_port,
                functools.partial(mount_metrics, session, ops, options),
            )
        collections = _collections(ops.record)
        book = _Book(config, mountpoint, options, session, ops, metrics, collections.stats)
        resolved = str(await trio.Path(mountpoint).resolve())  # before mounting: after, asks us
        pyfuse3.init(ops, str(mountpoint), fuse_options)
        ops.attrs.absent.start()
        _spin_for_requests()
        log.info("mounted %s as %s (%s)", mountpoint, options.client, options.to_string())

        async def read_ahead() -> None:
            # After INIT's answer: the kernel sets the read-ahead to the smaller of ours and
            # what INIT negotiated (its default) then.
            await ops.initialised.wait()
            set_read_ahead(resolved)

        try:
            await _until_unmounted(book.run, locks.run, read_ahead, collections.run)
        finally:
            pyfuse3.close(unmount=True)
            with trio.move_on_after(5):
                await locks.release_all()
            if metrics is not None:
                metrics.close()
            book.remove()
            log.info("unmounted %s; requests served:\n%s", mountpoint, ops.statistics())
            log.info("%s", session.statistics())
            log.info("full garbage collections: %s", collections.stats)
            faults = session.faults()
            if faults:
                log.info("faults detected per node: %s", json.dumps(faults, sort_keys=True))
    if session.lost_at_end:  # the session's end gave up: said to `bftfs umount`
        with contextlib.suppress(OSError):
            lost_file(config, mountpoint).write_text(f"{session.lost_at_end}\n")


def _live_operations(
    config: ClusterConfig, options: MountOptions, session: Session
) -> tuple[Operations, LockManager]:
    """A live mount's handlers over the session's file system, and its lock manager."""
    # fcntl and flock locks every mount sees, under a lease this mount renews
    locks = LockManager(session.fs.meta, term=options.lock_lease)
    if session.endpoint is not None:  # waiters are woken by the nodes' pushes
        locks.listen(session.endpoint, list(config.node_ids))
    # the live tree, and the snapshots read-only under its hidden /.snapshots
    browser = SnapshotBrowser(session.fs, session.past(config), config.block_size)
    ops = Operations(
        browser,
        timeout=options.attr_timeout,
        entry_timeout=options.entry_timeout,
        read_only=options.read_only,
        timeo=options.timeo,
        hard=options.hard,
        soft=options.soft,
        locks=locks,
    )
    views = session.generations.views if session.generations is not None else None
    if views is not None:  # EACCES once b + 1 nodes refuse this client as revoked
        ops.revoked_in = lambda: views.revoked_in
    return ops, locks


def _fuse_options(
    config_path: Path | None, options: MountOptions, debug: bool, *, read_only: bool
) -> set[str]:
    """The options ``pyfuse3.init`` mounts with (default_permissions: the kernel checks
    modes)."""
    fuse_options = set(pyfuse3.default_options) | {"subtype=bftfs"}
    fuse_options.add(fuse_source(config_path))
    if options.allow_other:
        fuse_options.add("allow_other")
    fuse_options.update(options.kernel_flags)  # noatime, nosuid, ...: the kernel's
    if read_only:
        fuse_options.add("ro")
    if debug:
        fuse_options.add("debug")
    return fuse_options


async def _until_unmounted(*tasks: Callable[[], Awaitable[None]]) -> None:
    """pyfuse3's request loop, with ``tasks`` beside it, until the file system is unmounted
    or SIGTERM or SIGINT unmounts it; the tasks are then cancelled."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def on_signal() -> None:
                async for sig in signals:
                    log.info("%s received: unmounting", signal.Signals(sig).name)
                    pyfuse3.terminate()
                    return

            nursery.start_soon(on_signal)
            for task in tasks:
                nursery.start_soon(task)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()


async def serve_past(
    config: ClusterConfig,
    mountpoint: Path,
    options: MountOptions,
    at_ns: int,
    *,
    config_path: Path | None = None,
    debug: bool = False,
) -> None:
    """A time-travel mount (``bftfs mount DIR --at WHEN``): the tree as it was at
    ``at_ns`` (``fs/history/view.py``), read-only; no status file or metrics.  Its source is
    the configuration, as a live mount's (:func:`fuse_source`)."""
    async with open_past(config, options.client) as past:
        ops = Operations(
            PastView(past, at_ns, config.block_size),
            timeout=options.attr_timeout,
            entry_timeout=options.entry_timeout,
            read_only=True,
            timeo=options.timeo,
            hard=options.hard,
            soft=options.soft,
        )
        fuse_options = _fuse_options(config_path, options, debug, read_only=True)
        pyfuse3.init(ops, str(mountpoint), fuse_options)
        _spin_for_requests()
        log.info("mounted %s read-only as it was at %d ns", mountpoint, at_ns)
        try:
            await _until_unmounted(_collections(ops.record).run)
        finally:
            pyfuse3.close(unmount=True)
            log.info("unmounted %s; requests served:\n%s", mountpoint, ops.statistics())
            log.info("%s", past.statistics())


class _Book:
    """The daemon's status file (``mounts/<key>.json``), rewritten every
    :data:`~bftfs.fuse.control.PUBLISH_INTERVAL` seconds for ``bftfs status``."""

    def __init__(
        self,
        config: ClusterConfig,
        mountpoint: Path,
        options: MountOptions,
        session: Session,
        ops: Operations,
        metrics: MetricsServer | None,
        collections: dict[str, float],
    ) -> None:
        self.path = status_file(config, mountpoint)
        self.collections = collections
        self.mountpoint = mountpoint.resolve()
        self.options = options
        self.session = session
        self.ops = ops
        self.metrics = metrics
        self.started = time.time()

    def snapshot(self) -> dict[str, Any]:
        ops = self.ops
        return {
            "pid": os.getpid(),
            "mountpoint": str(self.mountpoint),
            "client": self.options.client,
            "version": __version__,
            "wire": WIRE_VERSION,
            "options": self.options.to_string(),
            "started": self.started,
            "updated": time.time(),
            "requests": sum(ops.record.calls.values()),
            "calls": dict(ops.record.calls),
            # getxattr/listxattr answered "none" before the handlers (fuse/absentxattrs.py)
            "absent_xattr_answers": ops.attrs.absent.answered(),
            # opendir/readdir/releasedir answered without the event loop (fuse/directories.py)
            "fast_dir_answers": ops.dirs.answered(),
            "eio": dict(ops.record.eio),
            "last_eio": list(ops.record.last_eio) if ops.record.last_eio else None,
            "unavailable_since": ops.record.unavailable_since,
            # The request in flight longest: [handler, seconds] (a stuck one shows here).
            "oldest_request": ops.record.oldest(time.perf_counter()),
            "faults": {str(k): v for k, v in sorted(self.session.faults().items())},
            # The client's state, not the nodes' fault: `bftfs status` does not count the
            # refusals of a revoked client against the nodes (issue 60 item 17).
            "revoked_in": self.ops.revoked_in(),
            "metrics": (
                f"{self.metrics.address}:{self.metrics.port}" if self.metrics is not None else None
            ),
            "leases": self._leases(),
            "heldback": held_back(self.session),
            # Read-ahead and write-behind: blocks prefetched, the window's largest size
            # the links asked for, background flushes (fs/files/fetch.py, pace.py).
            "streaming": dict(self.session.fs.streaming),
            # Full garbage collections: how many, their seconds, the longest (a stall of
            # every request; bftfs/gcpace.py).
            "collections": dict(self.collections),
        }

    def _leases(self) -> dict[str, Any] | None:
        """Leases held now (how many, the first 64 inodes) and what they did (taken,
        renewed, refused, recalled, answers given without a round); None when the mount
        takes none."""
        leases = self.session.fs.meta.leases
        if leases is None:
            return None
        return {"held": len(leases.held), "inos": sorted(leases.held)[:64], **leases.stats}

    def write(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(self.snapshot(), indent=1) + "\n")
            os.replace(tmp, self.path)
        except OSError as e:
            log.warning("cannot write the mount's status file %s: %s", self.path, e)

    async def run(self) -> None:
        while True:
            self.write()
            self.ops.record.log_long(time.perf_counter())
            await trio.sleep(PUBLISH_INTERVAL)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            if json.loads(self.path.read_text()).get("pid") == os.getpid():
                self.path.unlink()


def _collections(record: CallRecord) -> FullCollections:
    """The mount's full collections: while no request of ``record``'s has been in flight
    for :data:`gcpace.QUIET` seconds (``bftfs/gcpace.py``)."""
    return FullCollections(lambda now: record.quiet(now, QUIET))


def refuse_nonempty(mountpoint: Path, options: MountOptions) -> None:
    """A mount hides what its mount point holds: refuse a directory with entries unless
    ``-o nonempty`` asks for it, as ZFS refuses one (a user's files silently vanishing
    behind the mount looks like data loss).

    Raises:
        MountError: ``mountpoint`` has entries and ``nonempty`` was not given."""
    if options.nonempty:
        return
    with os.scandir(mountpoint) as entries:
        first = next(entries, None)
    if first is not None:
        raise MountError(
            f"mount point {mountpoint} is not empty (it holds {first.name!r}, which the "
            "mount would hide): empty it, or mount with -o nonempty"
        )


def run_foreground(
    config: ClusterConfig,
    mountpoint: Path,
    options: MountOptions,
    *,
    config_path: Path | None = None,
    debug: bool = False,
    at_ns: int | None = None,
) -> None:
    """The daemon's main: record the pid file, serve, remove the pid file."""
    if not is_mounted(mountpoint):  # the background daemon's parent checked it already
        refuse_nonempty(mountpoint, options)
    pf = pid_file(config, mountpoint)
    pf.parent.mkdir(parents=True, exist_ok=True)
    lost_file(config, mountpoint).unlink(missing_ok=True)  # an earlier daemon's, told or not
    pf.write_text(f"{os.getpid()}\n{mountpoint.resolve()}\n")
    proc.keep_big_buffers()
    take_over()  # full collections when the mount is quiet (bftfs/gcpace.py)
    try:
        trio.run(
            functools.partial(
                serve,
                config,
                mountpoint,
                options,
                config_path=config_path.resolve() if config_path else None,
                debug=debug,
                at_ns=at_ns,
            )
        )
    finally:
        with contextlib.suppress(OSError):
            if pf.read_text().startswith(f"{os.getpid()}\n"):
                pf.unlink()


def mount_background(
    config: ClusterConfig,
    mountpoint: Path,
    options: MountOptions,
    *,
    wait: float = 30.0,
    config_path: Path,
    log_path: Path | None = None,
    debug_modules: Sequence[str] = (),
    debug: bool = False,
    at_ns: int | None = None,
) -> int:
    """Start the daemon in the background and wait until ``mountpoint`` is mounted.

    Raises:
        MountError: the mount point is missing or busy, or the daemon died or took longer
            than ``wait`` seconds (the log's last lines are in the message).
    """
    mountpoint = Path(os.path.abspath(mountpoint))  # no resolve(): it stats a dead mount
    if proc.is_dead_mount(mountpoint):
        # A mount whose daemon died (killed, crashed): clean it up and mount again.
        proc.unmount(mountpoint)
        log.warning("%s was a mount whose daemon had died: unmounted it first", mountpoint)
    if not mountpoint.exists():
        mountpoint.mkdir(parents=True)  # as `bftfs up` makes mount/
    if not mountpoint.is_dir():
        raise MountError(f"mount point {mountpoint} is not a directory")
    if is_mounted(mountpoint):
        raise MountError(f"{mountpoint} is already a mount point")
    refuse_nonempty(mountpoint, options)
    lf = log_path.resolve() if log_path is not None else log_file(config, mountpoint)
    lf.parent.mkdir(parents=True, exist_ok=True)
    cmd = daemon_command(
        config_path,
        options.client,
        mountpoint,
        timeout=options.attr_timeout,
        entry_timeout=options.entry_timeout,
        log_path=lf,
        debug_modules=debug_modules,
        debug=debug,
        options=options.to_string(),
        at_ns=at_ns,
    )
    child = proc.spawn(cmd, log=lf)
    try:
        proc.wait_mounted(mountpoint, child, timeout=wait, detail=lambda: log_tail(lf))
    except proc.ProcessError as e:
        raise MountError(str(e)) from None
    return child.pid


def _spin_for_requests() -> None:
    """Have pyfuse3 poll for a program's next request (:data:`REQUEST_SPIN`)."""
    pyfuse3.request_spin(round(REQUEST_SPIN * 1e9))
