"""Real FUSE mounts for tests and benchmarks (STYLE.md section 7, "Real mounts").

``with Mount(config, mountpoint, client="client0") as m:`` spawns ``bftfs mount --fg``,
waits until the directory is a mount point while checking the daemon is alive, and on exit
always unmounts (``fusermount3 -u``, lazily if busy) and stops the daemon, even when the
body failed.  :func:`fuse_available` tells tests to skip where there is no ``/dev/fuse``;
:func:`fsync_paths` sends what a mount holds back for a file or directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from types import TracebackType

from bftfs import proc
from bftfs.config import ClusterConfig
from bftfs.fuse.control import DEFAULT_ENTRY_TIMEOUT, DEFAULT_TIMEOUT, daemon_command
from bftfs.fuse.mount import device_of
from bftfs.local import config_path


def fsync_paths(*paths: Path) -> None:
    """``fsync`` each file or directory in a mount: what its write-back holds goes to the
    nodes (a directory's sends every create, removal and mkdir held back)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fuse_available() -> bool:
    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


class Mount:
    """A mount daemon serving ``mountpoint`` for the cluster ``config``."""

    def __init__(
        self,
        config: ClusterConfig,
        mountpoint: Path,
        *,
        client: str = "client0",
        attr_timeout: float = DEFAULT_TIMEOUT,
        entry_timeout: float = DEFAULT_ENTRY_TIMEOUT,
        wait: float = 30.0,
        options: str | None = None,
    ) -> None:
        """``options``: mount options (``-o``, :mod:`bftfs.fuse.options`); by default
        ``allow_other`` when running as root, so tests may use the mount as other users."""
        self.config = config
        self.options = ("allow_other" if os.getuid() == 0 else "") if options is None else options
        self.mountpoint = mountpoint.resolve()
        self.client = client
        self.attr_timeout = attr_timeout
        self.entry_timeout = entry_timeout
        self.wait = wait
        self.log = config.home / f"mount-{client}-{os.getpid()}-{id(self):x}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Mount:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        cmd = daemon_command(
            config_path(self.config.home),
            self.client,
            self.mountpoint,
            timeout=self.attr_timeout,
            entry_timeout=self.entry_timeout,
            log_path=self.log,
            options=self.options,
        )
        # It logs to self.log itself; what it prints (an uncaught error) goes there too.
        self.proc = proc.spawn(cmd, log=self.log)
        try:
            proc.wait_mounted(
                self.mountpoint, self.proc, timeout=self.wait, detail=lambda: "\n" + self.log_text()
            )
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def unmount(self) -> int | None:
        """Unmount and wait for the daemon; its exit code (None if it had to be killed)."""
        proc.unmount(self.mountpoint)
        if self.proc is None:
            return None
        return proc.wait_exit(self.proc)

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.unmount()


def abort(mountpoint: Path) -> None:
    """Abort the FUSE connection of ``mountpoint`` (``/sys/fs/fuse/connections/N/abort``):
    a daemon stuck in the kernel (waiting for a request only it could answer) can then be
    killed and unmounted, so a test that found it stuck fails instead of hanging."""
    device = device_of(os.path.abspath(mountpoint))  # (no system call on the mount)
    if device is None:
        return
    minor = device.split(":")[1]
    control = Path("/sys/fs/fuse/connections")
    if not (control / minor).exists():
        subprocess.run(["mount", "-t", "fusectl", "none", str(control)], check=False)
    with contextlib.suppress(OSError):
        (control / minor / "abort").write_text("1")
