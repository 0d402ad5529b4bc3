"""The mount daemon: protocol clients, the file-system model and pyfuse3 in one trio loop.

``bftfs mount DIR`` starts this daemon in the background (``--fg`` keeps it in the
foreground) and returns once ``DIR`` is a mount point.  The daemon is one trio program:
pyfuse3's request loop plus the Q/U and PASIS clients whose network waits overlap while
the kernel's requests are served (``spec/pyfuse3-notes.md`` 3.3).

Mount book-keeping (pid files, unmounting) is in :mod:`bftfs.fuse.control`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
from collections.abc import Sequence
from pathlib import Path

import pyfuse3
import trio

from bftfs import proc
from bftfs.config import ClusterConfig
from bftfs.fs.filesystem import FileSystem
from bftfs.fs.pastview import PastView
from bftfs.fs.session import open_past, open_session
from bftfs.fuse.control import (
    DEFAULT_ENTRY_TIMEOUT,
    DEFAULT_TIMEOUT,
    MountError,
    daemon_command,
    is_mounted,
    log_file,
    log_tail,
    pid_file,
)
from bftfs.fuse.operations import Operations

log = logging.getLogger(__name__)


async def serve(
    config: ClusterConfig,
    client: str,
    mountpoint: Path,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    entry_timeout: float = DEFAULT_ENTRY_TIMEOUT,
    debug: bool = False,
    at_ns: int | None = None,
) -> None:
    """Mount ``mountpoint`` and serve it until unmounted or terminated; with ``at_ns``, the
    tree as it was then, read-only (``fs/pastview.py``)."""
    async with contextlib.AsyncExitStack() as stack:
        if at_ns is None:
            # The file system answers attributes its own updates produced for as long as
            # the kernel caches attributes (``--attr-timeout``), no longer.
            session = await stack.enter_async_context(
                open_session(config, client, uid=os.getuid(), gid=os.getgid(), attr_ttl=timeout)
            )
            fs: FileSystem | PastView = session.fs
            statistics = session.statistics
        else:
            past = await stack.enter_async_context(open_past(config, client))
            fs = PastView(past, at_ns, config.block_size)
            statistics = past.statistics
        ops = Operations(fs, timeout=timeout, entry_timeout=entry_timeout)
        options = set(pyfuse3.default_options)  # default_permissions: the kernel checks modes
        options |= {"fsname=bftfs", "subtype=bftfs"}
        if at_ns is not None:
            options.add("ro")
        if os.getuid() == 0:
            options.add("allow_other")
        if debug:
            options.add("debug")
        pyfuse3.init(ops, str(mountpoint), options)
        log.info("mounted %s as %s", mountpoint, client)
        try:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async with trio.open_nursery() as nursery:

                    async def on_signal() -> None:
                        async for sig in signals:
                            log.info("%s received: unmounting", signal.Signals(sig).name)
                            pyfuse3.terminate()
                            return

                    nursery.start_soon(on_signal)
                    await pyfuse3.main()
                    nursery.cancel_scope.cancel()
        finally:
            pyfuse3.close(unmount=True)
            log.info("unmounted %s; requests served:\n%s", mountpoint, ops.statistics())
            log.info("%s", statistics())


def run_foreground(
    config: ClusterConfig,
    client: str,
    mountpoint: Path,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    entry_timeout: float = DEFAULT_ENTRY_TIMEOUT,
    debug: bool = False,
    at_ns: int | None = None,
) -> None:
    """The daemon's main: record the pid file, serve, remove the pid file."""
    pf = pid_file(config, mountpoint)
    pf.parent.mkdir(parents=True, exist_ok=True)
    pf.write_text(f"{os.getpid()}\n{mountpoint.resolve()}\n")
    try:
        trio.run(
            functools.partial(
                serve,
                config,
                client,
                mountpoint,
                timeout=timeout,
                entry_timeout=entry_timeout,
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
    client: str,
    mountpoint: Path,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    entry_timeout: float = DEFAULT_ENTRY_TIMEOUT,
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
    mountpoint = mountpoint.resolve()
    if not mountpoint.is_dir():
        raise MountError(f"mount point {mountpoint} is not a directory")
    if is_mounted(mountpoint):
        raise MountError(f"{mountpoint} is already a mount point")
    lf = log_path.resolve() if log_path is not None else log_file(config, mountpoint)
    lf.parent.mkdir(parents=True, exist_ok=True)
    cmd = daemon_command(
        config_path,
        client,
        mountpoint,
        timeout=timeout,
        entry_timeout=entry_timeout,
        log_path=lf,
        debug_modules=debug_modules,
        debug=debug,
        at_ns=at_ns,
    )
    child = proc.spawn(cmd, log=lf)
    try:
        proc.wait_mounted(mountpoint, child, timeout=wait, detail=lambda: log_tail(lf))
    except proc.ProcessError as e:
        raise MountError(str(e)) from None
    return child.pid
