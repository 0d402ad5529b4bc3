"""An acceptor's commit proofs in Parameterized FaB Paxos (seed 003 Fig. 6.9 lines 240-245).

Each acceptor signs its ACCEPTED (line 238) and sends it to every node: with every node
playing all three roles it is one message, the learners' ACCEPTED (line 236) with the
statement other acceptors keep.  Per slot, an acceptor keeps each other acceptor's statement
of the highest proposal number it saw (``tentative commit proof``, line 241: a Byzantine
acceptor's second value at one number is ignored).  Once ``commit = ceil((a + f + 1) / 2)``
statements name one value at the current regency's number (``valid``, line 243), they are
this acceptor's *commit proof* for the slot, sent to every learner (line 245) and reported
in its REP (line 252).

A statement counts only from its own signer, for the value and number its ACCEPTED names,
and when this node's MAC entry verifies (:mod:`bftfs.fab.auth`); a commit proof a learner
receives is checked the same way (``certificates.check_commit``).  Slots live in the
acceptor's window above the stable checkpoint, so a Byzantine acceptor's statements for
far slots cost nothing.
"""

from __future__ import annotations

from bftfs.fab.auth import KeyLookup, sign, verify
from bftfs.fab.certificates import accepted_body, check_commit
from bftfs.fab.messages import Accepted, CommitProof, Propose, Signed
from bftfs.quorums.fab import FabQuorums


class Commits:
    """Tentative commit proofs and commit proofs, slot by slot, of acceptor ``me``."""

    def __init__(self, me: int, key: KeyLookup, q: FabQuorums, nodes: int, window: int) -> None:
        self.me, self.key, self.q, self.nodes = me, key, q, nodes
        self.commit = q.commit
        self.window = window
        self.low = 0
        #: slot -> acceptor -> (pn, value, statement): the highest-numbered ACCEPTED seen.
        self.tentative: dict[int, dict[int, tuple[int, bytes, Signed]]] = {}
        self.proofs: dict[int, CommitProof] = {}  # slot -> this acceptor's commit proof

    @classmethod
    def of(cls, me: int, key: KeyLookup, q: FabQuorums, nodes: int, window: int) -> Commits | None:
        """The commit proofs of a cluster that gathers them (``q.commits``), else None."""
        return cls(me, key, q, nodes, window) if q.commits else None

    def stated(self, m: Accepted) -> Accepted:
        """This acceptor's ACCEPTED with its statement (line 238)."""
        body = accepted_body(m.pn, m.slot, m.value)
        return Accepted(m.pn, m.slot, m.value, sign(self.me, self.key, body, self.nodes))

    def again(self, m: Propose) -> CommitProof | None:
        """The commit proof of a proposal the leader resends (a learner may lack it)."""
        proof = self.proofs.get(m.slot)
        return proof if proof is not None and (proof.pn, proof.value) == (m.pn, m.value) else None

    def valid(self, proof: CommitProof) -> str | None:
        """``valid`` (line 284) at this node: why ``proof`` is not a commit proof, or None."""
        return check_commit(self.me, self.key, self.q, self.nodes, proof)

    def on_accepted(self, acceptor: int, m: Accepted, regency: int) -> CommitProof | None | str:
        """Keep ``acceptor``'s statement ``m.statement`` if it checks; the new commit proof
        it completes (to send to every learner), None, or why it is refused."""
        st = m.statement
        if st is None:
            return "ACCEPTED without its statement (commit proofs are on)"
        if (
            st.signer != acceptor
            or st.body != accepted_body(m.pn, m.slot, m.value)
            or not verify(self.me, self.key, st, self.nodes)
        ):
            return "ACCEPTED: its statement is not the sender's, or does not verify"
        if not self.low < m.slot <= self.low + self.window:
            return f"slot {m.slot} outside the acceptor's window"
        kept = self.tentative.setdefault(m.slot, {})
        have = kept.get(acceptor)
        if have is None or m.pn > have[0]:  # line 241
            kept[acceptor] = (m.pn, m.value, st)
        if m.pn != regency:  # line 243: valid for the current regency's number only
            return None
        proof = self.proofs.get(m.slot)
        if proof is not None and proof.pn >= regency:
            return None  # one commit proof per slot and number is enough
        statements = tuple(
            s for pn, value, s in kept.values() if pn == regency and value == m.value
        )
        if len(statements) < self.commit:
            return None
        self.proofs[m.slot] = CommitProof(m.slot, regency, m.value, statements)  # line 244
        return self.proofs[m.slot]

    def collect(self, low: int) -> None:
        """Forget every slot at or below the stable checkpoint ``low``."""
        if low <= self.low:
            return
        self.low = low
        self.tentative = {s: t for s, t in self.tentative.items() if s > low}
        self.proofs = {s: p for s, p in self.proofs.items() if s > low}
