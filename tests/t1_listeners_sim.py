"""Tier 1: the Listeners register under concurrency and one Byzantine node (issue 68).

A discrete-event simulation of figure 3.1 and its server side, no loop and no clock: four
nodes (``n = 3f + 1``, ``f = 1``) run the pure server rules of ``bftfs/listeners/server.py``,
clients run the pure reader and writer of ``bftfs/listeners/{reader,writer}.py``, and every
message, request, answer or echo, waits in one pool from which a seeded random choice
delivers the next, so every interleaving an asynchronous network allows (with reliable
links, as the seed assumes) is a seed away.  Messages pass through their wire form
(``bftfs/listeners/messages.py``), and one node may run a behaviour of
``bftfs/testing/byzantine/listeners.py`` (the ones a node process runs too).

Each history (an operation's interval runs from its first message to its decision, in
simulation steps) must be linearizable (``bftfs/testing/linearizability.py``), every
operation must finish (Lemma 6: liveness), and a read with no write concurrent must decide
on the nodes' first answers, one round, with no echo needed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest

from bftfs.listeners import messages as m
from bftfs.listeners import server
from bftfs.listeners.reader import ReadOp
from bftfs.listeners.stamps import INITIAL, Sizes, Stamp, Stored
from bftfs.listeners.writer import WriteOp
from bftfs.testing.byzantine.listeners import BEHAVIOURS, Behaviour
from bftfs.testing.linearizability import READ, WRITE, Op, check

N = 4
SIZES = Sizes.of(N)
KEYS = (b"x", b"y")


def wire(value: Any) -> Any:
    """``value`` after the transport's msgpack encoding."""
    return msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False)


class DictRegisters(dict[bytes, Stored]):
    """A node's registers in memory (``server.Registers``)."""

    def put(self, key: bytes, value: Stored) -> None:
        self[key] = value


@dataclass
class SimNode:
    regs: DictRegisters = field(default_factory=DictRegisters)
    table: server.ListenerTable = field(default_factory=server.ListenerTable)
    behaviour: Behaviour | None = None
    #: Whether the node echoes at all (False: a protocol without the Listeners pattern).
    echoes: bool = True


@dataclass
class Running:
    """A client's operation in flight."""

    kind: str
    key: bytes
    start: int
    tag: int
    write: WriteOp | None = None
    read: ReadOp | None = None


class Sim:
    """Four nodes, some clients, one pool of messages in flight."""

    def __init__(self, seed: int, byzantine: dict[int, str] | None = None) -> None:
        self.rng = random.Random(seed)
        self.nodes = [SimNode() for _ in range(N)]
        for i, name in (byzantine or {}).items():
            self.nodes[i].behaviour = BEHAVIOURS[name](random.Random(seed * 7 + i))
        self.pool: list[tuple[Any, ...]] = []
        #: A correct node the network slows (``pick``): the one after the Byzantine node.
        self.laggard = (min(byzantine) + 1) % N if byzantine else seed % N
        self.step = 0
        self.tags = 0
        self.history: list[Op] = []
        #: Per read: (echoes it needed, whether a write overlapped it).
        self.reads: list[tuple[int, bool]] = []
        self.last: dict[int, Stamp] = {}
        self.running: dict[int, Running] = {}
        self.writes_open: set[int] = set()
        self.overlapped: set[int] = set()
        #: The client of each operation, by tag.
        self.owner: dict[int, int] = {}

    # -- clients --------------------------------------------------------------
    def start(self, client: int, kind: str, key: bytes, data: bytes = b"") -> None:
        self.tags += 1
        op = Running(kind, key, self.step, self.tags)
        if kind == WRITE:
            last = self.last.get(client, INITIAL)
            op.write = WriteOp(SIZES, range(N), client, last, data)
            self.send_all(client, op.tag, m.KIND_TS, m.ts_request(key))
            self.writes_open.add(self.tags)
            self.overlapped.update(t for t, r in self.running.items() if r.kind == READ)
        else:
            op.read = ReadOp(SIZES, range(N))
            self.send_all(client, op.tag, m.KIND_READ, m.read_request(key, op.tag))
            if self.writes_open:
                self.overlapped.add(op.tag)
        self.running[op.tag] = op
        self.owner[op.tag] = client

    def send_all(self, client: int, tag: int, kind: str, payload: Any) -> None:
        for i in range(N):
            self.pool.append(("req", i, client, tag, kind, wire(payload)))

    def answer(self, client: int, node: int, tag: int, kind: str, body: Any) -> None:
        op = self.running.get(tag)
        if op is None:
            return  # a late answer to a finished operation
        try:
            if kind == m.KIND_TS:
                assert op.write is not None
                value = op.write.on_ts(node, m.parse_stamp_reply(body))
                if value is not None:
                    self.send_all(client, tag, m.KIND_STORE, m.store_request(op.key, value))
            elif kind == m.KIND_STORE:
                assert op.write is not None
                if op.write.on_ack(node, m.parse_stamp_reply(body)):
                    assert op.write.value is not None
                    self.last[client] = op.write.value.stamp
                    self.finish(op, WRITE, op.write.value.data)
            else:
                assert op.read is not None
                rid, value = m.parse_value(body)
                decided = op.read.on_value(node, value) if rid == tag else None
                if decided is not None:
                    self.send_all(client, tag, m.KIND_DONE, m.done_request(tag))  # R14
                    self.reads.append((op.read.echoes, tag in self.overlapped))
                    self.finish(op, READ, decided.data)
        except ValueError:
            pass  # a malformed answer: a faulty node's, as none

    def finish(self, op: Running, kind: str, value: bytes) -> None:
        del self.running[op.tag]
        self.writes_open.discard(op.tag)
        self.history.append(Op(op.key, kind, value, op.start, self.step))

    # -- nodes ----------------------------------------------------------------
    def deliver(self, i: int, client: int, tag: int, kind: str, payload: Any) -> None:
        node = self.nodes[i]
        echoes: list[server.Echo] = []
        if kind == m.KIND_TS:
            reply: Any = m.stamp_reply(server.query_ts(node.regs, m.parse_ts_request(payload)))
        elif kind == m.KIND_STORE:
            key, value = m.parse_store_request(payload)
            server.accept(node.regs, client, key, value)
            echoes = node.table.echoes(key, value) if node.echoes else []
            reply = m.stamp_reply(value.stamp)
        elif kind == m.KIND_READ:
            key, rid = m.parse_read_request(payload)
            value = node.table.open(client, rid, key, server.current(node.regs, key), self.step)
            reply = m.value_message(rid, value)
        else:
            node.table.complete(client, m.parse_done_request(payload))
            reply = None
        b = node.behaviour
        if b is not None and reply is not None:
            reply = b.reply(client, kind, payload, reply)
        if reply is not None:
            self.pool.append(("ans", client, i, tag, kind, wire(reply)))
        for e in echoes:
            bodies = [m.echo_push(e.read_id, e.value)]
            if b is not None:
                bodies = b.push(e.reader, bodies[0])
            for body in bodies:  # an echo's tag is its read id
                self.pool.append(("ans", e.reader, i, e.read_id, m.KIND_READ, wire(body[m.PUSH])))

    # -- the run --------------------------------------------------------------
    def run(self, plans: dict[int, list[tuple[str, bytes]]], *, sequential: bool = False) -> None:
        """Run each client's plan (operations in order); ``sequential``: one operation at
        a time in the whole system (nothing concurrent)."""
        todo = {c: list(p) for c, p in plans.items()}
        busy: set[int] = set()
        n_writes = 0
        while any(todo.values()) or self.running or self.pool:
            self.step += 1
            idle = [c for c, p in todo.items() if p and c not in busy]
            if sequential and (self.running or self.pool):
                idle = []  # nothing of an earlier operation in flight
            if idle and (not self.pool or self.rng.random() < 0.15):
                c = self.rng.choice(idle)
                kind, key = todo[c].pop(0)
                n_writes += 1
                self.start(c, kind, key, b"c%d-w%d" % (c, n_writes))
                busy.add(c)
            else:
                assert self.pool, "nothing in flight yet operations unfinished: a read hangs"
                item = self.pool.pop(self.pick())
                if item[0] == "req":
                    self.deliver(*item[1:])
                else:
                    self.answer(*item[1:])
            busy = {self.owner[t] for t in self.running}

    def pick(self) -> int:
        """The next message, at random; the writes to the laggard (a correct node the
        network slows) a twentieth as likely as the others, so that reads often find it
        behind a completed write."""
        weights = [
            0.05
            if item[0] == "req" and item[1] == self.laggard and item[4] == m.KIND_STORE
            else 1.0
            for item in self.pool
        ]
        return self.rng.choices(range(len(self.pool)), weights)[0]


def plans(rng: random.Random, clients: int, ops: int) -> dict[int, list[tuple[str, bytes]]]:
    """Client ids from 1 (0 is the initial write's); a mix of reads and writes."""
    return {
        c: [(rng.choice((READ, WRITE)), rng.choice(KEYS)) for _ in range(ops)]
        for c in range(1, clients + 1)
    }


@pytest.mark.parametrize("behaviour", [None, *BEHAVIOURS])
@pytest.mark.parametrize("seed", range(6))
def test_concurrent_reads_and_writes_are_atomic(behaviour: str | None, seed: int) -> None:
    sim = Sim(seed, {seed % N: behaviour} if behaviour else None)
    sim.run(plans(random.Random(seed), clients=4, ops=12))
    assert len(sim.history) == 4 * 12  # every operation finished (Lemma 6)
    verdict = check(sim.history, initial=b"")
    assert verdict, verdict.reason


def test_concurrency_is_resolved_by_echoes() -> None:
    """Over the runs some reads decide only on echoed writes: the Listeners pattern is
    what finishes them (without it, see the next test)."""
    needed = 0
    for seed in range(6):
        sim = Sim(seed, {1: "forge"})
        sim.run(plans(random.Random(seed), clients=4, ops=12))
        needed += sum(1 for echoes, _ in sim.reads if echoes)
    assert needed > 0


def test_without_echoes_a_concurrent_read_can_hang() -> None:
    """The same reader against nodes that never echo: some run leaves a read that never
    gathers a quorum of identical answers (what the Listeners pattern is for)."""
    hung = 0
    for seed in range(12):
        sim = Sim(seed, {0: "stale"})
        for node in sim.nodes:
            node.echoes = False
        try:
            sim.run(plans(random.Random(seed), clients=4, ops=12))
        except AssertionError:
            hung += 1
    assert hung > 0


@pytest.mark.parametrize("behaviour", [None, *BEHAVIOURS])
def test_a_read_without_concurrent_writes_takes_one_round(behaviour: str | None) -> None:
    sim = Sim(3, {2: behaviour} if behaviour else None)
    sim.run(plans(random.Random(3), clients=3, ops=15), sequential=True)
    assert len(sim.history) == 45
    assert check(sim.history, initial=b"")
    assert sim.reads and all(not overlapped for _, overlapped in sim.reads)
    assert [echoes for echoes, _ in sim.reads] == [0] * len(sim.reads)
