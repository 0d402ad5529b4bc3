"""A MooseFS cluster on this machine, set up and torn down by a benchmark (issue 64).

MooseFS is a living replicated file system (C, in Debian; tolerates crashes, not Byzantine
faults).  One :func:`cluster` context is one repetition of a benchmark:

1. four network namespaces on a bridge (``bftfs.testing.netns.Hosts``): ``mfsmaster``
   refuses every 127.0.0.0/8 address for itself, so it needs a host with an address of its
   own, and three chunkservers on one address would need three port sets;
2. ``mfsmaster`` on host 0 and an ``mfschunkserver`` (the storage servers) on each of hosts
   1-3, all in the foreground (``-f``, our children), configuration, metadata and chunks
   under the scratch directory, running as root (no ``mfs`` user owning the directories);
3. ``mfsmount -f`` (the FUSE client) in the root namespace, reaching the master through
   the bridge; the root directory's goal set to 3 (``mfssetgoal -r 3``: every file on three
   chunkservers), and a probe file written until it has three copies (the chunkservers
   register with no space first, and the master places no copy on them until they report
   some).

With the package defaults the chunkservers do not fsync what a client fsyncs
(``HDD_FSYNC_BEFORE_CLOSE = 0``), so a results table says so beside the write figures
(:data:`NOTE`).  Tear-down always runs: unmount, stop the mount, the chunkservers and the
master (SIGTERM, SIGKILL after a grace period), remove the namespaces.

Needs root, ``ip`` with bridges and namespaces, ``/dev/fuse`` and Debian's
``moosefs-master``, ``moosefs-chunkserver`` and ``moosefs-client``
(``scripts/setup-bench.sh``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from peerprocs import Cluster, log_tail, stop_child

from bftfs import proc
from bftfs.testing import netns

CHUNKSERVERS = 3
CLIENT_PORT = 9421  # the master's port for mounts (its default; its host is ours alone)
GOAL = 3
START_TIMEOUT = 60.0
EMPTY_METADATA = Path("/var/lib/mfs/metadata.mfs.empty")

#: One sentence for a results table beside the write figures.
NOTE = (
    " moosefs = {ver}, a master and three chunkservers in network namespaces of their own "
    "(goal 3: every file on three chunkservers; tolerates crashes, not Byzantine faults) "
    "and mfsmount, started and stopped for each run; with its package defaults its "
    "chunkservers do not fsync what a client fsyncs, so its write figures are not like for "
    "like with bftfs' or GlusterFS'."
)


class MooseError(RuntimeError):
    """A step of the MooseFS set-up failed; the message says which and why."""


def why_not() -> str | None:
    """Why MooseFS cannot be set up here (before trying), or None."""
    if os.geteuid() != 0:
        return "MooseFS needs root (network namespaces for its master, mfsmount)"
    for exe, pkg in (
        ("mfsmaster", "moosefs-master"),
        ("mfschunkserver", "moosefs-chunkserver"),
        ("mfsmount", "moosefs-client"),
    ):
        if shutil.which(exe) is None and not Path("/usr/sbin", exe).exists():
            return f"{exe} is missing (Debian package {pkg}; scripts/setup-bench.sh installs it)"
    if not EMPTY_METADATA.exists():
        return f"{EMPTY_METADATA} is missing (Debian package moosefs-master)"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (mfsmount is a FUSE file system)"
    if not netns.available():
        return "network namespaces and bridges cannot be made here (ip, root)"
    return None


def _exe(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def version() -> str | None:
    """``MooseFS 3.0.117-1`` or so, for the results' machine record."""
    try:
        r = subprocess.run([_exe("mfsmaster"), "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = (r.stdout or "").replace(";", " ").split()
    return f"MooseFS {words[1]}" if len(words) > 1 and words[0] == "version:" else None


# Configuration ----------------------------------------------------------------------------


def master_cfg(data: Path, exports: Path) -> str:
    return (
        "WORKING_USER = root\nWORKING_GROUP = root\n"
        f"DATA_PATH = {data}\nEXPORTS_FILENAME = {exports}\n"
    )


#: Every client may mount the whole tree read-write, root as root (a scratch cluster).
EXPORTS = "*\t/\trw,alldirs,admin,maproot=0:0\n"


def chunkserver_cfg(data: Path, hdd: Path, master: str) -> str:
    return (
        "WORKING_USER = root\nWORKING_GROUP = root\n"
        f"DATA_PATH = {data}\nHDD_CONF_FILENAME = {hdd}\nMASTER_HOST = {master}\n"
    )


def mount_cmd(mnt: Path, master: str) -> list[str]:
    return [_exe("mfsmount"), "-f", str(mnt), "-H", master]


# The cluster ------------------------------------------------------------------------------


def copies(path: Path) -> int:
    """The fewest copies of any chunk of ``path`` (``mfscheckfile``), 0 when unknown."""
    r = subprocess.run(["mfscheckfile", str(path)], capture_output=True, text=True, timeout=20)
    counts = [
        int(line.split("chunks with")[1].split()[0])
        for line in r.stdout.splitlines()
        if "chunks with" in line and "copies" in line
    ]
    return min(counts) if counts else 0


def _await_port(host: str, port: int, child: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until ``host:port`` accepts a connection (the master's client port)."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if child.poll() is not None:
            raise MooseError(f"mfsmaster exited at start (code {child.returncode}){log_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=2):
            return
        if time.monotonic() > deadline:
            raise MooseError(f"mfsmaster did not listen within {START_TIMEOUT:g} s{log_tail(log)}")
        time.sleep(0.1)


def _await_goal(mnt: Path, master_log: Path) -> None:
    """Write a probe until the master places it on :data:`GOAL` chunkservers."""
    probe = mnt / ".bench-probe"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        probe.write_bytes(b"x" * 4096)
        fd = os.open(probe, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        if copies(probe) >= GOAL:
            probe.unlink()
            return
        probe.unlink()
        if time.monotonic() > deadline:
            raise MooseError(f"no file got {GOAL} copies within {START_TIMEOUT:g} s"
                             f"{log_tail(master_log)}")  # fmt: skip
        time.sleep(0.5)


@contextlib.contextmanager
def cluster(base: Path) -> Iterator[Cluster]:
    """A fresh MooseFS mounted at ``base/mnt``, its servers' data under ``base``.

    Raises:
        MooseError: MooseFS cannot run here, or a step of the set-up failed.
    """
    why = why_not()
    if why:
        raise MooseError(why)
    children: list[subprocess.Popen[bytes]] = []
    mounts: list[subprocess.Popen[bytes]] = []
    mnt = base / "mnt"
    mnt.mkdir()
    pids: dict[str, int] = {}
    with netns.Hosts(1 + CHUNKSERVERS) as hosts, contextlib.ExitStack() as stack:
        master = hosts.address(0)

        @stack.callback
        def _stop() -> None:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                proc.unmount(mnt)
            for child in reversed(mounts + children):
                stop_child(child)

        md = base / "master"
        md.mkdir()
        shutil.copy(EMPTY_METADATA, md / "metadata.mfs")
        (base / "exports.cfg").write_text(EXPORTS)
        (base / "master.cfg").write_text(master_cfg(md, base / "exports.cfg"))
        master_log = base / "master.log"
        cmd = [_exe("mfsmaster"), "-f", "-c", str(base / "master.cfg"), "start"]
        children.append(hosts.spawn(0, cmd, master_log))
        pids["node-master"] = children[-1].pid
        for i in range(1, CHUNKSERVERS + 1):
            d = base / f"cs{i}"
            (d / "chunks").mkdir(parents=True)
            (d / "hdd.cfg").write_text(f"{d / 'chunks'}\n")
            (d / "cs.cfg").write_text(chunkserver_cfg(d, d / "hdd.cfg", master))
            cmd = [_exe("mfschunkserver"), "-f", "-c", str(d / "cs.cfg"), "start"]
            children.append(hosts.spawn(i, cmd, base / f"cs{i}.log"))
            pids[f"node{i}"] = children[-1].pid

        def mount() -> None:
            log = base / "mount.log"
            child = proc.spawn(mount_cmd(mnt, master), log=log)
            mounts.append(child)
            pids["mount"] = child.pid
            try:
                proc.wait_mounted(mnt, child, timeout=START_TIMEOUT, what="mfsmount")
            except proc.ProcessError as e:
                raise MooseError(f"{e}{log_tail(log)}{log_tail(master_log)}") from None

        def remount() -> None:
            """A fresh client process: nothing of the old one's caches survives."""
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                proc.unmount(mnt)
            while mounts:
                stop_child(mounts.pop())
            mount()

        _await_port(master, CLIENT_PORT, children[0], master_log)
        mount()
        r = subprocess.run(["mfssetgoal", "-r", str(GOAL), str(mnt)], capture_output=True,
                           text=True, timeout=30)  # fmt: skip
        if r.returncode != 0:
            raise MooseError(f"mfssetgoal failed: {(r.stderr or r.stdout).strip()[:300]}")
        _await_goal(mnt, master_log)
        yield Cluster(mnt, pids, {"replica": GOAL, "master": master}, remount)
