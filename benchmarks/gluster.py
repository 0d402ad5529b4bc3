"""A GlusterFS replica-3 volume on this machine, set up and torn down by a benchmark.

GlusterFS is what users who want replicated storage on a few machines pick (C, tolerates
crashes, not Byzantine faults), so the benchmarks put it beside bftfs.  One
:func:`volume` context is one repetition of a benchmark:

1. ``glusterd`` (the management daemon): used as is when one is already running; otherwise
   started here in the foreground (``-N``, our child, so we know what to stop), with a
   volume file of our own that binds it to :data:`HOST` (loopback) and keeps its state in a
   working directory under the benchmark's scratch directory, so nothing of a run is left
   in ``/var/lib/glusterd``;
2. a replica-3 volume on three brick directories (``gluster volume create NAME replica 3
   HOST:/b1 HOST:/b2 HOST:/b3 force``: ``force`` because the bricks are on the root file
   system, which gluster otherwise refuses), started (three ``glusterfsd`` brick processes
   and the self-heal daemon);
3. ``mount -t glusterfs HOST:/NAME MNT`` (the FUSE client ``glusterfs``).

Tear-down always runs, even when a step failed: unmount, ``volume stop``, ``volume
delete``, stop the glusterd started here, kill any brick process still serving our
directories, remove the brick logs.  The brick directories are removed by the caller.

Why :data:`HOST` is 127.0.0.2: the ``gluster`` command refuses bricks on ``localhost`` or
127.0.0.1 ("Please provide a valid hostname/ip other than localhost, 127.0.0.1 or loopback
address"), the other addresses of this machine are not loopback, and Linux answers for all
of 127.0.0.0/8 on ``lo``.  glusterd passes its own bind address to the bricks
(``--xlator-option transport.socket.bind-address=...``), so with the glusterd started here
the daemon, the bricks and the client all stay on loopback.

Needs root (glusterd, bricks writing trusted.* extended attributes, mount) and Debian's
``glusterfs-server`` and ``glusterfs-client`` (``scripts/setup-bench.sh``).  Anything that
stops a step raises :class:`GlusterError` with the reason and the error lines of the
daemons' logs, so a benchmark records the target as failed and goes on.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bftfs import proc

#: Loopback, but not 127.0.0.1 (which the gluster CLI refuses for bricks; see above).
HOST = "127.0.0.2"
PORT = 24007  # glusterd's management port (its default; the bricks find it there)
LOG_DIR = Path("/var/log/glusterfs")
CLI_TIMEOUT = 60.0  # seconds for one gluster command (volume stop waits for the bricks)

_counter = itertools.count()

#: Volume options recorded with every run: the client's caches (what a cold read must
#: defeat) and what the volume tolerates (quorum, reads from one brick, bit rot scrubbing).
RECORDED = (
    "performance.write-behind",
    "performance.read-ahead",
    "performance.io-cache",
    "performance.quick-read",
    "performance.open-behind",
    "cluster.quorum-type",
    "cluster.quorum-reads",
    "features.bitrot",
)


class GlusterError(RuntimeError):
    """A step of the GlusterFS set-up failed; the message says which and why."""


@dataclass
class Volume:
    """A mounted volume: where it is, its processes, and how to remount its client."""

    name: str
    mountpoint: Path
    bricks: list[Path]
    #: "mount" (the FUSE client), "node1".."node3" (bricks), "node-shd" (self-heal daemon):
    #: named like bftfs' processes so the CPU meters group them the same way.
    pids: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    remount: Callable[[], None] = lambda: None


def why_not() -> str | None:
    """Why GlusterFS cannot be set up here (before trying), or None."""
    if os.geteuid() != 0:
        return "GlusterFS needs root (glusterd, its bricks and mount -t glusterfs)"
    for exe, pkg in (
        ("glusterd", "glusterfs-server"),
        ("gluster", "glusterfs-cli"),
        ("mount.glusterfs", "glusterfs-client"),
    ):
        if shutil.which(exe) is None and not Path("/usr/sbin", exe).exists():
            return f"{exe} is missing (Debian package {pkg}; scripts/setup-bench.sh installs it)"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (the GlusterFS client is a FUSE file system)"
    return None


def _exe(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def version() -> str | None:
    """``glusterfs 10.3`` or so, for the results' machine record."""
    try:
        r = subprocess.run(
            [_exe("glusterfs"), "--version"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = (r.stdout or "").strip().splitlines()
    return first[0] if first else None


# Logs -------------------------------------------------------------------------------------


def _log_errors(path: Path, limit: int = 8) -> str:
    """The last error and warning lines of a GlusterFS log (``] E [`` / ``] W [``)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    bad = [ln for ln in lines if "] E [" in ln or "] C [" in ln or "] W [" in ln]
    return "\n".join(bad[-limit:])


def _brick_log(brick: Path) -> Path:
    """Where glusterd makes a brick log (a fixed directory, the path with '/' as '-')."""
    return LOG_DIR / "bricks" / (str(brick).strip("/").replace("/", "-") + ".log")


def _diagnose(logs: list[Path]) -> str:
    parts = []
    for p in logs:
        errs = _log_errors(p)
        if errs:
            parts.append(f"--- {p} (errors and warnings):\n{errs}")
    return ("\n" + "\n".join(parts)) if parts else ""


# glusterd ---------------------------------------------------------------------------------


def _running_glusterd() -> int | None:
    """The pid of a glusterd already running on this machine, or None."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if (d / "comm").read_text().strip() != "glusterd":
                continue
            state = (d / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if state != "Z":
            return int(d.name)
    return None


def _log_of(pid: int) -> Path:
    """The log file of a running glusterd (its ``-l``/``--log-file``, else the default)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        argv = []
    for i, a in enumerate(argv):
        if a in ("-l", "--log-file") and i + 1 < len(argv):
            return Path(argv[i + 1])
        if a.startswith("--log-file="):
            return Path(a.split("=", 1)[1])
    return LOG_DIR / "glusterd.log"


def _cli(*args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``gluster --mode=script ARGS`` (script mode: no confirmation prompts)."""
    try:
        return subprocess.run(
            [_exe("gluster"), "--mode=script", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(e.cmd, 124, "", f"timed out after {timeout:g} s")


def _cli_ok(*args: str, what: str, logs: list[Path]) -> str:
    r = _cli(*args)
    if r.returncode != 0:
        msg = (r.stderr.strip() or r.stdout.strip() or f"exit {r.returncode}").splitlines()
        raise GlusterError(f"{what}: {' / '.join(msg)[:500]}{_diagnose(logs)}")
    return r.stdout


@contextlib.contextmanager
def _glusterd(base: Path) -> Iterator[dict[str, Any]]:
    """A glusterd to talk to: the running one, else one started here (stopped at the end).

    Yields what the results should record: whether it was started here, its pid, its log.
    """
    pid = _running_glusterd()
    if pid is not None:
        log = _log_of(pid)
        r = _cli("volume", "list", timeout=20)
        if r.returncode != 0:
            raise GlusterError(
                f"a glusterd is running (pid {pid}) but does not answer the gluster command: "
                f"{(r.stderr or r.stdout).strip()[:300]}{_diagnose([log])}"
            )
        yield {"glusterd": "already running", "glusterd_pid": pid, "glusterd_log": str(log)}
        return
    wd = base / "glusterd"
    wd.mkdir()
    vol = base / "glusterd.vol"
    log = base / "glusterd.log"
    # The Debian glusterd.vol, with our own working directory and the loopback bind address.
    vol.write_text(
        "volume management\n"
        "    type mgmt/glusterd\n"
        f"    option working-directory {wd}\n"
        "    option transport-type socket\n"
        f"    option transport.socket.bind-address {HOST}\n"
        f"    option transport.socket.listen-port {PORT}\n"
        "    option transport.socket.keepalive-time 10\n"
        "    option transport.socket.keepalive-interval 2\n"
        "    option transport.socket.read-fail-log off\n"
        "    option ping-timeout 0\n"
        "    option event-threads 1\n"
        "    option max-port 60999\n"
        "end-volume\n"
    )
    cmd = [_exe("glusterd"), "-N", "-f", str(vol), "-l", str(log), "-p", str(base / "glusterd.pid")]
    child = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if child.poll() is not None:
                raise GlusterError(
                    f"glusterd exited at start (code {child.returncode}){_diagnose([log])}"
                )
            if _cli("volume", "list", timeout=10).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise GlusterError(f"glusterd did not answer within 30 s{_diagnose([log])}")
            time.sleep(0.2)
        yield {
            "glusterd": "started by the benchmark",
            "glusterd_pid": child.pid,
            "glusterd_log": str(log),
        }
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


# The volume -------------------------------------------------------------------------------


def _brick_pids(name: str) -> dict[str, int]:
    """Brick and self-heal daemon pids of a started volume, from ``volume status --xml``."""
    r = _cli("volume", "status", name, "--xml", timeout=20)
    pids: dict[str, int] = {}
    if r.returncode != 0:
        return pids
    with contextlib.suppress(ET.ParseError):
        root = ET.fromstring(r.stdout)
        bricks = 0
        for node in root.iter("node"):
            host = node.findtext("hostname") or ""
            pid = int(node.findtext("pid") or "0")
            if pid <= 0:
                continue
            if host == "Self-heal Daemon":
                pids["node-shd"] = pid
            else:
                bricks += 1
                pids[f"node{bricks}"] = pid
    return pids


def _client_pid(name: str, mnt: Path) -> int | None:
    """The FUSE client serving ``mnt`` (``glusterfs ... --volfile-id=/NAME MNT``)."""
    want = f"--volfile-id=/{name}".encode()
    for pid, argv in proc.command_lines():
        if want in argv and str(mnt).encode() in argv:
            return pid
    return None


def _is_mounted(mnt: Path) -> bool:
    target = str(mnt)
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 2 and fields[1] == target and fields[2] == "fuse.glusterfs":
                return True
    return False


def _mount(name: str, mnt: Path, log: Path) -> None:
    r = subprocess.run(
        ["mount", "-t", "glusterfs", "-o", f"log-file={log}", f"{HOST}:/{name}", str(mnt)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    deadline = time.monotonic() + 20
    while not _is_mounted(mnt):
        if r.returncode != 0 or time.monotonic() > deadline:
            out = (r.stderr or r.stdout).strip()
            raise GlusterError(
                f"mount -t glusterfs {HOST}:/{name} failed (exit {r.returncode}): "
                f"{out[:300]}{_diagnose([log])}"
            )
        time.sleep(0.05)


def _unmount(mnt: Path) -> None:
    """Unmount; lazily if busy, so tear-down never hangs on it."""
    if not _is_mounted(mnt):
        return
    r = subprocess.run(["umount", str(mnt)], capture_output=True, timeout=60)
    if r.returncode != 0:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=60)


def _kill_leftovers(base: Path, name: str) -> None:
    """Kill brick, client or self-heal processes still serving ``base`` or volume ``name``
    (a failed ``volume stop``, a lazily unmounted client)."""
    marks = (str(base).encode(), f"shd/{name}".encode())
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            comm = (d / "comm").read_text().strip()
            cmdline = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if comm in ("glusterfsd", "glusterfs") and any(m in cmdline for m in marks):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(d.name), signal.SIGKILL)


@contextlib.contextmanager
def volume(base: Path) -> Iterator[Volume]:
    """A fresh replica-3 volume mounted at ``base/mnt``, bricks in ``base/brick1..3``.

    Raises:
        GlusterError: GlusterFS cannot run here, or a step of the set-up failed.
    """
    why = why_not()
    if why:
        raise GlusterError(why)
    name = f"bftfsbench-{os.getpid()}-{next(_counter)}"
    bricks = [base / f"brick{i}" for i in (1, 2, 3)]
    for b in bricks:
        b.mkdir()
    mnt = base / "mnt"
    mnt.mkdir()
    client_log = base / "client.log"
    created = started = False
    with _glusterd(base) as gd:
        logs = [Path(gd["glusterd_log"]), *(_brick_log(b) for b in bricks), client_log]
        try:
            _cli_ok(
                "volume", "create", name, "replica", "3",
                *(f"{HOST}:{b}" for b in bricks), "force",
                what="gluster volume create", logs=logs,
            )  # fmt: skip
            created = True
            _cli_ok("volume", "start", name, what="gluster volume start", logs=logs)
            started = True
            _mount(name, mnt, client_log)
            vol = Volume(name, mnt, bricks, info={**gd, "volume": name, "replica": 3})
            vol.pids.update(_brick_pids(name))

            def remount() -> None:
                """A fresh client process: nothing of the old one's caches survives."""
                _unmount(mnt)
                _mount(name, mnt, client_log)
                pid = _client_pid(name, mnt)
                if pid is not None:
                    vol.pids["mount"] = pid

            vol.remount = remount
            pid = _client_pid(name, mnt)
            if pid is not None:
                vol.pids["mount"] = pid
            opts = _cli("volume", "get", name, "all", timeout=20).stdout
            vol.info["options"] = {
                k: v for k, v in re.findall(r"^(\S+)\s+(\S+)", opts, re.M) if k in RECORDED
            }
            yield vol
        finally:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                _unmount(mnt)
            if started:
                _cli("volume", "stop", name, "force")
            if created:
                _cli("volume", "delete", name)
            _kill_leftovers(base, name)
            for b in bricks:
                with contextlib.suppress(OSError):
                    _brick_log(b).unlink()
