"""Transport micro-benchmark on real node processes (issue 2).

Starts a fresh local cluster of ``n`` node processes in a temporary directory and measures,
from one client process:

* latency of a null request (``ping``) to one node: median and p99;
* latency of a fan-out returning at a quorum of ``q`` valid replies, sent to all nodes or
  (``--initial q``) to ``q`` of them with the rest probed on trouble: median, p99;
* throughput of null requests with 16 in flight (requests per second).

Each measurement is repeated ``--runs`` times, interleaved, and the median of the per-run
figures is printed (2 noisy cores: single runs vary by 10-20%).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

from bftfs.connect import open_client
from bftfs.ids import NodeId
from bftfs.testing.processes import ProcessCluster


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


async def measure(
    cfg, count: int, quorum: int, inflight: int, initial: int | None
) -> dict[str, float]:  # type: ignore[no-untyped-def]
    async with open_client(cfg, "client0") as ep:
        for i in range(200):  # warm connections and caches
            await ep.call(NodeId(i % cfg.n), "ping", None)
        one = []
        for _ in range(count):
            t0 = time.perf_counter()
            await ep.call(NodeId(0), "ping", None)
            one.append(time.perf_counter() - t0)
        fan = []
        for _ in range(count):
            t0 = time.perf_counter()
            await ep.quorum_call(
                cfg.node_ids, "ping", None, initial=initial, enough=lambda rs: len(rs) >= quorum
            )
            fan.append(time.perf_counter() - t0)
        done = 0
        total = count * 4

        async def worker(k: int) -> None:
            nonlocal done
            while done < total:
                done += 1
                await ep.call(NodeId(k % cfg.n), "ping", None)

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for k in range(inflight):
                nursery.start_soon(worker, k)
        rps = done / (time.perf_counter() - t0)
    return {
        "one_median_us": statistics.median(one) * 1e6,
        "one_p99_us": pct(one, 99) * 1e6,
        "fan_median_us": statistics.median(fan) * 1e6,
        "fan_p99_us": pct(fan, 99) * 1e6,
        "rps_16": rps,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="repetitions (median reported)")
    ap.add_argument("--count", type=int, default=2000, help="requests per latency series")
    ap.add_argument("--t", type=int, default=1)
    ap.add_argument("--b", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument(
        "--initial",
        type=int,
        default=None,
        help="send the fan-out to this many nodes first (default: all), probing the rest",
    )
    args = ap.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        ProcessCluster(Path(tmp) / "c", t=args.t, b=args.b, map_size=1 << 28) as pc,
    ):
        cfg = pc.config
        quorum = cfg.q
        print(
            f"bftfs transport benchmark: {cfg.n} node processes, fan-out to a quorum of "
            f"{quorum}, {args.runs} runs x {args.count} requests",
            file=sys.stderr,
        )
        runs = []
        for r in range(args.runs):
            res = trio.run(measure, cfg, args.count, quorum, 16, args.initial)
            runs.append(res)
            print(
                f"  run {r + 1}: " + "  ".join(f"{k}={v:.0f}" for k, v in res.items()),
                file=sys.stderr,
            )
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(
        f"null request, one node      median {med['one_median_us']:7.0f} us   "
        f"p99 {med['one_p99_us']:7.0f} us"
    )
    print(
        f"fan-out to {cfg.n}, quorum {quorum}     median {med['fan_median_us']:7.0f} us   "
        f"p99 {med['fan_p99_us']:7.0f} us"
    )
    print(f"null requests, 16 in flight {med['rps_16']:7.0f} requests/s")
    if args.json:
        args.json.write_text(json.dumps({"median_of_runs": med, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
