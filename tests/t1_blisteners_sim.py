"""Tier 1: Byzantine Listeners under Byzantine clients and one lying node (issue 68).

A discrete-event simulation of figures 3.2-3.4 of seed 003 [003 L1338-1469], built like
tests/t1_listeners_sim.py: four nodes (``n = 3f + 1``, ``f = 1``) run the pure rules of
``bftfs/listeners/bserver.py`` with MAC keys from real X25519 pairwise keys
(``bftfs.crypto.KeyRing``), correct clients run ``bwriter.BWriteOp`` and the reader, and
every message (requests, answers, ACKs, echoes, the nodes' forwarded STOREs and their
D1-D5 flushes) waits in one pool from which a seeded choice delivers the next.  Every
message passes through its wire form.

A Byzantine client (id 13) writes two values under one timestamp to different halves of
the nodes, stops after sending its STORE to one node, or forges ``(K, J)``; one node may be
silent, lie (forged reads, garbage MACs, no forwarding, fabricated writes) or hand out MACs
that check at only some nodes.  Each run must be Byznearizable (Definition 5
[003 L1486-1500]): the correct clients' operations together with the writes the Byzantine
client proposed (pending operations that may take effect at any time after they start, or
never) are linearizable; every correct operation finishes (Lemmas 15, 17); at quiescence
the correct nodes hold the same value of every register (Lemma 16); and no correct node
stores a value its client did not propose (Lemma 12).
"""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest

from bftfs.crypto import Identity, KeyRing
from bftfs.ids import PrincipalId
from bftfs.listeners import bmessages as bm
from bftfs.listeners import messages as m
from bftfs.listeners import server
from bftfs.listeners.auth import Macs, Vector, data_hash
from bftfs.listeners.bserver import BNode, Forward, Write
from bftfs.listeners.bwriter import BWriteOp
from bftfs.listeners.reader import ReadOp
from bftfs.listeners.stamps import INITIAL, Sizes, Stamp, Stored
from bftfs.testing.byzantine.listeners import BEHAVIOURS, Behaviour
from bftfs.testing.linearizability import READ, WRITE, Op, check

N = 4
NODES = tuple(range(N))
SIZES = Sizes.of(N)
KEYS = (b"x", b"y")
BAD_CLIENT = 13
#: A run past this many deliveries is a forwarding storm (a run here takes about 1500).
MAX_STEPS = 50_000
#: Deliveries between two writes of the Byzantine client (which runs its writes in parallel).
PACE = 100
IDENTITIES = {i: Identity.generate(PrincipalId(i)) for i in NODES}
PUBLIC = {PrincipalId(i): ident.public for i, ident in IDENTITIES.items()}


def wire(value: Any) -> Any:
    return msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False)


def macs(i: int) -> Macs:
    return Macs.from_ring(KeyRing(IDENTITIES[i], PUBLIC), NODES)


class DictRegisters(dict[bytes, Stored]):
    def put(self, key: bytes, value: Stored) -> None:
        self[key] = value


def garbage(rng: random.Random) -> Vector:
    return tuple(rng.randbytes(16) for _ in NODES)


@dataclass
class Running:
    kind: str
    key: bytes
    start: int
    write: BWriteOp | None = None
    read: ReadOp | None = None


@dataclass
class BadClient:
    """The Byzantine client: ``mode`` is ``split``, ``stop`` or ``forge``."""

    mode: str
    rng: random.Random
    ops: list[BWriteOp] = field(default_factory=list)
    #: Per value it proposed: the step of its first message (its pending write).
    proposed: dict[tuple[bytes, bytes], int] = field(default_factory=dict)
    #: The K of each of its writes, once a quorum sent TS OK.
    ks: list[Write] = field(default_factory=list)


class Sim:
    def __init__(
        self,
        seed: int,
        *,
        bad_node: str | None = None,
        bad_client: str | None = None,
        node_class: type[BNode] = BNode,
        forwarding: bool = True,
        reader_class: type[ReadOp] = ReadOp,
    ) -> None:
        self.reader_class = reader_class
        self.rng = random.Random(seed)
        self.regs = [DictRegisters() for _ in NODES]
        self.nodes = [node_class(macs(i), SIZES, self.regs[i]) for i in NODES]
        self.forwarding = forwarding
        self.bad = seed % N if bad_node else None
        self.bad_mode = bad_node
        self.lies: Behaviour | None = None
        if bad_node == "liar":
            self.lies = BEHAVIOURS["liar"](random.Random(seed * 7))
        self.client = BadClient(bad_client, random.Random(seed * 11)) if bad_client else None
        self.pool: list[tuple[Any, ...]] = []
        self.ticking: set[int] = set()
        self.step = 0
        self.tags = 0
        self.history: list[Op] = []
        self.last: dict[int, Stamp] = {}
        self.running: dict[int, Running] = {}
        self.owner: dict[int, int] = {}
        #: A correct client's read or write by tag; writes also by (client, key, stamp).
        self.by_stamp: dict[tuple[int, bytes, Stamp], int] = {}
        #: Values the correct clients proposed.
        self.proposed: set[tuple[bytes, bytes]] = set()
        #: Lemma 20's record: when the last correct node revoked the Byzantine client, the
        #: TS OKs correct nodes gave it, the values of it correct nodes stored, its starts.
        self.revoked_all: int | None = None
        self.oks_to_bad: list[tuple[int, bytes]] = []
        self.bad_stored: list[tuple[int, bytes]] = []
        self.bad_starts: list[int] = []

    def correct(self, i: int) -> bool:
        return i != self.bad

    # -- clients --------------------------------------------------------------
    def send_all(self, sender: int, tag: int, kind: str, payload: Any, to: Any = NODES) -> None:
        for i in to:
            self.pool.append(("req", i, sender, tag, kind, wire(payload)))

    def start(self, client: int, kind: str, key: bytes, data: bytes) -> None:
        self.tags += 1
        op = Running(kind, key, self.step)
        if kind == WRITE:
            op.write = BWriteOp(SIZES, NODES, client, self.last.get(client, INITIAL), key, data)
            self.proposed.add((key, data))
            self.send_all(
                client, self.tags, bm.KIND_TS, bm.ts_request(key, op.write.hd, op.write.last)
            )
        else:
            op.read = self.reader_class(SIZES, NODES)
            self.send_all(client, self.tags, m.KIND_READ, m.read_request(key, self.tags))
        self.running[self.tags] = op
        self.owner[self.tags] = client

    def answer(self, client: int, node: int, tag: int, kind: str, body: Any) -> None:
        if client == BAD_CLIENT:
            return self.bad_answer(node, tag, kind, body)
        if kind == "ack":
            key, stamp = bm.parse_ack(body)
            tag = self.by_stamp.get((client, key, stamp), 0)
        op = self.running.get(tag)
        if op is None:
            return None
        with contextlib.suppress(ValueError):  # a malformed answer: a faulty node's, as none
            self.client_step(client, node, tag, op, kind, body)
        return None

    def client_step(
        self, client: int, node: int, tag: int, op: Running, kind: str, body: Any
    ) -> None:
        w = op.write
        if kind == bm.KIND_TS and w is not None:
            my_ts = w.on_ts(node, *bm.parse_ts_reply(body, N))
            if my_ts is not None:
                self.by_stamp[(client, op.key, my_ts)] = tag
                req = bm.propose_request(op.key, my_ts, w.hd, w.last, w.m)
                self.send_all(client, tag, bm.KIND_PROPOSE, req)
        elif kind == bm.KIND_PROPOSE and w is not None:
            write = w.on_ok(node, *bm.parse_ok_reply(body, N))
            if write is not None:
                self.send_all(
                    client, tag, bm.KIND_STORE, bm.store_request(Forward(write, {}, SIZES.quorum))
                )
        elif kind == "ack" and w is not None and w.write is not None:
            if w.on_ack(node, bm.parse_ack(body)[1]):
                self.last[client] = w.write.value.stamp
                self.finish(tag, WRITE, w.data)
        elif kind == m.KIND_READ and op.read is not None:
            rid, value = m.parse_value(body)
            decided = op.read.on_value(node, value) if rid == tag else None
            if decided is not None:
                self.send_all(client, tag, m.KIND_DONE, m.done_request(tag))
                self.finish(tag, READ, decided.data)

    def finish(self, tag: int, kind: str, value: bytes) -> None:
        op = self.running.pop(tag)
        self.history.append(Op(op.key, kind, value, op.start, self.step, self.owner[tag]))

    # -- the Byzantine client ----------------------------------------------------
    def bad_start(self, key: bytes, data: bytes) -> None:
        c = self.client
        assert c is not None
        last = (c.ops[-1].my_ts or INITIAL) if c.ops else INITIAL
        datas = [data, data + b"-twin"] if c.mode == "split" else [data]
        for d in datas:
            op = BWriteOp(SIZES, NODES, BAD_CLIENT, last, key, d)
            c.ops.append(op)
            self.send_all(BAD_CLIENT, len(c.ops) - 1, bm.KIND_TS, bm.ts_request(key, op.hd, last))

    def bad_answer(self, node: int, tag: int, kind: str, body: Any) -> None:
        c = self.client
        if c is None or kind not in (bm.KIND_TS, bm.KIND_PROPOSE):
            return
        op = c.ops[tag]
        try:
            if kind == bm.KIND_TS:
                my_ts = op.on_ts(node, *bm.parse_ts_reply(body, N))
                if my_ts is not None:
                    c.proposed.setdefault((op.key, op.data), self.step)
                    req = bm.propose_request(op.key, my_ts, op.hd, op.last, op.m)
                    self.send_all(BAD_CLIENT, tag, bm.KIND_PROPOSE, req)
                return
            write = op.on_ok(node, *bm.parse_ok_reply(body, N))
        except ValueError:
            return
        if write is not None:
            c.ks.append(write)
            self.bad_store(write, tag)

    def bad_store(self, write: Write, tag: int) -> None:
        c = self.client
        assert c is not None
        if c.mode == "split":  # a different value at each half of the nodes
            half = NODES[:2] if tag % 2 == 0 else NODES[2:]
            self.send_all(
                BAD_CLIENT, tag, bm.KIND_STORE, bm.store_request(Forward(write, {}, 3)), half
            )
        elif c.mode == "stop":  # one STORE to one node, then nothing
            to = [c.rng.choice(NODES)]
            self.send_all(
                BAD_CLIENT, tag, bm.KIND_STORE, bm.store_request(Forward(write, {}, 3)), to
            )
        else:  # forge: the data changed under the K of another, and made-up K and J
            other = Write(
                write.key, Stored(write.value.stamp, write.value.data + b"-forged"), write.k
            )
            made_up = Write.make(
                write.key,
                Stored(Stamp(write.value.stamp.counter + 5, BAD_CLIENT), b"made-up"),
                {i: garbage(c.rng) for i in NODES},
            )
            for w in (other, made_up):
                fwd = Forward(w, {i: garbage(c.rng) for i in NODES}, 3)
                self.send_all(BAD_CLIENT, tag, bm.KIND_STORE, bm.store_request(fwd))

    # -- nodes ----------------------------------------------------------------
    def deliver(self, i: int, sender: int, tag: int, kind: str, payload: Any) -> None:
        if kind == "revoke":
            self.nodes[i].revoke(BAD_CLIENT)
            if all(BAD_CLIENT in n.revoked for j, n in enumerate(self.nodes) if self.correct(j)):
                self.revoked_all = self.step
            return
        if not self.correct(i):
            return self.bad_deliver(i, sender, tag, kind, payload)
        try:
            reply = self.handle(i, sender, kind, payload)
        except (ValueError, server.Refused):
            return None  # T2, P2-P5: a refused request gets no answer
        if reply is not None:
            self.pool.append(("ans", sender, i, tag, kind, wire(reply)))
        return None

    def handle(self, i: int, sender: int, kind: str, payload: Any) -> Any:
        node = self.nodes[i]
        if kind == bm.KIND_TS:
            return bm.ts_reply(*node.query_ts(sender, *bm.parse_ts_request(payload)))
        if kind == bm.KIND_PROPOSE:
            key, ts, hd, last, mm = bm.parse_propose_request(payload, NODES)
            ok = bm.ok_reply(ts, node.propose_ts(sender, key, ts, hd, last, mm))
            if sender == BAD_CLIENT and self.correct(i):
                self.oks_to_bad.append((self.step, hd))
            return ok
        if kind == m.KIND_READ:
            key, rid = m.parse_read_request(payload)
            return m.value_message(
                rid, node.table.open(sender, rid, key, server.current(node.regs, key), self.step)
            )
        if kind == m.KIND_DONE:
            node.table.complete(sender, m.parse_done_request(payload))
            return None
        fwd = bm.parse_store_request(payload, NODES)
        res = node.store(sender, fwd.write, fwd.j, fwd.ttl)
        if res.stored and fwd.write.writer == BAD_CLIENT and self.correct(i):
            self.bad_stored.append((self.step, fwd.write.value.data))
        if res.ack:  # S3: to the write's client
            ack = bm.ack_push(fwd.write.key, fwd.write.value.stamp)[bm.PUSH]
            self.pool.append(("ans", fwd.write.writer, i, 0, "ack", wire(ack)))
        for e in res.echoes:
            self.pool.append(
                (
                    "ans",
                    e.reader,
                    i,
                    e.read_id,
                    m.KIND_READ,
                    wire(m.value_message(e.read_id, e.value)),
                )
            )
        if self.forwarding:
            self.forward(i, [res.forward] if res.forward else [])
        return None

    def forward(self, i: int, sends: list[Forward]) -> None:
        for fwd in sends:
            self.send_all(i, 0, bm.KIND_STORE, bm.store_request(fwd), [j for j in NODES if j != i])
        if self.nodes[i].pending and i not in self.ticking:  # D1: after Twait
            self.ticking.add(i)
            self.pool.append(("tick", i))

    def tick(self, i: int) -> None:
        self.ticking.discard(i)
        self.forward(i, self.nodes[i].dequeue())  # D2-D5

    def bad_deliver(self, i: int, sender: int, tag: int, kind: str, payload: Any) -> None:
        """The lying node: ``silent`` says nothing; ``liar`` lies in reads, sends garbage
        MACs, forwards nothing and fabricates a write for a correct client; ``split`` runs
        the protocol but its MAC vectors check only at nodes 0 and 1 (the MAC limitation the
        forwarding works around [003 L1296-1300])."""
        if self.bad_mode == "silent":
            return
        try:
            honest = (
                self.handle(i, sender, kind, payload)
                if kind != bm.KIND_STORE or self.bad_mode == "split"
                else None
            )
        except (ValueError, server.Refused):
            return
        rng = self.rng
        if self.bad_mode == "liar":
            if kind in (bm.KIND_TS, bm.KIND_PROPOSE) and honest is not None:
                honest = dict(
                    honest,
                    **(
                        {"m": list(garbage(rng))}
                        if kind == bm.KIND_TS
                        else {"v": list(garbage(rng))}
                    ),
                )
            elif (
                kind in (m.KIND_READ, m.KIND_DONE) and self.lies is not None and honest is not None
            ):
                honest = self.lies.reply(sender, kind, payload, honest)
            if kind == bm.KIND_STORE and sender not in NODES and rng.random() < 0.5:
                self.fabricate(i, payload)
        elif honest is not None and kind in (bm.KIND_TS, bm.KIND_PROPOSE):
            field_ = "m" if kind == bm.KIND_TS else "v"
            honest[field_] = [
                t if j < 2 else rng.randbytes(16) for j, t in enumerate(honest[field_])
            ]
        if honest is not None:
            self.pool.append(("ans", sender, i, tag, kind, wire(honest)))

    def fabricate(self, i: int, payload: Any) -> None:
        """A write made up by the lying node under the STORE's client's name, with every
        MAC it can make valid (its own K and J entries) and garbage for the others."""
        fwd = bm.parse_store_request(payload, NODES)
        stamp = Stamp(fwd.write.value.stamp.counter + 1, fwd.write.writer)
        k = {j: garbage(self.rng) for j in NODES}
        w = Write.make(fwd.write.key, Stored(stamp, b"fabricated"), k)
        own = self.nodes[i].macs
        k[i] = own.vector(*w.k_fields())
        w = Write.make(w.key, w.value, k)
        j = {q: garbage(self.rng) for q in NODES}
        j[i] = own.vector(*w.j_fields())
        self.send_all(
            i, 0, bm.KIND_STORE, bm.store_request(Forward(w, j, 3)), [q for q in NODES if q != i]
        )

    # -- the run --------------------------------------------------------------
    def run(
        self, plans: dict[int, list[tuple[str, bytes]]], *, revoke_after: int | None = None
    ) -> None:
        todo = {c: list(p) for c, p in plans.items()}
        n_ops = 0
        while any(todo.values()) or self.running or self.pool:
            self.step += 1
            busy = {self.owner[t] for t in self.running}
            paced = bool(self.pool) and self.step - max(self.bad_starts, default=-PACE) < PACE
            idle = [
                c
                for c, p in todo.items()
                if p and c not in busy and not (c == BAD_CLIENT and paced)
            ]
            if idle and (not self.pool or self.rng.random() < 0.1):
                c = self.rng.choice(idle)
                kind, key = todo[c].pop(0)
                n_ops += 1
                if c == BAD_CLIENT:
                    self.bad_starts.append(self.step)
                    self.bad_start(key, b"bad-w%d" % n_ops)
                else:
                    self.start(c, kind, key, b"c%d-w%d" % (c, n_ops))
                if revoke_after is not None and n_ops == revoke_after:
                    self.send_all(0, 0, "revoke", None)
                continue
            assert self.pool, "nothing in flight yet operations unfinished: an operation hangs"
            assert self.step < MAX_STEPS, "messages without end"
            item = self.pool.pop(self.rng.randrange(len(self.pool)))
            if item[0] == "req":
                self.deliver(*item[1:])
            elif item[0] == "tick":
                self.tick(item[1])
            else:
                self.answer(*item[1:])

    # -- the checks -----------------------------------------------------------
    def byznearizable(self) -> Any:
        """The correct clients' operations and the Byzantine client's proposed writes, each
        pending from its first message: linearizable, register by register."""
        ops = list(self.history)
        if self.client is not None:
            ops += [
                Op(k, WRITE, d, start, None, BAD_CLIENT)
                for (k, d), start in self.client.proposed.items()
            ]
        return check(ops, initial=b"")

    def converged(self) -> bool:
        """Lemma 16: at quiescence the correct nodes hold the same value of each register."""
        held = {k: {self.regs[i].get(k) for i in NODES if self.correct(i)} for k in KEYS}
        return all(len(v) == 1 for v in held.values())

    def only_proposed_stored(self) -> bool:
        """Lemma 12: each value a correct node holds was proposed by its client."""
        bad = set(self.client.proposed) if self.client else set()
        return all(
            (k, v.data) in self.proposed | bad
            for i in NODES
            if self.correct(i)
            for k, v in self.regs[i].items()
        )


def plans(
    rng: random.Random, clients: int, ops: int, bad: bool
) -> dict[int, list[tuple[str, bytes]]]:
    out = {
        c: [(rng.choice((READ, WRITE)), rng.choice(KEYS)) for _ in range(ops)]
        for c in range(10, 10 + clients)
    }
    if bad:
        out[BAD_CLIENT] = [(WRITE, rng.choice(KEYS)) for _ in range(ops // 2)]
    return out


def assert_sound(sim: Sim, expected: int) -> None:
    assert len(sim.history) == expected  # every correct operation finished (Lemmas 15, 17)
    verdict = sim.byznearizable()
    assert verdict, verdict.reason
    assert sim.converged()
    assert sim.only_proposed_stored()


BAD_NODES = [None, "silent", "liar", "split"]
BAD_CLIENTS = [None, "split", "stop", "forge"]


@pytest.mark.parametrize("bad_client", BAD_CLIENTS)
@pytest.mark.parametrize("bad_node", BAD_NODES)
@pytest.mark.parametrize("seed", range(3))
def test_runs_are_byznearizable(bad_node: str | None, bad_client: str | None, seed: int) -> None:
    sim = Sim(seed, bad_node=bad_node, bad_client=bad_client)
    sim.run(plans(random.Random(seed), clients=3, ops=8, bad=bad_client is not None))
    assert_sound(sim, 3 * 8)


# -- each check the seed requires, removed, is caught --------------------------------------
class JUnchecked(BNode):
    """A node that takes a ``J`` entry for its MAC without checking it (Q2 (ii), V3)."""

    def _j_ok(self, w: Write, j: Any, q: int) -> bool:
        return q in j


class NoV4(BNode):
    """A node that forwards only writes carrying its own MAC (V2), never on others' (V3-V4)."""

    def vouchable(self, w: Write, j: Any) -> bool:
        return self._k_ok(w, self.me) or self._j_ok(w, j, self.me)


class LatestReader(ReadOp):
    """R5 and R12 as the seed prints them [003 L1382-1392]: ``largest[s]`` moves only to a
    larger timestamp, ``answer[s, ts]`` is the latest value ``s`` sent under ``ts``."""

    def on_value(self, node: int, value: Stored) -> Stored | None:
        if node not in self.nodes or self.decided is not None:
            return self.decided
        entrance = node not in self.largest
        if entrance or value.stamp > self.largest[node].stamp:  # R5
            self.largest[node] = value
        if entrance:  # R6-R11
            stamps = sorted({v.stamp for v in self.largest.values()}, reverse=True)
            self.top = frozenset(stamps[: self.sizes.f + 1])
            self.answer = {k: v for k, v in self.answer.items() if k[1] in self.top}
            for s, v in self.largest.items():
                if v.stamp in self.top:
                    self.answer[(s, v.stamp)] = v
        if value.stamp in self.top:  # R12
            self.answer[(node, value.stamp)] = value
        votes = Counter(self.answer.values())  # R13
        best, count = max(votes.items(), key=lambda kv: kv[1], default=(None, 0))
        if best is not None and count >= self.sizes.quorum:
            self.decided = best
        return self.decided


def caught(seeds: range = range(12), **kwargs: Any) -> int:
    """Over seeds, the runs in which a check fails or an operation hangs."""
    failed = 0
    for seed in seeds:
        sim = Sim(seed, **kwargs)
        try:
            sim.run(
                plans(
                    random.Random(seed), clients=3, ops=8, bad=kwargs.get("bad_client") is not None
                )
            )
            assert_sound(sim, 3 * 8)
        except AssertionError:
            failed += 1
    return failed


def test_a_j_entry_taken_without_its_mac_lets_a_node_fabricate_a_write() -> None:
    assert caught(bad_node="liar", node_class=JUnchecked) > 0
    assert caught(bad_node="liar") == 0


def test_without_forwarding_a_client_that_stops_leaves_the_nodes_apart() -> None:
    assert caught(bad_client="stop", forwarding=False) > 0
    assert caught(bad_client="stop") == 0


def test_without_v4_a_write_whose_k_has_a_bad_mac_can_hang() -> None:
    assert caught(bad_node="liar", node_class=NoV4) > 0


@pytest.mark.slow
def test_the_seeds_latest_value_reader_can_hang_on_a_split_write() -> None:
    """Two values under one timestamp, sent to different halves: correct nodes end up
    holding the larger, but echo the two in different orders; a reader that keeps the
    latest per node and timestamp can wait for ever, one that keeps the larger cannot
    (t1_blisteners_core has the deterministic case)."""
    assert caught(range(40), bad_client="split", reader_class=LatestReader) > 0
    assert caught(range(40), bad_client="split") == 0


@pytest.mark.parametrize("seed", range(4))
def test_a_revoked_client_eventually_writes_nothing(seed: int) -> None:
    """Lemma 20: after the administrator revokes the Byzantine client at every node, the
    writes it still completes are ones a correct node gave TS OK before its revocation,
    later attempts get no TS OK, and the correct clients carry on."""
    sim = Sim(seed, bad_node="liar", bad_client="stop")
    plan = plans(random.Random(seed), clients=3, ops=8, bad=True)
    plan[BAD_CLIENT] = [(WRITE, b"x")] * 12
    sim.run(plan, revoke_after=10)
    assert_sound(sim, 3 * 8)
    end = sim.revoked_all
    assert end is not None
    assert [t for t in sim.bad_starts if t > end]  # it kept trying after its revocation
    assert not [t for t, _ in sim.oks_to_bad if t > end]  # T2, P2
    allowed = {hd for t, hd in sim.oks_to_bad if t < end}
    late = [d for t, d in sim.bad_stored if t > end]
    assert all(data_hash(d) in allowed for d in late)  # only writes proposed before
