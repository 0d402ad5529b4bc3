"""Concurrent metadata work on one mount: frames and CPU per operation.

``opcost.py`` runs one operation at a time; real use overlaps them (``make -j``, a shell's
``ls -l`` while an editor saves, several readers of a tree), and then the kernel hands the
FUSE daemon several requests at once and their Q/U rounds run concurrently.  What batching
of those rounds (``qu.batch``, docs/qu.md) can save shows here: the frames the nodes receive
per operation, and the CPU of the daemon and the nodes.

Tree: ``--dirs`` directories of ``--files`` files of 3000 bytes (inline).  Phases, each
after the kernel's cached attributes went stale (1.2 s, as in opcost):

* ``ls-l``: ``ls -l`` of each directory, one after the other (a readdir answers the
  entries' attributes with concurrent ``fs.statmany`` queries);
* ``stat4``: one thread per directory, each ``stat``-ing its files;
* ``read4``: one thread per directory, each opening, reading and closing its files.

Per operation (a listed entry, a stat, an open+read+close): wall ms, FUSE daemon and nodes'
CPU ms, frames into the nodes.  CPU is the figure to compare on 2 shared cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
from common import Progress, Site
from profiling import cpu_seconds

PHASES = ("ls-l", "stat4", "read4")
STALE_WAIT = 1.2


def frames_in(config: Any) -> int | None:
    """Frames the nodes received so far, summed (asked as client1, a few frames itself)."""
    import trio

    from bftfs.local import query_status

    try:
        statuses = trio.run(lambda: query_status(config, timeout=2.0, client="client1"))
    except Exception:  # a diagnostic: never fail a run over it
        return None
    total = 0
    for st in statuses:
        if st.stats:
            total += int((st.stats.get("traffic") or {}).get("frames_in", 0))
    return total


def _threads(fns: list[Callable[[], None]]) -> None:
    ts = [threading.Thread(target=fn) for fn in fns]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def run_once(site: Site, dirs: int, files: int) -> dict[str, dict[str, float]]:
    root = site.path / "conc"
    root.mkdir()
    data = bytes(range(256)) * 11 + bytes(184)
    paths = [[root / f"d{d}" / f"f{i:04d}" for i in range(files)] for d in range(dirs)]
    for d in range(dirs):
        (root / f"d{d}").mkdir()
        for p in paths[d]:
            p.write_bytes(data)
    nodes = [pid for name, pid in site.pids.items() if name.startswith("node")]
    daemon = [pid for name, pid in site.pids.items() if not name.startswith("node")]

    def ls_l() -> None:
        for d in range(dirs):
            subprocess.run(["ls", "-l", str(root / f"d{d}")], check=True, capture_output=True)

    def stat_loop(ps: list[Path]) -> Callable[[], None]:
        return lambda: [os.stat(p) for p in ps] and None

    def read_loop(ps: list[Path]) -> Callable[[], None]:
        def go() -> None:
            for p in ps:
                fd = os.open(p, os.O_RDONLY)
                while os.read(fd, 1 << 16):
                    pass
                os.close(fd)

        return go

    work: dict[str, Callable[[], None]] = {
        "ls-l": ls_l,
        "stat4": lambda: _threads([stat_loop(ps) for ps in paths]),
        "read4": lambda: _threads([read_loop(ps) for ps in paths]),
    }
    out: dict[str, dict[str, float]] = {}
    ops = dirs * files
    for phase in PHASES:
        time.sleep(STALE_WAIT)  # not synchronisation: lets cached attributes expire
        f0 = frames_in(site.config)
        n0 = sum(cpu_seconds(p) or 0.0 for p in nodes)
        m0 = sum(cpu_seconds(p) or 0.0 for p in daemon)
        t0 = time.perf_counter()
        work[phase]()
        t1 = time.perf_counter()
        n1 = sum(cpu_seconds(p) or 0.0 for p in nodes)
        m1 = sum(cpu_seconds(p) or 0.0 for p in daemon)
        f1 = frames_in(site.config)
        out[phase] = {
            "wall": (t1 - t0) / ops,
            "daemon_cpu": (m1 - m0) / ops,
            "nodes_cpu": (n1 - n0) / ops,
            "frames": (f1 - f0) / ops if f0 is not None and f1 is not None else float("nan"),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dirs", type=int, default=4, help="directories, one thread each (4)")
    ap.add_argument("--files", type=int, default=150, help="files per directory (150)")
    ap.add_argument("--runs", type=int, default=1, help="repetitions (1)")
    ap.add_argument("--work", type=Path, help="scratch directory (default: under /var/tmp)")
    args = ap.parse_args(argv)
    problem = common.check_fuse()
    if problem:
        print(f"concurrent: {problem}", file=sys.stderr)
        return 1
    common.install_sigterm_handler()
    progress = Progress("concurrent", False)
    spec = common.spec_named("bftfs", 1, 1, True)
    assert spec is not None
    results: list[dict[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="bftfs-conc-", dir=args.work or "/var/tmp") as tmp:
        for run in range(args.runs):
            progress(f"run {run + 1}/{args.runs}")
            with common.open_target(spec, Path(tmp), f"r{run}") as site:
                results.append(run_once(site, args.dirs, args.files))
    print(f"\nPer operation, median of {args.runs}; commit {common.commit_info().get('commit')}")
    print("| phase | wall ms | FUSE daemon CPU ms | nodes CPU ms | frames into nodes |")
    print("|---|---:|---:|---:|---:|")
    for phase in PHASES:

        def med(key: str, phase: str = phase) -> float:
            return common.median([r[phase][key] for r in results])

        print(
            f"| {phase} | {med('wall') * 1e3:.2f} | {med('daemon_cpu') * 1e3:.2f} "
            f"| {med('nodes_cpu') * 1e3:.2f} | {med('frames'):.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
