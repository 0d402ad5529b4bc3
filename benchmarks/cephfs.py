"""A CephFS cluster on this machine, set up and torn down by a benchmark (issue 64).

CephFS is the living replicated file system of the big deployments (C++, Debian's ceph
16.2 "pacific"; tolerates crashes, not Byzantine faults).  One :func:`cluster` context is
one repetition of a benchmark, every daemon our child, in the foreground (``-f``):

1. a ``ceph.conf`` of our own in the scratch directory (:func:`ceph_conf`): the monitor
   on two free loopback ports (msgr2 and msgr1), every daemon's data, logs, sockets and
   pid files under the scratch directory, cephx off (a scratch cluster on loopback), pool
   size 3 (min_size 2) with replicas chosen across OSDs (``osd_crush_chooseleaf_type = 0``:
   all three are on this host), small placement-group counts, no PG autoscaler (it would
   move data during a run), small memory targets;
2. ``ceph-mon`` (after ``monmaptool`` and ``ceph-mon --mkfs``) and ``ceph-mgr``;
3. three ``ceph-osd`` (the storage servers), each BlueStore on a sparse file of
   :data:`OSD_BLOCK_GIB` GiB in its data directory (``ceph osd new``, then ``ceph-osd
   --mkfs``);
4. a data and a metadata pool, ``ceph fs new``, one ``ceph-mds``, waiting until it is
   ``up:active`` and every placement group ``active+clean``;
5. ``ceph-fuse -f`` (the FUSE client) on ``mnt``.

Ceph's OSDs fsync what a client fsyncs (BlueStore commits a write to its device before it
acknowledges it, and a replicated write is acknowledged once all three OSDs have), so its
write figures are like for like with bftfs' and GlusterFS' (:data:`NOTE`).

Tear-down always runs, even when a step failed: unmount, then stop ceph-fuse, the MDS, the
OSDs, the manager and the monitor (SIGTERM, SIGKILL after a grace period).  The data
directories are removed by the caller.  A step that fails raises :class:`CephError` with
the reason and the tail of the daemon's log, so a benchmark records the target as failed
and goes on.

Needs ``/dev/fuse`` and Debian's ``ceph-mon``, ``ceph-mgr``, ``ceph-osd``, ``ceph-mds``,
``ceph-fuse`` and ``ceph-common`` (``scripts/setup-bench.sh`` installs them).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peerprocs import Cluster, log_tail, spawn_in, stop_child

from bftfs import proc
from bftfs.local import free_ports

HOST = "127.0.0.1"
OSDS = 3  # storage servers
SIZE = 3  # copies of every object (pool size)
MIN_SIZE = 2
PG_NUM = 16  # placement groups per pool (three pools on three OSDs)
OSD_BLOCK_GIB = 8  # each OSD's sparse BlueStore file
#: Small memory targets: the package defaults (4 GiB per OSD, 4 GiB of MDS cache) are
#: for a machine of their own; this one has 2 cores and runs bftfs beside it.
OSD_MEMORY_TARGET = 1 << 30
MDS_CACHE_MEMORY = 256 << 20
START_TIMEOUT = 180.0  # seconds for one step of the set-up (the OSDs' mkfs, active+clean)
STOP_TIMEOUT = 20.0  # seconds after SIGTERM before SIGKILL
CLI_TIMEOUT = 60.0  # seconds for one ``ceph`` command
FS_NAME = "benchfs"
DATA_POOL = "benchfs_data"
META_POOL = "benchfs_metadata"

#: Where each daemon's executable comes from (for the skip reason).
PACKAGES = {
    "ceph-mon": "ceph-mon",
    "ceph-mgr": "ceph-mgr",
    "ceph-osd": "ceph-osd",
    "ceph-mds": "ceph-mds",
    "ceph-fuse": "ceph-fuse",
    "ceph": "ceph-common",
    "monmaptool": "ceph-base",
}

#: One sentence for a results table beside the write figures (issue 64).
NOTE = (
    " cephfs = {ver}, a monitor, a manager, three BlueStore OSDs on sparse files, one MDS "
    "and ceph-fuse on loopback (pool size 3: every object on three OSDs; tolerates crashes, "
    "not Byzantine faults; cephx off), started and stopped for each run; its OSDs fsync "
    "what a client fsyncs (a write is acknowledged once on three OSDs' devices), so its "
    "write figures are like for like with bftfs' and GlusterFS'."
)


class CephError(RuntimeError):
    """A step of the CephFS set-up failed; the message says which and why."""


def why_not() -> str | None:
    """Why CephFS cannot be set up here (before trying), or None."""
    missing = [
        f"{exe} (Debian package {pkg})" for exe, pkg in PACKAGES.items() if not shutil.which(exe)
    ]
    if missing:
        return f"{', '.join(missing)} missing; scripts/setup-bench.sh installs them"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (ceph-fuse is a FUSE file system)"
    if shutil.which("fusermount3") is None and shutil.which("fusermount") is None:
        return "fusermount3 is missing (Debian package fuse3; ceph-fuse needs it)"
    return None


def parse_version(text: str) -> str | None:
    """``Ceph 16.2.15`` from ``ceph version 16.2.15 (618f...) pacific (stable)``."""
    words = text.split()
    if len(words) >= 3 and words[:2] == ["ceph", "version"]:
        return f"Ceph {words[2]}"
    return None


def version() -> str | None:
    """``Ceph 16.2.15`` or so, for the results' machine record."""
    exe = shutil.which("ceph-osd")
    if exe is None:
        return None
    try:
        r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_version(r.stdout or "")


# Configuration and command lines ----------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where one cluster keeps its configuration and data, and the monitor's ports."""

    base: Path
    fsid: str
    #: The monitor's (msgr2, msgr1) ports.
    mon: tuple[int, int]

    @property
    def conf(self) -> Path:
        return self.base / "ceph.conf"

    @property
    def mountpoint(self) -> Path:
        return self.base / "mnt"

    @property
    def mon_addrs(self) -> str:
        """The monitor's addresses as Ceph writes an address vector."""
        return f"[v2:{HOST}:{self.mon[0]},v1:{HOST}:{self.mon[1]}]"


def ceph_conf(lay: Layout) -> str:
    """The ``ceph.conf`` every daemon and command of the cluster reads (and nothing else:
    ``-c`` names it, so no /etc/ceph of this machine applies)."""
    b = lay.base
    settings = {
        "fsid": lay.fsid,
        "mon_host": lay.mon_addrs,
        "public_addr": HOST,
        "auth_cluster_required": "none",
        "auth_service_required": "none",
        "auth_client_required": "none",
        "run_dir": b / "run",
        "admin_socket": b / "run" / "$name.asok",
        "pid_file": b / "run" / "$name.pid",
        "log_file": b / "log" / "$name.log",
        "mon_cluster_log_file": b / "log" / "cluster.log",
        "crash_dir": b / "crash",
        "mon_data": b / "$name",
        "mgr_data": b / "$name",
        "osd_data": b / "$name",
        "mds_data": b / "$name",
        "keyring": b / "$name.keyring",
        "osd_pool_default_size": SIZE,
        "osd_pool_default_min_size": MIN_SIZE,
        "osd_pool_default_pg_num": PG_NUM,
        "osd_pool_default_pgp_num": PG_NUM,
        "osd_pool_default_pg_autoscale_mode": "off",
        "osd_crush_chooseleaf_type": 0,
        "osd_objectstore": "bluestore",
        "bluestore_block_create": "true",
        "bluestore_block_size": OSD_BLOCK_GIB << 30,
        "bluestore_fsck_on_mkfs": "false",
        "bluestore_fsck_on_mount": "false",
        "osd_memory_target": OSD_MEMORY_TARGET,
        "mds_cache_memory_limit": MDS_CACHE_MEMORY,
        "mon_allow_pool_size_one": "false",
        "mon_warn_on_pool_no_redundancy": "false",
        "mgr_initial_modules": "",
        "debug_ms": 0,
    }
    return "[global]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())


def ceph_cmd(lay: Layout, *args: str) -> list[str]:
    """A ``ceph`` command on this cluster, JSON out."""
    return ["ceph", "-c", str(lay.conf), "--connect-timeout", "20", "--format", "json", *args]


def monmap_cmd(lay: Layout) -> list[str]:
    return ["monmaptool", "--create", "--clobber", "--fsid", lay.fsid,
            "--addv", "a", lay.mon_addrs, str(lay.base / "monmap")]  # fmt: skip


def daemon_cmd(lay: Layout, daemon: str, ident: str) -> list[str]:
    """``ceph-<daemon> -f`` (foreground, our child) with our configuration."""
    return [f"ceph-{daemon}", "-f", "-c", str(lay.conf), "-i", ident]


def mkfs_cmd(lay: Layout, daemon: str, ident: str, *extra: str) -> list[str]:
    """``ceph-<daemon> --mkfs``: lay out a daemon's data directory, then exit."""
    return [f"ceph-{daemon}", "-c", str(lay.conf), "-i", ident, "--mkfs", *extra]


def fuse_cmd(lay: Layout) -> list[str]:
    return ["ceph-fuse", "-f", "-c", str(lay.conf), "-n", "client.admin", str(lay.mountpoint)]


# Parsing the cluster's answers -------------------------------------------------------------


def osd_id(text: str) -> int:
    """The id ``ceph osd new`` printed (JSON ``{"osdid": 0}`` or a bare number)."""
    text = text.strip()
    with contextlib.suppress(ValueError):
        doc = json.loads(text)
        if isinstance(doc, dict) and "osdid" in doc:
            return int(doc["osdid"])
        if isinstance(doc, int):
            return doc
    raise CephError(f"ceph osd new printed no osd id: {text[:200]!r}")


def pgs_clean(status: dict[str, Any]) -> tuple[int, int]:
    """(placement groups active+clean, all of them) from ``ceph status --format json``."""
    pgmap = status.get("pgmap") or {}
    total = int(pgmap.get("num_pgs") or 0)
    clean = sum(
        int(s.get("count") or 0)
        for s in pgmap.get("pgs_by_state") or []
        if s.get("state_name") == "active+clean"
    )
    return clean, total


def osds_up(status: dict[str, Any]) -> int:
    """OSDs up and in, from ``ceph status --format json`` (16.2's ``osdmap`` layout, or the
    older nested one)."""
    om = status.get("osdmap") or {}
    om = om.get("osdmap", om)
    return min(int(om.get("num_up_osds") or 0), int(om.get("num_in_osds") or 0))


def mds_active(fs_dump: dict[str, Any], name: str = FS_NAME) -> bool:
    """Whether file system ``name`` has an MDS ``up:active`` (``ceph fs dump``)."""
    for fs in fs_dump.get("filesystems") or []:
        mdsmap = fs.get("mdsmap") or {}
        if mdsmap.get("fs_name") != name:
            continue
        return any(i.get("state") == "up:active" for i in (mdsmap.get("info") or {}).values())
    return False


def pool_sizes(dump: dict[str, Any]) -> dict[str, int]:
    """Each pool's size (copies), from ``ceph osd pool ls detail --format json`` (a list)
    or ``ceph osd dump`` (``pools``)."""
    pools = dump if isinstance(dump, list) else dump.get("pools") or []
    return {p["pool_name"]: int(p["size"]) for p in pools if "pool_name" in p}


# The cluster ------------------------------------------------------------------------------


class _Run:
    """The cluster's processes and commands, so tear-down knows what to stop."""

    def __init__(self, lay: Layout) -> None:
        self.lay = lay
        self.children: list[subprocess.Popen[bytes]] = []
        self.pids: dict[str, int] = {}

    def log(self, name: str) -> Path:
        return self.lay.base / "log" / f"{name}.log"

    def run(self, cmd: list[str], what: str, logs: tuple[str, ...] = ()) -> str:
        """Run a set-up command to completion; its stdout."""
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=CLI_TIMEOUT,
                               stdin=subprocess.DEVNULL, cwd=self.lay.base)  # fmt: skip
        except subprocess.TimeoutExpired:
            raise CephError(f"{what} ran past {CLI_TIMEOUT:g} s"
                            + "".join(log_tail(self.log(n)) for n in logs)) from None  # fmt: skip
        if r.returncode != 0:
            out = (r.stderr or r.stdout).strip()[-400:]
            raise CephError(f"{what} failed (exit {r.returncode}): {out}"
                            + "".join(log_tail(self.log(n)) for n in logs))  # fmt: skip
        return r.stdout

    def json(self, *args: str) -> Any:
        """A ``ceph`` command's JSON answer ({} when it prints nothing)."""
        what = f"ceph {' '.join(args)}"
        out = self.run(ceph_cmd(self.lay, *args), what).strip()
        try:
            return json.loads(out) if out else {}
        except ValueError:
            raise CephError(f"{what} printed no JSON: {out[:200]!r}") from None

    def start(self, key: str, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        """Start daemon ``name`` (its log name, e.g. ``osd.0``) as ``pids[key]``."""
        child = spawn_in(cmd, self.lay.base, self.lay.base / "log" / f"{name}.out")
        self.children.append(child)
        self.pids[key] = child.pid
        return child

    def wait(self, what: str, ready: Callable[[], bool], logs: tuple[str, ...]) -> None:
        """Until ``ready()``; fail if a daemon exits or the step runs past its time."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            for child in self.children:
                if child.poll() is not None:
                    name = next(k for k, v in self.pids.items() if v == child.pid)
                    raise CephError(
                        f"{name} exited (code {child.returncode}) while waiting for {what}"
                        + "".join(log_tail(self.log(n)) for n in logs)
                    )
            with contextlib.suppress(CephError, ValueError):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise CephError(f"{what}: not within {START_TIMEOUT:g} s"
                                + "".join(log_tail(self.log(n)) for n in logs))  # fmt: skip
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop every daemon, the last started first (MDS, OSDs, manager, monitor)."""
        while self.children:
            stop_child(self.children.pop(), STOP_TIMEOUT)


def _make_osd(run: _Run, i: int) -> subprocess.Popen[bytes]:
    """Allocate an OSD id, lay out BlueStore on a sparse file, start the daemon."""
    lay = run.lay
    osd_uuid = str(uuid.uuid4())
    ident = osd_id(run.run(ceph_cmd(lay, "osd", "new", osd_uuid), "ceph osd new"))
    (lay.base / f"osd.{ident}").mkdir()
    run.run(mkfs_cmd(lay, "osd", str(ident), "--osd-uuid", osd_uuid),
            f"ceph-osd --mkfs (osd.{ident})", (f"osd.{ident}",))  # fmt: skip
    return run.start(f"node{i + 1}", f"osd.{ident}", daemon_cmd(lay, "osd", str(ident)))


def _boot(run: _Run) -> None:
    """Monitor, manager, OSDs, pools, file system and MDS, each waited for."""
    lay = run.lay
    for d in ("run", "log", "crash", "mon.a", "mgr.x", "mds.a"):
        (lay.base / d).mkdir()
    lay.conf.write_text(ceph_conf(lay))
    run.run(monmap_cmd(lay), "monmaptool")
    run.run(mkfs_cmd(lay, "mon", "a", "--monmap", str(lay.base / "monmap")), "ceph-mon --mkfs",
            ("mon.a",))  # fmt: skip
    run.start("node-mon", "mon.a", daemon_cmd(lay, "mon", "a"))
    run.wait("the monitor", lambda: bool(run.json("mon", "stat")), ("mon.a",))
    run.start("node-mgr", "mgr.x", daemon_cmd(lay, "mgr", "x"))
    for i in range(OSDS):
        _make_osd(run, i)
    osd_logs = tuple(f"osd.{i}" for i in range(OSDS))
    run.wait(f"{OSDS} OSDs up", lambda: osds_up(run.json("status")) >= OSDS, osd_logs)
    run.json("osd", "pool", "create", META_POOL, str(PG_NUM))
    run.json("osd", "pool", "create", DATA_POOL, str(PG_NUM))
    run.json("fs", "new", FS_NAME, META_POOL, DATA_POOL)
    sizes = pool_sizes(run.json("osd", "pool", "ls", "detail"))
    if sizes.get(DATA_POOL) != SIZE or sizes.get(META_POOL) != SIZE:
        raise CephError(f"pool sizes are {sizes}, not {SIZE}")
    run.start("node-mds", "mds.a", daemon_cmd(lay, "mds", "a"))
    run.wait("the MDS up:active", lambda: mds_active(run.json("fs", "dump")), ("mds.a",))

    def clean() -> bool:
        done, total = pgs_clean(run.json("status"))
        return total > 0 and done == total

    run.wait("every placement group active+clean", clean, ("mgr.x", *osd_logs))


@contextlib.contextmanager
def _mounted(run: _Run) -> Iterator[Callable[[], None]]:
    """``ceph-fuse`` on the mount point; yields a remount (a fresh client process)."""
    lay = run.lay
    current: list[subprocess.Popen[bytes]] = []

    def mount() -> None:
        log = lay.base / "log" / "ceph-fuse.out"
        child = spawn_in(fuse_cmd(lay), lay.base, log)
        current.append(child)
        run.pids["mount"] = child.pid
        try:
            proc.wait_mounted(lay.mountpoint, child, timeout=START_TIMEOUT, what="ceph-fuse")
        except proc.ProcessError as e:
            raise CephError(f"{e}{log_tail(log)}{log_tail(run.log('client.admin'))}") from None

    def unmount() -> None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            proc.unmount(lay.mountpoint)
        while current:
            stop_child(current.pop(), STOP_TIMEOUT)

    def remount() -> None:
        """A fresh client process: nothing of the old one's caches survives."""
        unmount()
        mount()

    lay.mountpoint.mkdir()
    try:
        mount()
        yield remount
    finally:
        unmount()


@contextlib.contextmanager
def cluster(base: Path, ports: list[int] | None = None) -> Iterator[Cluster]:
    """A fresh CephFS mounted at ``base/mnt``, its daemons' data beside it.

    ``ports``: the monitor's two (msgr2, msgr1), else two the kernel reports free.

    Raises:
        CephError: Ceph cannot run here, or a step of the set-up failed.
    """
    why = why_not()
    if why:
        raise CephError(why)
    mon = ports or free_ports(2, HOST)
    if len(mon) != 2 or mon[0] == mon[1]:
        raise ValueError(f"need two distinct ports, got {mon}")
    lay = Layout(base, str(uuid.uuid4()), (mon[0], mon[1]))
    run = _Run(lay)
    try:
        _boot(run)
        with _mounted(run) as remount:
            info = {"replica": SIZE, "osds": OSDS, "conf": str(lay.conf)}
            yield Cluster(lay.mountpoint, run.pids, info, remount)
    finally:
        run.stop()
