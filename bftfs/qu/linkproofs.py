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
from bftfs.qu.request import MAX_LINKS, Link
from bftfs.qu.rounds import QuorumRounds
from bftfs.qu.timestamp import Timestamp

log = logging.getLogger(__name__)

#: Proven links a client keeps before it starts over (each costs a proof of a few KB).
MAX_FACTS = 4096


class LinkProofs:
    """Proven links and their proofs, fetched through the client's rounds."""

    def __init__(self, rounds: QuorumRounds) -> None:
        self._rounds = rounds
        #: Proven conditioned-on links, ``(oid, lt) -> lt_co``.
        self.facts: dict[tuple[int, Timestamp], Timestamp] = {}
        #: The proof of each: the packed stored request that made ``lt``.
        self.proofs: dict[tuple[int, Timestamp], bytes] = {}
        self.proven = 0

    def links_for(self, view: View) -> tuple[Link, ...]:
        """The proven links ``view``'s decisions used, with their proofs: the servers must
        decide with the same facts (none at all unless this client ever proved one)."""
        if not self.facts:
            return ()
        used = view.used_links()
        if len(used) > MAX_LINKS:
            # Every node will refuse the request (issue 39's failure): say which objects'
            # chains the walks went down, which the nodes' refusal cannot tell.
            per_object = Counter(oid for oid, _ in used)
            log.warning(
                "a classification used %d proven links, more than a request carries (%d): "
                "per object %s; deciding %s",
                len(used),
                MAX_LINKS,
                dict(per_object.most_common()),
                _walks(view),
            )
        return tuple(
            Link(oid, lt, self.facts[(oid, lt)], self.proofs[(oid, lt)])
            for oid, lt in sorted(used, key=lambda k: (k[0], k[1].encode()))
        )

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
            got = await self._rounds.proof(oid, lt)
            if got is not None:
                self.facts[(oid, lt)], self.proofs[(oid, lt)] = got
                self.proven += 1
                proven += 1
        return proven

    def with_proofs(self, links: tuple[Link, ...]) -> tuple[Link, ...] | None:
        """``links`` (stored without proofs) with the proofs this client holds, or None if
        it lacks one."""
        if any((lk.oid, lk.lt) not in self.proofs for lk in links):
            return None
        return tuple(lk.__class__(*lk.fact(), self.proofs[(lk.oid, lk.lt)]) for lk in links)


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
