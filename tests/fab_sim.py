"""A simulated network of in-process FaB replicas, for the t1_fab_* tests.

Deterministic: one ``random.Random(seed)`` picks which in-flight message is delivered next
(reordering), drops and duplicates them, and drives Byzantine behaviours.  Time is a count
of deliveries: every ``tick_every`` deliveries (or when nothing is in flight) every replica
ticks.  A Byzantine node runs the correct code and rewrites what it sends (a
:data:`~bftfs.testing.byzantine.fab.Behaviour`, the same ones a real node runs), so it
can sign as itself but cannot forge others' authenticators.

Safety is recorded as it happens: every slot every correct node learns goes to
``learned[node][slot]``; :meth:`Network.conflicts` lists slots where two correct nodes
learned different values.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bftfs.crypto import derive
from bftfs.fab.auth import KeyLookup
from bftfs.fab.client import ReplyCollector, request
from bftfs.fab.messages import Message, Reply, Request, decode, encode
from bftfs.fab.replica import Replica, Send, Settings
from bftfs.qu.objects import Registry
from bftfs.quorums.fab import FabQuorums
from bftfs.testing.byzantine.fab import (
    Behaviour,
    Liar,
    equivocating_leader,
    honest,
    lying_acceptor,
    lying_leader,
    silent,
)

__all__ = [
    "CLIENT_BASE",
    "Behaviour",
    "Network",
    "equivocating_leader",
    "keys_for",
    "lying_acceptor",
    "lying_leader",
    "silent",
]

CLIENT_BASE = 1000
MASTER = b"fab-simulation-master-key-000000"


def keys_for(me: int) -> KeyLookup:
    """Pairwise keys as if derived by Diffie-Hellman: the same for (i, j) and (j, i)."""

    def key(peer: int) -> bytes | None:
        a, b = sorted((me, peer))
        return derive(MASTER, b"fab-sim-pair", a.to_bytes(4, "big"), b.to_bytes(4, "big"))

    return key


@dataclass
class Client:
    """A client (a mount) issuing one operation at a time, resending it on ticks until
    answered.  Several mounts of one identity ``cid`` have streams of their own."""

    cid: int
    stream: int = 0
    rid: int = 0
    op: bytes | None = None
    collector: ReplyCollector | None = None
    started: int = 0
    done: list[tuple[Any, ...]] = field(default_factory=list)  # (rid, ok, result, start, end)
    tag: Any = None


@dataclass
class Network:
    n: int
    q: FabQuorums
    registry: Registry
    seed: int = 0
    drop: float = 0.0
    duplicate: float = 0.0
    #: Deliveries per tick; 0: ``6 n^2``, a few slots' worth of messages (each slot costs
    #: ``n^2`` ACCEPTED), so a correct leader finishes well inside a timeout.
    tick_every: int = 0
    settings: Settings = field(default_factory=Settings)
    byzantine: dict[int, Behaviour] = field(default_factory=dict)
    #: ``(src, dst, message) -> bool``: a scripted adversary may drop specific messages.
    cut: Callable[[int, int, Message], bool] | None = None
    #: Bytes of object states each client may be charged (``Replica.quota``).
    quota: int | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.tick_every = self.tick_every or 6 * self.n * self.n
        self.learned: dict[int, dict[int, bytes]] = {i: {} for i in range(self.n)}
        self.replicas = [self._replica(i) for i in range(self.n)]
        self.flight: list[tuple[int, int, bytes]] = []
        self.clients: dict[int, Client] = {}
        self.deliveries = 0
        self.rejections: list[tuple[int, int, str]] = []

    def _replica(self, i: int) -> Replica:
        def record(slot: int, value: bytes) -> None:
            self.learned[i][slot] = value

        return Replica(
            i, self.q, keys_for(i), self.registry, self.settings, record, quota=self.quota
        )

    # -- sending --------------------------------------------------------------------

    def _emit(self, src: int, sends: Iterable[Send]) -> None:
        for send in sends:
            behaviour = self.byzantine.get(src, honest)
            pairs = behaviour(Liar(self.replicas[src], self.rng, CLIENT_BASE), send)
            for dst, m in pairs:
                self.flight.append((src, dst, encode(m)))

    def inject(self, src: int, dst: int, data: bytes) -> None:
        """Put raw bytes on the wire as if ``src`` sent them."""
        self.flight.append((src, dst, data))

    def submit(
        self,
        cid: int,
        method: str,
        oids: list[int],
        arg: Any,
        tag: Any = None,
        *,
        mount: int | None = None,
    ) -> None:
        """Client ``cid`` starts its next operation (the previous one must be done).  With
        ``mount``, a mount of identity ``cid`` of its own (``clients[mount]``, stream
        ``mount``, request ids from 1 as any other mount's)."""
        handle = cid if mount is None else mount
        c = self.clients.setdefault(handle, Client(cid, 0 if mount is None else mount))
        assert c.op is None, "one operation at a time per client"
        c.rid += 1
        c.op = request(cid, keys_for(cid), self.n, c.rid, method, oids, arg, c.stream)
        c.collector = ReplyCollector(c.rid, self.q.f, c.stream)
        c.started, c.tag = self.deliveries, tag
        self._send_request(c)

    def _send_request(self, c: Client) -> None:
        assert c.op is not None
        for j in range(self.n):
            self.flight.append((c.cid, j, encode(Request(c.op))))

    # -- running --------------------------------------------------------------------

    def tick(self) -> None:
        for i, r in enumerate(self.replicas):
            self._emit(i, r.tick().sends)
        for c in self.clients.values():
            if c.op is not None:
                self._send_request(c)

    def deliver_one(self) -> None:
        self._deliver(self.rng.randrange(len(self.flight)))

    def _deliver(self, k: int) -> None:
        src, dst, data = self.flight.pop(k)
        if self.rng.random() < self.duplicate:
            self.flight.append((src, dst, data))
        if self.rng.random() < self.drop:
            return
        internal = src < self.n and dst < self.n
        if self.cut is not None and internal and self.cut(src, dst, decode(data)):
            return
        self.deliveries += 1
        if dst >= CLIENT_BASE:
            self._to_client(src, dst, data)
            return
        step = self.replicas[dst].step(src, data)
        if step.rejection is not None:
            self.rejections.append((src, dst, step.rejection))
        self._emit(dst, step.sends)

    def _to_client(self, src: int, dst: int, data: bytes) -> None:
        """A reply goes to every mount of its client identity (as a node's push goes to
        each of the client's connections); each counts its own."""
        m = decode(data)
        if not isinstance(m, Reply):
            return
        for c in self.clients.values():
            if c.cid != dst or c.collector is None:
                continue
            result = c.collector.add(src, m)
            if result is not None and c.op is not None:
                c.done.append((c.rid, result[0], result[1], c.started, self.deliveries, c.tag))
                c.op, c.collector = None, None

    def round(self) -> None:
        """Deliver every message now in flight, and nothing they cause: one message delay
        of a synchronous network (what is sent meanwhile waits for the next round)."""
        batch, produced = self.flight, []
        for item in batch:
            self.flight = [item]
            self._deliver(0)
            produced.extend(self.flight)
        self.flight = produced

    def run(self, until: Callable[[], bool], limit: int = 200_000) -> bool:
        """Deliver until ``until()`` holds (True) or ``limit`` deliveries passed (False).

        A tick comes after ``tick_every`` deliveries, or after as many as were in flight at
        the last tick if that is more: the network is slow but not overloaded (eventual
        synchrony; with a fixed rate, retransmissions could outgrow delivery for good).
        """
        since_tick, period = 0, self.tick_every
        for _ in range(limit):
            if until():
                return True
            if not self.flight or since_tick >= period:
                self.tick()
                since_tick, period = 0, max(self.tick_every, len(self.flight))
                if not self.flight:
                    continue
            self.deliver_one()
            since_tick += 1
        return until()

    def idle(self) -> bool:
        return all(c.op is None for c in self.clients.values())

    # -- checks ---------------------------------------------------------------------

    def correct(self) -> list[int]:
        return [i for i in range(self.n) if i not in self.byzantine]

    def conflicts(self) -> list[tuple[int, dict[int, bytes]]]:
        """Slots where correct nodes learned different values: (slot, node -> value)."""
        out = []
        slots = set().union(*(self.learned[i] for i in self.correct()))
        for s in sorted(slots):
            seen = {i: self.learned[i][s] for i in self.correct() if s in self.learned[i]}
            if len(set(seen.values())) > 1:
                out.append((s, seen))
        return out
