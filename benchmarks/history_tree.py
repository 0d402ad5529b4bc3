"""History commands on a whole tree (issue 36): how long ``bftfs diff``, ``changes``,
``restore`` and ``revert --dry-run`` take on a tree of ``--files`` files.

A fresh 6-node cluster (real ``bftfs node`` processes, no fsync, retention long enough to
keep everything) and one FUSE mount.  The script writes ``--files`` files (seeded sizes,
100 B to 20 KiB: inline and block-stored ones) in directories of 50, notes the moment T0,
then changes a tenth of them (rewrites), removes a twentieth, adds a twentieth and renames
a fiftieth, notes T1, and times each command (the whole command: Python start-up,
connecting, walking the histories, writing) with absolute times ``@T0``/``@T1``:

- ``bftfs diff fs:/tree --from @T0 --to @T1``
- ``bftfs changes fs:/tree --since @T0 --until @T1 --json``
- ``bftfs revert MNT/tree --client client0 --since @T0 --dry-run``
- ``bftfs restore fs:/tree --at @T0 --to MNT/restored`` (into the mount, as a user would),
  then checks the restored tree byte for byte against what was written before T0.

Output is not a terminal, so the commands print no progress.  Usage::

    .venv/bin/python benchmarks/history_tree.py               # 1000 files
    .venv/bin/python benchmarks/history_tree.py --files 300
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bftfs.policy import RetentionPolicy
from bftfs.testing.mounts import Mount
from bftfs.testing.processes import ProcessCluster

PER_DIR = 50


def _bftfs(config: Path, *args: str) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    """Seconds one ``bftfs`` command took, and what it printed."""
    cmd = [sys.executable, "-m", "bftfs", *args, "--config", str(config)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, timeout=3600)
    took = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.decode()}")
    return took, done


def _build(root: Path, files: int, rng: random.Random) -> dict[str, bytes]:
    """``files`` files under ``root`` in directories of :data:`PER_DIR`; their contents."""
    written: dict[str, bytes] = {}
    for i in range(files):
        rel = f"d{i // PER_DIR:03d}/f{i:05d}.txt"
        data = rng.randbytes(rng.randint(100, 20_000))
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        written[rel] = data
    return written


def _change(root: Path, before: dict[str, bytes], rng: random.Random) -> int:
    """Rewrite a tenth, remove a twentieth, add a twentieth, rename a fiftieth; how many
    paths changed."""
    names = sorted(before)
    rng.shuffle(names)
    n = len(names)
    rewrite, remove = names[: n // 10], names[n // 10 : n // 10 + n // 20]
    rename = names[n // 10 + n // 20 : n // 10 + n // 20 + n // 50]
    for rel in rewrite:
        (root / rel).write_bytes(rng.randbytes(rng.randint(100, 20_000)))
    for rel in remove:
        (root / rel).unlink()
    for rel in rename:
        (root / rel).rename(root / (rel + ".moved"))
    for i in range(n // 20):
        (root / f"d{i % max(1, n // PER_DIR):03d}/new{i:05d}.txt").write_bytes(rng.randbytes(500))
    return len(rewrite) + len(remove) + len(rename) + n // 20


def _same_tree(root: Path, want: dict[str, bytes]) -> bool:
    got = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    return got == want


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=1000, help="files in the tree (1000)")
    ap.add_argument("--seed", type=int, default=36, help="random seed (36)")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="bftfs-histtree-", dir="/var/tmp") as tmp:
        home = Path(tmp) / "c"
        keep = RetentionPolicy(keep_seconds=86400.0, keep_versions=2)
        with ProcessCluster(home, durable=False, retention=keep) as pc:
            config = home / "cluster.toml"
            with Mount(pc.config, Path(tmp) / "mnt", client="client0") as m:
                tree = m.mountpoint / "tree"
                t0 = time.perf_counter()
                before = _build(tree, args.files, rng)
                print(f"wrote {args.files} files in {time.perf_counter() - t0:.1f} s")
                time.sleep(1.0)  # T0 lies clearly between the two phases' versions
                t0_ns = time.time_ns()
                time.sleep(1.0)
                changed = _change(tree, before, rng)
                time.sleep(1.0)
                t1_ns = time.time_ns()
                at0, at1 = f"@{t0_ns / 1e9:.6f}", f"@{t1_ns / 1e9:.6f}"
                took, out = _bftfs(config, "diff", "fs:/tree", "--from", at0, "--to", at1)
                lines = len(out.stdout.splitlines())
                print(f"bftfs diff: {took:.1f} s ({lines} lines; {changed} paths changed)")
                took, out = _bftfs(
                    config, "changes", "fs:/tree", "--since", at0, "--until", at1, "--json"
                )
                rows = len(json.loads(out.stdout)["changes"])
                print(f"bftfs changes: {took:.1f} s ({rows} changes)")
                took, out = _bftfs(
                    config, "revert", str(tree), "--client", "client0", "--since", at0,
                    "--dry-run",
                )  # fmt: skip
                steps = out.stdout.decode().strip().splitlines()[-1]
                print(f"bftfs revert --dry-run: {took:.1f} s ({steps})")
                dest = m.mountpoint / "restored"
                took, out = _bftfs(config, "restore", "fs:/tree", "--at", at0, "--to", str(dest))
                same = _same_tree(dest, before)
                print(f"bftfs restore: {took:.1f} s ({out.stdout.decode().strip()})")
                print(f"restored tree identical to the tree at T0: {same}")
                if not same:
                    return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
