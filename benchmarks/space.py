"""Node storage across repeated copy-and-delete runs (issue 16): does it stay bounded?

A fresh 6-node cluster (real ``bftfs node`` processes, no fsync) and one FUSE mount.  Each
run copies a seeded source tree into the mount (``cp -a``), overwrites a share of its files
in place (new versions of their blocks and attribute objects), and deletes it all
(``rm -rf``).  After each run the script waits until every node's lazy-verification backlog
is empty and the retention window has passed, then prints, per run, the bytes in use on
the nodes (LMDB pages holding data) and the size of their LMDB files.  Without garbage
collection the in-use figure grows by about the tree's size (times ``N/m``, plus metadata)
every run; with it, it returns to about the same level after every run.

Usage::

    .venv/bin/python benchmarks/space.py                   # 3 runs, keep/forget 5 s
    .venv/bin/python benchmarks/space.py --runs 5 --files 600 --keep-seconds 10

Removed files' last records (Q/U tombstones, given-back blocks' empty versions) are
forgotten ``forget_seconds`` after ``keep_seconds``; the script waits for both.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bftfs.local import query_status
from bftfs.policy import RetentionPolicy, VerificationPolicy
from bftfs.testing.mounts import Mount
from bftfs.testing.processes import ProcessCluster

MIB = 1024 * 1024


def make_tree(root: Path, seed: int, files: int) -> int:
    """A seeded tree of ``files`` files (sizes 0 .. 300 KiB, some nested); its bytes."""
    rng = random.Random(seed)
    dirs = [root]
    root.mkdir(parents=True)
    total = 0
    for i in range(files):
        if rng.random() < 0.1:
            d = rng.choice(dirs) / f"d{i}"
            d.mkdir()
            dirs.append(d)
        size = rng.choice([0, 100, 4000, 20_000, 70_000, rng.randrange(300_000)])
        (rng.choice(dirs) / f"f{i}").write_bytes(rng.randbytes(size))
        total += size
    return total


def node_figures(pc: ProcessCluster) -> list[dict[str, Any]]:
    out = []
    for s in trio.run(query_status, pc.config):
        st = s.stats or {}
        v = st.get("progress", {}).get("rw.verify", {})
        out.append(
            {
                "used": st.get("used_bytes", v.get("used_bytes", 0)),
                "file": st.get("lmdb_bytes", 0),
                "backlog": v.get("backlog_versions", 0),
                "collected": v.get("collected", 0),
            }
        )
    return out


def wait_settled(pc: ProcessCluster, window: float, timeout: float = 300.0) -> float:
    """Until no node has unverified versions and the retention window (keep and forget
    seconds) has passed (a condition polled under a deadline across processes); seconds
    waited."""
    start = time.monotonic()
    time.sleep(window + 1.0)  # the retention window itself: nothing can go before
    while True:
        figures = node_figures(pc)
        if all(f["backlog"] == 0 for f in figures):
            # one more look after the age revisits and the forgetting rounds (each asks
            # every other node) had their chance
            time.sleep(3.0)
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            print("  (gave up waiting for the backlog)", file=sys.stderr)
            return time.monotonic() - start
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--keep-seconds", type=float, default=5.0)
    parser.add_argument("--keep-versions", type=int, default=2)
    parser.add_argument("--forget-seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bftfs-space-") as tmp:
        base = Path(tmp)
        tree_bytes = make_tree(base / "tree", 1, args.files)
        policy = VerificationPolicy(settle_seconds=0.5, fallback_seconds=5.0)
        retention = RetentionPolicy(
            keep_seconds=args.keep_seconds,
            keep_versions=args.keep_versions,
            forget_seconds=args.forget_seconds,
        )
        print(
            f"bftfs space benchmark: tree of {args.files} files, {tree_bytes / MIB:.1f} MiB; "
            f"retention keep_seconds={args.keep_seconds} keep_versions={args.keep_versions} "
            f"forget_seconds={args.forget_seconds}"
        )
        print(f"{'after':>10}  {'in use (median/max MiB)':>24}  {'LMDB file (max MiB)':>20}")
        with (
            ProcessCluster(
                base / "c",
                map_size=4 * 1024 * MIB,
                durable=False,
                verification=policy,
                retention=retention,
            ) as pc,
            Mount(pc.config, base / "m", client="client0") as mnt,
        ):

            def report(label: str) -> None:
                figures = node_figures(pc)
                used = [f["used"] / MIB for f in figures]
                biggest = max(f["file"] for f in figures) / MIB
                print(
                    f"{label:>10}  {statistics.median(used):>11.1f} / {max(used):>9.1f}  "
                    f"{biggest:>20.1f}",
                    flush=True,
                )

            report("start")
            rng = random.Random(2)
            for run in range(1, args.runs + 1):
                target = mnt.mountpoint / f"run{run}"
                subprocess.run(["cp", "-a", str(base / "tree"), str(target)], check=True)
                files = sorted(p for p in target.rglob("*") if p.is_file())
                for p in rng.sample(files, len(files) // 4):  # overwrite a quarter in place
                    p.write_bytes(rng.randbytes(p.stat().st_size))
                report(f"run {run} +")
                shutil.rmtree(target)
                waited = wait_settled(pc, 2 * args.keep_seconds + args.forget_seconds)
                report(f"run {run} -")
                print(f"{'':>10}  (settled {waited:.0f} s after rm -rf)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
