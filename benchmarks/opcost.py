"""What one file-system operation costs: wall time and CPU per process, side by side.

PostMark and Andrew say how fast bftfs is; this says where an operation's time goes, which
is what an optimisation has to move.  On 2 cores shared by the workload, the FUSE daemon and
six node processes, a round's latency is roughly the CPU all of them spend on it divided by
the cores, so CPU per operation (from ``/proc``, user and system time of every thread) is
the steadier figure to compare before and after a change; wall time on these machines
varies by 10-30% between runs.

Operations, each over ``--files`` distinct files of ``--size`` bytes in one directory (the
shape of PostMark's working set), after the attributes the kernel cached have gone stale
(``--attr-timeout`` of the mount, 1 s by default), as they have in PostMark:

* ``create``: ``open(O_CREAT|O_WRONLY)``, one write, close (lookup of a missing name,
  create, flush);
* ``open``: open and close of an existing file (the kernel's permission check asks for
  fresh attributes, then the open revalidates: close-to-open);
* ``stat``: ``stat`` of an existing file;
* ``read``: open, read it all, close;
* ``lock``: open, ``lockf`` it whole exclusively, unlock, close (the ``fcntl`` lock and
  unlock rounds, issue 37: this minus ``open`` is their cost);
* ``link``: ``link(f, f.l)``: a second name for a file made long ago (sent);
* ``unlink link``: remove that second name (the file keeps its first);
* ``unlink``: remove a file created long ago, its last name;
* ``git object``: what git does per object (``finalize_object_file``): ``lstat`` of the
  missing final name, a temporary ``open(O_CREAT|O_EXCL)``, one write, close, ``link`` of
  it to the final name and ``unlink`` of the temporary: a link and an unlink of a file
  just created.

For bftfs each operation also gets the mount's Q/U operations per file, by method, from
its metrics (``bftfs_mount_qu_operations_total``; answers given in the mount, counted as
``known ...`` and ``leased ...``, left out): which rounds an operation costs, and why.

Targets: the local disk, bindfs (FUSE pass-through) and bftfs on a fresh cluster, in that
order, ``--runs`` times interleaved; medians are printed with ratios to the local disk.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
import costs
from common import Progress, Site, TargetSpec
from profiling import cpu_seconds

OPERATIONS = (
    "create",
    "open",
    "stat",
    "read",
    "lock",
    "link",
    "unlink link",
    "unlink",
    "git object",
)
#: Longer than the mount's default attribute timeout (1 s), so each phase starts with the
#: attributes stale in the kernel, as they are when PostMark comes back to a file.
STALE_WAIT = 1.2


def _cpu_seconds(pids: list[int]) -> float:
    """CPU seconds of ``pids`` together (a process that is gone counts 0)."""
    return sum(cpu_seconds(pid) or 0.0 for pid in pids)


def _workloads(d: Path, files: int, data: bytes) -> dict[str, Callable[[], None]]:
    names = [d / f"f{i:05d}" for i in range(files)]

    def create() -> None:
        for p in names:
            fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
            os.write(fd, data)
            os.close(fd)

    def open_close() -> None:
        for p in names:
            os.close(os.open(p, os.O_RDONLY))

    def stat() -> None:
        for p in names:
            os.stat(p)

    def read() -> None:
        for p in names:
            fd = os.open(p, os.O_RDONLY)
            while os.read(fd, 1 << 16):
                pass
            os.close(fd)

    def lock() -> None:
        for p in names:
            fd = os.open(p, os.O_RDWR)
            fcntl.lockf(fd, fcntl.LOCK_EX)
            fcntl.lockf(fd, fcntl.LOCK_UN)
            os.close(fd)

    def link() -> None:
        for p in names:
            os.link(p, p.with_suffix(".l"))

    def unlink_link() -> None:
        for p in names:
            os.unlink(p.with_suffix(".l"))

    def unlink() -> None:
        for p in names:
            os.unlink(p)

    def git_object() -> None:
        objects = d / "objects"
        objects.mkdir()
        for i in range(files):
            final = objects / f"{i:05d}"
            with contextlib.suppress(FileNotFoundError):
                os.lstat(final)
            tmp = objects / f"tmp_obj_{i:05d}"
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o444)
            os.write(fd, data)
            os.close(fd)
            os.link(tmp, final)
            os.unlink(tmp)

    return {
        "create": create,
        "open": open_close,
        "stat": stat,
        "read": read,
        "lock": lock,
        "link": link,
        "unlink link": unlink_link,
        "unlink": unlink,
        "git object": git_object,
    }


def run_once(site: Site, files: int, size: int) -> dict[str, dict[str, float]]:
    """Every operation once on ``site``: per operation, wall and CPU seconds per file."""
    d = site.path / "opcost"
    d.mkdir()
    nodes = [pid for name, pid in site.pids.items() if name.startswith("node")]
    daemon = [pid for name, pid in site.pids.items() if not name.startswith("node")]
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    out: dict[str, dict[str, float]] = {}
    for op, fn in _workloads(d, files, data).items():
        time.sleep(STALE_WAIT)  # not synchronisation: lets cached attributes expire
        f0, q0 = _frames_in(site), _qu_methods(site)
        n0, m0, t0 = _cpu_seconds(nodes), _cpu_seconds(daemon), time.perf_counter()
        fn()
        n1, m1, t1 = _cpu_seconds(nodes), _cpu_seconds(daemon), time.perf_counter()
        f1, q1 = _frames_in(site), _qu_methods(site)
        out[op] = {
            "wall": (t1 - t0) / files,
            "daemon_cpu": (m1 - m0) / files,
            "nodes_cpu": (n1 - n0) / files,
        }
        if f0 is not None and f1 is not None:
            out[op]["frames"] = (f1 - f0) / files
        for method, n in q1.items():
            if n > q0.get(method, 0):
                out[op][f"qu {method}"] = (n - q0.get(method, 0)) / files
    return out


def _qu_methods(site: Site) -> dict[str, float]:
    """The mount's Q/U operations sent so far, by method (bftfs only; empty elsewhere):
    ``bftfs_mount_qu_operations_total`` of its metrics, answers given in the mount
    (``known ...``, ``leased ...``) left out."""
    if site.config is None:
        return {}
    import json

    from bftfs.fuse.control import status_file

    try:
        address = json.loads(status_file(site.config, site.path).read_text())["metrics"]
        samples = costs.scrape(address)
    except (OSError, ValueError, KeyError):  # a diagnostic: never fail a run over it
        return {}
    prefix = 'bftfs_mount_qu_operations_total{method="'
    out = {}
    for key, value in samples.items():
        if key.startswith(prefix):
            method = key[len(prefix) :].split('"')[0]
            if " " not in method:
                out[method] = value
    return out


def rounds_table(results: dict[str, list[dict[str, dict[str, float]]]]) -> str:
    """Markdown: per operation, bftfs's Q/U operations per file by method (medians)."""
    lines = ["| operation | target | Q/U operations per file, by method |", "|---|---|---|"]
    for name, runs in results.items():
        if not runs or not name.startswith("bftfs"):
            continue
        for op in OPERATIONS:
            keys = sorted({k for r in runs for k in r[op] if k.startswith("qu ")})
            parts = [
                f"{k[3:]} {common.median([r[op].get(k, 0.0) for r in runs]):.2f}" for k in keys
            ]
            lines.append(f"| {op} | {name} | {', '.join(parts) or 'none'} |")
    return "\n".join(lines)


def _frames_in(site: Site) -> int | None:
    """Frames the nodes have received so far, summed (bftfs only; asking costs a frame per
    node, outside the timed part)."""
    if site.config is None:
        return None
    import trio

    from bftfs.local import query_status

    try:
        statuses = trio.run(lambda: query_status(site.config, timeout=2.0, client="client1"))
    except Exception:  # a diagnostic: never fail a run over it
        return None
    return sum(
        int((st.stats.get("traffic") or {}).get("frames_in", 0)) for st in statuses if st.stats
    )


def _fmt_ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1e3:.3f}" if x < 1e-4 else f"{x * 1e3:.2f}"


def table(results: dict[str, list[dict[str, dict[str, float]]]]) -> str:
    """Markdown: per operation and target, median wall and CPU (ms per file), ratio."""
    lines = [
        "| operation | target | wall ms | x local | FUSE daemon CPU ms | nodes CPU ms "
        "| frames into nodes |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    local = results.get("local", [])
    for op in OPERATIONS:
        base = common.median([r[op]["wall"] for r in local]) if local else None
        for name, runs in results.items():
            if not runs:
                lines.append(f"| {op} | {name} | failed | | | | |")
                continue
            wall = common.median([r[op]["wall"] for r in runs])
            daemon = common.median([r[op]["daemon_cpu"] for r in runs])
            nodes = common.median([r[op]["nodes_cpu"] for r in runs])
            counted = [r[op]["frames"] for r in runs if "frames" in r[op]]
            frames = common.median(counted) if counted else None
            lines.append(
                f"| {op} | {name} | {_fmt_ms(wall)} | {common.fmt_ratio(common.ratio(wall, base))}"
                f" | {_fmt_ms(daemon) if name != 'local' else '-'}"
                f" | {_fmt_ms(nodes) if name.startswith('bftfs') else '-'}"
                f" | {f'{frames:.2f}' if frames is not None else '-'} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Wall time and CPU per file-system operation: bftfs, the local disk and "
        "bindfs, interleaved.",
        epilog="CPU is read from /proc (all threads of the FUSE daemon and of the nodes); on "
        "2 shared cores it is the figure to compare before and after a change.",
    )
    ap.add_argument("--files", type=int, default=300, help="files per operation (300)")
    ap.add_argument("--size", type=int, default=3000, help="bytes per file (3000: inline)")
    ap.add_argument("--runs", type=int, default=3, help="interleaved repetitions (3)")
    ap.add_argument("--b", type=int, default=1, help="bftfs: t = b (1)")
    ap.add_argument("--no-durable", action="store_true", help="bftfs nodes do not fsync")
    ap.add_argument(
        "--targets", default="local,bindfs,bftfs", help="comma-separated, in interleaving order"
    )
    ap.add_argument("--work", type=Path, help="scratch directory (default: under /var/tmp)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    args = ap.parse_args(argv)
    if args.files < 1 or args.size < 0 or args.runs < 1:
        ap.error("--files and --runs must be positive, --size not negative")
    progress = Progress("opcost", args.quiet)
    specs: list[TargetSpec] = []
    for name in args.targets.split(","):
        spec = common.spec_named(name, args.b, args.b, not args.no_durable)
        if spec is None or name == "bftfs-down":
            ap.error(f"unknown target {name!r} (local, bindfs, bftfs)")
        specs.append(spec)
    problem = common.check_fuse() if any(s.kind != "local" for s in specs) else None
    if problem:
        print(f"opcost: {problem}", file=sys.stderr)
        return 1
    common.install_sigterm_handler()
    results: dict[str, list[dict[str, dict[str, float]]]] = {s.name: [] for s in specs}
    work_parent = args.work or Path("/var/tmp")
    with tempfile.TemporaryDirectory(prefix="bftfs-opcost-", dir=work_parent) as tmp:
        for run in range(args.runs):
            for spec in specs:
                progress(f"run {run + 1}/{args.runs} {spec.name}")
                try:
                    with common.open_target(spec, Path(tmp), f"r{run}") as site:
                        results[spec.name].append(run_once(site, args.files, args.size))
                except common.TargetError as e:
                    progress(f"  {spec.name} failed: {e}")
    header: dict[str, Any] = {
        "files": args.files,
        "size": args.size,
        "runs": args.runs,
        "b": args.b,
        "durable": not args.no_durable,
        "commit": common.commit_info().get("commit"),
    }
    print(f"\nPer file, median of {args.runs} run(s); {header}\n")
    print(table(results))
    print()
    print(rounds_table(results))
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
