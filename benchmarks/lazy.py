"""Verification policies compared on real node processes (seed 004 section 3.10).

The seed compares "no verification, write-time, read-time, lazy, lazy+cooperative".  A
reader in bftfs always checks what it decodes (it regenerates the cross checksum unless
``b + 1`` nodes say the version is verified), and turning that off would let a Byzantine
writer's garbage through, so "no verification" is not measured: the baseline is
**read-time** (``[verification] mode = "off"``: nodes verify nothing in the background and
every read regenerates).  Against it, with the same load on a fresh cluster each:

* ``write-time``: every node verifies each block right after each write (AVID-like);
* ``lazy``: every node verifies every block itself, in idle time, once writes settled;
* ``lazy-coop``: the ``b + 1`` nodes responsible for a block verify it and NOTIFY the rest.

The lazy modes get short ``settle_seconds``/``idle_seconds`` (5 ms), so that the 10 ms of
idle time between the operations of load (b) is enough for verification to run.

Two loads, t = 1, b = 1 (N = 6, m = 3), 16 KiB blocks, no fsync (``durable = False``), a
512-block working set written once before measuring:

(a) write-heavy, no idle time: 4 clients (distinct identities, so the per-client budgets
    apply as they would), each with 8 writes outstanding to random blocks, for
    ``--seconds``; reports writes/s.  Then the time until every node's backlog of
    unverified versions is empty ("drain", capped at ``--drain-cap``).
(b) 50/50 reads and writes with idle time: one client, each operation followed by a 10 ms
    sleep, for ``--seconds``; reports the median read and write latency and the share of
    reads that skipped regeneration (``verified_skips / reads``).

Per policy it also prints the nodes' verification progress summed at the end (versions
verified, versions collected, NOTIFYs sent; ``progress["rw.verify"]`` of the ``stats``
reply, as in ``bftfs status``).  ``--repeat K`` runs every (policy, load) K times, the
policies interleaved and in a rotated order per round so drift on a noisy machine falls on
all of them alike, and prints medians; ratios are relative to read-time in the same run.

Usage::

    .venv/bin/python benchmarks/lazy.py                      # 10 s per load, once
    .venv/bin/python benchmarks/lazy.py --seconds 5 --repeat 3
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from bftfs import local
from bftfs.config import ClusterConfig
from bftfs.connect import open_client
from bftfs.policy import VerificationPolicy
from bftfs.rw.client import RWClient, open_rw_client
from bftfs.testing.processes import ProcessCluster

KIB = 1024
BLOCK_SIZE = 16 * KIB
WORKING_SET = 512
WRITERS = 4
OUTSTANDING = 8
IDLE_SLEEP = 0.010
#: Short enough that load (b)'s 10 ms pauses leave room for verification.
FAST = 0.005
POLICIES: dict[str, VerificationPolicy] = {
    "read-time": VerificationPolicy(mode="off"),
    "write-time": VerificationPolicy(mode="write-time", settle_seconds=FAST, idle_seconds=FAST),
    "lazy": VerificationPolicy(mode="lazy", settle_seconds=FAST, idle_seconds=FAST),
    "lazy-coop": VerificationPolicy(mode="lazy-coop", settle_seconds=FAST, idle_seconds=FAST),
}
BASELINE = "read-time"
#: Node counters summed over the nodes (``progress["rw.verify"]``).
NODE_KEYS = ("verified", "collected", "notify_sent", "repaired", "failed")
#: Client identity 0..WRITERS-1 write; this one only asks for statistics.
STATUS_CLIENT = f"client{WRITERS}"


@asynccontextmanager
async def rw_clients(cfg: ClusterConfig, count: int) -> AsyncIterator[list[RWClient]]:
    """``count`` RW clients, each its own client identity and connections."""
    async with AsyncExitStack() as stack:
        clients = []
        for k in range(count):
            ep = await stack.enter_async_context(open_client(cfg, f"client{k}"))
            clients.append(await stack.enter_async_context(open_rw_client(ep, cfg)))
        yield clients


async def node_progress(cfg: ClusterConfig) -> list[dict[str, Any] | None]:
    """Every node's ``rw.verify`` progress (None: verification off or node down)."""
    statuses = await local.query_status(cfg, timeout=5.0, client=STATUS_CLIENT)
    return [((s.stats or {}).get("progress") or {}).get("rw.verify") for s in statuses]


async def write_load(
    clients: list[RWClient], payloads: list[bytes], seconds: float, rng: random.Random
) -> float:
    """Load (a): every client keeps ``OUTSTANDING`` writes going; writes per second."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def task(rw: RWClient) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await rw.write_block(rng.randrange(WORKING_SET), rng.choice(payloads))
            done += 1

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for rw in clients:
            for _ in range(OUTSTANDING):
                nursery.start_soon(task, rw)
    return done / (time.perf_counter() - start)


async def prefill(clients: list[RWClient], payloads: list[bytes]) -> None:
    """Write every block of the working set once, so every read of load (b) finds data."""
    blocks = iter(range(WORKING_SET))

    async def task(rw: RWClient) -> None:
        for block in blocks:
            await rw.write_block(block, payloads[block % len(payloads)])

    async with trio.open_nursery() as nursery:
        for rw in clients:
            for _ in range(OUTSTANDING):
                nursery.start_soon(task, rw)


async def drain(cfg: ClusterConfig, cap: float) -> float | None:
    """Seconds until no node has unverified versions (None: verification off); ``cap``
    when it did not happen by then."""
    start = time.perf_counter()
    while True:
        progress = await node_progress(cfg)
        if all(p is None for p in progress):
            return None
        if sum(p["backlog_versions"] for p in progress if p) == 0:
            return time.perf_counter() - start
        if time.perf_counter() - start >= cap:
            return cap
        await trio.sleep(0.1)


async def mixed_load(
    rw: RWClient, payloads: list[bytes], seconds: float, rng: random.Random
) -> dict[str, float]:
    """Load (b): one operation at a time, half reads, each followed by 10 ms of idle."""
    before = rw.statistics()
    lat: dict[str, list[float]] = {"read": [], "write": []}
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        block = rng.randrange(WORKING_SET)
        kind = "read" if rng.random() < 0.5 else "write"
        start = time.perf_counter()
        if kind == "read":
            await rw.read_block(block)
        else:
            await rw.write_block(block, rng.choice(payloads))
        lat[kind].append(time.perf_counter() - start)
        await trio.sleep(IDLE_SLEEP)
    after = rw.statistics()
    reads = after["reads"] - before["reads"]
    skips = after["verified_skips"] - before["verified_skips"]
    return {
        "read_ms": statistics.median(lat["read"]) * 1e3,
        "write_ms": statistics.median(lat["write"]) * 1e3,
        "skipped": skips / reads if reads else 0.0,
    }


def run_policy(name: str, args: argparse.Namespace, seed: int) -> dict[str, float]:
    """One fresh cluster under policy ``name``: prefill, load (a), drain, load (b)."""
    rng = random.Random(seed)
    payloads = [rng.randbytes(BLOCK_SIZE) for _ in range(16)]
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bftfs-lazy-") as tmp:
        pc = ProcessCluster(
            Path(tmp) / "cluster",
            t=1,
            b=1,
            block_size=BLOCK_SIZE,
            durable=False,
            clients=WRITERS + 1,
            verification=POLICIES[name],
        )
        with pc:
            cfg = pc.config

            async def main() -> None:
                async with rw_clients(cfg, WRITERS) as clients:
                    await prefill(clients, payloads)
                    await drain(cfg, args.drain_cap)
                    out["writes_s"] = await write_load(clients, payloads, args.seconds, rng)
                    drained = await drain(cfg, args.drain_cap)
                    out["drain_s"] = float("nan") if drained is None else drained
                    out.update(await mixed_load(clients[0], payloads, args.seconds, rng))
                progress = await node_progress(cfg)
                for key in NODE_KEYS:
                    out[key] = sum(p[key] for p in progress if p)

            trio.run(main)
    return out


def ratio(value: float, base: float) -> str:
    return f"{value / base:5.2f}x" if base and value == value else "    -"


def fmt_drain(value: float, cap: float) -> str:
    if value != value:
        return "-"
    return f">{cap:.0f}" if value >= cap else f"{value:.1f}"


def report(results: dict[str, list[dict[str, float]]], cap: float) -> None:
    med = {
        name: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for name, runs in results.items()
    }
    base = med[BASELINE]
    print()
    print(
        f"{'policy':11s} {'writes/s':>9s} {'ratio':>6s} {'drain s':>8s}  "
        f"{'read ms':>8s} {'ratio':>6s} {'write ms':>9s} {'ratio':>6s} {'skipped':>8s}"
    )
    for name, m in med.items():
        print(
            f"{name:11s} {m['writes_s']:9.1f} {ratio(m['writes_s'], base['writes_s'])} "
            f"{fmt_drain(m['drain_s'], cap):>8s}  "
            f"{m['read_ms']:8.2f} {ratio(m['read_ms'], base['read_ms'])} "
            f"{m['write_ms']:9.2f} {ratio(m['write_ms'], base['write_ms'])} "
            f"{m['skipped'] * 100:7.1f}%"
        )
    print()
    print(f"{'policy':11s} " + " ".join(f"{k:>11s}" for k in NODE_KEYS) + "   (all nodes)")
    for name, m in med.items():
        print(f"{name:11s} " + " ".join(f"{m[k]:11.0f}" for k in NODE_KEYS))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each load")
    parser.add_argument("--repeat", type=int, default=1, help="runs per policy (medians)")
    parser.add_argument(
        "--drain-cap", type=float, default=30.0, help="longest wait for the backlog to empty"
    )
    parser.add_argument("--policies", nargs="+", choices=list(POLICIES), default=list(POLICIES))
    args = parser.parse_args(argv)
    names = [BASELINE] + [p for p in args.policies if p != BASELINE]
    print(
        f"t=1 b=1 (N=6), {BLOCK_SIZE // KIB} KiB blocks, no fsync, {WORKING_SET} blocks; "
        f"(a) {WRITERS} clients x {OUTSTANDING} writes outstanding, {args.seconds:g} s; "
        f"(b) 50/50 read/write, {IDLE_SLEEP * 1e3:.0f} ms idle after each, {args.seconds:g} s; "
        f"{args.repeat} run(s), policies interleaved",
        flush=True,
    )
    results: dict[str, list[dict[str, float]]] = defaultdict(list)
    for r in range(args.repeat):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            res = run_policy(name, args, seed=r)
            results[name].append(res)
            print(
                f"  run {r + 1} {name:11s} writes/s {res['writes_s']:7.1f}  drain "
                f"{fmt_drain(res['drain_s'], args.drain_cap):>5s} s  read {res['read_ms']:6.2f} "
                f"ms  write {res['write_ms']:6.2f} ms  skipped {res['skipped'] * 100:5.1f}%  "
                f"verified {res['verified']:.0f}",
                flush=True,
            )
    report({name: results[name] for name in names}, args.drain_cap)
    return 0


if __name__ == "__main__":
    sys.exit(main())
