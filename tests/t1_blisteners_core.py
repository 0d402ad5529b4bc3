"""Tier 1: the pure parts of Byzantine Listeners (issue 68, seed 003 figures 3.2-3.4).

The MAC vectors from real pairwise keys, the nodes' checks of a proposal (T2, P2-P5, C1-C5),
of an authenticator (Q1-Q3, V1-V5), the forwarding that completes a write its client
abandoned after one STORE (Lemma 15), a node's fabricated write refused (Lemma 12), the
reader's choice between two values under one timestamp, the wire checks, and the storage
charge of registers (both variants).
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from bftfs import accounting
from bftfs.crypto import Identity, KeyRing
from bftfs.ids import PrincipalId
from bftfs.kv import MemoryKV
from bftfs.listeners import bmessages as bm
from bftfs.listeners.auth import Macs, data_hash, parse_vector
from bftfs.listeners.bnodeside import put_if_newer
from bftfs.listeners.bserver import BNode, Forward, Write
from bftfs.listeners.bwriter import BWriteOp
from bftfs.listeners.nodeside import accept_step, stored_size
from bftfs.listeners.reader import ReadOp
from bftfs.listeners.server import Refused
from bftfs.listeners.stamps import CAP, INITIAL, Sizes, Stamp, Stored

NODES = (0, 1, 2, 3)
SIZES = Sizes.of(4)
C = 10
IDS = {i: Identity.generate(PrincipalId(i)) for i in NODES}
PUBLIC = {PrincipalId(i): x.public for i, x in IDS.items()}


class Regs(dict[bytes, Stored]):
    def put(self, key: bytes, value: Stored) -> None:
        self[key] = value


def cluster() -> list[BNode]:
    return [BNode(Macs.from_ring(KeyRing(IDS[i], PUBLIC), NODES), SIZES, Regs()) for i in NODES]


def wire(x: Any) -> Any:
    return msgpack.unpackb(msgpack.packb(x, use_bin_type=True), raw=False)


def k_of(nodes: list[BNode], data: bytes, *, bent: bool = False) -> Write:
    """A client's write through the first two phases, nodes 0-2 answering; ``bent``: node
    2's TS OK vector checks only at node 2 (a faulty node's, or a bit flipped on the way)."""
    proposers = (0, 1, 2)
    op = BWriteOp(SIZES, NODES, C, INITIAL, b"x", data)
    my_ts = None
    for i in proposers:
        my_ts = op.on_ts(i, *nodes[i].query_ts(C, b"x", op.hd, INITIAL)) or my_ts
    assert my_ts is not None
    w = None
    for i in proposers:
        vec = nodes[i].propose_ts(C, b"x", my_ts, op.hd, INITIAL, op.m)
        if bent and i == 2:
            vec = tuple(t if j == 2 else bytes(16) for j, t in enumerate(vec))
        w = op.on_ok(i, my_ts, vec) or w
    assert w is not None
    return w


def test_a_node_checks_only_its_own_entry_of_a_vector() -> None:
    macs = [Macs.from_ring(KeyRing(IDS[i], PUBLIC), NODES) for i in NODES]
    vec = macs[0].vector("k", b"x", 1)
    assert all(macs[j].check(0, vec, "k", b"x", 1) for j in NODES)
    assert not macs[1].check(0, vec, "k", b"y", 1)  # the register is tagged too
    assert not macs[1].check(2, vec, "k", b"x", 1)  # someone else's vector
    bent = tuple(t if j != 1 else bytes(16) for j, t in enumerate(vec))
    assert not macs[1].check(0, bent, "k", b"x", 1) and macs[2].check(0, bent, "k", b"x", 1)


def test_a_proposal_must_follow_from_a_quorum_of_answers_with_valid_macs() -> None:
    nodes = cluster()
    hd = data_hash(b"d")
    m = {i: nodes[i].query_ts(C, b"x", hd, INITIAL) for i in (0, 1, 2)}
    assert nodes[3].propose_ts(C, b"x", Stamp(0, C), hd, INITIAL, m)
    with pytest.raises(Refused, match="follow"):  # C4-C5: not W9's choice
        nodes[3].propose_ts(C, b"x", Stamp(7, C), hd, INITIAL, m)
    with pytest.raises(Refused, match="follow"):  # C2: no quorum
        nodes[3].propose_ts(C, b"x", Stamp(0, C), hd, INITIAL, {0: m[0], 1: m[1]})
    forged = {i: (s, tuple(bytes(16) for _ in NODES)) for i, (s, _) in m.items()}
    forged[0] = m[0]
    with pytest.raises(Refused, match="valid MAC"):  # P4-P5: one valid is within f
        nodes[3].propose_ts(C, b"x", Stamp(0, C), hd, INITIAL, forged)
    with pytest.raises(Refused, match="valid MAC"):  # the MACs bind hash(D)
        nodes[3].propose_ts(C, b"x", Stamp(0, C), data_hash(b"other"), INITIAL, m)
    nodes[3].revoke(C)
    with pytest.raises(Refused, match="authorized"):  # P2
        nodes[3].propose_ts(C, b"x", Stamp(0, C), hd, INITIAL, m)
    with pytest.raises(Refused, match="authorized"):  # T2
        nodes[3].query_ts(C, b"x", hd, INITIAL)
    with pytest.raises(Refused, match="authorized"):  # a node never writes
        nodes[3].query_ts(1, b"x", hd, INITIAL)


def pump(nodes: list[BNode], sends: list[tuple[int, Forward]]) -> list[tuple[int, int]]:
    """Deliver forwarded STOREs (and flushes) until none is left; the ACKs (node, ts)."""
    acks = []
    while sends:
        sender, fwd = sends.pop(0)
        for i in NODES:
            if i == sender:
                continue
            msg = bm.parse_store_request(wire(bm.store_request(fwd)), NODES)
            res = nodes[i].store(sender, msg.write, msg.j, msg.ttl)
            acks += [(i, msg.write.value.stamp.counter)] if res.ack else []
            sends += [(i, res.forward)] if res.forward else []
        if not sends:
            sends = [(i, f) for i in NODES for f in nodes[i].dequeue()]
    return acks


def test_a_write_abandoned_after_one_store_completes_by_forwarding() -> None:
    nodes = cluster()
    assert nodes[0].store(C, k_of(nodes, b"e"), {}, 3).ack  # a quorum's K: stored at once
    w = k_of(nodes, b"d", bent=True)
    res = nodes[0].store(C, w, {}, SIZES.quorum)  # the client sends one STORE and stops
    assert not res.ack and res.forward is not None  # V2 (own MAC in K), Q2 not yet
    acks = pump(nodes, [(0, res.forward)])
    assert {i for i, _ in acks} == set(NODES)
    assert all(n.regs.get(b"x") == w.value for n in nodes)  # Lemma 16, over b"e"
    assert not any(n.pending for n in nodes)  # the forwarding ends


def test_a_write_whose_k_misses_a_node_is_vouched_for_by_the_others() -> None:
    """Node 3 gave no TS OK, so it finds no own MAC in K: it forwards once more than f
    valid J entries reach it (V3-V4), then stores when a quorum vouches."""
    nodes = cluster()
    w = k_of(nodes, b"d", bent=True)
    res = nodes[3].store(C, w, {}, SIZES.quorum)
    assert res.forward is None and not res.ack  # nothing of its own, no J yet
    res = nodes[1].store(C, w, {}, SIZES.quorum)
    assert res.forward is not None
    pump(nodes, [(1, res.forward)])
    assert nodes[3].regs.get(b"x") == w.value


def test_a_node_cannot_make_up_a_write() -> None:
    """Node 0 makes every MAC it can (its own K and J entries) for a value no client
    proposed: no other node stores it or forwards it (Lemma 12)."""
    nodes = cluster()
    value = Stored(Stamp(5, C), b"made up")
    k = {0: nodes[0].macs.vector("k", b"x", value.stamp.wire(), data_hash(value.data), C)}
    w = Write.make(b"x", value, k)
    fwd = Forward(w, {0: nodes[0].macs.vector(*w.j_fields())}, SIZES.quorum)
    for i in (1, 2, 3):
        res = nodes[i].store(0, w, fwd.j, fwd.ttl)
        assert not res.stored and not res.ack and res.forward is None
        assert b"x" not in nodes[i].regs


def test_the_larger_of_two_values_under_one_timestamp_wins_everywhere() -> None:
    """S6 orders by (ts, c, D); the reader keeps per node and timestamp the larger value, so
    three nodes that sent the two in different orders still make a quorum.  Keeping the
    latest (R12 as printed) leaves D2, D1, D1: no quorum, and node 3 says nothing."""
    ts = Stamp(1, C)
    d1, d2 = Stored(ts, b"a"), Stored(ts, b"b")
    r = ReadOp(SIZES, NODES)
    sequence = [(0, d1), (1, d2), (2, d2), (0, d2), (1, d1), (2, d1)]
    decided = [r.on_value(node, value) for node, value in sequence]
    assert decided[-1] == d2
    latest = {node: value for node, value in sequence}
    assert max(list(latest.values()).count(v) for v in (d1, d2)) < SIZES.quorum


def test_wire_checks() -> None:
    with pytest.raises(ValueError):
        parse_vector([bytes(16)] * 3, 4)
    with pytest.raises(ValueError):
        bm.parse_store_request({"k": b"x", "s": [1, C], "d": b"", "K": [], "J": [], "t": -1}, NODES)
    with pytest.raises(ValueError):  # K names a node outside the cluster
        bm.parse_store_request(
            {"k": b"x", "s": [1, C], "d": b"", "K": [[9, [bytes(16)] * 4]], "J": [], "t": 1}, NODES
        )
    with pytest.raises(ValueError):
        bm.parse_ts_request({"k": b"x", "h": b"short", "l": [0, 0]})
    nodes = cluster()
    with pytest.raises(Refused):
        nodes[0].store(C, Write.make(b"x", Stored(Stamp(CAP - 1, C), b""), {}), {}, 1)
    w = k_of(nodes, b"d")
    parsed = bm.parse_store_request(wire(bm.store_request(Forward(w, {}, 3))), NODES)
    assert parsed.write == w and parsed.ttl == 3


def test_registers_are_charged_to_their_writers_and_count_in_the_quota() -> None:
    """Both variants charge a register to the writer of the value it holds
    (``accounting.LR``, counted by ``accounting.used`` with blocks and Q/U records); the
    plain STORE refuses growth past the quota, never a shrink."""
    kv = MemoryKV()
    big = Stored(Stamp(1, C), b"x" * 500)
    assert accept_step(C, b"k", big, None, kv)
    assert accounting.used(kv, C) == stored_size(b"k", big) > 500
    other = Stored(Stamp(2, 11), b"y")
    assert accept_step(11, b"k", other, None, kv)  # the old value's charge goes back
    assert accounting.used(kv, C) == 0
    assert accounting.used(kv, 11) == stored_size(b"k", other)
    with pytest.raises(Refused, match="quota"):
        accept_step(11, b"k2", Stored(Stamp(1, 11), b"z" * 100), 50, kv)
    assert accept_step(11, b"k", Stored(Stamp(3, 11), b""), 1, kv)  # shrinking passes
    assert put_if_newer(b"k", Stored(Stamp(4, C), b"abc"), kv)  # Byzantine variant: to c
    assert not put_if_newer(b"k", Stored(Stamp(4, C), b"ab"), kv)  # smaller: not taken
    assert accounting.LR.owner_of(kv, b"bk") == C
    assert accounting.used(kv, C) == stored_size(b"k", Stored(Stamp(4, C), b"abc"))
