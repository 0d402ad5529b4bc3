"""Version history costs (issue 17): how long ``bftfs log`` of a file with many versions
takes, and whether history reads slow the live file system.

A fresh 6-node cluster (real ``bftfs node`` processes, no fsync, retention long enough to
keep everything) and one FUSE mount.  The script writes ``--versions`` versions of one small
file (each a whole rewrite, as an editor saves), then:

1. runs ``bftfs log FILE --json`` ``--runs`` times and prints the median wall time (the
   whole command: Python start-up, connecting, walking the chain, fetching states), and
   ``bftfs cat FILE --at`` of the oldest version;
2. measures the live file system: ``stat`` + read of ``--files`` files in a loop, alone,
   while ``bftfs log`` runs once a second, and while it runs back to back (the worst case:
   on 2 cores each command's Python start-up alone takes a core for ~0.3 s), interleaved
   ``--runs`` times; prints the medians and their ratios to "alone".

Usage::

    .venv/bin/python benchmarks/history.py                     # 1000 versions, 5 runs
    .venv/bin/python benchmarks/history.py --versions 200 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from profiling import cpu_seconds

from bftfs.policy import RetentionPolicy
from bftfs.testing.mounts import Mount
from bftfs.testing.processes import ProcessCluster


def _bftfs(config: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "bftfs", *args, "--config", str(config)]
    return subprocess.run(cmd, capture_output=True, check=True, timeout=600)


def _live_loop(files: list[Path], rounds: int) -> float:
    """Seconds per stat-and-read of one file, over ``rounds`` passes of ``files``."""
    t0 = time.perf_counter()
    for _ in range(rounds):
        for p in files:
            os.stat(p)
            p.read_bytes()
    return (time.perf_counter() - t0) / (rounds * len(files))


def _log_until(config: Path, f: Path, stop: threading.Event, every: float) -> None:
    """``bftfs log`` every ``every`` seconds (0: back to back) until ``stop``."""
    while not stop.is_set():
        _bftfs(config, "log", str(f), "--json")
        stop.wait(every)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--versions", type=int, default=1000, help="versions of the file (1000)")
    ap.add_argument("--runs", type=int, default=5, help="repetitions (5)")
    ap.add_argument("--files", type=int, default=50, help="files in the live loop (50)")
    ap.add_argument(
        "--live-rounds", type=int, default=40, help="passes over them per measurement (40)"
    )
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bftfs-history-", dir="/var/tmp") as tmp:
        home = Path(tmp) / "c"
        keep = RetentionPolicy(keep_seconds=86400.0, keep_versions=2)
        with ProcessCluster(home, durable=False, retention=keep) as pc:
            config = home / "cluster.toml"
            with Mount(pc.config, Path(tmp) / "mnt", client="client0") as m:
                f = m.mountpoint / "edited.txt"
                t0 = time.perf_counter()
                for i in range(args.versions):
                    f.write_bytes(f"version {i}\n".encode() * 20)
                write_s = time.perf_counter() - t0
                print(f"wrote {args.versions} versions in {write_s:.1f} s")

                log_s = []
                rows = 0
                pids = [p for p in (pc.pid(i) for i in range(pc.config.n)) if p is not None]
                cpu0 = sum(cpu_seconds(p) or 0.0 for p in pids)
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    out = _bftfs(config, "log", str(f), "--json")
                    log_s.append(time.perf_counter() - t0)
                    rows = len(json.loads(out.stdout)["versions"])
                nodes_cpu = (sum(cpu_seconds(p) or 0.0 for p in pids) - cpu0) / args.runs
                # The oldest version is the empty file the first save created; the one after
                # it holds the first save's content.
                first = json.loads(out.stdout)["versions"][-2]["id"]
                t0 = time.perf_counter()
                old = _bftfs(config, "cat", str(f), "--at", first).stdout
                cat_s = time.perf_counter() - t0
                assert old.startswith(b"version 0\n"), old[:40]
                print(
                    f"bftfs log: {rows} versions listed, median {statistics.median(log_s):.2f} s "
                    f"of {args.runs} (all: {', '.join(f'{s:.2f}' for s in log_s)})"
                )
                print(f"nodes' CPU per bftfs log (all {len(pids)} nodes): {nodes_cpu * 1e3:.0f} ms")
                print(f"bftfs cat --at (the first save): {cat_s:.2f} s")

                live = [m.mountpoint / f"live{i}" for i in range(args.files)]
                for p in live:
                    p.write_bytes(b"x" * 3000)
                loads = {"alone": None, "log every 1 s": 1.0, "log back to back": 0.0}
                per: dict[str, list[float]] = {k: [] for k in loads}
                for _ in range(args.runs):
                    for name, every in loads.items():
                        time.sleep(1.2)  # attributes stale in the kernel in every run
                        stop = threading.Event()
                        th = None
                        if every is not None:
                            th = threading.Thread(target=_log_until, args=(config, f, stop, every))
                            th.start()
                        try:
                            per[name].append(_live_loop(live, args.live_rounds))
                        finally:
                            stop.set()
                            if th is not None:
                                th.join()
                base = statistics.median(per["alone"])
                for name, got in per.items():
                    m = statistics.median(got)
                    print(
                        f"live stat+read per file, {name}: {m * 1e3:.2f} ms "
                        f"(x{m / base:.2f}; median of {args.runs})"
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
