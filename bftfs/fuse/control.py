"""Book-keeping of running mounts: pid files, unmounting, waiting for the daemon.

Kept apart from :mod:`bftfs.fuse.mount` (which imports pyfuse3 and the file system) so that
``bftfs down`` and ``bftfs umount`` need neither.

Each running mount leaves ``<cluster>/mounts/<key>.pid`` (pid and mount point).  Unmounting
is ``fusermount3 -u``; when that fails (busy, or a daemon stuck on unreachable nodes) the
mount is detached lazily and the daemon terminated, so unmount is clean even when nodes are
down.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from bftfs import proc
from bftfs.config import ClusterConfig
from bftfs.local import log_tail

log = logging.getLogger(__name__)

#: Seconds the kernel may cache attributes and missing names (``--attr-timeout``; the
#: choice is explained in :mod:`bftfs.fuse.operations`).  Here, apart from pyfuse3, so the
#: command line and the test mounts default to the same values as the daemon.
DEFAULT_TIMEOUT = 1.0
#: Seconds the kernel may cache the names it found (``--entry-timeout``).
DEFAULT_ENTRY_TIMEOUT = 30.0


class MountError(Exception):
    """Mounting or unmounting failed; the message says why."""


def _key(mountpoint: Path) -> str:
    return hashlib.blake2b(str(mountpoint.resolve()).encode(), digest_size=8).hexdigest()


def pid_file(config: ClusterConfig, mountpoint: Path) -> Path:
    return config.home / "mounts" / f"{_key(mountpoint)}.pid"


def log_file(config: ClusterConfig, mountpoint: Path) -> Path:
    return config.home / "mounts" / f"{_key(mountpoint)}.log"


def known_mounts(config: ClusterConfig) -> list[tuple[int, Path]]:
    """(pid, mount point) of the daemons this cluster directory knows of."""
    out = []
    for p in sorted((config.home / "mounts").glob("*.pid")):
        try:
            pid_s, path = p.read_text().split("\n", 1)
            out.append((int(pid_s), Path(path.strip())))
        except (OSError, ValueError):
            continue
    return out


is_mounted = proc.is_mounted


def unmount(mountpoint: Path, *, pid: int | None = None, wait: float = 30.0) -> None:
    """Unmount ``mountpoint`` and wait for its daemon (``pid``, if known) to exit."""
    mountpoint = mountpoint.resolve()
    why = proc.unmount(mountpoint)
    if why is not None:
        log.warning("fusermount -u %s: %s; detached lazily", mountpoint, why)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    if pid is not None:
        proc.wait_gone(pid, wait)


def daemon_command(
    config_path: Path,
    client: str,
    mountpoint: Path,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    entry_timeout: float = DEFAULT_ENTRY_TIMEOUT,
    log_path: Path,
    debug_modules: Sequence[str] = (),
    debug: bool = False,
    at_ns: int | None = None,
) -> list[str]:
    """The command line of a mount daemon in the foreground (``bftfs mount --fg``);
    ``at_ns``: a read-only mount of the tree as it was then."""
    cmd = [
        sys.executable,
        "-m",
        "bftfs",
        "mount",
        str(mountpoint),
        "--fg",
        "--config",
        str(config_path),
        "--client",
        client,
        "--attr-timeout",
        str(timeout),
        "--entry-timeout",
        str(entry_timeout),
        "--log",
        str(log_path),
    ]
    if debug_modules:
        cmd += ["--debug-modules", *debug_modules]
    if debug:
        cmd.append("--debug")
    if at_ns is not None:
        cmd += ["--at", f"@{at_ns // 10**9}.{at_ns % 10**9:09d}"]
    return cmd


__all__ = [
    "MountError",
    "daemon_command",
    "is_mounted",
    "known_mounts",
    "log_file",
    "log_tail",
    "pid_file",
    "unmount",
]
