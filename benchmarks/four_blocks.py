"""File blocks on four nodes (registers) against PASIS on six, on real node processes
(issue 68; docs/listeners.md "Blocks on four nodes").

For ``b = 1`` this starts, one after the other on this machine:

* ``registers``: ``bftfs init --engine fab --n 4``'s cluster (``blocks = "registers"``),
  blocks written and read by :class:`~bftfs.fs.clients.registerblocks.RegisterBlocks`;
* ``pasis``: a 6-node cluster (``t = b = 1``, ``QC = 4``, ``m = 3``), blocks written and
  read by the PASIS client (``open_rw_client``), as a mount does (FaB or Q/U metadata
  alike: the block store is the same).

For each block size it measures one client writing (each write a new block) and then
reading them: median latency, node CPU (user + system, summed over the nodes) and frames
(``stats.traffic``, every frame a node received or sent, as ``benchmarks/listeners.py``
counts them) per block.  Non-durable nodes.  Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio
from listeners import CLIENTS, Meter, series

from bftfs.connect import open_client
from bftfs.fs.clients.registerblocks import RegisterBlocks
from bftfs.rw.client import open_rw_client
from bftfs.testing.processes import ProcessCluster

SIZES = (64 * 1024, 1024 * 1024)


def cluster(home: Path, store: str) -> ProcessCluster:
    """The nodes of ``store`` (module docstring), with the clients the meter's status
    queries name (``listeners.STATUS_CLIENT``)."""
    n, engine = (4, "fab") if store == "registers" else (6, "qu")
    return ProcessCluster(
        home, n=n, t=1, b=1, engine=engine, clients=CLIENTS + 2, durable=False, map_size=1 << 30
    )


async def run(pc: ProcessCluster, store: str, count: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    rng = random.Random(68)
    assert pc.config.blocks == store, pc.config.blocks
    async with open_client(pc.config, "client0") as ep:
        if store == "registers":
            await measure(pc, RegisterBlocks(ep, pc.config), rng, count, out)
        else:
            async with open_rw_client(ep, pc.config) as rw:
                await measure(pc, rw, rng, count, out)
    return out


async def measure(
    pc: ProcessCluster, client: Any, rng: random.Random, count: int, out: dict[str, Any]
) -> None:
    meter = Meter(pc)
    await meter.start()
    for size in SIZES:
        out[f"{size // 1024} KiB"] = await _size(meter, client, rng.randbytes(size), count)


async def _size(meter: Meter, client: Any, data: bytes, count: int) -> dict[str, float]:
    """Write ``count`` new blocks of ``data`` one after the other, then read them."""
    first = len(data)
    ids, reads = iter(range(first, first + count)), iter(range(first, first + count))
    r: dict[str, float] = {}
    r["write_us"] = await series(count, lambda: client.write_block(next(ids), data))
    queries = await settled(meter)
    r["write_cpu_us"], r["write_msgs"] = await meter.take(count)
    r["write_msgs"] -= queries * meter.overhead / count
    r["read_us"] = await series(count, lambda: client.read_block(next(reads)))
    queries = await settled(meter)
    r["read_cpu_us"], r["read_msgs"] = await meter.take(count)
    r["read_msgs"] -= queries * meter.overhead / count
    return r


async def settled(meter: Meter) -> int:
    """Wait until the nodes send nothing more (the registers' forwarding goes on after a
    write returned), so that what an operation costs is counted with it, not with the
    next; the status queries it made (each costs ``meter.overhead`` frames)."""
    before, queries = await meter.frames(), 1
    while True:
        await trio.sleep(0.5)
        now = await meter.frames()
        queries += 1
        if now - before <= meter.overhead + 1:
            return queries
        before = now


COLUMNS = [
    ("write_us", "write (us)", "{:.0f}"),
    ("read_us", "read (us)", "{:.0f}"),
    ("write_cpu_us", "node CPU per write (us)", "{:.0f}"),
    ("read_cpu_us", "node CPU per read (us)", "{:.0f}"),
    ("write_msgs", "frames per write", "{:.1f}"),
    ("read_msgs", "frames per read", "{:.1f}"),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=50, help="blocks per size")
    args = ap.parse_args()
    lines = ["| store, block | nodes | " + " | ".join(h for _, h, _ in COLUMNS) + " |"]
    lines.append("|---" * (len(COLUMNS) + 2) + "|")
    loads = []
    for store in ("registers", "pasis"):
        with tempfile.TemporaryDirectory() as tmp, cluster(Path(tmp) / "c", store) as pc:
            loads.append(os.getloadavg()[0])
            print(f"{store}: {pc.config.n} nodes, load {loads[-1]:.1f}", file=sys.stderr)
            got = trio.run(run, pc, store, args.count)
            loads.append(os.getloadavg()[0])
            for size, r in got.items():
                cells = [fmt.format(r[k]) for k, _, fmt in COLUMNS]
                lines.append(f"| {store}, {size} | {pc.config.n} | " + " | ".join(cells) + " |")
    print(f"non-durable, medians of {args.count}; load average {min(loads):.1f}-{max(loads):.1f}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
