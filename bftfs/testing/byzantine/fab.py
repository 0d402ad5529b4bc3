"""Byzantine FaB Paxos nodes: the lies of seed 003's fault model, as rewriters of what a
node's core sends.

A Byzantine FaB node runs the correct replica and rewrites each of its outgoing sends
(``(destination or None, message)``, :data:`bftfs.fab.replica.Send`) into explicit
``(destination, message)`` pairs: ``behaviour(liar, send)``.  It signs as itself (its
own authenticators are valid) but cannot forge anyone else's.  Written once, run in two
places:

- the simulation of the t1 tests (``tests/fab_sim.py``), between deliveries;
- a real node of an ``engine = "fab"`` cluster: :class:`bftfs.fab.service.FabShell`
  asks its ``rewrite`` hook, which ``node/fab_server.py`` takes from the node's fault
  hooks when they offer ``fab_rewrite`` (:meth:`bftfs.testing.faults.FaultInjector.fab`,
  the in-process cluster).

========================  ===============================================================
behaviour                 lie
========================  ===============================================================
``silent``                sends nothing (a crashed or mute node)
``equivocating_leader``   as leader, a client's request to half the acceptors, the no-op
                          to the other half, a request made up for a client to one
``lying_acceptor``        ACCEPTED for values it never accepted, a different lie to each
                          learner; a REP claiming made-up values at every slot
``lying_leader``          both of the above
``lying_replies``         a made-up answer in every REPLY to a client
========================  ===============================================================
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from bftfs.fab.auth import sign
from bftfs.fab.certificates import rep_body
from bftfs.fab.execution import NOOP, operation
from bftfs.fab.messages import Accepted, Message, Propose, Rep, Reply
from bftfs.fab.replica import Replica, Send
from bftfs.qu.canon import canonical


@dataclass
class Liar:
    """What a behaviour knows of the node it runs on.

    Args:
        replica: the node's (correct) core, whose state a lie may be built from.
        rng: the lies' randomness (seeded by whoever runs the node).
        victim: a client a made-up request claims to come from.
    """

    replica: Replica
    rng: random.Random
    victim: int

    @property
    def me(self) -> int:
        return self.replica.me

    @property
    def n(self) -> int:
        return self.replica.nodes


#: ``behaviour(liar, send) -> [(destination, message), ...]``.
Behaviour = Callable[[Liar, Send], list[tuple[int, Message]]]


def honest(liar: Liar, send: Send) -> list[tuple[int, Message]]:
    """What a correct node sends: ``None`` fans out to every node."""
    to, m = send
    return [(j, m) for j in range(liar.n)] if to is None else [(to, m)]


def silent(liar: Liar, send: Send) -> list[tuple[int, Message]]:
    """A crashed (or mute) node."""
    return []


def equivocating_leader(liar: Liar, send: Send) -> list[tuple[int, Message]]:
    """As leader, proposes a client's request to half of the acceptors and the no-op to the
    other half (both acceptable values), and a request it made up for a client to one
    acceptor instead; otherwise behaves (it accepts, reports and votes like a correct
    node)."""
    to, m = send
    if isinstance(m, Propose) and to is None:
        made_up = operation(liar.victim, 10**6 + m.slot, "counter.increment", [1], 100)
        forged = Propose(m.pn, m.slot, canonical([made_up, [b"\0" * 16] * liar.n]))
        out: list[tuple[int, Message]] = []
        for j in range(liar.n):
            other = forged if j == liar.n - 1 else Propose(m.pn, m.slot, NOOP)
            out.append((j, m if j % 2 == 0 else other))
        return out
    return honest(liar, send)


def lying_acceptor(liar: Liar, send: Send) -> list[tuple[int, Message]]:
    """Reports accepting values it never accepted (a different lie to each learner) and
    answers a QUERY with a REP claiming a made-up value at every slot it knows."""
    to, m = send
    if isinstance(m, Accepted):
        out: list[tuple[int, Message]] = []
        for j, _ in honest(liar, send):
            lie = liar.rng.choice([m.value, operation(liar.victim + 998, j, "fab.lie", [j], 0)])
            out.append((j, Accepted(m.pn + liar.rng.randrange(2), m.slot, lie)))
        return out
    if isinstance(m, Rep) and to is not None:
        replica = liar.replica
        slots = set(replica.acceptor.accepted) | set(replica.learner.learned)
        made_up = {
            s: operation(liar.victim + 997, s, "fab.lie", [s], 0)
            for s in slots
            if s > replica.acceptor.low
        }
        body = rep_body(replica.election.regency, replica.acceptor.low, made_up)
        statement = sign(liar.me, replica.key, body, liar.n)
        return [(to, Rep(statement, m.low_certificate))]
    return honest(liar, send)


#: What a lying REPLY answers (:func:`lying_replies`).
MADE_UP_VALUE = b"made-up-by-a-byzantine-node"
MADE_UP_REFUSAL = "no-entry"


def lying_replies(liar: Liar, send: Send) -> list[tuple[int, Message]]:
    """Answers clients with made-up results: a value nobody wrote to a read of bytes (an
    extended attribute) or to one refused (``no-attr``), a refusal (``no-entry``) of
    anything else that answered something.  A bare acknowledgement (a result of None,
    ``fs.setxattr``'s) is passed as it is, so that a history of writes and reads shows
    the lie in its reads.  Only ``f + 1`` matching replies keep a client from it."""
    to, m = send
    if isinstance(m, Reply) and (m.result is not None or not m.ok):
        if isinstance(m.result, bytes) or not m.ok:
            lie = Reply(m.client, m.rid, m.slot, True, MADE_UP_VALUE, m.stream)
        else:
            lie = Reply(m.client, m.rid, m.slot, False, MADE_UP_REFUSAL, m.stream)
        return [(m.client, lie)]
    return honest(liar, send)


def compose(*behaviours: Behaviour) -> Behaviour:
    """Each of ``behaviours`` in turn rewrites what the previous one sends."""

    def composed(liar: Liar, send: Send) -> list[tuple[int, Message]]:
        pairs = [send]
        for behaviour in behaviours:
            pairs = [out for p in pairs for out in behaviour(liar, p)]
        return [(j, m) for j, m in pairs if j is not None]

    return composed


def lying_leader(liar: Liar, send: Send) -> list[tuple[int, Message]]:
    """Both at once: an equivocating leader that is also a lying acceptor."""
    out: list[tuple[int, Message]] = []
    for dst, m in equivocating_leader(liar, send):
        out.extend(lying_acceptor(liar, (dst, m)))
    return out


#: The behaviours by name (the tests' parameter lists).
BEHAVIOURS: dict[str, Behaviour] = {
    "silent": silent,
    "equivocating_leader": equivocating_leader,
    "lying_acceptor": lying_acceptor,
    "lying_leader": lying_leader,
    "lying_replies": lying_replies,
}
