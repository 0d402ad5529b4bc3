"""The conditioned-on links a Q/U client has proven (:mod:`bftfs.qu.links`, L2747-2754):
``(oid, lt) -> lt_co`` and the stored request that proves each.  They are facts, true for
ever, so the client keeps them across operations (dropped wholesale when many) and sends
with each request the ones its classification used, so that the servers decide with the
same facts.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable

from bftfs.qu.classify import View
from bftfs.qu.request import MAX_LINKS, MAX_PROVEN, Link
from bftfs.qu.rounds import QuorumRounds
from bftfs.qu.timestamp import Timestamp

log = logging.getLogger(__name__)

#: Proven links a client keeps before it starts over (each costs a proof of a few KB).
MAX_FACTS = 4096
#: Versions before a wanted link's whose proofs one fetch asks for too (``reads.MAX_CHAIN``).
CHAIN = 32
#: Bytes of proofs one request carries at most (a frame holds 8 MiB); past them, and past
#: ``request.MAX_PROVEN`` proofs, links go without (``LinkProofs._with_some_proofs``).
PROOF_BYTES = 2 << 20


class LinkProofs:
    """Proven links and their proofs, fetched through the client's rounds."""

    def __init__(self, rounds: QuorumRounds) -> None:
        self._rounds = rounds
        #: Proven conditioned-on links, ``(oid, lt) -> lt_co``.
        self.facts: dict[tuple[int, Timestamp], Timestamp] = {}
        #: The proof of each: the packed stored request that made ``lt``.
        self.proofs: dict[tuple[int, Timestamp], bytes] = {}
        self.proven = 0
        #: Links sent without their proofs, for the servers to check (past the budget).
        self.sent_bare = 0

    def links_for(self, view: View) -> tuple[Link, ...]:
        """The proven links ``view``'s decisions used, with their proofs: the servers must
        decide with the same facts (none at all unless this client ever proved one)."""
        if not self.facts:
            return ()
        used = view.used_links()
        if len(used) > MAX_LINKS:
            # Every node will refuse the request (issue 39's failure, at 256 then): say
            # which objects' chains the walks went down, which the refusal cannot tell.
            per_object = Counter(oid for oid, _ in used)
            log.warning(
                "a classification used %d proven links, more than a request carries (%d): "
                "per object %s; deciding %s",
                len(used),
                MAX_LINKS,
                dict(per_object.most_common()),
                _walks(view),
            )
        return self._with_some_proofs([(oid, lt, self.facts[(oid, lt)]) for oid, lt in used])

    def _with_some_proofs(
        self, facts: Iterable[tuple[int, Timestamp, Timestamp]]
    ) -> tuple[Link, ...]:
        """``facts`` as links, the oldest :data:`MAX_PROVEN` within :data:`PROOF_BYTES`
        with their proofs and the rest without: each server checks those against the
        requests it stored itself (``links.verified``), and a walk past a few hundred
        links fits a request instead of every node refusing it.  The oldest get the
        proofs: their stored requests are the first a server drops
        (``retention.drop_requests``)."""
        budget, kept = PROOF_BYTES, 0
        out = []
        for oid, lt, lt_co in sorted(facts, key=lambda f: (f[1], f[0])):
            proof = self.proofs.get((oid, lt))
            if kept < MAX_PROVEN and proof is not None and len(proof) <= budget:
                budget -= len(proof)
                kept += 1
            else:
                proof = None
            out.append(Link(oid, lt, lt_co, proof))
        self.sent_bare += len(out) - kept
        return tuple(sorted(out, key=lambda lk: (lk.oid, lk.lt.encode())))

    async def prove(self, wanted: Iterable[tuple[int, Timestamp]]) -> int:
        """Prove conditioned-on links (``bftfs.qu.links``) this client does not know yet.
        How many new links were proven."""
        if len(self.facts) > MAX_FACTS:
            self.facts.clear()
            self.proofs.clear()
        proven = 0
        for oid, lt in sorted(wanted, key=lambda k: (k[0], k[1].encode())):
            if (oid, lt) in self.facts:
                continue
            # The versions before ``lt`` come along (a walk goes down that chain next):
            # dozens of links a round instead of one.
            for at, co, proof in await self._rounds.proof(oid, lt, CHAIN):
                if (oid, at) not in self.facts:
                    self.facts[(oid, at)], self.proofs[(oid, at)] = co, proof
                    self.proven += 1
                    proven += 1
        return proven

    def with_proofs(self, links: tuple[Link, ...]) -> tuple[Link, ...] | None:
        """``links`` (stored without proofs) with the proofs this client holds, as far as
        a request carries them (:meth:`_with_some_proofs`), or None if it lacks one."""
        if any((lk.oid, lk.lt) not in self.proofs for lk in links):
            return None
        return self._with_some_proofs(lk.fact() for lk in links)


def _walks(view: View) -> str:
    """The candidates whose skip a view decided by proven links, for the log: each one's
    timestamp, objects and order, and where and from what its chain was walked (which
    update was left incomplete at a quiet object, by whom)."""
    out = []
    for c, oid, y in view.walked.values():
        order = view.order(oid, c)
        out.append(
            f"{c.lt!r} over {c.objects} at order {order}, walked at {oid} from {y.lt!r}"
            f" over {y.objects}"
        )
    return "; ".join(out) or "nothing"
