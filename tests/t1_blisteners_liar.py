"""Tier 1: the ``bl.*`` lies of ``listeners-liar`` (:class:`BLiar`) against correct nodes' rules.

The node process profile (``tests/t3_blisteners.py`` runs it) sends these lies to real
nodes; here each is checked, pure, against :class:`~bftfs.listeners.bserver.BNode`: a
write node 3 fabricates (random ``K``, its own true ``J`` entry) is neither stored nor
forwarded nor acknowledged by any correct node, even after every correct node has seen it
(Lemma 12), and its timestamp answers and TS OKs carry vectors no correct node accepts.
"""

from __future__ import annotations

import random

from t1_blisteners_core import IDS, NODES, PUBLIC, cluster, k_of

from bftfs.crypto import KeyRing
from bftfs.listeners import bmessages as bm
from bftfs.listeners.auth import Macs
from bftfs.listeners.bserver import Forward
from bftfs.listeners.server import Refused
from bftfs.listeners.stamps import INITIAL, Stamp
from bftfs.testing.byzantine.listeners import BLiar

LIAR = 3


def _liar(seed: int) -> BLiar:
    return BLiar(random.Random(seed), Macs.from_ring(KeyRing(IDS[LIAR], PUBLIC), NODES))


def test_a_fabricated_write_is_never_stored_by_a_correct_node() -> None:
    nodes = cluster()
    true = k_of(nodes, b"true")
    payload = bm.store_request(Forward(true, {}, 3))
    fakes = []
    for seed in range(40):
        fake = _liar(seed).fabricate(payload)
        if fake is not None:
            fakes.append(fake)
    assert len(fakes) >= 5
    refused = 0
    for fake in fakes:
        assert fake.write.value > true.value  # it would win if stored
        wire = bm.parse_store_request(bm.store_request(fake), NODES)
        for i in (0, 1, 2):
            for sender in (LIAR, (i + 1) % 3):  # and as if relayed by a correct node
                try:
                    res = nodes[i].store(sender, wire.write, wire.j, wire.ttl)
                except Refused:  # a counter at the cap: refused outright
                    refused += 1
                    continue
                assert not (res.ack or res.stored or res.echoes or res.forward), res
        assert all(b"x" not in n.regs for n in nodes[:3])
    assert refused < 6 * len(fakes)  # some were below the cap, and checked


def test_its_timestamp_answers_and_ts_oks_check_at_no_correct_node() -> None:
    liar, macs = _liar(1), [Macs.from_ring(KeyRing(IDS[i], PUBLIC), NODES) for i in NODES]
    honest = bm.ts_reply(Stamp(5, 10), macs[LIAR].vector("m", b"x", 1))
    lies = [liar.reply(bm.KIND_TS, honest) for _ in range(30)]
    told = [bm.parse_ts_reply(r, len(NODES)) for r in lies if r != honest]
    assert told and any(s == INITIAL for s, _ in told) and any(s > Stamp(5, 10) for s, _ in told)
    assert not any(macs[i].check(LIAR, v, "m", b"x", 1) for _, v in told for i in (0, 1, 2))
    ok = bm.ok_reply(Stamp(6, 10), macs[LIAR].vector("k", b"x", 2))
    oks = [liar.reply(bm.KIND_PROPOSE, ok) for _ in range(30)]
    bad = [bm.parse_ok_reply(r, len(NODES))[1] for r in oks if r != ok]
    assert bad and not any(macs[i].check(LIAR, v, "k", b"x", 2) for v in bad for i in (0, 1, 2))
