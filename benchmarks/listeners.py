"""The Listeners registers against Q/U and FaB objects on real node processes (issue 68).

For each fault level ``b`` this starts, one after the other on this machine, a cluster for
each engine and measures from this process:

* ``listeners``: the Listeners register (seed 003 chapter 3, figure 3.1) on ``3b + 1``
  nodes (``f = b``);
* ``blisteners``: Byzantine Listeners (section 3.5, MAC vectors, nodes forwarding writes)
  on the same ``3b + 1``;
* ``qu``: a Q/U object (``--test-objects``: the ``counter`` type) on ``5b + 1`` (``t = b``);
* ``fab``: the same object under FaB Paxos (``engine = "fab"``) on ``5b + 1``.

Figures:

* ``read`` / ``write``: median latency of a register read (nothing concurrent: one round
  trip, then READ COMPLETE in the background) and write (plain: QUERY TS then STORE;
  Byzantine: QUERY TS, PROPOSE TS, STORE); against Q/U's and FaB's ``query``
  (``counter.fetch``) and ``update`` (``counter.increment``);
* node CPU (user + system, summed over the nodes) and messages per read and per write:
  every frame a node received or sent (``stats.traffic``: a message between two nodes is
  received by one, a client's request is received and its answer sent), summed over the
  nodes, less what the status queries themselves cost;
* ``read+Nw`` (registers only): a read's median latency while ``N`` clients write the same
  register in a loop (the seed's figure 3.5 experiment), and the echoes per read;
* ``tput``: operations per second of ``--clients`` clients at once, each on its own
  register or object, half reads and half writes, with node CPU and messages per op.

Non-durable nodes unless ``--durable`` (as ``benchmarks/qu.py``).  Prints a Markdown
table and the load average before and after each cluster; ``--json`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from profiling import cpu_seconds

from bftfs.config import ClusterConfig
from bftfs.connect import open_client
from bftfs.fab.metaclient import FabMetaClient
from bftfs.ids import NodeId, client_id
from bftfs.listeners.bclient import BListenersClient
from bftfs.listeners.client import ListenersClient
from bftfs.local import query_status
from bftfs.net.endpoint import Endpoint
from bftfs.qu.classify import QUThresholds
from bftfs.qu.client import QUClient
from bftfs.testing.processes import ProcessCluster

CLIENTS = 4
DATA = b"v" * 1000  # the seed's 1000-byte writes [003 L2160-2163]
ENGINES = ("listeners", "blisteners", "qu", "fab")
#: The identity the status queries use (none of the measured clients').
STATUS_CLIENT = f"client{CLIENTS + 1}"

Op = Callable[[int], Awaitable[Any]]


@dataclass
class Ops:
    """One client's read and write of register (or object) number ``i``; ``client``: the
    register client, whose echo counts the ``read+Nw`` series read."""

    read: Op
    write: Op
    client: ListenersClient | None = None


def node_cpu(pc: ProcessCluster, n: int) -> float:
    return sum(cpu_seconds(pid) or 0.0 for pid in (pc.pid(i) for i in range(n)) if pid)


class Meter:
    """Node CPU seconds and frames (summed over the nodes) since the last :meth:`take`."""

    def __init__(self, pc: ProcessCluster) -> None:
        self.pc = pc
        self.overhead = 0.0  # frames one status query adds
        self.last = (0.0, 0.0)

    async def frames(self) -> float:
        sts = await query_status(self.pc.config, timeout=10.0, client=STATUS_CLIENT)
        return float(
            sum(
                (st.stats or {}).get("traffic", {}).get(k, 0)
                for st in sts
                for k in ("frames_in", "frames_out")
            )
        )

    async def start(self) -> None:
        a = await self.frames()
        b = await self.frames()
        self.overhead = b - a
        self.last = (node_cpu(self.pc, self.pc.config.n), await self.frames())

    async def take(self, ops: int) -> tuple[float, float]:
        """Microseconds of node CPU and frames per operation since the last call."""
        now = (node_cpu(self.pc, self.pc.config.n), await self.frames())
        (cpu0, fr0), self.last = self.last, now
        return (now[0] - cpu0) / ops * 1e6, (now[1] - fr0 - self.overhead) / ops


async def series(count: int, fn: Callable[[], Awaitable[Any]]) -> float:
    """Median latency of ``count`` calls of ``fn``, in microseconds."""
    lat = []
    for _ in range(count):
        t0 = time.perf_counter()
        await fn()
        lat.append(time.perf_counter() - t0)
    return statistics.median(lat) * 1e6


async def throughput(seconds: float, workers: Sequence[Op]) -> tuple[float, int]:
    """Operations per second of the workers run together for ``seconds``, and how many."""
    done = [0]

    async def loop(fn: Op) -> None:
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
    return done[0] / (time.perf_counter() - t0), done[0]


def _register(c: ListenersClient) -> Ops:
    async def read(i: int) -> Any:
        return await c.read(b"r%d" % i)

    async def write(i: int) -> Any:
        return await c.write(b"r%d" % i, DATA)

    return Ops(read, write, c)


def _object(c: QUClient | FabMetaClient) -> Ops:
    """Counter ``10 + i``: ``counter.fetch`` reads it, ``counter.increment`` writes it."""

    async def read(i: int) -> Any:
        return await c.query(10 + i, "counter.fetch")

    async def write(i: int) -> Any:
        return await c.update(10 + i, "counter.increment", 1)

    return Ops(read, write)


def _register_ops(
    cls: type[ListenersClient],
) -> Callable[[ClusterConfig, list[Endpoint]], list[Ops]]:
    def make(cfg: ClusterConfig, eps: list[Endpoint]) -> list[Ops]:
        nodes = [NodeId(s.id) for s in cfg.nodes]
        return [_register(cls(ep, nodes, rng=random.Random(k))) for k, ep in enumerate(eps)]

    return make


def _qu_ops(cfg: ClusterConfig, eps: list[Endpoint]) -> list[Ops]:
    th = QUThresholds.from_config(cfg)
    return [
        _object(QUClient(ep, th, client_id=int(client_id(k)), rng=random.Random(k)))
        for k, ep in enumerate(eps)
    ]


def _fab_ops(cfg: ClusterConfig, eps: list[Endpoint]) -> list[Ops]:
    nodes = [int(s.id) for s in cfg.nodes]
    return [_object(FabMetaClient(ep, nodes, cfg.b)) for ep in eps]


MAKERS: dict[str, Callable[[ClusterConfig, list[Endpoint]], list[Ops]]] = {
    "listeners": _register_ops(ListenersClient),
    "blisteners": _register_ops(BListenersClient),
    "qu": _qu_ops,
    "fab": _fab_ops,
}


async def run(pc: ProcessCluster, engine: str, count: int, seconds: float) -> dict[str, float]:
    cfg, out = pc.config, {}
    async with trio.open_nursery() as nursery:
        eps = [await nursery.start(_endpoint, cfg, f"client{k}") for k in range(CLIENTS + 1)]
        cs = MAKERS[engine](cfg, eps)
        c = cs[0]
        for k, ck in enumerate(cs):  # warm the connections (and Q/U's OHS caches)
            for _ in range(30 if k == 0 else 5):
                await ck.write(0 if k == 0 else 100 + k)
                await ck.read(0 if k == 0 else 100 + k)
        meter = Meter(pc)
        await meter.start()
        out["write_us"] = await series(count, lambda: c.write(0))
        out["write_cpu_us"], out["write_msgs"] = await meter.take(count)
        out["read_us"] = await series(count, lambda: c.read(0))
        out["read_cpu_us"], out["read_msgs"] = await meter.take(count)
        out["node_cpu_us"] = (out["write_cpu_us"] + out["read_cpu_us"]) / 2
        if c.client is not None:
            await _echo_series(cs, count, out)
        workers = [
            (lambda i, o=o, k=k: o.write(100 + k) if i % 2 else o.read(100 + k))
            for k, o in enumerate(cs[:CLIENTS])
        ]
        await meter.take(1)
        out["tput"], done = await throughput(seconds, workers)
        out["tput_node_cpu_us"], out["tput_msgs"] = await meter.take(max(1, done))
        nursery.cancel_scope.cancel()
    return out


async def _echo_series(cs: list[Ops], count: int, out: dict[str, float]) -> None:
    """A read of register 1 while ``w`` other clients write it (registers only)."""
    c = cs[0].client
    assert c is not None
    for w in (1, 3):
        before = dict(c.stats)
        with trio.CancelScope() as writers:
            async with trio.open_nursery() as inner:
                for k in range(1, w + 1):
                    inner.start_soon(_write_forever, cs[k])
                out[f"read+{w}w_us"] = await series(count // 2, lambda: cs[0].read(1))
                writers.cancel()
        reads = c.stats["reads"] - before.get("reads", 0)
        echoes = c.stats["read_echoes"] - before.get("read_echoes", 0)
        out[f"read+{w}w_echoes"] = echoes / max(1, reads)


async def _write_forever(o: Ops) -> None:
    while True:
        await o.write(1)


async def _endpoint(cfg: Any, name: str, task_status: trio.TaskStatus[Endpoint]) -> None:
    async with open_client(cfg, name) as ep:
        task_status.started(ep)
        await trio.sleep_forever()


COLUMNS = [
    ("n", "nodes", "{:.0f}"),
    ("read_us", "read / query (us)", "{:.0f}"),
    ("write_us", "write / update (us)", "{:.0f}"),
    ("read_cpu_us", "node CPU per read (us)", "{:.0f}"),
    ("write_cpu_us", "node CPU per write (us)", "{:.0f}"),
    ("read_msgs", "msgs per read", "{:.1f}"),
    ("write_msgs", "msgs per write", "{:.1f}"),
    ("read+1w_us", "read, 1 writer (us)", "{:.0f}"),
    ("read+1w_echoes", "echoes per read", "{:.1f}"),
    ("read+3w_us", "read, 3 writers (us)", "{:.0f}"),
    ("read+3w_echoes", "echoes per read", "{:.1f}"),
    ("tput", f"ops/s, {CLIENTS} clients", "{:.0f}"),
    ("tput_node_cpu_us", "node CPU per op (us)", "{:.0f}"),
    ("tput_msgs", "msgs per op", "{:.1f}"),
]


def markdown(results: dict[str, dict[str, float]]) -> str:
    lines = ["| engine, b | " + " | ".join(h for _, h, _ in COLUMNS) + " |"]
    lines.append("|---" * (len(COLUMNS) + 1) + "|")
    for name, r in results.items():
        cells = [fmt.format(r[k]) if k in r else "-" for k, _, fmt in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cluster(home: Path, engine: str, b: int, durable: bool) -> ProcessCluster:
    """The nodes of ``engine`` at fault level ``b`` (module docstring)."""
    register = engine in ("listeners", "blisteners")
    n = 3 * b + 1 if register else 5 * b + 1
    flag = "--listeners" if register else "--test-objects"
    return ProcessCluster(
        home,
        n=n,
        t=b,
        b=0 if register else b,
        engine="fab" if engine == "fab" else "qu",
        clients=CLIENTS + 2,
        durable=durable,
        map_size=1 << 28,
        node_args={i: [flag] for i in range(n)},
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--b", type=int, nargs="+", default=[1, 2], help="fault levels")
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    ap.add_argument("--count", type=int, default=300, help="operations per latency series")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the throughput run")
    ap.add_argument("--durable", action="store_true", help="fsync every commit (default off)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    results: dict[str, dict[str, float]] = {}
    for b in args.b:
        for engine in args.engines:
            with (
                tempfile.TemporaryDirectory() as tmp,
                cluster(Path(tmp) / "c", engine, b, args.durable) as pc,
            ):
                load0 = os.getloadavg()[0]
                print(
                    f"{engine} b={b}: {pc.config.n} node processes, load {load0:.1f}",
                    file=sys.stderr,
                )
                r = trio.run(run, pc, engine, args.count, args.seconds)
                r["n"] = pc.config.n
                r["load"] = max(load0, os.getloadavg()[0])
                results[f"{engine}, b={b}"] = r
                print(json.dumps(r), file=sys.stderr)
    loads = [r["load"] for r in results.values()]
    print(
        f"durable={args.durable}, medians; throughput {args.seconds:g} s; load average "
        f"{min(loads):.1f}-{max(loads):.1f}"
    )
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
