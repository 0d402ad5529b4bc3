"""Q/U protocol benchmark on real node processes (issue 4).

For each fault level ``b`` (``t = b``, so ``n = 5b + 1``, ``q = 4b + 1``) this starts a fresh
local cluster of node processes in a temporary directory and measures, from one client
process, the seed's Q/U micro-benchmarks (section 4.4, L2897-3077):

* ``query``: median latency of ``counter.fetch`` by a single client with a warm OHS cache
  (one round trip to the object's preferred quorum);
* ``update``: median latency of ``counter.increment`` by a single client;
* ``multi4``: median latency of a 4-object update (``counter.add_all`` on 4 counters whose
  preferred quorums differ, so some servers object-sync, as in the seed's rename);
* ``contend k``: median latency of increments when k = 1..4 clients increment the same
  counter at once (the seed's Table 4.2 shape: latency grows with contention);
* per-node CPU time per operation (user + system, from /proc, summed over the nodes and
  divided by the operations of the phase), which is what bounds throughput on this machine.

Anchors from the Q/U prototype at b=1 (C++, 2.8 GHz P4, in-memory, seed L3112-3156,
L2996-3004): query 570 us, update 624 us, 4-object update 780 us.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from profiling import cpu_seconds

from bftfs.connect import open_client
from bftfs.ids import client_id
from bftfs.qu.classify import QUThresholds
from bftfs.qu.client import QUClient
from bftfs.testing.processes import ProcessCluster


def nodes_cpu_seconds(pids: list[int | None]) -> float:
    """User + system CPU seconds used so far by the node processes ``pids`` (None: not
    started; a process that is gone counts nothing from then on)."""
    return sum(cpu_seconds(pid) or 0.0 for pid in pids if pid is not None)


async def run_b(cfg: Any, pids: list[int | None], count: int) -> dict[str, float]:
    th = QUThresholds.from_config(cfg)
    out: dict[str, float] = {}
    async with open_client(cfg, "client0") as ep0:
        c = QUClient(ep0, th, client_id=int(client_id(0)), rng=random.Random(0))
        for _ in range(50):  # warm connections and the OHS caches
            await c.update(1, "counter.increment", 1)
            await c.query(1, "counter.fetch")
            await c.update([2, 3, 4, 5], "counter.add_all", 1)

        async def series(name: str, fn: Any) -> None:
            lat = []
            cpu0, me0 = nodes_cpu_seconds(pids), time.process_time()
            for _ in range(count):
                t0 = time.perf_counter()
                await fn()
                lat.append(time.perf_counter() - t0)
            out[name + "_us"] = statistics.median(lat) * 1e6
            out[name + "_node_cpu_us"] = (nodes_cpu_seconds(pids) - cpu0) / count * 1e6
            out[name + "_client_cpu_us"] = (time.process_time() - me0) / count * 1e6

        targets = list(range(th.n))
        await series(
            "ping",
            lambda: ep0.quorum_call(
                targets[: th.q], "ping", None, enough=lambda rs: len(rs) >= th.q
            ),
        )
        await series("query", lambda: c.query(1, "counter.fetch"))
        await series("update", lambda: c.update(1, "counter.increment", 1))
        await series("multi4", lambda: c.update([2, 3, 4, 5], "counter.add_all", 1))
        s = c.statistics()
        out["single_client_repairs"] = s.barriers + s.copies + s.backoffs + s.inline_repairs

        for k in range(1, 5):
            eps = []
            async with (
                open_client(cfg, "client1") as e1,
                open_client(cfg, "client2") as e2,
                open_client(cfg, "client3") as e3,
            ):
                eps = [ep0, e1, e2, e3][:k]
                clients = [
                    QUClient(ep, th, client_id=int(client_id(j)), rng=random.Random(j))
                    for j, ep in enumerate(eps)
                ]
                oid = 100 + k
                for cl in clients:  # warm each client's cache
                    await cl.update(oid, "counter.increment", 1)
                lat: list[float] = []
                per = max(20, count // 4)

                async def work(
                    cl: QUClient, lat: list[float] = lat, per: int = per, oid: int = oid
                ) -> None:
                    for _ in range(per):
                        t0 = time.perf_counter()
                        await cl.update(oid, "counter.increment", 1)
                        lat.append(time.perf_counter() - t0)

                cpu0 = nodes_cpu_seconds(pids)
                async with trio.open_nursery() as n:
                    for cl in clients:
                        n.start_soon(work, cl)
                out[f"contend{k}_us"] = statistics.median(lat) * 1e6
                out[f"contend{k}_node_cpu_us"] = (nodes_cpu_seconds(pids) - cpu0) / len(lat) * 1e6
                final = await clients[0].query(oid, "counter.fetch")
                if final != len(lat) + len(clients):
                    raise RuntimeError(f"counter {oid} is {final}, expected {len(lat) + k}")
                stats = [cl.statistics() for cl in clients]
                out[f"contend{k}_barriers"] = sum(x.barriers for x in stats)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--b", type=int, nargs="+", default=[1, 2, 3], help="fault levels (t = b)")
    ap.add_argument("--count", type=int, default=400, help="operations per latency series")
    ap.add_argument("--durable", action="store_true", help="fsync every commit (default off)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    results = {}
    for b in args.b:
        with (
            tempfile.TemporaryDirectory() as tmp,
            ProcessCluster(
                Path(tmp) / "c",
                node_args={i: ["--test-objects"] for i in range(3 * b + 2 * b + 1)},
                t=b,
                b=b,
                clients=4,
                durable=args.durable,
                map_size=1 << 28,
            ) as pc,
        ):
            cfg = pc.config
            pids = [pc.pid(i) for i in range(cfg.n)]
            print(f"b={b}: {cfg.n} node processes, q={cfg.q}, r={cfg.r}", file=sys.stderr)
            results[b] = trio.run(run_b, cfg, pids, args.count)
    cols = ["ping", "query", "update", "multi4", "contend1", "contend2", "contend3", "contend4"]
    print(
        f"Q/U latency (median, us); node CPU (sum over nodes) and client CPU per op (us); "
        f"durable={args.durable}; ping = null request to a quorum (transport floor)"
    )
    print(f"{'b':>2} {'n':>4} " + " ".join(f"{c:>9}" for c in cols))
    for b, r in results.items():
        print(f"{b:>2} {5 * b + 1:>4} " + " ".join(f"{r[c + '_us']:9.0f}" for c in cols))
        print(f"{'':>2} {'node':>4} " + " ".join(f"{r[c + '_node_cpu_us']:9.0f}" for c in cols))
        print(
            f"{'':>2} {'cli':>4} "
            + " ".join(
                f"{r[c + '_client_cpu_us']:9.0f}" if c + "_client_cpu_us" in r else f"{'':>9}"
                for c in cols
            )
        )
    print("prototype anchors at b=1: query 570, update 624, 4-object update 780")
    for b, r in results.items():
        print(
            f"b={b}: repairs by the isolated client {r['single_client_repairs']:.0f}; barriers "
            "under contention " + ", ".join(f"{r[f'contend{k}_barriers']:.0f}" for k in range(1, 5))
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
