"""What the user-facing benchmarks share: the four targets, progress, statistics, results.

A *target* is somewhere a workload runs; the Andrew and PostMark benchmarks run the same
workload on each of them, interleaved (A B C A B C ...) so that drift on a shared 2-core
machine hits every target alike:

* ``local``: a directory on the local disk, the physical limit;
* ``bindfs``: the same kind of directory through ``bindfs``, a FUSE pass-through written in
  C (Debian's package): the cost of FUSE itself;
* ``glusterfs``: a GlusterFS replica-3 volume on three local bricks, mounted with
  ``mount -t glusterfs`` (``benchmarks/gluster.py``): the replicated file system users pick
  for a few machines, which tolerates crashes only (a real peer beside every figure);
* ``seaweedfs``: a SeaweedFS cluster (a master, three volume servers, a filer, replication
  ``002``) mounted with ``weed mount`` (``benchmarks/seaweed.py``): a living peer;
* ``moosefs``: a MooseFS cluster (a master and three chunkservers in network namespaces,
  goal 3) mounted with ``mfsmount`` (``benchmarks/moosefs.py``): another;
* ``cephfs``: a CephFS cluster (a monitor, a manager, three BlueStore OSDs, an MDS, pool
  size 3) mounted with ``ceph-fuse`` (``benchmarks/cephfs.py``): a third, whose OSDs fsync;
* ``bftfs``: bftfs mounted on a fresh cluster of real node processes (``t = b = 1`` by
  default), optionally with nodes SIGKILLed before the mount (the degraded run the BFT
  literature reports).

Every target is opened fresh for each repetition (a new directory, a new bindfs mount, a new
GlusterFS volume and mount, a new cluster and mount) and always torn down, even when the
workload fails or the run is interrupted (SIGTERM is turned into ``KeyboardInterrupt`` so
``finally`` blocks run).

Results are written as JSON (every sample, with the machine, the commit and the
configuration), a Markdown table and PNG plots under ``benchmarks/results/``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import attack
import cephfs
import gluster
import moosefs
import seaweed

from bftfs import proc  # the standard library only: no protocol code

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"
RESULTS_DIR = BENCH_DIR / "results"
CACHE_DIR = BENCH_DIR / ".cache"

#: Mount options of every bftfs mount the benchmarks make (``-o``; the environment's
#: ``BFTFS_BENCH_OPTIONS``, e.g. ``allow_other,lease=0``); unset: the
#: defaults (``allow_other`` as root).
MOUNT_OPTIONS = os.environ.get("BFTFS_BENCH_OPTIONS")
#: ``[cluster] block_size`` of every bftfs cluster the benchmarks start, in KiB (the
#: environment's ``BFTFS_BENCH_BLOCK_KIB``, e.g. ``256``); unset: the default (64 KiB).
BLOCK_KIB = os.environ.get("BFTFS_BENCH_BLOCK_KIB")
#: ``[cluster] big_block_size`` (per-file block size of sequentially written files,
#: docs/fs.md) in KiB (the environment's ``BFTFS_BENCH_BIG_BLOCK_KIB``; ``0`` turns the
#: feature off, so it can be measured against every file having ``block_size``); unset:
#: the default (1 MiB).
BIG_BLOCK_KIB = os.environ.get("BFTFS_BENCH_BIG_BLOCK_KIB")
#: ``[verification]`` keys for every bftfs cluster the benchmarks start (the environment's
#: ``BFTFS_BENCH_VERIFICATION``, e.g. ``stream_seconds=0,per_client=2048``), so a policy
#: change can be measured against its old setting on the same tree; unset: the defaults.
VERIFICATION = os.environ.get("BFTFS_BENCH_VERIFICATION", "")
#: Each node's LMDB map: the size ``bftfs init`` and ``make up`` give (a sparse file;
#: ``config/model.DEFAULT_MAP_SIZE``, not imported: no protocol code here).  It was 1 GiB,
#: which the ageing workload (a 1 GiB file written and removed per round, kept as history
#: for ``keep_seconds``) filled in its third round (ENOSPC): a benchmark must measure the
#: cluster a user gets.
MAP_SIZE = 16 << 30


# Progress ---------------------------------------------------------------------------------


class Progress:
    """Timestamped progress lines on stderr, so a long run shows where it is."""

    def __init__(self, name: str, quiet: bool = False) -> None:
        self.name = name
        self.quiet = quiet
        self.t0 = time.monotonic()

    def __call__(self, msg: str, end: str = "\n") -> None:
        if self.quiet:
            return
        m, s = divmod(int(time.monotonic() - self.t0), 60)
        sys.stderr.write(f"[{self.name} {m:2d}:{s:02d}] {msg}{end}")
        sys.stderr.flush()

    def more(self, msg: str, end: str = "") -> None:
        """Continue the current line (no timestamp)."""
        if not self.quiet:
            sys.stderr.write(msg + end)
            sys.stderr.flush()


def install_sigterm_handler() -> None:
    """Turn SIGTERM into KeyboardInterrupt so mounts and clusters are torn down."""

    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _raise)


# Statistics -------------------------------------------------------------------------------


def median(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


def spread(xs: Sequence[float]) -> tuple[float, float] | None:
    return (min(xs), max(xs)) if xs else None


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_s(x: float | None) -> str:
    """Seconds, with a precision that suits their size."""
    if x is None:
        return "-"
    if x < 0.1:
        return f"{x * 1000:.1f} ms"
    if x < 10:
        return f"{x:.2f} s"
    return f"{x:.1f} s"


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


# Machine and commit -----------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: they mean little without it."""
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
                break
    return {
        "hostname": platform.node(),
        "kernel": platform.release(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": mem,
        "python": platform.python_version(),
        "loadavg_start": list(os.getloadavg()),
        "tools": {
            **{name: tool_version(name) for name in ("bindfs", "postmark", "cc")},
            "glusterfs": gluster.version(),
            "seaweedfs": seaweed.version(),
            "moosefs": moosefs.version(),
            "cephfs": cephfs.version(),
        },
    }


def tool_version(name: str) -> str | None:
    path = shutil.which(name)
    if path is None:
        return None
    try:
        r = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return path
    out = (r.stdout or r.stderr).strip().splitlines()
    return out[0] if out else path


def commit_info() -> dict[str, Any]:
    """The commit measured, and whether the work tree had uncommitted changes."""

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": git("rev-parse", "HEAD"),
        "subject": git("log", "-1", "--format=%s"),
        "dirty": bool(status) if status is not None else None,
    }


def now_utc() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)


def write_results(
    out: Path,
    stem: str,
    result: dict[str, Any],
    markdown: Any,
    plot: Any,
    progress: Any,
    *,
    with_plot: bool = True,
) -> str:
    """Write ``<stem>.json``, ``.md`` (``markdown(result)``) and, unless disabled, ``.png``
    (``plot(result, path)`` returns whether it drew); the Markdown text."""
    write_json(out / f"{stem}.json", result)
    md = str(markdown(result))
    (out / f"{stem}.md").write_text(md)
    if with_plot and plot(result, out / f"{stem}.png"):
        progress(f"wrote {out / (stem + '.png')}")
    progress(f"wrote {out / (stem + '.json')} and .md")
    return md


# Targets ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetSpec:
    """One place a workload runs; ``kind`` is local, bindfs, a peer (glusterfs, seaweedfs,
    moosefs, cephfs) or bftfs."""

    name: str  # short name used in results, e.g. "bftfs b=1 (1 down)"
    kind: str
    t: int = 1
    b: int = 1
    down: tuple[int, ...] = ()  # node ids SIGKILLed before the mount
    #: Node ids run with ``--byzantine corrupt-fragments`` (every fragment they serve is
    #: corrupt: readers must notice and read another node's).
    corrupt: tuple[int, ...] = ()
    durable: bool = True
    #: The nodes' [verification] mode (bftfs/policy.py); "off" for the bftfs-noverify target.
    verification: str = "lazy-coop"
    #: Mount options added to the benchmarks' own (``bftfs-lease``: ``lease=30``).
    mount_options: str = ""
    #: Whether the cluster has a volume key, so that mounts encrypt contents (issue 38;
    #: ``bftfs-plain``: none, as every cluster before it).
    seal: bool = True
    #: Measured after the ageing workload (``variants.py``, ``--aged``; issue 62).
    aged: bool = False
    #: Load beside the run (``variants.py``, ``--load``): "", "cpu" or "nice-node".
    load: str = ""
    #: The attack beside the run (``attack.py``, ``--attack``): a node profile or "client".
    attack: str = ""
    #: bftfs: groups of ``n`` nodes in the cluster (``bftfs init --groups``, docs/layout.md).
    groups: int = 1


#: The lease term of the ``bftfs-lease`` target (seconds; mount option ``lease=``).
BENCH_LEASE = 30


@dataclass
class Site:
    """An opened target: the directory to run in, and the processes serving it."""

    spec: TargetSpec
    path: Path
    pids: dict[str, int] = field(default_factory=dict)  # "mount", "node1", ... for profiling
    setup_s: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    config: Any = None  # bftfs: the ClusterConfig, to ask the nodes for their counters
    #: A fresh client on the same data (a new FUSE daemon), for reads that must start cold
    #: (``benchmarks/seqio.py``); None where the kernel holds the only cache (local, bindfs).
    remount: Callable[[], None] | None = None


class TargetError(RuntimeError):
    """A target could not be set up; the message says why (and includes daemon logs)."""


def local_spec() -> TargetSpec:
    return TargetSpec("local", "local")


def bindfs_spec() -> TargetSpec:
    return TargetSpec("bindfs", "bindfs")


def glusterfs_spec() -> TargetSpec:
    return TargetSpec("glusterfs", "glusterfs")


def seaweedfs_spec() -> TargetSpec:
    return TargetSpec("seaweedfs", "seaweedfs")


def moosefs_spec() -> TargetSpec:
    return TargetSpec("moosefs", "moosefs")


def cephfs_spec() -> TargetSpec:
    return TargetSpec("cephfs", "cephfs")


def bftfs_spec(
    t: int,
    b: int,
    down: Sequence[int] = (),
    durable: bool = True,
    verification: str = "lazy-coop",
    corrupt: Sequence[int] = (),
) -> TargetSpec:
    name = f"bftfs t={t},b={b}" if t != b else f"bftfs b={b}"
    if down:
        name += f" ({len(down)} down)"
    if corrupt:
        name += f" ({len(corrupt)} corrupting)"
    if not durable:
        name += " (no fsync)"
    if verification != "lazy-coop":
        name += f" (verification {verification})"
    return TargetSpec(
        name,
        "bftfs",
        t=t,
        b=b,
        down=tuple(down),
        durable=durable,
        verification=verification,
        corrupt=tuple(corrupt),
    )


def spec_named(name: str, t: int, b: int, durable: bool, down: int = 0) -> TargetSpec | None:
    """The target a benchmark's ``--targets`` entry names (local, bindfs, glusterfs,
    seaweedfs, moosefs, cephfs, bftfs,
    bftfs-down: ``down`` nodes killed before the mount, bftfs-corrupt: ``down`` nodes (at
    least one) corrupting every fragment they serve, bftfs-noverify: no lazy verification
    on the nodes, bftfs-lease: the mount takes leases (the default since issue 33, so the
    same as bftfs but for its name), bftfs-nolease: it takes none (``lease=0``, as before),
    bftfs-plain: no volume key, contents unencrypted as before issue 38), or None for an
    unknown name."""
    if name == "local":
        return local_spec()
    if name == "bindfs":
        return bindfs_spec()
    if name == "glusterfs":
        return glusterfs_spec()
    if name == "seaweedfs":
        return seaweedfs_spec()
    if name == "moosefs":
        return moosefs_spec()
    if name == "cephfs":
        return cephfs_spec()
    if name == "bftfs":
        return bftfs_spec(t, b, durable=durable)
    if name == "bftfs-down":
        return bftfs_spec(t, b, tuple(range(down)), durable=durable)
    if name == "bftfs-corrupt":
        return bftfs_spec(t, b, durable=durable, corrupt=tuple(range(max(down, 1))))
    if name == "bftfs-noverify":
        return bftfs_spec(t, b, durable=durable, verification="off")
    if name == "bftfs-plain":
        spec = bftfs_spec(t, b, durable=durable)
        return replace(spec, name=spec.name + " unencrypted", seal=False)
    if name == "bftfs-lease":
        spec = bftfs_spec(t, b, durable=durable)
        return replace(spec, name=spec.name + " lease", mount_options=f"lease={BENCH_LEASE}")
    if name == "bftfs-nolease":
        spec = bftfs_spec(t, b, durable=durable)
        return replace(spec, name=spec.name + " no lease", mount_options="lease=0")
    return None


def _mount_options(spec: TargetSpec) -> str:
    """The benchmarks' mount options (``BFTFS_BENCH_OPTIONS``) with the target's own, and
    metrics on any free port unless they name one (``costs.py`` reads the Q/U rounds)."""
    base = (
        MOUNT_OPTIONS if MOUNT_OPTIONS is not None else ("allow_other" if os.getuid() == 0 else "")
    )
    parts = [x for x in (base, spec.mount_options) if x]
    if not any("metrics_port=" in x for x in parts):
        parts.append("metrics_port=0")
    return ",".join(parts)


def fuse_unmount(mnt: Path) -> None:
    """Unmount a FUSE mount; lazily if it is busy, so tear-down never hangs on it."""
    proc.unmount(mnt)


def _wait_mounted(mnt: Path, child: subprocess.Popen[bytes], what: str, wait: float = 30.0) -> None:
    try:
        proc.wait_mounted(mnt, child, timeout=wait, what=what)
    except proc.ProcessError as e:
        raise TargetError(str(e)) from None


#: The peers set up by a module of their own: each kind's name in errors, the context
#: manager that sets it up under a directory and yields the mounted cluster, and the error
#: it raises when it cannot.
_PEERS: dict[
    str, tuple[str, Callable[[Path], contextlib.AbstractContextManager[Any]], type[Exception]]
] = {
    "glusterfs": ("GlusterFS", gluster.volume, gluster.GlusterError),
    "seaweedfs": ("SeaweedFS", seaweed.cluster, seaweed.SeaweedError),
    "moosefs": ("MooseFS", moosefs.cluster, moosefs.MooseError),
    "cephfs": ("CephFS", cephfs.cluster, cephfs.CephError),
}


@contextlib.contextmanager
def open_target(spec: TargetSpec, work: Path, tag: str) -> Iterator[Site]:
    """Set up ``spec`` fresh under ``work`` (``tag`` names this repetition); tear it down.

    Raises:
        TargetError: the target could not be set up (e.g. bftfs does not mount yet).
    """
    base = work / f"{spec.name.replace(' ', '_').replace('(', '').replace(')', '')}-{tag}"
    base.mkdir(parents=True)
    try:
        t0 = time.perf_counter()
        if spec.kind == "local":
            d = base / "dir"
            d.mkdir()
            yield Site(spec, d, setup_s=time.perf_counter() - t0)
        elif spec.kind == "bindfs":
            with _bindfs(base) as (mnt, pid):
                yield Site(spec, mnt, {"bindfs": pid}, setup_s=time.perf_counter() - t0)
        elif spec.kind in _PEERS:
            label, open_peer, error = _PEERS[spec.kind]
            try:
                with open_peer(base) as peer:
                    yield Site(
                        spec,
                        peer.mountpoint,
                        peer.pids,
                        setup_s=time.perf_counter() - t0,
                        info=peer.info,
                        remount=peer.remount,
                    )
            except error as e:
                raise TargetError(f"{label}: {e}") from e
        elif spec.kind == "bftfs":
            with _bftfs(spec, base) as site:
                site.setup_s = time.perf_counter() - t0
                yield site
        else:
            raise ValueError(f"unknown target kind {spec.kind!r}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def _bindfs(base: Path) -> Iterator[tuple[Path, int]]:
    exe = shutil.which("bindfs")
    if exe is None:
        raise TargetError("bindfs is not installed (scripts/setup-bench.sh installs it)")
    src, mnt = base / "backing", base / "mnt"
    src.mkdir()
    mnt.mkdir()
    # -f keeps the daemon our child, so we know its pid and can wait for it to exit.
    child = proc.spawn([exe, "-f", str(src), str(mnt)])
    try:
        _wait_mounted(mnt, child, "bindfs")
        yield mnt, child.pid
    finally:
        fuse_unmount(mnt)
        proc.wait_exit(child)


def _verification(mode: str) -> Any:
    """The nodes' policy: ``mode`` (the target's) and ``BFTFS_BENCH_VERIFICATION``'s keys."""
    from bftfs.policy import verification_from

    table: dict[str, Any] = {"mode": mode}
    for item in filter(None, (i.strip() for i in VERIFICATION.split(","))):
        key, _, value = item.partition("=")
        table[key.strip()] = float(value) if "." in value else int(value)
    return verification_from(table)


def node_args(spec: TargetSpec) -> dict[int, list[str]]:
    """The ``bftfs node`` options per node: ``--byzantine`` for the corrupting nodes, and
    for the node an attack variant's profile runs on (``attack.py``)."""
    args = {i: ["--byzantine", "corrupt-fragments"] for i in spec.corrupt}
    if spec.attack and not attack.is_client(spec.attack):
        args[attack.NODE] = ["--byzantine", spec.attack]
    return args


@contextlib.contextmanager
def _bftfs(spec: TargetSpec, base: Path) -> Iterator[Site]:
    # Imported here so the local and bindfs targets work even when bftfs cannot be imported.
    from bftfs.local import ClusterError
    from bftfs.testing.mounts import Mount
    from bftfs.testing.processes import ProcessCluster

    mnt = base / "mnt"
    with contextlib.ExitStack() as stack:
        # The ports a new cluster gets from the OS are free when it is created; another
        # process can take one before a node binds it.  One retry on fresh ports, then the
        # target fails (recorded, the benchmark goes on).
        for attempt in (1, 2):
            try:
                pc = stack.enter_context(
                    ProcessCluster(
                        base / f"cluster{attempt}",
                        node_args=node_args(spec),
                        t=spec.t,
                        b=spec.b,
                        map_size=MAP_SIZE,
                        durable=spec.durable,
                        verification=_verification(spec.verification),
                        seal=spec.seal,
                        **({"groups": spec.groups} if spec.groups > 1 else {}),
                        **({"block_size": int(BLOCK_KIB) * 1024} if BLOCK_KIB else {}),
                        **(
                            {"big_block_size": int(BIG_BLOCK_KIB) * 1024}
                            if BIG_BLOCK_KIB is not None
                            else {}
                        ),
                    )
                )
                break
            except ClusterError as e:
                if attempt == 2:
                    raise TargetError(f"bftfs nodes did not start: {e}") from e
        cfg = pc.config
        for i in spec.down:
            pc.kill(i)
        try:
            m = Mount(cfg, mnt, options=_mount_options(spec))
            m.__enter__()
        except Exception as e:  # the mount failed: say why, with the daemon's log
            raise TargetError(f"bftfs did not mount: {e}") from e
        mounts = [m]  # the current mount is the last; a remount replaces it
        try:
            pids = {"mount": m.proc.pid} if m.proc is not None else {}
            for i in range(cfg.n):
                pid = pc.pid(i)
                if pid is not None and i not in spec.down:
                    pids[f"node{i}"] = pid
            info = {
                "n": cfg.n,
                "qc": cfg.qc,
                "m": cfg.m,
                "block_size": cfg.block_size,
                "big_block_size": cfg.big_blocks,
            }

            def remount() -> None:
                """A new mount daemon on the same cluster: the old one's block cache and
                open-file state go with it."""
                mounts.pop().__exit__(None, None, None)
                try:
                    fresh = Mount(cfg, mnt, options=_mount_options(spec))
                    fresh.__enter__()
                except Exception as e:
                    raise TargetError(f"bftfs did not mount again: {e}") from e
                mounts.append(fresh)
                if fresh.proc is not None:
                    pids["mount"] = fresh.proc.pid

            yield Site(spec, mnt, pids, info=info, config=cfg, remount=remount)
        finally:
            for mm in mounts:
                mm.__exit__(None, None, None)


#: The peers' checks before the first run: why each cannot be set up here, or None.
PEERS: dict[str, Callable[[], str | None]] = {
    "glusterfs": gluster.why_not,
    "seaweedfs": seaweed.why_not,
    "moosefs": moosefs.why_not,
    "cephfs": cephfs.why_not,
}


def skip_reasons(specs: Sequence[TargetSpec]) -> dict[str, str]:
    """Why each target that cannot run here is left out, checked before the first run.

    A skipped target is reported in the results, never a failure of the benchmark: a
    reference file system missing from this machine says nothing about bftfs.
    """
    fuse = check_fuse()
    out: dict[str, str] = {}
    for s in specs:
        if s.kind != "local" and fuse:
            out[s.name] = f"FUSE targets cannot run: {fuse}"
        elif s.kind in PEERS:
            why = PEERS[s.kind]()
            if why:
                out[s.name] = why
    return out


def skip_after_failure(spec: TargetSpec, err: Exception, skipped: dict[str, str]) -> bool:
    """Record that a peer (GlusterFS, SeaweedFS, MooseFS, CephFS) could not be set up, so its later
    repetitions are skipped rather than each failing the same way (glusterd not starting on
    this machine is not a result); True when ``spec`` is now skipped.  bftfs failures stay
    failures."""
    if spec.kind not in PEERS or not isinstance(err, TargetError):
        return False
    skipped[spec.name] = f"set-up failed: {err}"
    return True


def glusterfs_note(result: dict[str, Any]) -> str:
    """One sentence on the GlusterFS target for a results table, or '' without it."""
    if "glusterfs" not in result["config"].get("targets", []):
        return ""
    ver = (result["machine"].get("tools") or {}).get("glusterfs") or "GlusterFS"
    return (
        f" glusterfs = {ver}, a replica-3 volume on three bricks in the scratch directory "
        "(one machine, loopback; tolerates crashes, not Byzantine faults), created, mounted "
        "with mount -t glusterfs and deleted for each run."
    )


def seaweedfs_note(result: dict[str, Any]) -> str:
    """One sentence on the SeaweedFS target (its servers do not fsync), or '' without it."""
    if "seaweedfs" not in result["config"].get("targets", []):
        return ""
    ver = (result["machine"].get("tools") or {}).get("seaweedfs") or "SeaweedFS"
    return seaweed.NOTE.format(ver=ver)


def moosefs_note(result: dict[str, Any]) -> str:
    """One sentence on the MooseFS target (its servers do not fsync), or '' without it."""
    if "moosefs" not in result["config"].get("targets", []):
        return ""
    ver = (result["machine"].get("tools") or {}).get("moosefs") or "MooseFS"
    return moosefs.NOTE.format(ver=ver)


def cephfs_note(result: dict[str, Any]) -> str:
    """One sentence on the CephFS target (its OSDs fsync), or '' without it."""
    if "cephfs" not in result["config"].get("targets", []):
        return ""
    ver = (result["machine"].get("tools") or {}).get("cephfs") or "Ceph"
    return cephfs.NOTE.format(ver=ver)


def peers_note(result: dict[str, Any]) -> str:
    """The sentences on the peers in a results table (:func:`glusterfs_note`,
    :func:`seaweedfs_note`, :func:`moosefs_note`, :func:`cephfs_note`)."""
    return (
        glusterfs_note(result) + seaweedfs_note(result) + moosefs_note(result) + cephfs_note(result)
    )


def machine_markdown(result: dict[str, Any]) -> list[str]:
    """The closing lines of a results file: the machine, its load at the start and the end
    of the run, and the commit measured (``machine_info``, ``commit_info``)."""
    m, c = result["machine"], result["commit"]
    return [
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, kernel {m['kernel']}, Python {m['python']}; "
        f"load average {m['loadavg_start'][0]:.2f} at start, {m['loadavg_end'][0]:.2f} at end. "
        f"Commit {str(c['commit'])[:10]}{' (with uncommitted changes)' if c['dirty'] else ''}.",
    ]


def skipped_markdown(skipped: dict[str, str]) -> list[str]:
    if not skipped:
        return []
    lines = ["", "Skipped targets (could not run on this machine):"]
    for name, why in skipped.items():
        lines.append(f"- {name}: `{' '.join(why.split())[:600]}`")
    return lines


class Watchdog:
    """Kills a site's FUSE daemon if the body runs past ``seconds`` (``with Watchdog(...)``).

    A hung file system would block this process in a system call forever; killing the
    daemon makes the kernel fail the pending requests (ENOTCONN), so the body raises and the
    target is torn down instead of hanging ``make bench``.  ``fired`` says whether it did.
    """

    def __init__(self, site: Site, seconds: float) -> None:
        self.site = site
        self.fired = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        self.fired = True
        for key in ("mount", "bindfs"):
            pid = self.site.pids.get(key)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def check_fuse() -> str | None:
    """Why FUSE targets cannot run here, or None."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None and shutil.which("fusermount") is None:
        return "fusermount3 is missing (Debian package fuse3)"
    return None


# Plots ------------------------------------------------------------------------------------


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend, or None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


TARGET_COLOURS = {
    "local": "#4c72b0",
    "bindfs": "#55a868",
    "glusterfs": "#8c613c",
    "seaweedfs": "#64b5cd",
    "moosefs": "#937860",
    "cephfs": "#da8bc3",
    "bftfs": "#c44e52",
    "down": "#dd8452",
}


def colour_for(name: str) -> str:
    if name.startswith("bftfs"):
        return TARGET_COLOURS["down"] if "down" in name else TARGET_COLOURS["bftfs"]
    return TARGET_COLOURS.get(name, "#8172b2")
