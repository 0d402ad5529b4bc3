"""Foreground latency while the nodes' background work runs (issue 62).

A real cluster (``ProcessCluster``, 6 node processes) and one mount.  An ageing writer
makes ``--files`` small files and one ``--big`` MiB file (each fsync'd), waits for their
verification, then removes them all, which leaves every node pruning, tombstones,
forgetting and collection to do (``keep_seconds`` and ``forget_seconds`` are 5 s and no
hourly or daily versions are kept, so it comes due while the probe runs).  Right after, a
probe makes, fsyncs and removes small files one at a time for ``--seconds``: each fsync'd
create is a client request the nodes answer while their background work runs.  Then the probe runs
again once the nodes have settled (verification backlog empty), the quiet baseline.

Printed: the probe's latency (median, p99) in both phases, the nodes' CPU seconds (from
``/proc``) and what the background did meanwhile (versions verified, collected per second).

    .venv/bin/python benchmarks/background.py --files 2000 --big 32 --seconds 20
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bftfs import local
from bftfs.policy import RetentionPolicy
from bftfs.testing.mounts import Mount
from bftfs.testing.processes import ProcessCluster

TICK = os.sysconf("SC_CLK_TCK")


def node_cpu(pc: ProcessCluster) -> float:
    """CPU seconds (user + system) of every node process so far."""
    total = 0.0
    for i in pc.config.node_ids:
        pid = pc.pid(i)
        if pid is None:
            continue
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def progress(pc: ProcessCluster) -> dict[str, int]:
    """Sums over the nodes of the verifier's counters (and its backlog)."""
    sums: dict[str, int] = {}
    for st in trio.run(local.query_status, pc.config):
        verify: dict[str, Any] = ((st.stats or {}).get("progress") or {}).get("rw.verify", {})
        for key in ("verified", "collected", "backlog_versions", "forced"):
            sums[key] = sums.get(key, 0) + int(verify.get(key, 0))
        counters: dict[str, Any] = (st.stats or {}).get("requests") or {}
        for key in ("qu.tombstones", "qu.forgotten", "bg.steps", "bg.waits", "bg.floor"):
            sums[key] = sums.get(key, 0) + int(counters.get(key, 0))
    return sums


def probe(root: Path, seconds: float) -> list[float]:
    """Latencies (s) of fsync'd small creates (and their removals) for ``seconds``."""
    root.mkdir(exist_ok=True)
    took: list[float] = []
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        path = root / f"p{i}"
        start = time.perf_counter()
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, b"x" * 1000)
        os.fsync(fd)
        os.close(fd)
        took.append(time.perf_counter() - start)
        path.unlink()
        i += 1
    return took


def make(root: Path, files: int, big_mib: int) -> None:
    """Make ``files`` 4 KiB files and one ``big_mib`` MiB file, each fsync'd (on the
    nodes, not only in the mount's write-back)."""
    root.mkdir()
    for i in range(files):
        with open(root / f"f{i}", "wb") as f:
            f.write(os.urandom(4096))
            os.fsync(f.fileno())
    with open(root / "big", "wb") as f:
        for _ in range(big_mib):
            f.write(os.urandom(1 << 20))
        os.fsync(f.fileno())


def remove(root: Path) -> None:
    """Remove everything :func:`make` made (the nodes prune, shrink to tombstones and
    forget it ``keep_seconds`` and ``forget_seconds`` later: during the busy probe)."""
    for p in root.iterdir():
        p.unlink()
    fd = os.open(root, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def phase(
    pc: ProcessCluster, mnt: Path, name: str, seconds: float, spy: Path | None = None
) -> None:
    cpu0, prog0, t0 = node_cpu(pc), progress(pc), time.monotonic()
    sampler = None
    if spy is not None:  # py-spy (not a dependency): where node 0's CPU goes
        pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        cmd = [pyspy, "record", "--format", "raw", "-o", str(spy), "-r", "50"]
        cmd += ["-d", str(int(seconds)), "-p", str(pc.pid(0))]
        sampler = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    took = probe(mnt / f"probe-{name}", seconds)
    if sampler is not None:
        sampler.wait()
    cpu1, prog1, t1 = node_cpu(pc), progress(pc), time.monotonic()
    ms = sorted(t * 1000 for t in took)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    rate = {k: (prog1[k] - prog0[k]) / (t1 - t0) for k in prog1}
    print(
        f"{name:>8}: {len(ms)} creates, median {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms;"
        f" nodes' CPU {cpu1 - cpu0:.1f} s in {t1 - t0:.1f} s;"
        f" verified {rate['verified']:.0f}/s, collected {rate['collected']:.0f}/s,"
        f" tombstones {rate['qu.tombstones']:.0f}/s, forgotten {rate['qu.forgotten']:.0f}/s;"
        f" backlog {prog0['backlog_versions']} -> {prog1['backlog_versions']};"
        f" gate: {prog1['bg.steps'] - prog0['bg.steps']} steps,"
        f" {prog1['bg.waits'] - prog0['bg.waits']} waited, {prog1['bg.floor'] - prog0['bg.floor']}"
        " on the floor"
    )


def settle(pc: ProcessCluster, within: float, *, pruned: bool = False) -> float:
    """Seconds until every node's verification backlog is empty and, with ``pruned``, no
    tombstone or forgetting happened for 2 s (or ``within`` passed)."""
    start = time.monotonic()
    last: tuple[int, int] | None = None
    still = 0.0
    while time.monotonic() - start < within:
        prog = progress(pc)
        now = (prog["qu.tombstones"], prog["qu.forgotten"])
        still = still + 0.5 if now == last else 0.0
        last = now
        if not prog["backlog_versions"] and (not pruned or still >= 2.0):
            break
        time.sleep(0.5)
    return time.monotonic() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--big", type=int, default=32, help="MiB")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--spy", type=Path, help="py-spy's raw samples of node 0, busy phase")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "c"
        # History's horizon is keep_seconds (no hourly or daily versions): removed objects
        # become tombstones and are forgotten within the probe.
        retention = RetentionPolicy(
            keep_seconds=5.0, keep_versions=1, forget_seconds=5.0, keep_hourly=0, keep_daily=0
        )
        with (
            ProcessCluster(home, durable=False, retention=retention) as pc,
            Mount(pc.config, Path(tmp) / "m") as m,
        ):
            t0, c0 = time.monotonic(), node_cpu(pc)
            make(m.mountpoint / "aged", args.files, args.big)
            print(f"making: {time.monotonic() - t0:.1f} s, nodes' CPU {node_cpu(pc) - c0:.1f} s")
            settle(pc, 60)  # what the writes left to verify is done: removals only now
            t0, c0 = time.monotonic(), node_cpu(pc)
            remove(m.mountpoint / "aged")
            print(f"removing: {time.monotonic() - t0:.1f} s, nodes' CPU {node_cpu(pc) - c0:.1f} s")
            phase(pc, m.mountpoint, "busy", args.seconds, args.spy)
            print(f"settled after {settle(pc, 120, pruned=True):.1f} s more")
            phase(pc, m.mountpoint, "quiet", args.seconds)


if __name__ == "__main__":
    main()
