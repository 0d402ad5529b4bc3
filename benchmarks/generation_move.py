"""The background mover with real node processes: how long ``bftfs generation move`` takes
for a tree nobody touched (issue 35; ``docs/membership.md``, "Generations: the mover and
finishing").

On a fresh cluster of six node processes (``t = b = 1``), ``--small`` small files (1 to
4 KiB: inline or one block) and ``--big`` files of ``--mib`` MiB each are written through a
file system; ``bftfs generation new --nodes 7`` starts generation 2 on seven new node
processes, and ``bftfs generation move`` (``--rate`` bytes/s, 0: no limit) is timed.  Prints
the command's summary, the objects and bytes per second, and checks that a second run has
nothing to do.

Usage::

    .venv/bin/python benchmarks/generation_move.py --small 400 --big 8 --mib 4 --rate 0
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import trio

from bftfs import config as cfgmod
from bftfs import local
from bftfs.config import ClusterConfig
from bftfs.connect import open_client
from bftfs.fs.filesystem import open_file_system
from bftfs.fsobjects import ROOT
from bftfs.qu.classify import QUThresholds
from bftfs.qu.client import QUClient
from bftfs.rw.client import open_rw_client
from bftfs.testing.processes import ProcessCluster


async def fill(cfg: ClusterConfig, small: int, big: int, mib: int) -> dict[str, int]:
    """Write the tree (``/tree``: ``s<i>`` small files, ``b<i>`` big ones, seeded); each
    file's CRC-32 by name, so that a reader of the moved tree can check it
    (``generation_andrew.py``)."""
    rng = random.Random(35)
    crcs: dict[str, int] = {}
    async with open_client(cfg) as ep, open_rw_client(ep, cfg) as rw:
        qu = QUClient(ep, QUThresholds.from_config(cfg), client_id=ep.pid)
        async with open_file_system(qu, rw, cfg) as fs:
            d = (await fs.mkdir(ROOT, b"tree", 0o755, 0, 0)).ino
            files = [(f"s{i}", rng.randrange(1024, 4096)) for i in range(small)]
            files += [(f"b{i}", mib << 20) for i in range(big)]
            for name, size in files:
                fh, _ = await fs.create(d, name.encode(), 0o644, 0, 0, os.O_RDWR)
                data = rng.randbytes(size)
                for off in range(0, size, 1 << 20):
                    await fs.write(fh, off, data[off : off + (1 << 20)])
                await fs.release(fh)
                crcs[name] = zlib.crc32(data)
            await fs.write_back()
            if fs.meta.leases is not None:
                await fs.meta.leases.release_all()
    return crcs


def tree_bytes(small: int, big: int, mib: int) -> int:
    """The bytes ``fill`` writes (the same seed, without writing)."""
    rng = random.Random(35)
    return sum(rng.randrange(1024, 4096) for _ in range(small)) + big * (mib << 20)


def bftfs(home: Path, *args: str) -> str:
    cmd = [sys.executable, "-m", "bftfs", *args, "--config", str(home / "cluster.toml")]
    got = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return got.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", type=int, default=400)
    ap.add_argument("--big", type=int, default=8)
    ap.add_argument("--mib", type=int, default=4)
    ap.add_argument("--rate", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "c"
        with ProcessCluster(home, clients=2, durable=True) as pc:
            t0 = time.monotonic()
            trio.run(fill, pc.config, args.small, args.big, args.mib)
            size = tree_bytes(args.small, args.big, args.mib)
            print(f"filled {size / 2**20:.1f} MiB in {time.monotonic() - t0:.1f} s")
            bftfs(home, "generation", "new", "--nodes", "7", "--t", "1", "--b", "1")
            new = cfgmod.load(home / "cluster.toml")
            try:
                local.start_nodes(new)
                local.wait_ready(new)
                t0 = time.monotonic()
                out = bftfs(home, "generation", "move", "--bytes-per-second", str(args.rate))
                took = time.monotonic() - t0
                objects = args.small + args.big + 2  # the files, the directory, the root
                print(out.strip())
                rate = args.rate or "unlimited"
                print(
                    f"move: {took:.1f} s, {objects / took:.0f} objects/s, "
                    f"{size / 2**20 / took:.2f} MiB/s of file data (rate {rate})"
                )
                t0 = time.monotonic()
                again = bftfs(home, "generation", "move")
                assert "is complete" in again, again
                print(f"second run: {time.monotonic() - t0:.1f} s (complete: nothing to do)")
            finally:
                local.stop_nodes(new)


if __name__ == "__main__":
    main()
