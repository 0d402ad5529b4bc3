"""The acceptor of FaB Paxos, one instance per slot (seed 003 Fig. 6.8 lines 113-127).

An acceptor accepts a value for a slot only from the current regent (line 119), once per
proposal number (line 121), and changes an accepted value only when the regency's progress
certificate vouches for the new one (lines 123-125).  Slots live in a window above the
stable checkpoint ``low`` (slots at or below it are decided; :mod:`bftfs.fab.checkpoints`),
which bounds what a Byzantine leader can make an acceptor remember.

Each refusal is a reason string, so a replica can count and report it; a proposal the
acceptor already took is answered again (the callee answers every retransmission, L6569-6572).
"""

from __future__ import annotations

from bftfs.fab.certificates import ProgressCertificate, rep_body
from bftfs.fab.commits import Commits
from bftfs.fab.messages import Accepted, CommitProof, Propose


class Acceptor:
    """What one acceptor accepted, slot by slot."""

    def __init__(self, window: int, commits: Commits | None = None) -> None:
        self.window = window
        #: Parameterized FaB: the commit proofs this acceptor gathers (None: plain FaB).
        self.commits = commits
        self.low = 0
        self.accepted: dict[int, tuple[int, bytes]] = {}  # slot -> (pn, value)
        self.certificate: ProgressCertificate | None = None  # of the current regency

    def adopt_certificate(self, certificate: ProgressCertificate) -> None:
        """The current regency's verified progress certificate (from its NEWVIEW)."""
        self.certificate = certificate

    def on_propose(self, regency: int, m: Propose) -> Accepted | str:
        """ACCEPTED for a proposal of the current regent, or why it is refused."""
        if m.pn != regency:
            return f"proposal number {m.pn} is not the current regency {regency}"
        floor = self.low
        if self.certificate is not None and self.certificate.pn == m.pn:
            floor = max(floor, self.certificate.low)
        if not floor < m.slot <= self.low + self.window:
            return f"slot {m.slot} outside the window ({floor}, {self.low + self.window}]"
        prev = self.accepted.get(m.slot)
        if prev is not None and prev[0] == m.pn:
            if prev[1] == m.value:
                return self._answer(m)  # a retransmission: answer again
            return f"slot {m.slot}: another value already accepted for {m.pn} (equivocation)"
        if prev is not None and prev[1] != m.value:
            cert = self.certificate
            if cert is None or cert.pn != m.pn:
                return f"slot {m.slot}: changing a value needs the progress certificate"
            if not cert.vouches(m.slot, m.value):
                return f"slot {m.slot}: the progress certificate does not vouch for the value"
        self.accepted[m.slot] = (m.pn, m.value)
        return self._answer(m)

    def _answer(self, m: Propose) -> Accepted:
        """ACCEPTED, signed when this acceptor gathers commit proofs (Fig. 6.9 line 238)."""
        answer = Accepted(m.pn, m.slot, m.value)
        return answer if self.commits is None else self.commits.stated(answer)

    def again(self, m: Propose) -> list[CommitProof]:
        """The commit proof of a proposal the leader resends: a learner may lack it."""
        proof = None if self.commits is None else self.commits.again(m)
        return [] if proof is None else [proof]

    def restore(
        self, accepted: dict[int, tuple[int, bytes]], proofs: dict[int, CommitProof], low: int
    ) -> None:
        """What a previous run accepted and its commit proofs (``fab/durable.py``), above
        the stable checkpoint ``low``."""
        self.accepted = dict(accepted)
        if self.commits is not None:
            self.commits.proofs = dict(proofs)
        self.collect(low)

    def on_accepted(self, acceptor: int, m: Accepted, regency: int) -> CommitProof | None | str:
        """Another acceptor's ACCEPTED (Fig. 6.9 lines 240-245): the commit proof it
        completes, None, or why its statement is refused (None in plain FaB)."""
        return None if self.commits is None else self.commits.on_accepted(acceptor, m, regency)

    def rep(self, pn: int) -> bytes:
        """The body of this acceptor's REP for ``pn``: what it accepted above ``low``, and
        its commit proofs when it gathers them (Fig. 6.9 line 252)."""
        proofs = None if self.commits is None else self.commits.proofs
        return rep_body(pn, self.low, {s: v for s, (_, v) in self.accepted.items()}, proofs)

    def collect(self, low: int) -> None:
        """Forget every slot at or below the stable checkpoint ``low``."""
        if low <= self.low:
            return
        self.low = low
        self.accepted = {s: pv for s, pv in self.accepted.items() if s > low}
        if self.commits is not None:
            self.commits.collect(low)
