"""How fast a restarted node catches up on PASIS blocks (``bftfs/node/rw_catchup.py``).

Real node processes (``ProcessCluster``, t = b = 1: N=6, m=3, durable commits unless
``--no-durable``): node 2 is SIGKILLed, ``--blocks`` distinct blocks of ``--size`` bytes are
written, node 2 is restarted, and its ``rw.catchup`` progress is polled (``stats``) until
done.  Prints the node's own figure (``seconds`` from the start of its pass, listing
included) and blocks per second; with ``--foreground`` a client also reads blocks during
the catch-up (of 100 blocks every node holds) and reports its read rate, against the same
reads once catch-up is over.  ``--rate`` and ``--parallel`` set ``[verification]
catchup_bytes_per_second`` and ``catchup_parallel`` (the throttle; 0: no limit); the node
reports the block data it read (``bytes_read``) and its fragments stored (``bytes_stored``).

Usage::

    .venv/bin/python benchmarks/rw_catchup.py --blocks 2000 --size 65536 --rate 0 --foreground
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bftfs.connect import open_client
from bftfs.node.rw_catchup import PROGRESS_KEY
from bftfs.policy import VerificationPolicy
from bftfs.rw.client import open_rw_client
from bftfs.testing.processes import ProcessCluster

K = 2


#: Blocks every node holds (written before the kill), read in the foreground.
OLD = 1 << 40


async def write(pc: ProcessCluster, blocks: int, size: int, base: int = 0) -> float:
    async with open_client(pc.config) as ep, open_rw_client(ep, pc.config) as rw:
        t0 = time.monotonic()
        await rw.write_blocks(
            {base + b: (b"%08d" % b) * (size // 8) for b in range(blocks)}, concurrency=16
        )
        return time.monotonic() - t0


async def follow(pc: ProcessCluster, blocks: int, foreground: bool) -> dict[str, Any]:
    """Poll node K until its catch-up is done; optionally read meanwhile."""
    reads = 0
    read_s = 0.0
    async with open_client(pc.config) as ep, open_rw_client(ep, pc.config) as rw:
        prog: dict[str, Any] = {}
        done = trio.Event()

        async def reader() -> None:
            nonlocal reads, read_s
            t0 = time.monotonic()
            while not done.is_set():
                await rw.read_block(OLD + reads % 100)
                reads += 1
            read_s = time.monotonic() - t0

        async with trio.open_nursery() as nursery:
            if foreground:
                nursery.start_soon(reader)
            with trio.fail_after(600):
                while True:
                    try:
                        st = await ep.call(K, "stats", None, timeout=2.0)
                        prog = st["progress"].get(PROGRESS_KEY) or {}
                    except Exception:
                        prog = {}
                    if prog.get("state") in ("done", "failed"):
                        break
                    await trio.sleep(0.05)
            done.set()
        if foreground:
            prog["foreground_reads_per_s"] = round(reads / read_s, 1) if read_s else 0.0
            t0 = time.monotonic()
            n = 0
            while time.monotonic() - t0 < min(read_s, 5.0) or n < 10:
                await rw.read_block(OLD + n % 100)
                n += 1
            prog["quiet_reads_per_s"] = round(n / (time.monotonic() - t0), 1)
        return prog


def throttle(rate: int | None, parallel: int | None) -> VerificationPolicy:
    """The default policy with the catch-up throttle given on the command line."""
    given: dict[str, int] = {}
    if rate is not None:
        given["catchup_bytes_per_second"] = rate
    if parallel is not None:
        given["catchup_parallel"] = parallel
    return dataclasses.replace(VerificationPolicy(), **given).validate()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=1000)
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--no-durable", action="store_true")
    ap.add_argument("--foreground", action="store_true")
    ap.add_argument("--rate", type=int, default=None, help="catchup_bytes_per_second")
    ap.add_argument("--parallel", type=int, default=None, help="catchup_parallel")
    ap.add_argument(
        "--nothing-missed",
        action="store_true",
        help="write before the kill: the restarted node only lists (the cost of a scan)",
    )
    args = ap.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        ProcessCluster(
            Path(tmp) / "c",
            map_size=1 << 32,
            durable=not args.no_durable,
            verification=throttle(args.rate, args.parallel),
        ) as pc,
    ):
        if args.foreground:
            trio.run(write, pc, 100, args.size, OLD)
        if args.nothing_missed:
            wrote = trio.run(write, pc, args.blocks, args.size)
            pc.kill(K)
        else:
            pc.kill(K)
            wrote = trio.run(write, pc, args.blocks, args.size)
        pc.start(K)
        prog = trio.run(follow, pc, args.blocks, args.foreground)
    secs = prog.get("seconds") or float("nan")
    print(
        f"{args.blocks} blocks of {args.size} B written in {wrote:.1f} s; node {K} caught up: "
        f"{prog}; {prog.get('done', 0) / secs:.0f} blocks/s, {args.blocks / secs:.0f} listed/s, "
        f"{prog.get('bytes_read', 0) / secs / (1 << 20):.1f} MiB/s read"
    )


if __name__ == "__main__":
    main()
