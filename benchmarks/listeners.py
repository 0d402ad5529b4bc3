"""The Listeners register against a Q/U object on real node processes (issue 68).

For each fault level ``b`` this starts, one after the other on this machine, a cluster of
``3b + 1`` node processes for the Listeners register (seed 003 chapter 3, ``f = b``) and
one of ``5b + 1`` (``t = b``) for Q/U objects (``--test-objects``: the ``counter`` type),
and measures from this process:

* ``read`` / ``write``: median latency of a register read (nothing concurrent: one round
  trip, then READ COMPLETE in the background) and write (QUERY TS then STORE: two round
  trips); against Q/U's ``query`` (``counter.fetch``, warm cache: one round trip) and
  ``update`` (``counter.increment``: one round trip without contention);
* ``read+Nw``: a read's median latency while ``N`` clients write the same register in a
  loop (the seed's figure 3.5 experiment), and the echoes per read;
* ``tput``: operations per second of ``--clients`` clients at once, each on its own
  register or counter, half reads and half writes (Listeners) or half queries and half
  updates (Q/U);
* node CPU per operation (user + system, summed over the nodes).

Non-durable nodes unless ``--durable`` (as ``benchmarks/qu.py``).  Prints a Markdown
table; ``--json`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
from profiling import cpu_seconds

from bftfs.connect import open_client
from bftfs.ids import NodeId, client_id
from bftfs.listeners.client import ListenersClient
from bftfs.net.endpoint import Endpoint
from bftfs.qu.classify import QUThresholds
from bftfs.qu.client import QUClient
from bftfs.testing.processes import ProcessCluster

CLIENTS = 4
DATA = b"v" * 1000  # the seed's 1000-byte writes [003 L2160-2163]


def node_cpu(pc: ProcessCluster, n: int) -> float:
    return sum(cpu_seconds(pid) or 0.0 for pid in (pc.pid(i) for i in range(n)) if pid)


async def series(count: int, fn: Callable[[], Awaitable[Any]]) -> float:
    """Median latency of ``count`` calls of ``fn``, in microseconds."""
    lat = []
    for _ in range(count):
        t0 = time.perf_counter()
        await fn()
        lat.append(time.perf_counter() - t0)
    return statistics.median(lat) * 1e6


async def throughput(
    pc: ProcessCluster, n: int, seconds: float, workers: list[Callable[[int], Awaitable[Any]]]
) -> tuple[float, float]:
    """Operations per second of the workers run together for ``seconds``, and the
    microseconds of CPU the ``n`` nodes spent per operation meanwhile."""
    done = [0]
    cpu0 = node_cpu(pc, n)

    async def loop(fn: Callable[[int], Awaitable[Any]]) -> None:
        i = 0
        while True:
            await fn(i)
            i += 1
            done[0] += 1

    t0 = time.perf_counter()
    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for w in workers:
                nursery.start_soon(loop, w)
    elapsed = time.perf_counter() - t0
    return done[0] / elapsed, (node_cpu(pc, n) - cpu0) / max(1, done[0]) * 1e6


async def listeners_run(pc: ProcessCluster, count: int, seconds: float) -> dict[str, float]:
    cfg, out = pc.config, {}
    nodes = [NodeId(s.id) for s in cfg.nodes]
    async with trio.open_nursery() as nursery:
        eps = [await nursery.start(_endpoint, cfg, f"client{k}") for k in range(CLIENTS + 1)]
        cs = [ListenersClient(ep, nodes, rng=random.Random(k)) for k, ep in enumerate(eps)]
        c = cs[0]
        for _ in range(30):  # warm the connections
            await c.write(b"r", DATA)
            await c.read(b"r")
        cpu0 = node_cpu(pc, cfg.n)
        out["write_us"] = await series(count, lambda: c.write(b"r", DATA))
        out["read_us"] = await series(count, lambda: c.read(b"r"))
        out["node_cpu_us"] = (node_cpu(pc, cfg.n) - cpu0) / (2 * count) * 1e6
        for w in (1, 3):
            before = dict(c.stats)
            with trio.CancelScope() as writers:
                async with trio.open_nursery() as inner:
                    for k in range(1, w + 1):
                        inner.start_soon(_write_forever, cs[k], b"hot")
                    out[f"read+{w}w_us"] = await series(count // 2, lambda: c.read(b"hot"))
                    writers.cancel()
            reads = c.stats["reads"] - before.get("reads", 0)
            echoes = c.stats["read_echoes"] - before.get("read_echoes", 0)
            out[f"read+{w}w_echoes"] = echoes / max(1, reads)

        def worker(k: int) -> Callable[[int], Awaitable[Any]]:
            key = b"t%d" % k
            return lambda i: cs[k].write(key, DATA) if i % 2 else cs[k].read(key)

        workers = [worker(k) for k in range(CLIENTS)]
        out["tput"], out["tput_node_cpu_us"] = await throughput(pc, cfg.n, seconds, workers)
        nursery.cancel_scope.cancel()
    return out


async def _write_forever(c: ListenersClient, key: bytes) -> None:
    while True:
        await c.write(key, DATA)


async def _endpoint(cfg: Any, name: str, task_status: trio.TaskStatus[Endpoint]) -> None:
    async with open_client(cfg, name) as ep:
        task_status.started(ep)
        await trio.sleep_forever()


async def qu_run(pc: ProcessCluster, count: int, seconds: float) -> dict[str, float]:
    cfg, out = pc.config, {}
    th = QUThresholds.from_config(cfg)
    async with trio.open_nursery() as nursery:
        eps = [await nursery.start(_endpoint, cfg, f"client{k}") for k in range(CLIENTS)]
        cs = [
            QUClient(ep, th, client_id=int(client_id(k)), rng=random.Random(k))
            for k, ep in enumerate(eps)
        ]
        c = cs[0]
        for k, ck in enumerate(cs):  # warm the connections and the OHS caches
            for _ in range(10):
                await ck.update(10 + k, "counter.increment", 1)
                await ck.query(10 + k, "counter.fetch")
        cpu0 = node_cpu(pc, cfg.n)
        out["write_us"] = await series(count, lambda: c.update(10, "counter.increment", 1))
        out["read_us"] = await series(count, lambda: c.query(10, "counter.fetch"))
        out["node_cpu_us"] = (node_cpu(pc, cfg.n) - cpu0) / (2 * count) * 1e6

        def worker(k: int) -> Callable[[int], Awaitable[Any]]:
            oid = 10 + k
            return lambda i: (
                cs[k].update(oid, "counter.increment", 1)
                if i % 2
                else cs[k].query(oid, "counter.fetch")
            )

        workers = [worker(k) for k in range(CLIENTS)]
        out["tput"], out["tput_node_cpu_us"] = await throughput(pc, cfg.n, seconds, workers)
        nursery.cancel_scope.cancel()
    return out


def markdown(results: dict[str, dict[str, float]]) -> str:
    cols = [
        ("n", "nodes"),
        ("read_us", "read / query (us)"),
        ("write_us", "write / update (us)"),
        ("node_cpu_us", "node CPU per op (us)"),
        ("read+1w_us", "read, 1 writer (us)"),
        ("read+1w_echoes", "echoes per read"),
        ("read+3w_us", "read, 3 writers (us)"),
        ("read+3w_echoes", "echoes per read"),
        ("tput", f"ops/s, {CLIENTS} clients"),
        ("tput_node_cpu_us", "node CPU per op (us)"),
    ]
    lines = ["| engine, b | " + " | ".join(h for _, h in cols) + " |"]
    lines.append("|---" * (len(cols) + 1) + "|")
    for name, r in results.items():
        cells = [
            f"{r[k]:.0f}"
            if k in r and k != "read+1w_echoes" and k != "read+3w_echoes"
            else (f"{r[k]:.1f}" if k in r else "-")
            for k, _ in cols
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--b", type=int, nargs="+", default=[1, 2], help="fault levels")
    ap.add_argument("--count", type=int, default=300, help="operations per latency series")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the throughput run")
    ap.add_argument("--durable", action="store_true", help="fsync every commit (default off)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    results: dict[str, dict[str, float]] = {}
    for b in args.b:
        for engine, n in (("listeners", 3 * b + 1), ("qu", 5 * b + 1)):
            flag = "--test-objects" if engine == "qu" else "--listeners"
            extra = {"node_args": {i: [flag] for i in range(n)}}
            with (
                tempfile.TemporaryDirectory() as tmp,
                ProcessCluster(
                    Path(tmp) / "c",
                    n=n,
                    t=b,
                    b=0 if engine == "listeners" else b,
                    clients=CLIENTS + 1,
                    durable=args.durable,
                    map_size=1 << 28,
                    **extra,
                ) as pc,
            ):
                print(f"{engine} b={b}: {n} node processes", file=sys.stderr)
                run = listeners_run if engine == "listeners" else qu_run
                r = trio.run(run, pc, args.count, args.seconds)
                r["n"] = n
                results[f"{engine}, b={b}"] = r
    print(f"durable={args.durable}, medians; throughput {args.seconds:g} s")
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
