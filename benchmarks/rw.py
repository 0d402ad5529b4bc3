"""PASIS read/write micro-benchmark on real node processes.

For each configuration (b = 1: N=6, m=3; b = 2: N=11, m=5; and m = 1, i.e. replication, at
the same N as a baseline), each block size (16 KiB, 64 KiB) and each number of operations in
flight (1, 4, 16), writes ``--ops`` blocks and then reads them back, and prints throughput
(operations per second) and the median and 99th-percentile latency of each.

The nodes are real ``bftfs node`` processes (``bftfs.testing.processes.ProcessCluster``:
``bftfs init`` + one process per node) with the cluster's durability setting (``--no-durable``
turns fsync off); the client is this process, one trio loop, one :class:`RWClient`.

``--profile`` additionally runs one configuration (b = 1, 16 KiB, 16 in flight, writes then
reads) under cProfile and prints the client's hottest functions, together with the CPU time
the client and every node process used, so the report can say where the time goes.

Usage::

    .venv/bin/python benchmarks/rw.py                 # the whole table
    .venv/bin/python benchmarks/rw.py --quick         # fewer operations
    .venv/bin/python benchmarks/rw.py --profile       # plus the profile
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio
from profiling import cpu_seconds

from bftfs.connect import open_client
from bftfs.rw.client import RWClient, open_rw_client
from bftfs.testing.processes import ProcessCluster

KIB = 1024
CONFIGS: dict[str, dict[str, int]] = {
    "b=1 (N=6, m=3)": {"t": 1, "b": 1},
    "b=1 m=1 (replication)": {"t": 1, "b": 1, "m": 1},
    "b=2 (N=11, m=5)": {"t": 2, "b": 2},
    "b=2 m=1 (replication)": {"t": 2, "b": 2, "m": 1},
}
SIZES = (16 * KIB, 64 * KIB)
IN_FLIGHT = (1, 4, 16)


@dataclass(frozen=True)
class Result:
    ops: int
    seconds: float
    latencies: list[float]

    @property
    def throughput(self) -> float:
        return self.ops / self.seconds

    @property
    def median_ms(self) -> float:
        return statistics.median(self.latencies) * 1e3

    @property
    def p99_ms(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e3


async def run_ops(ops: int, in_flight: int, op: Callable[[int], Awaitable[object]]) -> Result:
    """Run ``op(i)`` for i in range(ops), ``in_flight`` at a time."""
    latencies: list[float] = []
    next_op = iter(range(ops))

    async def worker() -> None:
        for i in next_op:
            start = time.perf_counter()
            await op(i)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(in_flight):
            nursery.start_soon(worker)
    return Result(ops, time.perf_counter() - start, latencies)


async def measure(
    rw: RWClient, size: int, in_flight: int, ops: int, base: int
) -> tuple[Result, Result]:
    """Write ``ops`` distinct blocks of ``size`` bytes, then read them all back."""
    rng = random.Random(size * 1000 + in_flight)
    payloads = [rng.randbytes(size) for _ in range(min(ops, 64))]

    async def write(i: int) -> None:
        await rw.write_block(base + i, payloads[i % len(payloads)])

    async def read(i: int) -> None:
        data = await rw.read_block(base + i)
        if data != payloads[i % len(payloads)]:
            raise AssertionError(f"block {base + i} read back wrong")

    writes = await run_ops(ops, in_flight, write)
    reads = await run_ops(ops, in_flight, read)
    return writes, reads


def node_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a node process; a node that died spoils the figures."""
    seconds = cpu_seconds(pid)
    if seconds is None:
        raise RuntimeError(f"node process {pid} is gone")
    return seconds


def ops_for(in_flight: int, ops: int) -> int:
    return max(100, ops // 4) if in_flight == 1 else ops


def run_config(name: str, options: dict[str, int], args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bftfs-bench-") as tmp:
        pc = ProcessCluster(
            Path(tmp) / "cluster", block_size=max(SIZES), durable=args.durable, **options
        )
        with pc:
            cfg = pc.config

            async def main() -> None:
                async with open_client(cfg) as ep, open_rw_client(ep, cfg, **args.client) as rw:
                    await rw.write_block(0, b"warm-up")  # connections, LMDB databases
                    base = 1
                    for size in SIZES:
                        for in_flight in IN_FLIGHT:
                            ops = ops_for(in_flight, args.ops)
                            w, r = await measure(rw, size, in_flight, ops, base)
                            base += ops
                            for label, res in (("write", w), ("read", r)):
                                print(
                                    f"{name:24s} {size // KIB:3d} KiB  {in_flight:2d} in flight"
                                    f"  {label:5s} {res.throughput:8.1f} ops/s"
                                    f"  median {res.median_ms:6.2f} ms  p99 {res.p99_ms:6.2f} ms",
                                    flush=True,
                                )
                    stats = rw.statistics()
                    print(
                        f"{name:24s} client counters: rounds={stats['rounds']} "
                        f"repairs={stats['repairs']} bad_replies={stats['bad_replies']} "
                        f"write_fallbacks={stats['write_fallbacks']} "
                        f"requests/batch="
                        f"{stats['batched_requests'] / max(1, stats['batches']):.1f}",
                        flush=True,
                    )

            print(f"# {name}: N={cfg.n} QC={cfg.qc} m={cfg.m} durable={cfg.durable}", flush=True)
            trio.run(main)


def run_profile(args: argparse.Namespace) -> None:
    """Profile b = 1, 16 KiB, 16 in flight: CPU per operation in the client and the nodes.

    CPU seconds (from /proc, not wall time) stay meaningful on a machine shared with other
    work, and bound the throughput: two cores cannot run more than ``2 / cpu_per_op``
    operations per second, and the single-threaded client not more than
    ``1 / client_cpu_per_op``.
    """
    with tempfile.TemporaryDirectory(prefix="bftfs-prof-") as tmp:
        pc = ProcessCluster(Path(tmp) / "cluster", block_size=max(SIZES), durable=args.durable)
        with pc:
            cfg = pc.config
            pids = [p for p in (pc.pid(i) for i in range(cfg.n)) if p]
            ops = args.ops
            prof = cProfile.Profile()
            phases: dict[str, tuple[Result, float, float]] = {}

            async def phase(name: str, run: Callable[[], Awaitable[Result]]) -> None:
                nodes0 = sum(node_cpu_seconds(p) for p in pids)
                client0 = time.process_time()
                prof.enable()
                res = await run()
                prof.disable()
                client = time.process_time() - client0
                phases[name] = (res, client, sum(node_cpu_seconds(p) for p in pids) - nodes0)

            async def main() -> None:
                async with open_client(cfg) as ep, open_rw_client(ep, cfg, **args.client) as rw:
                    await rw.write_block(0, b"warm-up")
                    data = random.Random(7).randbytes(16 * KIB)

                    async def write(i: int) -> None:
                        await rw.write_block(1 + i, data)

                    async def read(i: int) -> None:
                        await rw.read_block(1 + i)

                    await phase("write", lambda: run_ops(ops, 16, write))
                    await phase("read", lambda: run_ops(ops, 16, read))

            trio.run(main)
            print(f"# profile: b=1 (N=6, m=3), 16 KiB, 16 in flight, {ops} ops per phase")
            for name, (res, client, nodes) in phases.items():
                per_op = (client + nodes) / res.ops
                print(
                    f"{name:5s} {res.throughput:7.1f} ops/s; CPU per op: client "
                    f"{client / res.ops * 1e6:5.0f} us, all nodes {nodes / res.ops * 1e6:5.0f} us; "
                    f"bound on 2 cores {2 / per_op:6.0f} ops/s, client-bound "
                    f"{res.ops / client:6.0f} ops/s"
                )
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
            print(out.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=1000, help="operations per measurement")
    parser.add_argument("--quick", action="store_true", help="300 operations per measurement")
    parser.add_argument("--no-durable", dest="durable", action="store_false")
    parser.add_argument("--profile", action="store_true", help="also profile b=1 16 KiB x16")
    parser.add_argument(
        "--only", action="append", default=None, help="run only configurations containing this"
    )
    parser.add_argument(
        "--seed-writes", action="store_true", help="two-round writes (READ_TIMESTAMP first)"
    )
    parser.add_argument("--no-batch", action="store_true", help="one frame per request")
    args = parser.parse_args(argv)
    args.client = {"one_round": not args.seed_writes, "batch": not args.no_batch}
    if args.quick:
        args.ops = 300
    print(
        f"# bftfs PASIS benchmark, {os.cpu_count()} CPUs, python {sys.version.split()[0]}, "
        f"client {args.client}"
    )
    for name, options in CONFIGS.items():
        if args.only and not any(o in name for o in args.only):
            continue
        run_config(name, options, args)
    if args.profile:
        run_profile(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
