"""Parameterized FaB Paxos (seed 003 section 6.7, Fig. 6.9) on simulated replicas
(tests/fab_sim.py): four nodes for f = 1 (t = 0) learn in two message delays when all
answer and in three (commit proofs) with one silent; they run operations in order with a
silent node, a Byzantine acceptor and a silent leader; a value chosen by commit proofs
alone survives the election of a new leader; six nodes stay plain FaB."""

from __future__ import annotations

import random

import pytest
from fab_sim import CLIENT_BASE, Behaviour, Network, silent

from bftfs.fab.auth import sign
from bftfs.fab.certificates import accepted_body, rep_body
from bftfs.fab.execution import NOOP, operation
from bftfs.fab.messages import (
    Accepted,
    CommitProof,
    Learned,
    Message,
    Propose,
    Rep,
    Signed,
    decode,
    encode,
)
from bftfs.quorums.fab import FabQuorums
from bftfs.testing.byzantine.fab import Liar, honest
from bftfs.testing.testobjects import registry

Q4 = FabQuorums.cluster(4, 1)
Q6 = FabQuorums.cluster(6, 1)


def _in_flight(net: Network) -> list[Message]:
    return [decode(d) for _, _, d in net.flight]


def _increments(net: Network, count: int, clients: int = 1, limit: int = 400_000) -> bool:
    """Each of ``clients`` clients increments counter 1 ``count`` times, one at a time."""
    left = {CLIENT_BASE + c: count for c in range(clients)}

    def until() -> bool:
        for cid, n in left.items():
            c = net.clients.get(cid)
            if n and (c is None or c.op is None):
                left[cid] -= 1
                net.submit(cid, "counter.increment", [1], 1)
        return not any(left.values()) and net.idle()

    return net.run(until, limit)


def _results(net: Network) -> list[int]:
    return sorted(d[2] for c in net.clients.values() for d in c.done)


def _settle(net: Network) -> bool:
    top = max(net.replicas[i].execution.executed for i in net.correct())
    return net.run(
        lambda: all(net.replicas[i].execution.executed >= top for i in net.correct()), 50_000
    )


# -- steps ------------------------------------------------------------------------------


def test_four_nodes_learn_in_two_delays_when_all_answer() -> None:
    """Lines 254-258: all four ACCEPTED (ceil((a + 3f + 1) / 2) = 4) make a learner learn."""
    net = Network(4, Q4, registry())
    net.submit(CLIENT_BASE, "counter.increment", [1], 5)
    net.round()  # the request reaches the nodes; the leader proposes
    net.round()  # delay 1: PROPOSE reaches the acceptors; signed ACCEPTED to all
    assert all(1 not in net.learned[i] for i in net.correct())
    net.round()  # delay 2: ACCEPTED reaches the learners
    assert all(1 in net.learned[i] for i in net.correct())
    net.round()
    assert net.clients[CLIENT_BASE].done[0][1:3] == (True, 5)


def test_four_nodes_with_one_silent_learn_in_three_delays_by_commit_proofs() -> None:
    """Lines 237-245 and 260-265: three ACCEPTED cannot make a learner learn; the three
    acceptors' commit proofs (3 statements each) do, one delay later."""
    net = Network(4, Q4, registry(), byzantine={3: silent})
    net.submit(CLIENT_BASE, "counter.increment", [1], 5)
    net.round()
    net.round()  # delay 1: ACCEPTED with its statement, one message to every node
    accepted = [m for m in _in_flight(net) if isinstance(m, Accepted)]
    assert len(accepted) == 3 * 4 and all(m.statement is not None for m in accepted)
    net.round()  # delay 2: ACCEPTED arrive, 3 < 4: not learned; commit proofs go out
    assert all(1 not in net.learned[i] for i in net.correct())
    proofs = [m for m in _in_flight(net) if isinstance(m, CommitProof)]
    assert len(proofs) == 3 * 4 and all(len(p.statements) == 3 for p in proofs)
    net.round()  # delay 3: three valid commit proofs
    assert all(1 in net.learned[i] for i in net.correct())


def test_six_nodes_keep_the_two_step_path() -> None:
    """t = f at 5f + 1: plain FaB, no statements, no commit proofs, two delays despite a
    silent acceptor."""
    assert not Q6.commits and FabQuorums.standard(1) == Q6
    net = Network(6, Q6, registry(), byzantine={5: silent})
    net.submit(CLIENT_BASE, "counter.increment", [1], 5)
    seen: list[Message] = []
    for _ in range(3):
        net.round()
        seen += _in_flight(net)
    assert all(1 in net.learned[i] for i in net.correct())
    assert not any(isinstance(m, CommitProof) for m in seen)
    assert all(m.statement is None for m in seen if isinstance(m, Accepted))


# -- runs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "byzantine",
    [{}, {3: silent}, {0: silent}],
    ids=["no-fault", "silent-acceptor", "silent-leader"],
)
def test_four_nodes_execute_every_operation_once_in_one_order(
    byzantine: dict[int, Behaviour],
) -> None:
    net = Network(4, Q4, registry(), seed=11, drop=0.02, byzantine=byzantine)
    assert _increments(net, 10, clients=3)
    assert _results(net) == list(range(1, 31))
    assert net.conflicts() == []
    assert _settle(net)
    assert len({repr(net.replicas[i].execution.objects) for i in net.correct()}) == 1
    if 0 in byzantine:
        assert min(net.replicas[i].election.regency for i in net.correct()) >= 1


def _forged(liar: Liar, slot: int, pn: int, value: bytes) -> CommitProof:
    """A commit proof for ``value``: the liar's own statement and two it cannot make."""
    own = sign(liar.me, liar.replica.key, accepted_body(pn, slot, value), liar.n)
    others = tuple(Signed(j, own.body, (b"\1" * 32,) * liar.n) for j in range(2))
    return CommitProof(slot, pn, value, (own, *others))


def equivocating_acceptor(liar: Liar, send: tuple[int | None, Message]) -> list:
    """Signs ACCEPTED for a made-up value to the even nodes and sends the odd ones the
    real value under the made-up value's statement; sends every node a forged commit
    proof for the made-up value with each ACCEPTED."""
    to, m = send
    if not isinstance(m, Accepted):
        return honest(liar, send)
    lie = operation(liar.victim + 996, m.slot, "fab.lie", [m.slot], 0)
    st = sign(liar.me, liar.replica.key, accepted_body(m.pn, m.slot, lie), liar.n)
    out: list[tuple[int, Message]] = []
    for j in range(liar.n):
        other = (
            Accepted(m.pn, m.slot, lie, st) if j % 2 == 0 else Accepted(m.pn, m.slot, m.value, st)
        )
        out += [(j, other), (j, _forged(liar, m.slot, m.pn, lie))]
    return out


def test_a_byzantine_acceptor_cannot_split_learners_or_forge_commit_proofs() -> None:
    net = Network(4, Q4, registry(), seed=12, byzantine={3: equivocating_acceptor})
    assert _increments(net, 10, clients=2)
    assert _results(net) == list(range(1, 21))
    assert net.conflicts() == []
    by_liar = [why for src, _, why in net.rejections if src == 3]
    assert any(why.startswith("commit proof for slot") for why in by_liar)  # forged
    assert any("statement is not the sender's" in why for why in by_liar)  # mismatched
    # every commit proof a correct node sent held: it kept no statement it did not check
    assert not [r for r in net.rejections if r[0] != 3 and "commit proof" in r[2]]


# -- election: a value chosen by commit proofs only ---------------------------------------


def _hides_its_commit_proofs(d: dict[str, bytes]) -> Behaviour:
    """Node 0's lie from regency 2 on: its REP claims it accepted ``d`` at slot 1, has no
    commit proof, and carries a forged one for ``d`` (only its own statement verifies)."""

    def behaviour(liar: Liar, send: tuple[int | None, Message]) -> list:
        to, m = send
        if not (isinstance(m, Rep) and to is not None and liar.replica.election.regency >= 2):
            return honest(liar, send)
        a = liar.replica.acceptor
        accepted = {s: v for s, (_, v) in a.accepted.items()} | {1: d["d"]}
        forged = _forged(liar, 1, liar.replica.election.regency, d["d"])
        body = rep_body(liar.replica.election.regency, a.low, accepted, {1: forged})
        return [(to, Rep(sign(liar.me, liar.replica.key, body, liar.n), m.low_certificate))]

    return behaviour


def test_a_value_chosen_by_commit_proofs_only_survives_the_election() -> None:
    """Regency 0 (leader 0): ``d`` reaches acceptors 0 and 3 only.  Regency 1 (leader 1,
    without 0's REP): slot 1 is free, the no-op goes to 0, 1 and 2 (not 3); their commit
    proofs make 0, 1 and 2 learn it (two steps cannot: 3 did not accept).  Regency 2
    (leader 2, without 1's REP): the certificate holds ``d`` twice at slot 1 (3, and 0
    lying) but 2's commit proof for the no-op: vouches-for must refuse ``d`` (Fig. 6.9
    lines 296-297, Lemma 48's second case), or 3 would learn ``d`` where the others learned
    the no-op.  0's forged commit proof for ``d`` must not count either."""
    seen: dict[str, bytes] = {}
    phase = {"two": False}

    def cut(src: int, dst: int, m: Message) -> bool:
        if isinstance(m, Propose) and m.pn == 0:
            seen.setdefault("d", m.value)
            return dst in (1, 2)
        if isinstance(m, Propose) and m.pn == 1:
            return phase["two"] or (m.slot == 1 and dst == 3)
        if isinstance(m, Rep):
            return (src, dst) in ((0, 1), (1, 2))
        if dst == 3 and isinstance(m, Accepted | CommitProof) and (m.pn, m.slot) == (1, 1):
            return True
        return dst == 3 and isinstance(m, Learned) and m.slot == 1

    net = Network(
        4, Q4, registry(), seed=13, cut=cut, byzantine={0: _hides_its_commit_proofs(seen)}
    )
    net.submit(CLIENT_BASE, "counter.increment", [1], 1)
    assert net.run(lambda: net.idle() and all(1 in net.learned[i] for i in (1, 2)))
    assert all(net.learned[i][1] == NOOP for i in (1, 2)) and 1 not in net.learned[3]
    phase["two"] = True
    net.submit(CLIENT_BASE, "counter.increment", [1], 1)
    assert net.run(lambda: net.idle() and net.replicas[3].execution.executed >= 3)
    assert net.conflicts() == []
    assert net.learned[3][1] == NOOP and _results(net) == [1, 2]
    assert min(net.replicas[i].election.regency for i in net.correct()) == 2


def test_a_commit_proof_of_more_statements_than_acceptors_is_refused_unchecked() -> None:
    """A proof needs one statement per acceptor at most: a liar's 4096 copies cost no MACs."""
    net = Network(4, Q4, registry())
    liar = Liar(net.replicas[3], random.Random(0), CLIENT_BASE)
    proof = _forged(liar, 1, 0, b"v")
    padded = CommitProof(1, 0, b"v", proof.statements * 1000)
    step = net.replicas[0].step(3, encode(padded))
    assert step.rejection == "commit proof for slot 1: 3000 > a statements"
    step = net.replicas[0].step(3, encode(proof))  # the forger's own statement only
    assert step.rejection == "commit proof for slot 1: 1 < 3 statements"
