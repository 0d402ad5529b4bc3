"""What the benchmark peers (``seaweed.py``, ``moosefs.py``, ``cephfs.py``) share about
their server and client processes: the mounted cluster a peer yields, how a daemon is
started and stopped, and the tail of its log for an error message."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Seconds after SIGTERM before SIGKILL, unless a peer gives its own.
STOP_TIMEOUT = 15.0


@dataclass
class Cluster:
    """A mounted peer file system: where it is, its processes, and how to remount its
    client."""

    mountpoint: Path
    #: "mount" (the FUSE client), "node1".."node3" (storage servers), "node-master", ...:
    #: named like bftfs' processes so the CPU meters group them the same way.
    pids: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    remount: Callable[[], None] = lambda: None


def spawn_in(cmd: list[str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in ``cwd`` (so no configuration file of this machine's working
    directory applies), its own session, output to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )


def stop_child(child: subprocess.Popen[bytes], grace: float = STOP_TIMEOUT) -> None:
    """SIGTERM, SIGKILL after ``grace`` seconds, and reap."""
    if child.poll() is None:
        child.terminate()
    try:
        child.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def log_tail(log: Path, lines: int = 8) -> str:
    """The last ``lines`` of ``log`` under a header, for an error message ("" if none)."""
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return f"\n--- {log} (last lines):\n" + "\n".join(text[-lines:]) if text else ""
