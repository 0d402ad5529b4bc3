"""An acceptor's commit proofs in Parameterized FaB Paxos (seed 003 Fig. 6.9 lines 240-245).

Each acceptor signs its ACCEPTED (line 238) and sends it to every node: with every node
playing all three roles it is one message, the learners' ACCEPTED (line 236) with the
statement other acceptors keep.  Per slot, an acceptor keeps each other acceptor's statement
of the highest proposal number it saw (``tentative commit proof``, line 241: a Byzantine
acceptor's second value at one number is ignored).  Once ``commit = ceil((a + f + 1) / 2)``
statements name one value at the current regency's number (``valid``, line 243), they are
this acceptor's *commit proof* for the slot, sent to every learner (line 245) and reported
in its REP (line 252).

Statements are checked by the caller (the replica verifies the authenticator and the body);
this module only counts.  Slots live in the acceptor's window above the stable checkpoint,
so a Byzantine acceptor's statements for far slots cost nothing.
"""

from __future__ import annotations

from bftfs.fab.messages import Accepted, CommitProof, Signed


class Commits:
    """Tentative commit proofs and commit proofs, slot by slot."""

    def __init__(self, commit: int, window: int) -> None:
        self.commit = commit
        self.window = window
        self.low = 0
        #: slot -> acceptor -> (pn, value, statement): the highest-numbered ACCEPTED seen.
        self.tentative: dict[int, dict[int, tuple[int, bytes, Signed]]] = {}
        self.proofs: dict[int, CommitProof] = {}  # slot -> this acceptor's commit proof

    def on_accepted(self, acceptor: int, m: Accepted, regency: int) -> CommitProof | None | str:
        """Keep ``acceptor``'s checked statement ``m.statement``; the new commit proof it
        completes (to send to every learner), None, or why it is refused."""
        if m.statement is None:
            return "ACCEPTED without its statement (commit proofs are on)"
        if not self.low < m.slot <= self.low + self.window:
            return f"slot {m.slot} outside the acceptor's window"
        kept = self.tentative.setdefault(m.slot, {})
        have = kept.get(acceptor)
        if have is None or m.pn > have[0]:  # line 241
            kept[acceptor] = (m.pn, m.value, m.statement)
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
