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
import shutil
import signal
import subprocess
import time
from pathlib import Path

from bftfs.config import ClusterConfig
from bftfs.local import log_tail, process_alive

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


def is_mounted(mountpoint: Path) -> bool:
    try:
        return os.path.ismount(mountpoint)
    except OSError:  # "Transport endpoint is not connected": a dead daemon's mount
        return True


def unmount(mountpoint: Path, *, pid: int | None = None, wait: float = 30.0) -> None:
    """Unmount ``mountpoint`` and wait for its daemon (``pid``, if known) to exit."""
    mountpoint = mountpoint.resolve()
    fusermount = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"
    if is_mounted(mountpoint):
        r = subprocess.run([fusermount, "-u", str(mountpoint)], capture_output=True, text=True)
        if r.returncode != 0:
            log.warning("fusermount -u %s: %s; detaching lazily", mountpoint, r.stderr.strip())
            subprocess.run([fusermount, "-u", "-z", str(mountpoint)], capture_output=True)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
    if pid is None:
        return
    deadline = time.monotonic() + wait
    while process_alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
        time.sleep(0.02)


__all__ = [
    "MountError",
    "is_mounted",
    "known_mounts",
    "log_file",
    "log_tail",
    "pid_file",
    "unmount",
]
