"""Leader election: regencies, suspicions and their proofs (seed 003 Fig. 6.7, L6607-6665).

The seed leaves election to an existing protocol and asks of it: the regency never
decreases, proposer ``r mod p`` leads regency ``r``, a quorum of ``ceil((p + f + 1) / 2)``
suspicions of ``r`` ends it, and the election yields a proof that sways other nodes
(``consider``).  This one is the plainest protocol with those properties:

- a proposer *suspects* regency ``r`` by sending every node a ``SUSPECT(r)`` statement
  (an authenticator, :mod:`bftfs.fab.auth`), and keeps suspecting at most one regency;
- ``election`` verified suspicions of ``r`` start regency ``r + 1`` at a node, and those
  statements are its proof;
- ``f + 1`` suspicions of a regency at or above a node's own make it suspect too, so that
  once one correct node moves on, every correct node does (PBFT's view-change rule): at
  least one of the ``f + 1`` is correct;
- ``consider(proof)`` moves a node to the regency a valid proof shows (Fig. 6.8 line 114).
"""

from __future__ import annotations

from collections.abc import Iterable

from bftfs.fab.auth import KeyLookup, sign, verify
from bftfs.fab.certificates import check_proof, parse_suspect, suspect_body
from bftfs.fab.messages import Signed
from bftfs.quorums.fab import FabQuorums


class Election:
    """One node's view of the regency."""

    def __init__(self, me: int, key: KeyLookup, q: FabQuorums, nodes: int) -> None:
        self.me, self.key, self.q, self.nodes = me, key, q, nodes
        self.regency = 0
        self.proof: tuple[Signed, ...] = ()
        self.suspected: Signed | None = None  # my latest suspicion, resent until it ends
        #: proposer -> (regency, statement): only each proposer's highest suspicion, so a
        #: Byzantine one naming ever larger regencies holds one entry, not one per number.
        self.latest: dict[int, tuple[int, Signed]] = {}

    @property
    def suspicions(self) -> dict[int, dict[int, Signed]]:
        """regency -> proposer -> statement, from the latest suspicions."""
        out: dict[int, dict[int, Signed]] = {}
        for signer, (regency, statement) in self.latest.items():
            out.setdefault(regency, {})[signer] = statement
        return out

    def leader(self, regency: int | None = None) -> int:
        """``getLeader``: proposer ``regency mod p``."""
        return (self.regency if regency is None else regency) % self.q.p

    def suspect(self, regency: int) -> Signed | None:
        """``suspect(r)``: the statement to send, or None (not a proposer, already past)."""
        if self.me >= self.q.p or regency < self.regency:
            return None
        if self.suspected is not None and parse_suspect(self.suspected.body) == regency:
            return self.suspected
        self.suspected = sign(self.me, self.key, suspect_body(regency), self.nodes)
        self._record(self.suspected, regency)
        return self.suspected

    def _record(self, statement: Signed, regency: int) -> None:
        have = self.latest.get(statement.signer)
        if have is None or have[0] < regency:
            self.latest[statement.signer] = (regency, statement)

    def on_suspect(self, statement: Signed) -> tuple[bool, Signed | None] | str:
        """Record a suspicion: (whether the regency changed, my suspicion to send if it made
        me join), or why it is refused."""
        regency = parse_suspect(statement.body)
        if regency is None or statement.signer >= self.q.p:
            return "not a suspicion by a proposer"
        if not verify(self.me, self.key, statement, self.nodes):
            return f"suspicion by {statement.signer}: authenticator does not verify"
        if regency < self.regency:
            return False, None
        self._record(statement, regency)
        joined = None
        if len(self.suspicions.get(regency, {})) >= self.q.f + 1:
            mine = None if self.suspected is None else parse_suspect(self.suspected.body)
            if mine is None or mine < regency:
                joined = self.suspect(regency)
        moved = self._advance()
        return moved, joined

    def _advance(self) -> bool:
        ready = [r for r, s in self.suspicions.items() if len(s) >= self.q.election]
        if not ready or max(ready) + 1 <= self.regency:
            return False
        r = max(ready)
        self._enter(r + 1, tuple(self.suspicions[r].values()))
        return True

    def _enter(self, regency: int, proof: tuple[Signed, ...]) -> None:
        self.regency, self.proof = regency, proof
        self.latest = {p: rs for p, rs in self.latest.items() if rs[0] >= regency}

    def consider(self, regency: int, proof: Iterable[Signed]) -> bool | str:
        """Adopt ``regency`` if ``proof`` shows it began; whether it moved, or why not."""
        if regency <= self.regency:
            return False
        proof = tuple(proof)
        why = check_proof(self.me, self.key, self.q, self.nodes, regency, proof)
        if why is not None:
            return why
        self._enter(regency, proof)
        return True
