"""What the FaB quorum sizes buy: one adversarial schedule, run against the seed's sizes
and against the only two-step sizes 5f acceptors allow (seed 003 L6425, Theorem 10).

The schedule (f = 1): the Byzantine leader, node 0, proposes a value ``v`` to just enough
correct acceptors that, with its own ACCEPTED, learner 1 alone learns ``v``; it then falls
silent except for an empty REP.  The network delays the other ACCEPTED messages and node
1's REP, so the new leader's progress certificate holds as few copies of ``v`` as it can.

- With ``a = 5f`` acceptors learning on ``a - f = 4f`` ACCEPTED (``quorums.fab`` refuses
  this as F1), the certificate holds ``v`` only twice, below ``vouch = 3``: the new leader
  is free to propose another value there, the acceptors must accept it, and correct
  learners learn two different values for one slot.
- With the seed's ``a = 5f + 1``, learning ``v`` took one more correct acceptor, which
  the certificate cannot leave out (Lemma 45): the new leader re-proposes ``v``.
- With ``a = 5f + 1`` but a certificate that binds only on ``vouch + 1`` copies (F3), the
  ``vouch`` copies it is sure to hold do not bind it, and learners split again.
"""

from __future__ import annotations

from fab_sim import CLIENT_BASE, Network, keys_for

from bftfs.fab.auth import sign
from bftfs.fab.certificates import rep_body
from bftfs.fab.client import request
from bftfs.fab.execution import NOOP
from bftfs.fab.messages import Accepted, Message, Propose, Rep
from bftfs.fab.replica import Send
from bftfs.quorums.fab import FabQuorums, broken, vouch_size
from bftfs.testing.byzantine.fab import Liar
from bftfs.testing.testobjects import registry


def _v(net: Network) -> bytes:
    return request(CLIENT_BASE, keys_for(CLIENT_BASE), net.n, 1, "counter.increment", [1], 1)


def _run(q: FabQuorums) -> Network:
    helpers = list(range(1, q.learn))  # correct acceptors 0 lets in on v: learn - 1 of them

    def leader(liar: Liar, send: Send) -> list[tuple[int, Message]]:
        to, m = send
        node = liar.me
        if isinstance(m, Propose) and m.pn == 0:
            return [(j, m) for j in [node, *helpers]]  # it accepts v itself, too
        if isinstance(m, Accepted) and m.pn == 0:
            return [(1, m)]  # only learner 1 hears node 0 accept
        if isinstance(m, Rep) and to is not None:
            pn = liar.replica.election.regency
            empty = sign(node, keys_for(node), rep_body(pn, 0, {}), liar.n)
            return [(to, Rep(empty, ()))]
        return []  # otherwise silent

    def cut(src: int, dst: int, m: Message) -> bool:
        delayed_accept = isinstance(m, Accepted) and m.pn == 0 and dst != 1
        return delayed_accept or (isinstance(m, Rep) and src == 1)

    net = Network(q.a, q, registry(), seed=1, byzantine={0: leader}, cut=cut)
    net.submit(CLIENT_BASE, "counter.increment", [1], 1)
    net.run(lambda: all(1 in net.learned[i] for i in net.correct()), 50_000)
    return net


def test_the_schedule_splits_learners_with_5f_acceptors() -> None:
    weak = FabQuorums(5, 5, 5, 1, learn=4, vouch=vouch_size(5, 1))
    assert (broken(weak) or "").startswith("F1")  # the quorum module refuses it...
    net = _run(weak)  # ...and this is why
    assert net.learned[1][1] == _v(net)  # learner 1 learned v in regency 0...
    assert net.learned[2][1] == NOOP  # ...the others a no-op for the same slot
    assert net.conflicts() != []


def test_the_schedule_splits_learners_when_a_certificate_needs_too_many_copies() -> None:
    """Six acceptors, but a certificate binds only on 4 copies instead of 3: the 3 copies
    Lemma 45 guarantees no longer bind it, and the new leader may replace ``v``."""
    q = FabQuorums.standard(1)
    weak = FabQuorums(q.a, q.p, q.l, q.f, learn=q.learn, vouch=q.vouch + 1)
    assert (broken(weak) or "").startswith("F3")
    net = _run(weak)
    assert net.learned[1][1] == _v(net)
    assert net.conflicts() != []


def test_the_same_schedule_is_safe_with_5f_plus_1_acceptors() -> None:
    q = FabQuorums.standard(1)
    net = _run(q)
    assert net.conflicts() == []
    # learner 1 learned v in regency 0; everyone else learned the same v, re-proposed by
    # the new leader because the certificate was bound to it
    assert {net.learned[i][1] for i in net.correct()} == {_v(net)}
    assert min(net.replicas[i].election.regency for i in net.correct()) >= 1
