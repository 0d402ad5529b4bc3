"""bftfs across a WAN (issue 65): seconds against the round-trip time.

For each one-way delay (``--delays``, default 0, 10, 25 and 50 ms) a fresh WAN bed
(:mod:`bftfs.testing.wan`: six nodes each on its own network-namespace host, every
client<->node link delayed by the same amount, the mount in the root namespace) and a
fresh cluster (``t = b = 1``), then:

- an Andrew-like run on a seeded tree (``--files`` files of 100 B to 64 KB in 10
  directories): ``copy`` (``cp -r`` into the mount), ``stat`` (``lstat`` of every entry,
  like ``ls -lR``), ``read`` (every byte read back, checked);
- one file of ``--mb`` MiB: ``write`` (written in 1 MiB pieces, then ``fsync``) and
  ``read`` (on a fresh mount, so from the nodes, not the kernel's cache).

A table of seconds per phase against the RTT is printed; nothing is saved.  GlusterFS
behind the same delays (its bricks on the namespace hosts) is a later step of issue 65.
Needs root, iproute2 and FUSE (``make setup-tests``); see ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from bftfs.testing import wan

PIECE = 1 << 20


def make_tree(root: Path, files: int, seed: int) -> dict[str, str]:
    """The seeded source tree on the local disk; returns each file's SHA-256."""
    rng = random.Random(seed)
    sums = {}
    for k in range(files):
        rel = f"d{k % 10}/f{k}"
        data = rng.randbytes(rng.choice([100, 1_000, 8_000, 64_000]))
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        sums[rel] = hashlib.sha256(data).hexdigest()
    return sums


def timed(fn: Callable[[], object]) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def stat_all(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lstat(os.path.join(dirpath, name))


def read_all(root: Path, sums: dict[str, str]) -> None:
    for rel, digest in sums.items():
        if hashlib.sha256((root / rel).read_bytes()).hexdigest() != digest:
            raise RuntimeError(f"{rel} read back wrong")


def write_big(path: Path, mb: int) -> None:
    piece = random.Random(mb).randbytes(PIECE)
    with open(path, "wb") as f:
        for _ in range(mb):
            f.write(piece)
        f.flush()
        os.fsync(f.fileno())


def read_big(path: Path, mb: int) -> None:
    with open(path, "rb") as f:
        got = sum(len(b) for b in iter(lambda: f.read(PIECE), b""))
    if got != mb * PIECE:
        raise RuntimeError(f"read {got} bytes of {mb * PIECE}")


def mount(stack: ExitStack, config: Path, mnt: Path) -> Path:
    mnt.mkdir()
    wan.bftfs_cli("mount", "--config", str(config), "-o", "client=client0", str(mnt))
    stack.callback(wan.bftfs_cli, "umount", str(mnt), check=False)
    return mnt


def one_delay(delay: float, work: Path, src: Path, sums: dict[str, str], mb: int) -> dict:
    """The phases' seconds at one-way ``delay`` ms."""
    out: dict[str, float] = {}
    with ExitStack() as stack:
        bed = stack.enter_context(wan.Wan([wan.Link(delay)] * 6, seed=65))
        config = stack.enter_context(wan.cluster(bed, work / "admin"))
        with ExitStack() as first:
            mnt = mount(first, config, work / "m1")
            cp = ["cp", "-r", str(src), str(mnt / "tree")]
            out["copy"] = timed(lambda: subprocess.run(cp, check=True))
            out["stat"] = timed(lambda: stat_all(mnt / "tree"))
            out["read"] = timed(lambda: read_all(mnt / "tree", sums))
            out["write MB"] = timed(lambda: write_big(mnt / "big", mb))
        mnt = mount(stack, config, work / "m2")
        out["read MB"] = timed(lambda: read_big(mnt / "big", mb))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--delays", default="0,10,25,50", help="one-way ms, comma-separated")
    ap.add_argument("--files", type=int, default=200, help="files in the Andrew-like tree")
    ap.add_argument("--mb", type=int, default=200, help="MiB in the big file")
    args = ap.parse_args(argv)
    if (why := wan.skip_reason()) is not None:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="bftfs-wan-") as tmp:
        src = Path(tmp) / "src"
        sums = make_tree(src, args.files, seed=65)
        for delay in [float(d) for d in args.delays.split(",")]:
            work = Path(tmp) / f"at{delay:g}"
            work.mkdir()
            rows.append((delay, one_delay(delay, work, src, sums, args.mb)))
            print(f"one-way {delay:g} ms done: {rows[-1][1]}", file=sys.stderr, flush=True)
    phases = list(rows[0][1])
    print(f"{args.files} files; {args.mb} MiB file; {wan.mode()} links; seconds")
    print("| RTT ms | " + " | ".join(phases) + " |")
    print("|---:|" + "---:|" * len(phases))
    for delay, out in rows:
        print(f"| {2 * delay:g} | " + " | ".join(f"{out[p]:.2f}" for p in phases) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
