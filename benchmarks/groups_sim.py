"""Many BFT groups, simulated (issue 66, docs/layout.md "Simulation"): PostMark-like
throughput against the number of groups, 1 to 50 groups of 6 out of 300 nodes.

What runs is the real protocol: every client is a :class:`~bftfs.qu.client.QUClient` and
every node runs the node's own Q/U request handling (``qu.replica.handle_request``,
``qu.reads``, object sync by ``qu.objsync``) over a :class:`~bftfs.kv.MemoryKV`, as
``tests/qu_helpers.MemCluster`` drives them; each message goes through msgpack as on the
wire.  What is simulated is time, by a cost model:

- each message a node handles costs it CPU (:class:`Costs`; a request more than a
  history read), and a node handles one message at a time: it is a server with a
  calendar of busy intervals (:class:`Calendar`), serving each message at the earliest
  free time after it arrives;
- the network adds a one-way latency each way; a client's own work costs it a little CPU
  per operation (clients are separate machines);
- a quorum call completes when the quorum engine (``net.quorum.QuorumEngine``, the
  production one) has enough of the replies, taken in the order they arrive.

So a group's capacity is that of its nodes, and more groups are more parallel capacity:
the question is whether the protocol and the layout's routing keep it so.

Clients are closed loops, each in a directory of its own (a ``kv`` object of
``bftfs.testing.testobjects``: names to file ids) with its files (``counter`` objects)
placed in the directory's partition (a create next to its parent; a cross-group create is
the commit protocol of docs/layout.md, not simulated), all routed by the layout.  The mix
is PostMark's: first each client creates its files, then transactions, each a read or an
append and a create or a delete.  Operations of different clients run one at a time in
the order of their simulated start (a discrete-event simulation: each node's calendar
places every message at its simulated time whatever order they are computed in), so
the run is deterministic for a seed.

Throughput is counted over the window every client is busy in (up to the first client's
end), in Q/U operations per simulated second.  PASIS blocks are not simulated (the file
contents of the mix stay in the attribute objects, as small files do: inline).

Usage: ``python benchmarks/groups_sim.py [--groups 1,2,5,10,25,50] [--clients 600]``.
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import json
import math
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import trio

from bftfs.crypto import Identity, KeyRing
from bftfs.ids import NodeId, client_id
from bftfs.kv import MemoryKV
from bftfs.layout.builder import build
from bftfs.layout.model import Layout, LayoutNode, object_partition
from bftfs.net.errors import RemoteError
from bftfs.net.quorum import QuorumEngine, QuorumResult, QuorumUnavailable, Verdict
from bftfs.qu.classify import QUThresholds
from bftfs.qu.client import QUClient
from bftfs.qu.messages import (
    KIND_FETCH,
    KIND_HISTORY,
    KIND_REQUEST,
    parse_fetch,
    parse_history_request,
)
from bftfs.qu.objsync import SyncVotes, sync_order
from bftfs.qu.reads import handle_fetch, handle_history, handle_sync
from bftfs.qu.replica import NeedSync, handle_request
from bftfs.qu.request import Request
from bftfs.qu.serverconfig import ReplicaConfig, Retention
from bftfs.qu.timestamp import Timestamp
from bftfs.testing.testobjects import registry

#: The cluster the issue names: 300 nodes, groups of 6 (t = b = 1).
NODES = 300
DOMAINS = 60
PARTITIONS = 4096


@dataclass(frozen=True)
class Costs:
    """The cost model, in seconds.  The defaults are round numbers of the order a node
    process spends per Q/U message on this project's measurements (docs/performance.md:
    a few hundred microseconds of CPU per request with authenticators) on a LAN."""

    request: float = 200e-6
    history: float = 80e-6
    fetch: float = 80e-6
    sync: float = 120e-6
    latency: float = 100e-6
    client: float = 50e-6

    def of(self, kind: str) -> float:
        """The CPU a node spends on a message of ``kind``."""
        return {KIND_REQUEST: self.request, KIND_HISTORY: self.history}.get(kind, self.fetch)


class Calendar:
    """One node's CPU: busy intervals, each message served at the earliest free time at or
    after its arrival (FIFO by arrival, whatever order the simulation computes them in)."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.busy = 0.0

    def serve(self, arrival: float, cost: float) -> float:
        """Reserve ``cost`` seconds from the earliest gap at or after ``arrival``; when
        the message is done."""
        i = bisect.bisect_right(self.ends, arrival)
        start = arrival
        while i < len(self.starts) and self.starts[i] < start + cost:
            start = max(start, self.ends[i])
            i += 1
        end = start + cost
        self.busy += cost
        # Intervals that touch merge: a saturated node's calendar stays one interval.
        joins_before = i > 0 and self.ends[i - 1] == start
        joins_after = i < len(self.starts) and self.starts[i] == end
        if joins_before and joins_after:
            self.ends[i - 1] = self.ends[i]
            del self.starts[i], self.ends[i]
        elif joins_before:
            self.ends[i - 1] = end
        elif joins_after:
            self.starts[i] = start
        else:
            self.starts.insert(i, start)
            self.ends.insert(i, end)
        return end

    def forget_before(self, moment: float) -> None:
        """Drop intervals ending before ``moment`` (no message arrives before it again)."""
        i = bisect.bisect_left(self.ends, moment)
        if i > 64:
            del self.starts[:i], self.ends[:i]


def wire(value: Any) -> Any:
    """``value`` after a trip through the transport's msgpack encoding."""
    return msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False)


class SimGroup:
    """One group's replicas: the node's Q/U request handling over in-memory stores."""

    def __init__(self, members: Sequence[int], th: QUThresholds, clients: int, seed: int):
        rng = random.Random(seed)
        idents = [Identity(NodeId(i), rng.randbytes(32)) for i in range(th.n)]
        cls = [Identity(client_id(k), random.Random(k).randbytes(32)) for k in range(clients)]
        pubs = {i.pid: i.public for i in idents + cls}
        reg = registry()
        self.members = tuple(members)
        self.th = th
        self.kvs = [MemoryKV() for _ in members]
        self.cfgs = [
            ReplicaConfig(i, th, _key_for(KeyRing(ident, pubs)), reg, Retention())
            for i, ident in enumerate(idents)
        ]

    def handle(self, server: int, sender: int, kind: str, payload: Any, net: SimNet) -> Any:
        """What group node ``server`` answers (wire form in and out)."""
        payload = wire(payload)
        kv, cfg = self.kvs[server], self.cfgs[server]
        if kind == KIND_REQUEST:
            req = (
                Request.from_bytes(payload, self.th.n)
                if isinstance(payload, bytes)
                else Request.from_wire(payload, self.th.n)
            )
            synced: dict[Any, Any] = {}
            for _ in range(3):
                res = handle_request(kv, cfg, sender, req, synced, 0)
                if not isinstance(res, NeedSync):
                    return wire(res.wire())
                for want in res.wants:
                    got = self.sync(server, want.oid, want.lt, want.hosts, net)
                    if got is None:
                        raise RemoteError("sync", "object sync failed")
                    synced[(want.oid, want.lt)] = got
            raise RemoteError("sync", "did not settle")
        if kind == KIND_HISTORY:
            return wire(handle_history(kv, cfg, parse_history_request(payload)).wire())
        if kind == KIND_FETCH:
            return wire({"r": handle_fetch(kv, parse_fetch(payload))})
        raise RemoteError("unknown_kind", kind)

    def sync(
        self, server: int, oid: int, lt: Timestamp, hosts: Sequence[int], net: SimNet
    ) -> tuple[bytes | None, bytes] | None:
        """Object sync by the node's rules (b + 1 identical answers), each answer costing
        the answering node (``net.charge``)."""
        votes = SyncVotes(self.th.b)
        for h in sync_order(server, hosts, self.th.n):
            net.charge(self.members[h], net.costs.sync)
            if votes.add(wire(handle_sync(self.kvs[h], oid, lt))):
                break
        return votes.result()


def _key_for(ring: KeyRing) -> Callable[[int], bytes]:
    def key_for(s: int) -> bytes:
        k = ring.key(NodeId(s))
        if k is None:
            raise KeyError(s)
        return k

    return key_for


@dataclass
class SimNet:
    """The nodes' calendars, the groups, and the simulated moment being computed."""

    costs: Costs
    groups: list[SimGroup]
    calendars: dict[int, Calendar] = field(default_factory=dict)
    #: The time the running computation is at (a sync's answers are charged at it).
    now: float = 0.0
    messages: int = 0

    def serve(self, node: int, sent: float, kind: str) -> float:
        """When a message of ``kind`` sent to ``node`` at ``sent`` is answered (the
        reply back at the sender)."""
        self.messages += 1
        done = self.calendars[node].serve(sent + self.costs.latency, self.costs.of(kind))
        return done + self.costs.latency

    def charge(self, node: int, cost: float) -> None:
        self.calendars[node].serve(self.now, cost)


class SimEndpoint:
    """``call`` and ``quorum_call`` of one client to one group, on simulated time: the
    client's clock moves to when the quorum engine has enough replies."""

    def __init__(self, net: SimNet, group: int, client: SimClient) -> None:
        self.net = net
        self.group = net.groups[group]
        self.client = client

    async def call(
        self, node: int, kind: str, payload: Any, *, timeout: float | None = None
    ) -> Any:
        await trio.lowlevel.checkpoint()
        self.net.now = self.client.clock
        back = self.net.serve(self.group.members[node], self.client.clock, kind)
        reply = self.group.handle(node, self.client.pid, kind, payload, self.net)
        self.client.clock = back
        return reply

    async def quorum_call(
        self,
        targets: Sequence[int],
        kind: str,
        payload: Any,
        *,
        enough: Callable[[Mapping[int, Any]], bool],
        accept: Callable[[int, Any], bool] | None = None,
        initial: int | None = None,
        probe_after: float = 0.5,
        timeout: float | None = None,
        batch: Any = None,
        renew_at: int | None = None,
    ) -> QuorumResult:
        """The production engine decides on replies fed in their simulated arrival order."""
        await trio.lowlevel.checkpoint()
        start = self.client.clock
        engine = QuorumEngine(
            [NodeId(t) for t in targets],
            label=kind,
            enough=enough,
            accept=accept,
            initial=initial,
            probe_after=probe_after,
            resend_after=math.inf,
            timeout=math.inf if timeout is None else timeout,
            now=0.0,
        )
        arrivals: list[tuple[float, int, Any]] = []
        step = engine.start(0.0)
        now = start
        while step.verdict is Verdict.WAIT:
            self.net.now = now
            for node in step.probe:
                back = self.net.serve(self.group.members[node], now, kind)
                try:
                    reply: Any = self.group.handle(node, self.client.pid, kind, payload, self.net)
                except RemoteError as e:
                    reply = e
                heapq.heappush(arrivals, (back, node, reply))
            if not arrivals:
                now = start + engine.wake_at()
                step = engine.on_tick(now - start)
                continue
            now, node, reply = heapq.heappop(arrivals)
            if isinstance(reply, RemoteError):
                step = engine.on_failure(NodeId(node), f"refused: {reply}", now - start)
            else:
                step = engine.on_reply(NodeId(node), reply, now - start)
        self.client.clock = now
        if step.verdict is Verdict.ENOUGH:
            return engine.result
        raise QuorumUnavailable(step.reason, engine.result)


class IdPool:
    """Random object ids sorted by partition as they are drawn, so a client finds one in
    its directory's partition without drawing ``partitions`` ids for each."""

    def __init__(self, partitions: int, seed: int) -> None:
        self.partitions = partitions
        self.rng = random.Random(seed)
        self.buckets: dict[int, list[int]] = {}

    def take(self, part: int) -> int:
        """A fresh random id of partition ``part``."""
        bucket = self.buckets.setdefault(part, [])
        while not bucket:
            oid = self.rng.getrandbits(62)
            self.buckets.setdefault(object_partition(oid, self.partitions), []).append(oid)
        return bucket.pop()


class SimClient:
    """One PostMark-like client: a directory, its files, a closed loop of operations."""

    def __init__(
        self, k: int, net: SimNet, layout: Layout, th: QUThresholds, ids: IdPool, seed: int
    ):
        self.ids = ids
        self.pid = int(client_id(k))
        self.clock = 0.0
        self.net = net
        self.layout = layout
        self.rng = random.Random(seed * 7919 + k)
        self.dir = self.rng.getrandbits(62)
        self.part = object_partition(self.dir, layout.partitions)
        self.group = layout.objects[self.part]
        self.endpoint = SimEndpoint(net, self.group, self)
        self.qu = QUClient(
            self.endpoint,
            th,
            client_id=self.pid,
            rng=random.Random(seed + k),
            seq_start=1,
            sleep=self._sleep,
            batch=False,
        )
        self.files: list[tuple[str, int]] = []
        self.made = 0
        self.ends: list[float] = []

    async def _sleep(self, seconds: float) -> None:
        """Backoff waits in simulated time."""
        self.clock += seconds

    def new_file_id(self) -> int:
        """A file id in the directory's partition (placed next to its parent)."""
        oid = self.ids.take(self.part)
        assert self.layout.group_of_object(oid) == self.group
        return oid

    async def create(self) -> None:
        name, oid = f"f{self.made}", self.new_file_id()
        self.made += 1
        await self.qu.update(oid, "counter.increment", 1)
        await self.qu.update(self.dir, "kv.put", [name, oid])
        self.files.append((name, oid))

    async def transaction(self) -> None:
        """One PostMark transaction: a read or an append, then a create or a delete."""
        _, oid = self.files[self.rng.randrange(len(self.files))]
        if self.rng.random() < 0.5:
            await self.qu.query(oid, "counter.fetch")
        else:
            await self.qu.update(oid, "counter.increment", 1)
        if self.rng.random() < 0.5 or len(self.files) < 2:
            await self.create()
        else:
            name, _ = self.files.pop(self.rng.randrange(len(self.files)))
            await self.qu.update(self.dir, "kv.delete", name)

    async def step(self, index: int, files: int) -> int:
        """Run operation ``index`` of this client's run (creates, then transactions);
        how many Q/U operations it took."""
        before = self.qu.statistics().operations
        self.clock += self.net.costs.client
        await (self.create() if index < files else self.transaction())
        ops = self.qu.statistics().operations - before
        self.ends.extend([self.clock] * ops)
        return ops


@dataclass(frozen=True)
class Point:
    """One run's figures."""

    groups: int
    clients: int
    operations: int
    window: float
    throughput: float
    messages: int
    busiest_node_share: float

    def row(self) -> str:
        return (
            f"{self.groups:>6} {self.clients:>7} {self.operations:>10} "
            f"{self.throughput:>12.0f} {self.busiest_node_share:>8.2f}"
        )


def cluster_nodes() -> list[LayoutNode]:
    """300 nodes in 60 trust domains of 5 (an operator each)."""
    return [
        LayoutNode(i, f"10.{i // 250}.{i % 250}.1", 7000, i.to_bytes(32, "big"), f"op{i % DOMAINS}")
        for i in range(NODES)
    ]


async def _run(groups: int, clients: int, files: int, transactions: int, seed: int) -> Point:
    layout = build(cluster_nodes(), groups, partitions=PARTITIONS)
    th = QUThresholds.minimal(layout.t, layout.b)
    sims = [SimGroup(g.members, th, clients, seed * 1000 + g.id) for g in layout.groups]
    net = SimNet(Costs(), sims, {n.id: Calendar() for n in layout.nodes})
    ids = IdPool(layout.partitions, seed)
    people = [SimClient(k, net, layout, th, ids, seed) for k in range(clients)]
    steps = files + transactions
    queue = [(0.0, k, 0) for k in range(clients)]
    heapq.heapify(queue)
    while queue:
        start, k, index = heapq.heappop(queue)
        if len(queue) % 64 == 0:
            for cal in net.calendars.values():
                cal.forget_before(start)
        await people[k].step(index, files)
        if index + 1 < steps:
            heapq.heappush(queue, (people[k].clock, k, index + 1))
    window = min(p.clock for p in people)
    done = sum(e <= window for p in people for e in p.ends)
    grouped = [m for g in layout.groups for m in g.members]
    busiest = max(min(net.calendars[m].busy, window) for m in grouped)
    return Point(groups, clients, done, window, done / window, net.messages, busiest / window)


def run_point(
    groups: int, clients: int = 600, files: int = 3, transactions: int = 10, seed: int = 1
) -> Point:
    """One simulation run of ``groups`` groups (deterministic for ``seed``)."""
    return trio.run(_run, groups, clients, files, transactions, seed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--groups", default="1,2,5,10,25,50")
    ap.add_argument("--clients", type=int, default=600)
    ap.add_argument("--files", type=int, default=3, help="files each client creates first")
    ap.add_argument("--transactions", type=int, default=10, help="transactions per client")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args(argv)
    print(f"{'groups':>6} {'clients':>7} {'ops':>10} {'ops/s':>12} {'busiest':>8}")
    points = []
    for g in (int(x) for x in args.groups.split(",")):
        p = run_point(g, args.clients, args.files, args.transactions, args.seed)
        points.append(p)
        print(p.row(), flush=True)
    base = points[0].throughput
    for p in points[1:]:
        print(f"{p.groups} groups: {p.throughput / base:.1f}x {points[0].groups} group(s)")
    if args.json:
        args.json.write_text(json.dumps([p.__dict__ for p in points], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
