"""Real FUSE mounts for tests and benchmarks (STYLE.md section 7, "Real mounts").

``with Mount(config, mountpoint, client="client0") as m:`` spawns ``bftfs mount --fg``,
waits until the directory is a mount point while checking the daemon is alive, and on exit
always unmounts (``fusermount3 -u``, lazily if busy) and stops the daemon, even when the
body failed.  :func:`fuse_available` tells tests to skip where there is no ``/dev/fuse``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from bftfs.config import ClusterConfig
from bftfs.fuse.control import DEFAULT_ENTRY_TIMEOUT, DEFAULT_TIMEOUT
from bftfs.local import config_path


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
    ) -> None:
        self.config = config
        self.mountpoint = mountpoint.resolve()
        self.client = client
        self.attr_timeout = attr_timeout
        self.entry_timeout = entry_timeout
        self.wait = wait
        self.log = config.home / f"mount-{client}-{os.getpid()}-{id(self):x}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Mount:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "bftfs",
            "mount",
            str(self.mountpoint),
            "--fg",
            "--config",
            str(config_path(self.config.home)),
            "--client",
            self.client,
            "--attr-timeout",
            str(self.attr_timeout),
            "--entry-timeout",
            str(self.entry_timeout),
            "--log",
            str(self.log),
        ]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + self.wait
        try:
            while not os.path.ismount(self.mountpoint):
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"mount daemon exited ({self.proc.returncode}):\n" + self.log_text()
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError("mount did not appear:\n" + self.log_text())
                time.sleep(0.05)
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
        fusermount = shutil.which("fusermount3") or "fusermount3"
        if os.path.ismount(self.mountpoint):
            r = subprocess.run([fusermount, "-u", str(self.mountpoint)], capture_output=True)
            if r.returncode != 0:
                subprocess.run([fusermount, "-u", "-z", str(self.mountpoint)], capture_output=True)
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            return None

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.unmount()
